"""Read PyTorch ``state_dict`` files in the legacy (pre-1.6) format without torch.

The legacy format is a sequence of pickles (magic number, protocol version,
system info, the object itself, the list of storage keys) followed by the raw
bytes of every storage. The object pickle refers to storages through
persistent ids and rebuilds tensors with ``torch._utils._rebuild_tensor_v2``.

A pickle can run arbitrary code, so the unpickler here resolves only the few
globals such a file legitimately names and refuses every other one.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allow-list: refused, never executed."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: type


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, the tensor-rebuild functions and storage types."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type.dtype)


def _load_one(f):
    return _RestrictedUnpickler(f, encoding="utf-8").load()


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy-format ``.pth`` file as numpy arrays, by key."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip-format torch file; only the legacy format is supported")
        f.seek(0)
        if _load_one(f) != MAGIC_NUMBER:
            raise ValueError(f"{path} is not a legacy torch file (bad magic number)")
        if _load_one(f) != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported torch protocol version")
        _load_one(f)  # sys_info: endianness and type sizes
        obj = _load_one(f)
        keys = _load_one(f)
        storages: dict[str, np.ndarray] = {}
        dtypes = _storage_dtypes(obj)
        for key in keys:
            count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
            dtype = np.dtype(dtypes[key]).newbyteorder("<")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{path} is truncated")
            storages[key] = np.frombuffer(raw, dtype=dtype)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    return {name: _materialise(t, storages) for name, t in obj.items() if isinstance(t, _TensorRef)}


def _storage_dtypes(obj) -> dict[str, type]:
    return {t.storage.key: t.storage.dtype for t in obj.values() if isinstance(t, _TensorRef)}


def _materialise(t: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages[t.storage.key]
    if not t.size:
        return flat[t.offset].copy()
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="))
