"""Reading a feature store (layout: docs/store.md): its schema and attributes checked before anything is read,
small arrays in memory, codes read on demand. Every read of a store of format 3 is checked against the digests
assembly recorded (:mod:`pipeline.store.digests`), and the numeric datasets carry fletcher32 checksums too; all
reads come from the file that was opened first (its identity is checked on the open file, not by name).
Anything wrong, h5py's own errors included, is one :class:`~pipeline.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from ..data.discover import dataset_root
from ..errors import UserError
from . import digests
from .layout import (
    DIGESTS_SINCE,
    FORMAT_VERSION,
    StoreConfig,
    code_key,
    config_from_attrs,
    dataset_name,
    layer_parts,
    stored,
)

log = logging.getLogger(__name__)


@dataclass
class FeatureStore:
    """A store opened for reading: metadata and small arrays in memory, codes read on demand."""

    path: Path
    config: StoreConfig
    attrs: dict
    fingerprints: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    skipped: list[tuple[str, str]]
    identity: tuple[int, ...]
    targets: np.ndarray | None = None
    groups: list[str] | None = None  # the manifest's group of each image ("": none)
    multilabels: np.ndarray | None = None  # several labels per image: (images, class_names) of 0/1
    checked: bool = True  # its datasets carry digests (format 3 on)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.config.layers

    @property
    def views(self) -> tuple[str, ...]:
        return self.config.views

    def __len__(self) -> int:
        return len(self.fingerprints)

    @cached_property
    def paths(self) -> list[str]:
        """The images' paths, read on first use: a million of them as Python strings take a few hundred MB,
        which a streamed fit never needs."""
        with self._open() as f:
            return _read(f, "paths", self.checked, self.path, text=True)

    def check_layer(self, layer: str, param: str | None = None) -> str:
        """``layer`` (one stored layer, or several joined by ``+``) if the store holds its every part; else one
        line naming what it holds."""
        missing = [x for x in layer_parts(layer) if x not in self.layers]
        if missing:
            raise UserError(f"{self.path} has no layer {', '.join(map(repr, missing))}; it holds "
                            f"{', '.join(self.layers)}", param=param)
        return layer

    @contextlib.contextmanager
    def _open(self):
        """The store's file, the same one it was opened from (or one line), its errors made one line too."""
        with _reading(self.path), _opened(self.path) as (f, identity):
            if identity != self.identity:
                raise UserError(f"{self.path} was replaced since it was opened; open it again")
            yield f

    def codes(self, layer: str | None = None, rows: np.ndarray | None = None, view: str | None = None) -> np.ndarray:
        """Codes of ``layer`` (default: the last layer stored; ``a+b``: a's and b's side by side), all rows or
        the sorted ``rows``; of the images, or of their ``view``."""
        layer = self.check_layer(layer or self.layers[-1])
        if view is not None and view not in self.views:
            raise UserError(f"{self.path} has no view {view!r}; extract it with that view")
        with self._open() as f:
            parts = [_read(f, dataset_name(code_key(x, view)), self.checked, self.path, rows)
                     for x in layer_parts(layer)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def widths(self, layer: str) -> tuple[int, ...]:
        """The width of each stored layer ``layer`` joins (one, or several joined by ``+``)."""
        self.check_layer(layer)
        with self._open() as f:
            return tuple(int(f[dataset_name(code_key(x))].shape[1]) for x in layer_parts(layer))

    @contextlib.contextmanager
    def spans(self, layer: str):
        """``read(start, stop)``: rows of one stored ``layer`` read span by span from one open file (a streamed
        fit's reads), each checked against the store's digests."""
        self.check_layer(layer)
        name = dataset_name(code_key(layer))
        with self._open() as f:
            yield digests.Spans(f, name, self.path) if self.checked else (lambda a, b: f[name][a:b])

    def view_codes(self, layer: str | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Codes of the images and of each stored view, ``(views + 1, images, dims)`` (:mod:`pipeline.linear.tta`)."""
        return np.stack([self.codes(layer, rows, view) for view in (None, *self.views)])


@contextlib.contextmanager
def _reading(path: Path):
    """h5py's and HDF5's errors on a damaged or crafted file (OSError, RuntimeError, KeyError, ValueError and
    more) as one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; none is the user's to debug
        raise UserError(f"{path} is corrupt or unreadable ({type(e).__name__}: {e}); extract it again") from None


@contextlib.contextmanager
def _opened(path: Path):
    """The open file and its identity, taken from the open file itself."""
    with h5py.File(path, "r") as f:
        st = os.fstat(f.id.get_vfd_handle())
        yield f, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(f: h5py.File, name: str, checked: bool, where: Path, rows: np.ndarray | None = None, text: bool = False):
    """A dataset, checked against its digests where the store has them."""
    if checked:
        return digests.read(f, name, rows, text, where)
    data = f[name]
    if text:
        return list(data.asstr()[:])
    return data[:] if rows is None else data[np.asarray(rows)]


def read_store(path: str | Path) -> FeatureStore:
    """Open a feature store after checking its schema and attributes; anything wrong is one :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature store {path} does not exist")
    with _reading(path), _opened(path) as (f, identity):
        checked = _check_schema(f, path)

        def read(name: str, text: bool = False):
            return _read(f, name, checked, path, text=text) if name in f else None

        labelled = "labels" in f or "multilabels" in f
        skipped = list(zip(read("skipped/paths", True), read("skipped/reasons", True)))
        store = FeatureStore(
            path=path, config=config_from_attrs(f.attrs),
            attrs={k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()},
            fingerprints=read("fingerprints"), labels=read("labels"),
            class_names=read("class_names", True) if labelled else None, skipped=skipped, identity=identity,
            targets=read("targets"), groups=read("groups", True), multilabels=read("multilabels"), checked=checked)
    if store.labels is not None and len(store.labels) and not 0 <= store.labels.min() <= store.labels.max() < len(
            store.class_names):
        raise UserError(f"{path} is corrupt: labels point outside class_names")
    if store.multilabels is not None and not np.isin(store.multilabels, (0, 1)).all():
        raise UserError(f"{path} is corrupt: multilabels holds values other than 0 and 1")
    if not checked:
        log.warning("%s has store format %s, without content digests: extract it again to add them", path,
                    store.attrs.get("format_version"))
    return store


def is_store_of(path: Path, data: Path | None = None) -> bool:
    """Whether ``path`` is a feature store (of the images of ``data``, when given): what extract may update."""
    try:
        with h5py.File(path, "r") as f:
            root = f.attrs.get("dataset_root")
            return "format_version" in f.attrs and "features" in f and (
                data is None or root == str(dataset_root(data).resolve()))
    except Exception:  # noqa: BLE001 - not a store, whatever the reason
        return False


def _check_schema(f: h5py.File, path: Path) -> bool:
    """Check the attributes' digest, then every dataset's presence, dtype and shape against the number of rows,
    before reading any; whether the datasets carry digests."""
    version = f.attrs.get("format_version")
    if version is None or "features" not in f:
        raise UserError(f"{path} is not a feature store (no format_version or features)")
    if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= FORMAT_VERSION:
        raise UserError(f"{path} has store format {version!r}; this version reads 1 to {FORMAT_VERSION}")
    checked = int(version) >= DIGESTS_SINCE
    if checked or digests.GROUP in f or digests.ATTRS_KEY in f.attrs:  # an older format does not have them
        digests.check_attrs(f, path)
    missing = [k for k in ("paths", "fingerprints", "skipped/paths", "skipped/reasons") if k not in f]
    layers = json.loads(f.attrs["layers"])
    views = json.loads(f.attrs.get("views", "[]"))
    coded = [dataset_name(code_key(layer, view)) for view in (None, *views) for layer in layers]
    missing += [name for name in coded if name not in f]
    if missing:
        raise UserError(f"{path} is corrupt: it lacks {', '.join(missing)}")
    n = f["paths"].shape[0] if f["paths"].ndim == 1 else -1
    classes = f["class_names"].shape[0] if "class_names" in f else 0
    rows = {"fingerprints": (n, 2), "labels": (n,), "targets": (n,), "groups": (n,), "multilabels": (n, classes)}
    codes = stored("features/<layer>").kind
    expected = {**{name: (shape, stored(name).kind) for name, shape in rows.items()},
                **{name: (None, codes) for name in coded}}
    for name, (shape, kind) in expected.items():
        if name not in f:
            continue
        d = f[name]
        if d.dtype.kind != kind or (shape is not None and d.shape != shape) or d.shape[0] != n or (
                name in coded and (d.ndim != 2 or d.id.get_storage_size() < d.nbytes)):
            raise UserError(f"{path} is corrupt: {name} has shape {d.shape} and dtype {d.dtype}, "
                            f"for {n} images")
    if any(f[dataset_name(code_key(layer, view))].shape[1:] != f[dataset_name(layer)].shape[1:]
           for view in views for layer in layers):
        raise UserError(f"{path} is corrupt: a view's codes differ in length from the image's")
    if ("labels" in f or "multilabels" in f) != ("class_names" in f) or ("labels" in f and "multilabels" in f) \
            or f["skipped/paths"].shape != f["skipped/reasons"].shape:
        raise UserError(f"{path} is corrupt: labels, class_names or skipped do not match")
    return checked
