"""Reading a feature store (layout: docs/store.md): its schema checked before anything is read, small arrays in
memory, codes read on demand. Numeric datasets carry fletcher32 checksums (format 2), verified by h5py on every
read; anything wrong is one :class:`~pipeline.errors.UserError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from .layout import (
    FORMAT_VERSION,
    StoreConfig,
    code_key,
    config_from_attrs,
    dataset_name,
    layer_parts,
)


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
    identity: tuple[int, int]
    targets: np.ndarray | None = None
    groups: list[str] | None = None  # the manifest's group of each image ("": none)
    multilabels: np.ndarray | None = None  # several labels per image: (images, class_names) of 0/1

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
        self._check_identity()
        try:
            with h5py.File(self.path, "r") as f:
                return list(f["paths"].asstr()[:])
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path} is corrupt ({e}); extract it again") from None

    def _check_identity(self) -> None:
        if _identity(self.path) != self.identity:
            raise UserError(f"{self.path} was replaced since it was opened; open it again")

    def codes(self, layer: str | None = None, rows: np.ndarray | None = None, view: str | None = None) -> np.ndarray:
        """Codes of ``layer`` (default: the last layer stored; ``a+b``: a's and b's side by side), all rows or
        the sorted ``rows``; of the images, or of their ``view``."""
        layer = layer or self.layers[-1]
        missing = [x for x in layer_parts(layer) if x not in self.layers]
        if missing:
            raise UserError(f"{self.path} has no layer {', '.join(map(repr, missing))}; it holds "
                            f"{', '.join(self.layers)}")
        if view is not None and view not in self.views:
            raise UserError(f"{self.path} has no view {view!r}; extract it with that view")
        self._check_identity()
        try:
            with h5py.File(self.path, "r") as f:
                data = [f[dataset_name(code_key(x, view))] for x in layer_parts(layer)]
                parts = [d[:] if rows is None else d[np.asarray(rows)] for d in data]
        except OSError as e:
            raise UserError(f"{self.path} is corrupt ({e}); extract it again") from None
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def view_codes(self, layer: str | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Codes of the images and of each stored view, ``(views + 1, images, dims)`` (:mod:`pipeline.linear.tta`)."""
        return np.stack([self.codes(layer, rows, view) for view in (None, *self.views)])


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def read_store(path: str | Path) -> FeatureStore:
    """Open a feature store after checking its schema; anything wrong is one :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature store {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            _check_schema(f, path)
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            labelled = "labels" in f or "multilabels" in f
            store = FeatureStore(
                path=path,
                config=config_from_attrs(f.attrs),
                attrs=attrs,
                fingerprints=f["fingerprints"][:],
                labels=f["labels"][:] if "labels" in f else None,
                class_names=list(f["class_names"].asstr()[:]) if labelled else None,
                skipped=list(zip(f["skipped/paths"].asstr()[:], f["skipped/reasons"].asstr()[:])),
                identity=_identity(path),
                targets=f["targets"][:] if "targets" in f else None,
                groups=list(f["groups"].asstr()[:]) if "groups" in f else None,
                multilabels=f["multilabels"][:] if "multilabels" in f else None,
            )
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read feature store {path}: {type(e).__name__}: {e}") from None
    if store.labels is not None and len(store.labels) and not 0 <= store.labels.min() <= store.labels.max() < len(
            store.class_names):
        raise UserError(f"{path} is corrupt: labels point outside class_names")
    return store


def _check_schema(f: h5py.File, path: Path) -> None:
    """Check every dataset's presence, dtype and shape against the number of rows, before reading any."""
    version = f.attrs.get("format_version")
    if version is None or "features" not in f:
        raise UserError(f"{path} is not a feature store (no format_version or features)")
    if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= FORMAT_VERSION:
        raise UserError(f"{path} has store format {version!r}; this version reads 1 to {FORMAT_VERSION}")
    missing = [k for k in ("paths", "fingerprints", "skipped/paths", "skipped/reasons") if k not in f]
    layers = json.loads(f.attrs["layers"])
    views = json.loads(f.attrs.get("views", "[]"))
    coded = [dataset_name(code_key(layer, view)) for view in (None, *views) for layer in layers]
    missing += [name for name in coded if name not in f]
    if missing:
        raise UserError(f"{path} is corrupt: it lacks {', '.join(missing)}")
    n = f["paths"].shape[0] if f["paths"].ndim == 1 else -1
    classes = f["class_names"].shape[0] if "class_names" in f else 0
    expected = {"fingerprints": ((n, 2), "i"), "labels": ((n,), "i"), "targets": ((n,), "f"), "groups": ((n,), "O"),
                "multilabels": ((n, classes), "u"), **{name: (None, "f") for name in coded}}
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
