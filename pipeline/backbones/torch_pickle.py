"""Read PyTorch ``state_dict`` files in the legacy (pre-1.6) format without torch.

The legacy format is a sequence of pickles (magic number, protocol version,
system info, the object itself, the list of storage keys) followed by the raw
bytes of every storage. The object pickle refers to storages through
persistent ids and rebuilds tensors with ``torch._utils._rebuild_tensor_v2``.

A pickle can run arbitrary code, so the unpickler here resolves only the few
globals such a file legitimately names and refuses every other one. A pickle
can also make the unpickler allocate far beyond its own size (a memo index of a
billion zeroes gigabytes), so each one is first walked opcode by opcode
(``pickletools``, which runs nothing) over the file's bytes in memory.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
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


class TorchFileError(ValueError):
    """The file is not a legacy state_dict this reader can trust: malformed, truncated or crafted."""


class UnsafePickleError(TorchFileError, pickle.UnpicklingError):
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


def _load_one(f: io.BytesIO):
    """The next pickle in ``f``, after checking that its memo indices come in sequence (a pickler numbers them
    0, 1, 2...) and its frames fit in the file; over-long strings already fail in ``genops``."""
    start, puts, end = f.tell(), 0, len(f.getbuffer())
    for op, arg, _ in pickletools.genops(f):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if op.name != "MEMOIZE" and arg != puts:
                raise TorchFileError(f"a pickle stores memo entry {arg} out of sequence (expected {puts})")
            puts += 1
        elif op.name == "FRAME" and arg > end - f.tell():
            raise TorchFileError(f"a pickle frame of {arg} bytes is longer than the rest of the file")
    f.seek(start)
    return _RestrictedUnpickler(f, encoding="utf-8").load()


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy-format ``.pth`` file as numpy arrays, by key.

    Anything wrong with the file, however crafted, raises :class:`TorchFileError`
    (its message says what); no global outside the allow-list is resolved, and no
    tensor is read outside the bytes of its storage.
    """
    try:
        return _load(Path(path))
    except TorchFileError:
        raise
    except OSError:
        raise
    except Exception as e:  # a malformed pickle fails in many ways; each means the same: not a file to use
        raise TorchFileError(f"{path} is not a readable legacy state_dict ({type(e).__name__}: {e})") from None


def _load(path: Path) -> dict[str, np.ndarray]:
    with io.BytesIO(path.read_bytes()) as f:
        size = len(f.getbuffer())
        if f.read(2) == b"PK":
            raise TorchFileError(f"{path} is a zip-format torch file; only the legacy format is supported")
        f.seek(0)
        if _load_one(f) != MAGIC_NUMBER:
            raise TorchFileError(f"{path} is not a legacy torch file (bad magic number)")
        if _load_one(f) != PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported torch protocol version")
        _load_one(f)  # sys_info: endianness and type sizes
        obj = _load_one(f)
        keys = _load_one(f)
        if not isinstance(obj, dict) or not isinstance(keys, list):
            raise TorchFileError(f"{path} does not hold a state_dict")
        dtypes = _storage_dtypes(obj)
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            if str(key) not in dtypes:
                raise TorchFileError(f"{path}: storage {key!r} belongs to no tensor")
            count = int(np.frombuffer(f.read(8).ljust(8, b"\0"), dtype="<i8")[0])
            dtype = np.dtype(dtypes[str(key)]).newbyteorder("<")
            if not 0 <= count * dtype.itemsize <= size - f.tell():
                raise TorchFileError(f"{path} is truncated or declares a storage larger than the file")
            storages[str(key)] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    return {str(name): _materialise(path, t, storages) for name, t in obj.items() if isinstance(t, _TensorRef)}


def _storage_dtypes(obj) -> dict[str, type]:
    return {t.storage.key: t.storage.dtype for t in obj.values() if isinstance(t, _TensorRef)}


def _materialise(path: Path, t: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor's elements, after checking that its size, stride and offset stay inside its storage."""
    flat = storages.get(t.storage.key)
    if flat is None:
        raise TorchFileError(f"{path}: a tensor refers to storage {t.storage.key!r}, which the file lacks")
    size, stride, offset = t.size, t.stride, t.offset
    if (len(size) != len(stride) or not all(isinstance(v, int) for v in (*size, *stride))
            or min((*size, *stride, offset), default=0) < 0):
        raise TorchFileError(f"{path}: a tensor has an invalid size {size}, stride {stride} or offset {offset}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(flat) or (not size and offset >= len(flat)) or math.prod(size) > len(flat):
        raise TorchFileError(f"{path}: a tensor reaches past the end of its storage")
    if not size:
        return flat[offset].copy()
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=tuple(s * item for s in stride),
                                           writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))
