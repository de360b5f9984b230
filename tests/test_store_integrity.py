"""A store read is what assembly wrote, or one line: flipped bytes anywhere in the file (the chunk index that
fletcher32 does not guard included) are never read as other codes, and never end in a traceback."""

from __future__ import annotations

import os
import random
import shutil

import h5py
import numpy as np
import pytest
from conftest import blobs, write_store

from pipeline.errors import UserError
from pipeline.store import digests
from pipeline.store.reader import read_store


def _store(path):
    X, noise, y = blobs(n_per_class=(100, 100, 100), dim=48)
    groups = [f"g{i % 7}" for i in range(len(y))]
    return write_store(path, {"stage6": noise[:, :16], "penultimate": X}, y, ["a", "b", "c"], groups=groups,
                       views={"flip": {"stage6": noise[:, 16:32], "penultimate": X[::-1]}})


def _everything(path) -> dict:
    """All a reader can give of a store: attributes, small arrays, every layer's and view's codes, a subset."""
    store = read_store(path)
    seen = {"attrs": repr(sorted(store.attrs.items())), "config": store.config.to_json(), "paths": store.paths,
            "labels": store.labels.tolist(), "class_names": store.class_names, "skipped": store.skipped,
            "groups": store.groups, "fingerprints": store.fingerprints.tolist()}
    for layer in store.layers:
        seen[layer] = store.view_codes(layer).tobytes()
        seen[f"{layer} rows"] = store.codes(layer, rows=np.array([0, 5, 257, 299])).tobytes()
    return seen


def _flips(data: bytes, index: int, anywhere: int, seed: int = 0) -> list[tuple[str, int]]:
    """Byte positions to flip: in the B-tree nodes (``TREE``) that index the chunks, and anywhere in the file."""
    rng = random.Random(seed)
    trees = [i for i in range(len(data) - 4) if data[i:i + 4] == b"TREE"]
    assert trees, "the store has no chunk index to flip"
    return [("index", rng.choice(trees) + rng.randrange(4, 120)) for _ in range(index)] + [
        ("anywhere", rng.randrange(len(data))) for _ in range(anywhere)]


def _experiment(tmp_path, index: int, anywhere: int) -> dict:
    """Flip one byte at a time; count what reading the whole store did: ``same`` (the flip changed nothing
    read), ``refused`` (one line), ``silent`` (other values, no error) or ``traceback``."""
    original = _store(tmp_path / "s.h5")
    reference, data = _everything(original), original.read_bytes()
    counts = {"same": 0, "refused": 0, "silent": 0, "traceback": 0}
    for _, position in _flips(data, index, anywhere):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path = tmp_path / "damaged.h5"
        path.write_bytes(damaged)
        try:
            counts["same" if _everything(path) == reference else "silent"] += 1
        except UserError as e:
            assert "\n" not in str(e)
            counts["refused"] += 1
        except Exception:  # noqa: BLE001 - what the experiment counts
            counts["traceback"] += 1
    return counts


def test_a_sample_of_flips_is_never_read_silently(tmp_path):
    counts = _experiment(tmp_path, index=80, anywhere=60)
    assert counts["silent"] == 0 and counts["traceback"] == 0, counts
    assert counts["refused"] > 0


@pytest.mark.slow
def test_the_1400_flip_experiment(tmp_path):
    """The experiment of the safety issue: 800 flips in the chunk index, 600 anywhere (before digests: 50 silent
    changes and 37 tracebacks in 700)."""
    counts = _experiment(tmp_path, index=800, anywhere=600)
    assert counts["silent"] == 0 and counts["traceback"] == 0, counts


def test_a_chunk_index_pointing_elsewhere_is_refused_not_read_as_zeros(tmp_path):
    """The reported case: the codes' chunk index made to point at the fill value."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        offset = f["features/penultimate"].id.get_chunk_info(1).byte_offset
    data = bytearray(path.read_bytes())
    where = data.find(offset.to_bytes(8, "little"))
    assert where > 0
    data[where:where + 8] = (offset + 1).to_bytes(8, "little")  # the second chunk's address, one byte off
    path.write_bytes(data)
    store = read_store(path)
    with pytest.raises(UserError, match="corrupt"):
        store.codes("penultimate")


def test_every_dataset_and_the_attributes_carry_digests(tmp_path):
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        stored = [n for n in names if not n.startswith(digests.GROUP + "/")]
        assert sorted(f"{digests.GROUP}/{n}" for n in stored) == sorted(set(names) - set(stored))
        assert f.attrs[digests.ATTRS_KEY] == digests.attrs_digest(f.attrs)
    with h5py.File(path, "r+") as f:  # an attribute changed by anyone but assembly
        f.attrs["backbone"] = "mobilenet_v2"
    with pytest.raises(UserError, match="attributes fail their sha256 check"):
        read_store(path)


def test_a_store_replaced_while_it_is_read_is_refused_not_mixed(tmp_path, monkeypatch):
    """The race: the file is replaced just after it was opened for reading. Labels and codes must come from one
    file: the identity is that of the open file, so the later read of codes refuses."""
    first = _store(tmp_path / "s.h5")
    X, _, y = blobs(n_per_class=(10, 10), dim=8, seed=5)
    other = write_store(tmp_path / "other.h5", {"stage6": X, "penultimate": X}, y, ["a", "b"])
    real = h5py.File

    def replacing(path, *args, **kwargs):
        f = real(path, *args, **kwargs)
        if other.exists():
            os.replace(other, first)  # after the open: the reader holds the old file
        return f

    monkeypatch.setattr(h5py, "File", replacing)
    store = read_store(first)
    assert len(store) == 300 and store.class_names == ["a", "b", "c"]
    with pytest.raises(UserError, match="was replaced since it was opened"):
        store.codes("penultimate")


def test_an_older_store_without_digests_is_still_read(tmp_path, caplog):
    path = _store(tmp_path / "s.h5")
    expected = read_store(path).codes("penultimate")
    old = tmp_path / "old.h5"
    with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            if name != digests.GROUP:
                src.copy(name, dst)
        dst.attrs.update({k: v for k, v in src.attrs.items() if k != digests.ATTRS_KEY})
        dst.attrs["format_version"] = 2
    store = read_store(old)
    assert not store.checked and np.array_equal(store.codes("penultimate"), expected)
    assert "without content digests" in caplog.text
    shutil.copy(old, tmp_path / "lying.h5")
    with h5py.File(tmp_path / "lying.h5", "r+") as f:  # digests present but the version says 2: a flipped version
        f.attrs["format_version"] = 2
        digests.record(f, "x", [1])
    with pytest.raises(UserError):
        read_store(tmp_path / "lying.h5")


def test_codes_changed_behind_the_digests_are_refused_by_every_reader(tmp_path):
    """A row rewritten through HDF5 itself (its fletcher32 recomputed, so only the digest can tell): refused by
    the reader, by a streamed fit's reads and by an update that would copy it into a new store."""
    from pipeline.linear.config import FitConfig
    from pipeline.linear.fit import fit

    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f["features/penultimate"][257] = 0.0
    with pytest.raises(UserError, match="features/penultimate fails its sha256 check"):
        read_store(path).codes("penultimate", rows=np.array([257]))
    with read_store(path).spans("penultimate") as read:
        read(0, 256)  # an untouched block reads
        with pytest.raises(UserError, match="fails its sha256 check"):
            read(256, 512)
    with pytest.raises(UserError, match="fails its sha256 check"):
        fit(FitConfig(store=path, out=tmp_path / "run", layers=("penultimate",), max_memory=1024, progress=False))
