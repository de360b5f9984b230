"""The activation cache of tail fine-tuning: the frozen front's output for each view of each image, on disk.

One HDF5 file per view (float16 ``activations`` chunked one image per chunk,
with ``paths`` and ``fingerprints``; fletcher32 checksums, and the sha256 of
each image's activations and of the other datasets, checked on every read as
the store's are: :mod:`pipeline.store.digests`). A file is written
under a temporary name and renamed when whole, so a kill leaves the previous
file or none; one writer at a time (``<folder>/views.lock``). Its name holds a
hash of everything that decides its numbers but the image list (backbone,
weights, cut, resolution, resize, view settings), and rows are matched by path
and fingerprint, so a rerun, or a run with more images or more views, reuses
every row still valid and computes only the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..backbones.engine import FrozenNetwork
from ..backbones.spec import safe_name
from ..data.decode import ResizePolicy
from ..data.loader import decoded_batches
from ..data.views import ShiftedViews
from ..store import digests
from ..store.writer import writing

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: digests
REMEDY = "delete it and rerun: it is computed again"
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class CacheKey:
    """What the cached numbers depend on, the image list and view count aside."""

    backbone: str
    weights_checksum: str
    cut: str
    policy: ResizePolicy
    views: ShiftedViews

    def file(self, folder: Path, k: int) -> Path:
        key = {"format": CACHE_FORMAT, "backbone": self.backbone, "weights": self.weights_checksum,
               "cut": self.cut, "resize": self.policy.to_dict(),
               "views": {**self.views.to_json(), "count": None}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return folder / f"{safe_name(self.backbone)}-{self.cut}-{self.policy.size}px-{digest}-view{k}.h5"


@dataclass
class CachedViews:
    """Open view files: ``read(k, paths)`` gives the float32 activations of view ``k`` of ``paths``."""

    files: list[h5py.File]
    rows: list[dict[str, int]] = field(init=False)

    def __post_init__(self):
        self.rows = [{p: i for i, p in enumerate(digests.read(f, "paths", text=True, remedy=REMEDY))}
                     for f in self.files]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.files[0]["activations"].shape[1:])

    def read(self, k: int, paths: Sequence[str]) -> np.ndarray:
        rows = np.array([self.rows[k][p] for p in paths], dtype=np.int64)
        return digests.read(self.files[k], "activations", rows, remedy=REMEDY).astype(np.float32)

    def batches(self, k: int, paths: Sequence[str], batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(paths), batch_size):
            yield self.read(k, paths[start:start + batch_size])

    def close(self) -> None:
        for f in self.files:
            f.close()


def _old_rows(path: Path) -> dict[tuple[str, int, int], int]:
    """(path, size, mtime) -> row of a valid previous file (none when missing, unreadable or damaged: every
    row's activations are checked against their digests, so a damaged file is computed again, never used)."""
    if not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as f:
            for start in range(0, f["activations"].shape[0], 1024):
                digests.read(f, "activations", np.arange(start, min(start + 1024, f["activations"].shape[0])))
            return {(p, int(s), int(m)): i for i, (p, (s, m)) in
                    enumerate(zip(digests.read(f, "paths", text=True), digests.read(f, "fingerprints")))}
    except Exception as e:  # noqa: BLE001 - a damaged cache file fails in many ways: it is computed again
        log.warning("recomputing %s: %s", path.name, e)
        return {}


class _ViewWriter:
    """A new view file filling under a temporary name: reused rows first, then new ones as they come."""

    def __init__(self, target: Path, capacity: int, shape: tuple[int, ...]):
        self.target, self.count = target, 0
        self.tmp = target.with_name(f".views.{target.name}.{os.getpid()}.tmp")
        self.f = h5py.File(self.tmp, "w")
        rows = max(capacity, 1)
        self.acts = self.f.create_dataset("activations", (rows, *shape), np.float16, maxshape=(None, *shape),
                                          chunks=(1, *shape), fletcher32=True)
        self.paths = self.f.create_dataset("paths", (rows,), _STR, maxshape=(None,))
        self.fps = self.f.create_dataset("fingerprints", (rows, 2), np.int64, maxshape=(None, 2), fletcher32=True)
        self.digests = digests.Recorder("activations", 1)  # each image's own: they are read one by one

    def write(self, paths: Sequence[str], fps: Sequence[tuple[int, int]], acts: np.ndarray) -> None:
        n = len(paths)
        if n:
            acts = np.asarray(acts, np.float16)
            self.acts[self.count:self.count + n] = acts
            self.digests.add(acts)
            self.paths[self.count:self.count + n] = list(paths)
            self.fps[self.count:self.count + n] = np.asarray(fps, np.int64)
            self.count += n

    def finish(self) -> None:
        for ds in (self.acts, self.paths, self.fps):
            ds.resize(self.count, axis=0)
        self.digests.write(self.f)
        digests.record(self.f, "paths", list(self.paths.asstr()[:]))
        digests.record(self.f, "fingerprints", self.fps[:])
        self.f.close()
        os.replace(self.tmp, self.target)

    def abandon(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def build_cache(folder: Path, key: CacheKey, front: FrozenNetwork, files: Sequence[Path], paths: Sequence[str],
                fps: Sequence[tuple[int, int]], wanted: Sequence[int], batch_size: int = 32,
                workers: int | None = None, progress: bool = True) -> tuple[CachedViews, list[tuple[int, str]]]:
    """Make sure view ``k`` of image ``i`` is cached for every ``k < wanted[i]``; returns the open cache and the
    ``(i, reason)`` of images that could not be decoded (in no view file)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = max(wanted, default=1)
    targets = [key.file(folder, k) for k in range(count)]
    with writing(folder / "views"):
        old = [_old_rows(t) for t in targets]
        missing = [[k for k in range(w) if (p, *map(int, fp)) not in old[k]] for p, fp, w in zip(paths, fps, wanted)]
        todo = [i for i, m in enumerate(missing) if m]
        failed: list[tuple[int, str]] = []
        if todo:
            failed = _compute(targets, old, key, front, files, paths, fps, wanted, missing, todo, batch_size,
                              workers, progress)
    return CachedViews([h5py.File(t, "r") for t in targets]), failed


def _compute(targets, old, key, front, files, paths, fps, wanted, missing, todo, batch_size, workers, progress):
    size = key.policy.size
    shape = front(np.zeros((1, size, size, 3), np.uint8))[0].shape[1:]
    writers: dict[int, _ViewWriter] = {}
    failed = []
    try:
        for k, target in enumerate(targets):
            if any(k in m for m in missing):
                writers[k] = _ViewWriter(target, sum(w > k for w in wanted), shape)
                _copy_reused(writers[k], target, old[k], paths, fps, wanted, k)
        bar = tqdm(total=len(todo), unit="img", desc="views", disable=not progress, dynamic_ncols=True)
        with bar:
            for batch in decoded_batches([files[i] for i in todo], key.policy, batch_size, workers):
                failed += [(todo[j], reason) for j, reason in batch.failed]
                for k, writer in writers.items():
                    pick = [r for r, j in enumerate(batch.ok) if k in missing[todo[j]]]
                    if pick:
                        chosen = [todo[batch.ok[r]] for r in pick]
                        view = key.views.apply(k, batch.pixels[pick], [paths[i] for i in chosen])
                        writer.write([paths[i] for i in chosen], [fps[i] for i in chosen], front(view)[0])
                bar.update(len(batch.items))
        for writer in writers.values():
            writer.finish()
    except BaseException:
        for writer in writers.values():
            writer.abandon()
        raise
    return failed


def _copy_reused(writer: _ViewWriter, target: Path, old: dict, paths, fps, wanted, k: int) -> None:
    """Copy into ``writer`` the rows of the previous ``target`` still valid and wanted."""
    keep = sorted((old[(p, *map(int, fp))], p, fp) for p, fp, w in zip(paths, fps, wanted)
                  if w > k and (p, *map(int, fp)) in old)
    if not keep:
        return
    with h5py.File(target, "r") as f:
        for start in range(0, len(keep), 256):
            block = keep[start:start + 256]
            writer.write([p for _, p, _ in block], [fp for _, _, fp in block],
                         digests.read(f, "activations", np.array([r for r, _, _ in block]), remedy=REMEDY))
