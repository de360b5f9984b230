"""The HDF5 store: layout readable with plain h5py, the reader API, shards, refusals."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.store import FORMAT_VERSION, Row, Shards, StoreConfig, assemble, read_store, refuse_mismatch

CONFIG = StoreConfig("efficientnet_lite0", "abc", ("stage4", "penultimate"), 224,
                     {"mean": [127.0] * 3, "std": [128.0] * 3, "bgr": False}, {"size": 224, "mode": "crop"})


def _shard(shards, names, offset):
    codes = {"stage4": np.full((len(names), 3), offset, np.float32),
             "penultimate": np.arange(len(names) * 5, dtype=np.float32).reshape(-1, 5) + offset}
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
    assert sorted(p.name for p in shards.dir.iterdir()) == ["config.json", "shard-0000000.npz", "shard-0000001.npz"]


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
    with pytest.raises(UserError, match="cannot read feature store"):
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
