"""The HDF5 store: layout readable with plain h5py, the reader API, shards, refusals."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import ROOT

from pipeline.errors import UserError
from pipeline.store import digests
from pipeline.store.layout import (
    FORMAT_VERSION,
    StoreConfig,
    default_candidates,
    refuse_mismatch,
)
from pipeline.store.reader import read_store
from pipeline.store.writer import Row, Shards, assemble

CONFIG = StoreConfig("efficientnet_lite0", "abc", ("stage4", "penultimate"), 224,
                     {"mean": [127.0] * 3, "std": [128.0] * 3, "bgr": False}, {"size": 224, "mode": "crop"})


def _shard(shards, names, offset):
    codes = {("stage4", None): np.full((len(names), 3), offset, np.float32),
             ("penultimate", None): np.arange(len(names) * 5, dtype=np.float32).reshape(-1, 5) + offset}
    shards.write(names, [(10 + i, 20 + i) for i in range(len(names))], codes,
                 [(f"bad{offset}.jpg", (1, 2), "not an image")])


def test_shards_round_trip_and_leave_no_temporary_files(tmp_path):
    out = tmp_path / "f.h5"
    shards = Shards(out, CONFIG)
    _shard(shards, ["a.png", "b.png"], 0)
    _shard(shards, ["c.png"], 100)
    rows, failures = Shards(out, CONFIG).index()
    assert rows[("c.png", 10, 20)] == (shards.files[1], 0)
    assert failures == {("bad0.jpg", 1, 2): "not an image", ("bad100.jpg", 1, 2): "not an image"}
    assert sorted(p.name for p in shards.dir.iterdir()) == [
        "config.json", f"shard-{shards.run}-0000000.npz", f"shard-{shards.run}-0000001.npz"]
    other = Shards(out, CONFIG)  # a second run never takes the first run's names
    _shard(other, ["d.png"], 200)
    assert len(set(Shards(out, CONFIG).files)) == 3


def test_shards_of_another_configuration_are_refused(tmp_path):
    Shards(tmp_path / "f.h5", CONFIG)
    other = StoreConfig(**{**CONFIG.__dict__, "layers": ("penultimate",)})
    with pytest.raises(UserError, match="interrupted extraction.*different layers"):
        Shards(tmp_path / "f.h5", other)


def test_assemble_and_read(tmp_path):
    out = tmp_path / "f.h5"
    shards = Shards(out, CONFIG)
    _shard(shards, ["a.png", "b.png"], 0)
    _shard(shards, ["c.png"], 100)
    first, second = shards.files
    rows = [Row("c.png", (3, 3), second, 0), Row("a.png", (1, 1), first, 0), Row("b.png", (2, 2), first, 1)]
    assemble(out, CONFIG, rows, {"stage4": 3, "penultimate": 5}, [1, 0, 0], ["cat", "dog"],
             [("x.jpg", "empty")], {"weights_source": "test", "versions": {"numpy": "1"}})
    store = read_store(out)
    assert store.paths == ["c.png", "a.png", "b.png"]
    assert store.labels.tolist() == [1, 0, 0] and store.class_names == ["cat", "dog"]
    assert store.skipped == [("x.jpg", "empty")]
    assert store.config == CONFIG
    np.testing.assert_array_equal(store.codes("penultimate")[:, 0], [100, 0, 5])
    np.testing.assert_array_equal(store.codes(rows=[0, 2])[:, 0], [100, 5])
    assert store.codes("stage4").shape == (3, 3)
    joined = store.codes("stage4+penultimate", rows=[0, 2])  # a layer combination: both side by side
    parts = [store.codes("stage4", [0, 2]), store.codes("penultimate", [0, 2])]
    np.testing.assert_array_equal(joined, np.hstack(parts))
    with pytest.raises(UserError, match="no layer 'stage6'"):
        store.codes("stage6+penultimate")
    assert default_candidates(store.layers) == ["stage4+penultimate"]
    assert default_candidates(["penultimate"]) == ["penultimate"]

    # A second store reusing rows of the first one, as a rerun does.
    again = tmp_path / "g.h5"
    assemble(again, CONFIG, [Row("b.png", (2, 2), out, 2), Row("c.png", (3, 3), out, 0)],
             {"stage4": 3, "penultimate": 5}, None, None, [], {})
    reread = read_store(again)
    assert reread.labels is None and reread.class_names is None
    np.testing.assert_array_equal(reread.codes()[:, 0], [5, 100])


def test_layout_is_plain_hdf5(tmp_path):
    out = tmp_path / "f.h5"
    shards = Shards(out, CONFIG)
    _shard(shards, ["a.png"], 0)
    assemble(out, CONFIG, [Row("a.png", (1, 1), shards.files[0], 0)], {"stage4": 3, "penultimate": 5},
             [0], ["cat"], [], {})
    with h5py.File(out, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f["features/penultimate"].dtype == np.float32 and f["features/penultimate"].shape == (1, 5)
        assert f["paths"].asstr()[0] == "a.png"
        assert f["fingerprints"][0].tolist() == [1, 1]
        assert {"labels", "class_names", "skipped"} <= set(f)
        assert f.attrs["backbone"] == "efficientnet_lite0"
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_read_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_store(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="is corrupt or unreadable"):
        read_store(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(UserError, match="not a feature store"):
        read_store(tmp_path / "other.h5")


def test_refuse_mismatch_names_what_differs(tmp_path):
    other = StoreConfig(**{**CONFIG.__dict__, "backbone": "mobilenet_v2", "weights_checksum": "def"})
    with pytest.raises(UserError, match="different backbone, weights_checksum"):
        refuse_mismatch(CONFIG, other, tmp_path / "f.h5")
    refuse_mismatch(CONFIG, StoreConfig.from_json(CONFIG.to_json()), tmp_path / "f.h5")


def _good_store(tmp_path, n=6):
    from conftest import write_store

    rng = np.random.default_rng(0)
    return write_store(tmp_path / "good.h5", {"penultimate": rng.normal(size=(n, 8))}, [0, 1] * (n // 2), ["a", "b"])


def _crafted(f, name, values):
    """A dataset replaced by someone who recomputed its digest too: the checks of meaning still refuse it."""
    del f[name], f[f"{digests.GROUP}/{name}"]
    f.create_dataset(name, data=values)
    digests.record(f, name, values)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f["features"].__delitem__("penultimate"), "lacks features/penultimate"),
    (lambda f: (f["features"].__delitem__("penultimate"),
                f["features"].create_dataset("penultimate", shape=(10**9, 8), dtype="f4", chunks=(256, 8))),
     "corrupt: features/penultimate has shape"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(3, np.int64))),
     "corrupt: labels has shape"),
    (lambda f: (f.__delitem__("fingerprints"), f.create_dataset("fingerprints", data=np.zeros((6, 2), "f4"))),
     "corrupt: fingerprints"),
    (lambda f: f.attrs.__setitem__("format_version", "two"), "store format"),
    (lambda f: f.attrs.__setitem__("format_version", 99), "store format"),
    (lambda f: f.__delitem__("paths"), "lacks paths"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.array([0, 1, 7, 0, 1, 0]))),
     "labels fails its sha256 check"),
    (lambda f: _crafted(f, "labels", np.array([0, 1, 7, 0, 1, 0])), "labels point outside"),  # digests recomputed
])
def test_crafted_or_broken_stores_are_one_line(tmp_path, damage, message):
    path = _good_store(tmp_path)
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(UserError, match=message):
        read_store(path)


def test_a_flipped_byte_in_the_codes_is_detected(tmp_path):
    path = _good_store(tmp_path)
    with h5py.File(path, "r") as f:
        offset = f["features/penultimate"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        read_store(path).codes()


def test_one_writer_at_a_time_and_stale_temporary_files_go(tmp_path):
    import subprocess
    import sys

    from pipeline.store.writer import writing

    out = tmp_path / "f.h5"
    (tmp_path / f".{out.name}.4242.tmp").write_text("left by a killed run")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, sys, time
f = open({str(out) + ".lock"!r}, "a"); fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another process is writing"):
            with writing(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with writing(out):  # the lock died with its process
        assert not list(tmp_path.glob(".*.tmp"))


def test_the_docs_table_lists_the_layout():
    """docs/store.md's table of datasets is the store's layout (pipeline.store.layout.LAYOUT): each name, element
    type and shape."""
    import re

    from pipeline.store.layout import LAYOUT

    listed = set()
    for line in (ROOT / "docs" / "store.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        dtype, shape = cells[1].split()[0], re.search(r"`(\[.*?\])`", cells[1]).group(1)
        listed |= {(name, dtype, shape) for name in re.findall(r"`([^`]+)`", cells[0])}
    assert listed == {(d.name, d.dtype, d.shape) for d in LAYOUT}
