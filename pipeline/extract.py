"""The extract stage: images -> frozen backbone -> globally pooled codes in an HDF5 store.

Work is incremental and crash-safe: rows whose file is unchanged (same path,
size and mtime) are reused from the previous store or from the shards of an
interrupted run, so only new and changed images go through the network.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backbones.loading import load_backbone
from .device import configure_precision
from .errors import UserError
from .images import ResizePolicy, discover
from .loader import decoded_batches
from .provenance import library_versions, now_iso
from .store import Row, Shards, StoreConfig, assemble, read_store, refuse_mismatch

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction; the defaults are what ``scripts/extract.py`` uses."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] = ("penultimate",)
    weights: Path | None = None
    batch_size: int = 32
    workers: int | None = None
    precision: str = "auto"
    resize: str = "crop"
    unlabelled: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ExtractResult:
    """Counts of one run: ``extracted`` new or changed images, ``removed`` files gone since the last store."""

    out: Path
    images: int
    extracted: int
    reused: int
    skipped: int
    removed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.images} images in {self.out}: {self.extracted} extracted "
            f"({self.images_per_second:.1f} images/s), {self.reused} reused, "
            f"{self.skipped} skipped, {self.removed} removed"
        )


def _fingerprint(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def extract(cfg: ExtractConfig) -> ExtractResult:
    """Run (or resume, or update) the extraction described by ``cfg``."""
    if cfg.batch_size < 1:
        raise UserError("batch size must be at least 1")
    out = Path(cfg.out)
    if out.suffix not in (".h5", ".hdf5"):
        raise UserError(f"--out must name an .h5 file, not {out}")
    dataset = discover(cfg.data, unlabelled=cfg.unlabelled)
    if not dataset.paths and not dataset.skipped:
        raise UserError(f"no images found in {cfg.data}")
    configure_precision(cfg.precision)
    backbone = load_backbone(cfg.backbone, cfg.weights)
    spec = backbone.spec
    layers = backbone.check_layers(cfg.layers)
    policy = ResizePolicy(spec.input_size, cfg.resize, spec.crop_fraction, spec.interpolation)
    config = StoreConfig(spec.name, backbone.weights_checksum, tuple(layers), spec.input_size,
                         spec.preprocessing.to_dict(), policy.to_dict())
    out.parent.mkdir(parents=True, exist_ok=True)

    previous: dict[tuple, int] = {}
    if out.exists():
        old = read_store(out)
        refuse_mismatch(old.config, config, out)
        previous = {(p, *map(int, fp)): i for i, (p, fp) in enumerate(zip(old.paths, old.fingerprints))}
    shards = Shards(out, config)
    shard_rows, shard_failures = shards.index()

    rows: dict[int, Row] = {}
    failures: dict[int, str] = {}
    fingerprints: dict[int, tuple[int, int]] = {}
    todo: list[int] = []
    for i, rel in enumerate(dataset.paths):
        try:
            fp = fingerprints[i] = _fingerprint(dataset.root / rel)
        except OSError as e:
            failures[i] = f"unreadable: {e.strerror or e}"
            continue
        key = (rel, *fp)
        if key in previous:
            rows[i] = Row(rel, fp, out, previous[key])
        elif key in shard_rows:
            rows[i] = Row(rel, fp, *shard_rows[key])
        elif key in shard_failures:
            failures[i] = shard_failures[key]
        else:
            todo.append(i)
    reused = sum(1 for r in rows.values() if r.source == out)
    log.info("%d images: %d to extract, %d reused from %s, %d from an interrupted run",
             len(dataset), len(todo), reused, out.name, len(rows) - reused)

    model = backbone.feature_model(layers)
    feature_dims = {name: int(o.shape[-1]) for name, o in zip(layers, model.outputs)}
    started = time.perf_counter()
    if todo:
        _run(model, layers, dataset.root, dataset.paths, todo, fingerprints, policy, cfg, shards, rows, failures)
    seconds = time.perf_counter() - started

    order = sorted(rows)
    labels = None
    if dataset.labelled:
        class_index = {c: k for k, c in enumerate(dataset.class_names)}
        labels = [class_index[dataset.labels[i]] for i in order]
    skipped = sorted(dataset.skipped + [(dataset.paths[i], reason) for i, reason in failures.items()])
    assemble(out, config, [rows[i] for i in order], feature_dims, labels, dataset.class_names, skipped, {
        "weights_source": backbone.weights_source,
        "dataset_root": str(Path(dataset.root).resolve()),
        "versions": library_versions(),
        "created": now_iso(),
    })
    shards.remove()
    removed = len({key[0] for key in previous} - set(dataset.paths))
    result = ExtractResult(out, len(order), len(todo) - sum(1 for i in todo if i in failures), reused,
                           len(skipped), removed, seconds)
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return result


def _run(model, layers, root, paths, todo, fingerprints, policy, cfg, shards, rows, failures) -> None:
    """Extract ``todo`` batch by batch; each finished batch becomes a shard at once."""
    bar = tqdm(total=len(todo), unit="img", desc=f"extract {cfg.backbone}", disable=not cfg.progress,
               dynamic_ncols=True)
    try:
        for batch in decoded_batches([root / paths[i] for i in todo], policy, cfg.batch_size, cfg.workers):
            items = [todo[k] for k in batch.ok]
            outputs = model.predict_on_batch(batch.pixels)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            codes = {name: np.asarray(o[:len(items)], np.float32) for name, o in zip(layers, outputs)}
            failed = [(paths[todo[k]], fingerprints[todo[k]], reason) for k, reason in batch.failed]
            shards.write([paths[i] for i in items], [fingerprints[i] for i in items], codes, failed)
            for row, i in enumerate(items):
                rows[i] = Row(paths[i], fingerprints[i], shards.files[-1], row)
            failures.update((todo[k], reason) for k, reason in batch.failed)
            bar.update(len(batch.items))
            if failures:
                bar.set_postfix(skipped=len(failures), refresh=False)
    finally:
        bar.close()
