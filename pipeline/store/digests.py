"""Content digests of a store: what a read returns is what assembly wrote, or one line says it is not.

HDF5's fletcher32 guards each chunk's bytes but not the B-tree that finds the
chunks: a flipped byte there can point a read at the fill value (zeros) or at
another chunk, and h5py returns it without a word. So assembly records the
sha256 of every dataset's content: ``digests/<name>`` holds one 32-byte
digest per block of rows (the codes' chunk of 256 rows; one block for the
small datasets), its ``rows`` attribute the block's size, and the root
attribute ``attrs_sha256`` covers every other root attribute. Readers check
every block they touch (reading whole blocks, so a subset of rows is checked
too) and the attributes on opening; a store of format 2 or older has none and
is read with fletcher32 alone.
"""

from __future__ import annotations

import hashlib
import json
import math

import h5py
import numpy as np

from ..errors import UserError

GROUP = "digests"
ATTRS_KEY = "attrs_sha256"
CODE_BLOCK = 256  # rows per digest of codes: their chunk


def _plain(value):
    """An HDF5 attribute value as plain JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def attrs_digest(attrs) -> str:
    """sha256 of a file's root attributes but :data:`ATTRS_KEY` itself."""
    content = {k: _plain(attrs[k]) for k in sorted(attrs) if k != ATTRS_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def digest(values) -> bytes:
    """sha256 of an array's bytes (C order, as stored) or of a list of strings."""
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        return hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
    return hashlib.sha256(json.dumps([str(v) for v in values], ensure_ascii=False).encode()).digest()


class Recorder:
    """The digests of one dataset written block by block, in order (blocks of ``block`` rows)."""

    def __init__(self, name: str, block: int):
        self.name, self.block, self.parts = name, block, []
        self.empty = np.empty(0, np.float32)  # what a read of no rows gives

    def add(self, values) -> None:
        """The next rows (a whole number of blocks, or the last rows)."""
        self.empty = values[:0]
        for start in range(0, len(values), self.block):
            self.parts.append(digest(values[start:start + self.block]))

    def write(self, f: h5py.File) -> None:
        parts = self.parts or [digest(self.empty)]
        d = f.create_dataset(f"{GROUP}/{self.name}", data=np.frombuffer(b"".join(parts), np.uint8).reshape(-1, 32))
        d.attrs["rows"] = self.block


def record(f: h5py.File, name: str, values) -> None:
    """The digest of a small dataset written whole."""
    recorder = Recorder(name, max(1, len(values)))
    recorder.add(values)
    recorder.write(f)


def sign(f: h5py.File) -> None:
    """Record the digest of the root attributes (after every other attribute is written)."""
    f.attrs[ATTRS_KEY] = attrs_digest(f.attrs)


def check_attrs(f: h5py.File, where) -> None:
    if f.attrs.get(ATTRS_KEY) != attrs_digest(f.attrs):
        raise UserError(f"{where} is corrupt: its attributes fail their sha256 check; extract it again")


def read(f: h5py.File, name: str, rows: np.ndarray | None = None, text: bool = False, where=None,
         remedy: str = "extract it again"):
    """Dataset ``name`` (all rows, or ``rows`` in any order), every block it touches checked against its digest
    (a failure says ``remedy``); ``text``: a dataset of strings, read whole as a list."""
    data = f[name]
    sums = f[f"{GROUP}/{name}"]
    block = sums.attrs.get("rows")
    n = data.shape[0]
    where = where or f.filename
    if not isinstance(block, (int, np.integer)) or block < 1 or sums.shape != (max(1, math.ceil(n / block)), 32) \
            or sums.dtype != np.uint8:
        raise UserError(f"{where} is corrupt: the digests of {name} do not fit it; {remedy}")
    expected = sums[:]
    if text:
        values = list(data.asstr()[:])
        _check(values, expected[0], name, where, remedy)
        return values
    if rows is None:
        values = data[:]
        for k in range(expected.shape[0]):
            _check(values[k * block:(k + 1) * block], expected[k], name, where, remedy)
        return values
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= n):
        raise IndexError(f"rows outside 0..{n - 1}")
    out = np.empty((len(rows), *data.shape[1:]), data.dtype)
    blocks = rows // block
    for k in np.unique(blocks):
        values = data[k * block:min(n, (k + 1) * block)]
        _check(values, expected[k], name, where, remedy)
        here = blocks == k
        out[here] = values[rows[here] - k * block]
    return out


class Spans:
    """Row spans of one dataset read one after another (a streamed fit's), each block checked against its
    digest; the digests are read once."""

    def __init__(self, f: h5py.File, name: str, where):
        self.data, self.name, self.where = f[name], name, where
        sums = f[f"{GROUP}/{name}"]
        self.block = int(sums.attrs["rows"])
        self.expected = sums[:]
        if sums.shape != (max(1, math.ceil(self.data.shape[0] / self.block)), 32):
            raise UserError(f"{where} is corrupt: the digests of {name} do not fit it; extract it again")

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop``; whole blocks are read and checked, so spans on block boundaries cost no
        more than the rows themselves."""
        first, last = start // self.block, (stop - 1) // self.block
        values = self.data[first * self.block:min(self.data.shape[0], (last + 1) * self.block)]
        for k in range(first, last + 1):
            _check(values[(k - first) * self.block:(k - first + 1) * self.block], self.expected[k], self.name,
                   self.where)
        return values[start - first * self.block:stop - first * self.block]


def _check(values, expected: np.ndarray, name: str, where, remedy: str = "extract it again") -> None:
    if digest(values) != expected.tobytes():
        raise UserError(f"{where} is corrupt: {name} fails its sha256 check; {remedy}")
