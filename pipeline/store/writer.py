"""Writing a feature store crash-safely: one writer at a time (``flock`` on ``<store>.lock``), each completed
batch a ``.npz`` shard in ``<store>.parts/``, and the store assembled from shards and reusable old rows into a
temporary file renamed into place, so a kill never leaves a half store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from ..errors import UserError
from . import digests
from .layout import (
    FORMAT_VERSION,
    StoreConfig,
    code_key,
    config_attrs,
    dataset_name,
    refuse_mismatch,
)

log = logging.getLogger(__name__)

_STR = h5py.string_dtype("utf-8")
_BLOCK = 8 * digests.CODE_BLOCK  # rows per write when assembling: whole digest blocks


class Shards:
    """Completed batches of an extraction in progress, in ``<store>.parts/``, one ``.npz`` each."""

    def __init__(self, store: Path, config: StoreConfig, replace: bool = False):
        """The shards of an interrupted extraction into ``store`` with this ``config`` (another config's are
        refused, or with ``replace`` discarded); a damaged record of the config discards them too."""
        self.store, self.dir = store, store.with_name(store.name + ".parts")
        self.config = config
        meta = self.dir / "config.json"
        earlier = _earlier_config(meta)
        if earlier is not None and earlier.differences(config) and not replace:
            refuse_mismatch(earlier, config, Path(f"{self.dir} (an interrupted extraction)"))
        if earlier is None or earlier.differences(config):
            if any(self.dir.glob("shard-*.npz")):
                log.warning("discarding the shards of an interrupted extraction in %s: their configuration is "
                            "unreadable or another", self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(meta, lambda tmp: tmp.write_text(json.dumps(config.to_json())))
        self.files = sorted(self.dir.glob("shard-*.npz"))
        self.run = uuid.uuid4().hex[:12]  # this run's shards never take another run's names

    def index(self) -> tuple[dict, dict]:
        """``(path, size, mtime) -> (shard, row)`` for extracted rows, and ``-> reason`` for failures. A shard
        that is damaged (cut short by a power loss, a flipped byte: every member is read, so the zip's CRC-32s
        check it) or holds other codes is discarded, and its images are extracted again."""
        rows, failures, good = {}, {}, []
        wanted = {f"codes/{code_key(layer, view)}" for view in (None, *self.config.views)
                  for layer in self.config.layers}
        for shard in self.files:
            try:
                with np.load(shard) as z:
                    content = {k: z[k] for k in z.files}
                n = len(content["paths"])
                if not wanted <= set(content) or content["fingerprints"].shape != (n, 2) or any(
                        content[k].shape[0] != n for k in wanted):
                    raise ValueError("its arrays do not match")
            except Exception as e:  # noqa: BLE001 - a damaged zip fails in many ways
                log.warning("discarding damaged shard %s (%s: %s); its images are extracted again", shard.name,
                            type(e).__name__, e)
                shard.unlink(missing_ok=True)
                continue
            good.append(shard)
            for row, (p, fp) in enumerate(zip(content["paths"], content["fingerprints"])):
                rows[(str(p), *map(int, fp))] = (shard, row)
            for p, fp, reason in zip(content["failed_paths"], content["failed_fingerprints"],
                                     content["failed_reasons"]):
                failures[(str(p), *map(int, fp))] = str(reason)
        self.files = good
        return rows, failures

    def write(self, paths: Sequence[str], fingerprints: np.ndarray, codes: dict[tuple[str, str | None], np.ndarray],
              failed: Sequence[tuple[str, tuple[int, int], str]]) -> None:
        """One shard: the ``codes`` of ``paths`` by ``(layer, view)`` (view None: the image itself), and the files
        that ``failed`` as ``(path, fingerprint, reason)``."""
        target = self.dir / f"shard-{self.run}-{len(self.files):07d}.npz"
        arrays = {
            "paths": np.asarray(paths, dtype=str).reshape(-1),
            "fingerprints": np.asarray(fingerprints, dtype=np.int64).reshape(-1, 2),
            "failed_paths": np.asarray([f[0] for f in failed], dtype=str).reshape(-1),
            "failed_fingerprints": np.asarray([f[1] for f in failed], dtype=np.int64).reshape(-1, 2),
            "failed_reasons": np.asarray([f[2] for f in failed], dtype=str).reshape(-1),
        }
        arrays |= {f"codes/{code_key(layer, view)}": c for (layer, view), c in codes.items()}
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


def _earlier_config(meta: Path) -> StoreConfig | None:
    """The configuration an interrupted extraction recorded; None where there is none or it is damaged."""
    if not meta.is_file():
        return None
    try:
        return StoreConfig.from_json(json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is damaged (%s: %s)", meta, type(e).__name__, e)
        return None


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
             groups: Sequence[str] | None = None, multilabels: np.ndarray | None = None) -> None:
    """Write the final store from ``rows`` block by block (memory stays flat), with the digest of every dataset
    (:mod:`pipeline.store.digests`), then rename into place."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    skipped = list(skipped)
    n = len(rows)

    def small(f: h5py.File, name: str, values, **kwargs) -> None:
        f.create_dataset(name, data=values, **kwargs)
        digests.record(f, name, values)

    with h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, **config_attrs(config)})
        f.attrs.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in attrs.items()})
        f.attrs["feature_dims"] = json.dumps(feature_dims)
        f.create_group("features")
        checked = {"fletcher32": True} if n else {}  # a checksum per chunk, verified on every read
        dsets = {
            key: f.create_dataset(dataset_name(key), shape=(n, d), dtype="float32",
                                  chunks=(max(1, min(n, digests.CODE_BLOCK)), d) if n else None, **checked)
            for view in (None, *config.views) for layer, d in feature_dims.items()
            for key in [code_key(layer, view)]
        }
        small(f, "paths", [r.path for r in rows], dtype=_STR)
        small(f, "fingerprints", np.asarray([r.fingerprint for r in rows], np.int64).reshape(n, 2), **checked)
        if labels is not None:
            small(f, "labels", np.asarray(labels, dtype=np.int64), **checked)
        if multilabels is not None:  # one row per image, one 0/1 column per label of class_names
            small(f, "multilabels", np.asarray(multilabels, dtype=np.uint8), **checked)
        if labels is not None or multilabels is not None:
            small(f, "class_names", list(class_names), dtype=_STR)
        if targets is not None:
            small(f, "targets", np.asarray(targets, dtype=np.float64), **checked)
        if groups is not None:
            small(f, "groups", list(groups), dtype=_STR)
        small(f, "skipped/paths", [s[0] for s in skipped], dtype=_STR)
        small(f, "skipped/reasons", [s[1] for s in skipped], dtype=_STR)
        recorders = {key: digests.Recorder(dataset_name(key), digests.CODE_BLOCK) for key in dsets}
        for start in range(0, n, _BLOCK):  # a whole number of digest blocks each
            block = rows[start:start + _BLOCK]
            for key, dset in dsets.items():
                values = _gather(block, key)
                dset[start:start + len(block)] = values
                recorders[key].add(values)
        for recorder in recorders.values():
            recorder.write(f)
        digests.sign(f)
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
        else:  # the previous store: its rows checked against its digests, never copied unchecked
            with h5py.File(source, "r") as f:
                name = dataset_name(key)
                if digests.GROUP in f:
                    values = digests.read(f, name, wanted, where=source)
                else:  # a store of format 2 or older: fletcher32 only
                    order = np.argsort(wanted)
                    values = np.empty((len(wanted), f[name].shape[1]), np.float32)
                    values[order] = f[name][wanted[order]]
        if out is None:
            out = np.empty((len(block), values.shape[1]), np.float32)
        out[positions] = values
    return out
