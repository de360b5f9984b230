"""The HDF5 feature store (layout: README, "The feature store"), and the crash-safe shards it is assembled from.

Numeric datasets carry fletcher32 checksums (format 2), verified by h5py on
every read; opening a store checks its schema first. One writer at a time
(``flock`` on ``<store>.lock``). A kill never leaves a half store: each batch
goes to a ``.npz`` shard in ``<store>.parts/``, and the store is assembled from
shards and reusable old rows into a temporary file renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from .errors import UserError
from .layer_sets import layer_parts

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: fletcher32 checksums on the numeric datasets; 1 is still read
_STR = h5py.string_dtype("utf-8")
_BLOCK = 2048  # rows per write when assembling


@dataclass(frozen=True)
class StoreConfig:
    """What must be identical for two sets of codes to be mixed in one store."""

    backbone: str
    weights_checksum: str
    layers: tuple[str, ...]
    input_size: int
    preprocessing: dict
    resize: dict
    views: tuple[str, ...] = ()  # views of each image whose codes are stored too (pipeline.tta)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "StoreConfig":
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "views"}
        values["layers"] = tuple(values["layers"])
        return cls(**values, views=tuple(data.get("views", ())))  # configs before views have none

    def differences(self, other: "StoreConfig") -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [k for k in mine if mine[k] != theirs[k]]


def _config_attrs(config: StoreConfig) -> dict:
    return {k: v if isinstance(v, (str, int)) else json.dumps(v) for k, v in config.to_json().items()}


def _config_from_attrs(attrs) -> StoreConfig:
    data = {}
    for f in fields(StoreConfig):
        value = attrs.get(f.name, "[]") if f.name == "views" else attrs[f.name]  # stores before views have none
        data[f.name] = json.loads(value) if f.name in ("layers", "preprocessing", "resize", "views") else value
    data["input_size"] = int(data["input_size"])
    return StoreConfig.from_json(data)


def code_key(layer: str, view: str | None = None) -> str:
    """The name of a stored layer's codes, of the images (``layer``) or of one view of them (``view/layer``)."""
    return layer if view is None else f"{view}/{layer}"


def _dataset(key: str) -> str:
    """Where the codes :func:`code_key` names lie in a store."""
    return f"views/{key}" if "/" in key else f"features/{key}"


def refuse_mismatch(existing: StoreConfig, wanted: StoreConfig, where: Path) -> None:
    diff = existing.differences(wanted)
    if diff:
        raise UserError(
            f"{where} was made with a different {', '.join(diff)} "
            f"(backbone {existing.backbone}, layers {','.join(existing.layers)}); "
            "write to another file or delete it", param="out")


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
                data = [f[_dataset(code_key(x, view))] for x in layer_parts(layer)]
                parts = [d[:] if rows is None else d[np.asarray(rows)] for d in data]
        except OSError as e:
            raise UserError(f"{self.path} is corrupt ({e}); extract it again") from None
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def view_codes(self, layer: str | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Codes of the images and of each stored view, ``(views + 1, images, dims)`` (:mod:`pipeline.tta`)."""
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
            labelled = "labels" in f
            store = FeatureStore(
                path=path,
                config=_config_from_attrs(f.attrs),
                attrs=attrs,
                fingerprints=f["fingerprints"][:],
                labels=f["labels"][:] if labelled else None,
                class_names=list(f["class_names"].asstr()[:]) if labelled else None,
                skipped=list(zip(f["skipped/paths"].asstr()[:], f["skipped/reasons"].asstr()[:])),
                identity=_identity(path),
                targets=f["targets"][:] if "targets" in f else None,
                groups=list(f["groups"].asstr()[:]) if "groups" in f else None,
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
    coded = [_dataset(code_key(layer, view)) for view in (None, *views) for layer in layers]
    missing += [name for name in coded if name not in f]
    if missing:
        raise UserError(f"{path} is corrupt: it lacks {', '.join(missing)}")
    n = f["paths"].shape[0] if f["paths"].ndim == 1 else -1
    expected = {"fingerprints": ((n, 2), "i"), "labels": ((n,), "i"), "targets": ((n,), "f"), "groups": ((n,), "O"),
                **{name: (None, "f") for name in coded}}
    for name, (shape, kind) in expected.items():
        if name not in f:
            continue
        d = f[name]
        if d.dtype.kind != kind or (shape is not None and d.shape != shape) or d.shape[0] != n or (
                name in coded and (d.ndim != 2 or d.id.get_storage_size() < d.nbytes)):
            raise UserError(f"{path} is corrupt: {name} has shape {d.shape} and dtype {d.dtype}, "
                            f"for {n} images")
    if any(f[_dataset(code_key(layer, view))].shape[1:] != f[_dataset(layer)].shape[1:]
           for view in views for layer in layers):
        raise UserError(f"{path} is corrupt: a view's codes differ in length from the image's")
    if ("labels" in f) != ("class_names" in f) or f["skipped/paths"].shape != f["skipped/reasons"].shape:
        raise UserError(f"{path} is corrupt: labels, class_names or skipped do not match")


class Shards:
    """Completed batches of an extraction in progress, in ``<store>.parts/``, one ``.npz`` each."""

    def __init__(self, store: Path, config: StoreConfig):
        self.dir = store.with_name(store.name + ".parts")
        self.config = config
        meta = self.dir / "config.json"
        if meta.is_file():
            refuse_mismatch(StoreConfig.from_json(json.loads(meta.read_text())), config,
                            Path(f"{self.dir} (an interrupted extraction)"))
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(meta, lambda tmp: tmp.write_text(json.dumps(config.to_json())))
        self.files = sorted(self.dir.glob("shard-*.npz"))
        self.run = uuid.uuid4().hex[:12]  # this run's shards never take another run's names

    def index(self) -> tuple[dict, dict]:
        """``(path, size, mtime) -> (shard, row)`` for extracted rows, and ``-> reason`` for failures."""
        rows, failures = {}, {}
        for shard in self.files:
            with np.load(shard) as z:
                for row, (p, fp) in enumerate(zip(z["paths"], z["fingerprints"])):
                    rows[(str(p), *map(int, fp))] = (shard, row)
                for p, fp, reason in zip(z["failed_paths"], z["failed_fingerprints"], z["failed_reasons"]):
                    failures[(str(p), *map(int, fp))] = str(reason)
        return rows, failures

    def write(self, paths: Sequence[str], fingerprints: np.ndarray, codes: dict[str, np.ndarray],
              failed: Sequence[tuple[str, tuple[int, int], str]]) -> None:
        target = self.dir / f"shard-{self.run}-{len(self.files):07d}.npz"
        arrays = {
            "paths": np.asarray(paths, dtype=str).reshape(-1),
            "fingerprints": np.asarray(fingerprints, dtype=np.int64).reshape(-1, 2),
            "failed_paths": np.asarray([f[0] for f in failed], dtype=str).reshape(-1),
            "failed_fingerprints": np.asarray([f[1] for f in failed], dtype=np.int64).reshape(-1, 2),
            "failed_reasons": np.asarray([f[2] for f in failed], dtype=str).reshape(-1),
        }
        arrays |= {f"codes/{key}": c for key, c in codes.items()}  # keys: code_key
        _write_atomically(target, lambda tmp: np.savez(tmp, **arrays))
        self.files.append(target)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def writing(store: Path):
    """Hold ``<store>.lock`` while writing ``store`` (a second writer is refused in one line), and remove the
    temporary files of killed runs; an ``flock`` dies with its process, so a kill never leaves it locked."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(store.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is writing {store}; wait for it to finish or write to another file",
                            param="out") from None
        parts = store.with_name(store.name + ".parts")
        for stale in [*store.parent.glob(f".{store.name}.*.tmp"), *parts.glob(".*.tmp*")]:
            stale.unlink(missing_ok=True)
        yield


def _write_atomically(target: Path, write) -> None:
    """Write through ``write(tmp)`` then rename: a kill leaves either nothing or the whole file."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    write(tmp)
    os.replace(tmp, target)


@dataclass
class Row:
    """Where the codes of one output row come from: a shard file or the previous store."""

    path: str
    fingerprint: tuple[int, int]
    source: Path
    index: int


def assemble(out: Path, config: StoreConfig, rows: Sequence[Row], feature_dims: dict[str, int],
             labels: Sequence[int] | None, class_names: Sequence[str] | None,
             skipped: Iterable[tuple[str, str]], attrs: dict, targets: Sequence[float] | None = None,
             groups: Sequence[str] | None = None) -> None:
    """Write the final store from ``rows`` block by block (memory stays flat), then rename into place."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    skipped = list(skipped)
    n = len(rows)
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, **_config_attrs(config)})
        f.attrs.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in attrs.items()})
        f.attrs["feature_dims"] = json.dumps(feature_dims)
        f.create_group("features")
        checked = {"fletcher32": True} if n else {}  # a checksum per chunk, verified on every read
        dsets = {
            key: f.create_dataset(_dataset(key), shape=(n, d), dtype="float32",
                                  chunks=(max(1, min(n, 256)), d) if n else None, **checked)
            for view in (None, *config.views) for layer, d in feature_dims.items()
            for key in [code_key(layer, view)]
        }
        f.create_dataset("paths", data=[r.path for r in rows], dtype=_STR)
        f.create_dataset("fingerprints", data=np.asarray([r.fingerprint for r in rows], np.int64).reshape(n, 2),
                         **checked)
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64), **checked)
            f.create_dataset("class_names", data=list(class_names), dtype=_STR)
        if targets is not None:
            f.create_dataset("targets", data=np.asarray(targets, dtype=np.float64), **checked)
        if groups is not None:
            f.create_dataset("groups", data=list(groups), dtype=_STR)
        f.create_dataset("skipped/paths", data=[s[0] for s in skipped], dtype=_STR)
        f.create_dataset("skipped/reasons", data=[s[1] for s in skipped], dtype=_STR)
        for start in range(0, n, _BLOCK):
            block = rows[start:start + _BLOCK]
            for key, dset in dsets.items():
                dset[start:start + len(block)] = _gather(block, key)
    os.replace(tmp, out)


def _gather(block: Sequence[Row], key: str) -> np.ndarray:
    """The codes ``key`` (:func:`code_key`) of a block of rows, reading each source once."""
    by_source: dict[Path, list[int]] = {}
    for i, row in enumerate(block):
        by_source.setdefault(row.source, []).append(i)
    out = None
    for source, positions in by_source.items():
        wanted = np.asarray([block[i].index for i in positions])
        if source.suffix == ".npz":
            with np.load(source) as z:
                values = z[f"codes/{key}"][wanted]
        else:
            order = np.argsort(wanted)
            with h5py.File(source, "r") as f:
                data = f[_dataset(key)]
                values = np.empty((len(wanted), data.shape[1]), np.float32)
                values[order] = data[wanted[order]]
        if out is None:
            out = np.empty((len(block), values.shape[1]), np.float32)
        out[positions] = values
    return out
