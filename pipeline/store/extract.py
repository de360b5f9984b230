"""The extract stage: images -> frozen backbone -> globally pooled codes in an HDF5 store.

Work is incremental and crash-safe: rows whose file is unchanged (same path,
size and mtime) are reused from the previous store or from the shards of an
interrupted run, so only new and changed images go through the network. Where
the network runs is the caller's choice (:class:`Site`): in this process by
default (:class:`Here`), or on a cluster (:mod:`pipeline.scaleout.extract`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from ..backbones.codes import code_dim, iter_codes, resize_policy
from ..backbones.engine import frozen_network, resolve_engine
from ..backbones.loading import Backbone, load_backbone
from ..data.decode import ResizePolicy
from ..data.discover import Dataset, Lister, discover, fingerprint
from ..errors import UserError
from ..provenance import library_versions, now_iso
from .config import ExtractConfig
from .layout import StoreConfig
from .reader import FeatureStore, is_store_of, read_store
from .writer import Row, Shards, assemble, refuse_mismatch, writing

log = logging.getLogger(__name__)


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
    engine: str = "keras"

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.images} images in {self.out}: {self.extracted} extracted "
            f"({self.images_per_second:.1f} images/s on {self.engine}), {self.reused} reused, "
            f"{self.skipped} skipped, {self.removed} removed"
        )


@dataclass(frozen=True)
class ShardJob:
    """The images a store still lacks and how to turn them into shards: ``files`` (absolute), their ``paths``
    in the store and ``fingerprints``, in the same order."""

    backbone: Backbone
    layers: list[str]
    engine: str
    views: tuple[str, ...]
    policy: ResizePolicy
    batch_size: int
    workers: int | None
    progress: bool
    shards: Shards
    files: list[Path]
    paths: list[str]
    fingerprints: list[tuple[int, int]]


# One finished shard: its file, [(position in the job, row in the shard)], [(position, reason)], the engine.
ShardBlock = tuple[Path, list[tuple[int, int]], list[tuple[int, str]], str]


class Site(Protocol):
    """Where an extraction lists folders, reads files' fingerprints and runs the network."""

    lister: Lister | None  # None: listed here

    def fingerprint(self, path: Path) -> tuple[int, int]: ...

    def shards(self, job: ShardJob) -> Iterator[ShardBlock]: ...


class Here:
    """This process: folders listed here, the network on this machine, one shard per batch."""

    lister = None

    @staticmethod
    def fingerprint(path: Path) -> tuple[int, int]:
        return fingerprint(path)

    @staticmethod
    def shards(job: ShardJob) -> Iterator[ShardBlock]:
        network = frozen_network(job.backbone, "features", job.layers, job.engine)
        for batch, codes in iter_codes(network, job.files, job.policy, job.batch_size, job.workers, job.progress,
                                       job.backbone.spec.name, job.views):
            failed = [(job.paths[k], job.fingerprints[k], reason) for k, reason in batch.failed]
            job.shards.write([job.paths[k] for k in batch.ok], [job.fingerprints[k] for k in batch.ok], codes,
                             failed)
            yield job.shards.files[-1], [(k, row) for row, k in enumerate(batch.ok)], batch.failed, network.engine


def extract(cfg: ExtractConfig, site: Site | None = None) -> ExtractResult:
    """Run (or resume, or update) the extraction described by ``cfg``, at ``site`` (default: :class:`Here`)."""
    site = site or Here()
    dataset = discover(cfg.data, unlabelled=cfg.unlabelled, lister=site.lister, outside=cfg.allow_outside)
    if not dataset.paths and not dataset.skipped:
        raise UserError(f"no images found in {cfg.data}", param="data")
    backbone = load_backbone(cfg.backbone, cfg.weights, cfg.precision)
    layers = backbone.check_layers(cfg.layers or backbone.spec.default_layers)
    return update_store(dataset, Path(cfg.out), backbone, layers, resize_policy(backbone.spec, cfg.resize),
                        batch_size=cfg.batch_size, workers=cfg.workers, progress=cfg.progress, engine=cfg.engine,
                        site=site, views=cfg.views, replace=cfg.overwrite)


@dataclass
class _Plan:
    """What each image of a dataset needs: its codes ``rows`` found (reused), ``failures`` known, and ``todo``."""

    rows: dict[int, Row]
    failures: dict[int, str]
    fingerprints: dict[int, tuple[int, int]]
    todo: list[int]


def _plan(dataset: Dataset, out: Path, previous: dict, shards: Shards, site: Site) -> _Plan:
    """Match every image to a row of the previous store or of an interrupted run's shards, by path, size and
    mtime; what matches neither is to do."""
    shard_rows, shard_failures = shards.index()
    plan = _Plan({}, {}, {}, [])
    for i, rel in enumerate(dataset.paths):
        try:
            fp = plan.fingerprints[i] = site.fingerprint(dataset.root / rel)
        except OSError as e:
            plan.failures[i] = f"unreadable: {e.strerror or e}"
            continue
        key = (rel, *fp)
        if key in previous:
            plan.rows[i] = Row(rel, fp, out, previous[key])
        elif key in shard_rows:
            plan.rows[i] = Row(rel, fp, *shard_rows[key])
        elif key in shard_failures:
            plan.failures[i] = shard_failures[key]
        else:
            plan.todo.append(i)
    return plan


def update_store(dataset: Dataset, out: Path, backbone: Backbone, layers: list[str], policy: ResizePolicy, *,
                 batch_size: int = 32, workers: int | None = None, progress: bool = True, prune: bool = True,
                 engine: str = "auto", site: Site | None = None, views: tuple[str, ...] = (),
                 replace: bool = False) -> ExtractResult:
    """Bring the store ``out`` up to date with ``dataset``, extracting only what is new or changed, as the one
    writer (:func:`~pipeline.store.writer.writing`); ``prune=False`` keeps rows of other files (a cache of
    codes); ``site``: where the network runs (default :class:`Here`); ``views``: the views
    (:mod:`pipeline.data.views`) whose codes are stored beside each image's; ``replace``: a file at ``out`` that
    is not a store of these images with this configuration is replaced, not refused."""
    site = site or Here()
    spec = backbone.spec
    config = StoreConfig(spec.name, backbone.weights_checksum, tuple(layers), spec.input_size,
                         spec.preprocessing.to_dict(), policy.to_dict(), tuple(views))
    with writing(out):
        old = None
        previous: dict[tuple, int] = {}
        if out.exists() and not (replace and not is_store_of(out, dataset.root)):
            old = read_store(out)
            if replace and old.config.differences(config):
                old = None
            else:
                refuse_mismatch(old.config, config, out)
                previous = {(p, *map(int, fp)): i for i, (p, fp) in enumerate(zip(old.paths, old.fingerprints))}
        shards = Shards(out, config, replace)
        plan = _plan(dataset, out, previous, shards, site)
        from_store = sum(1 for r in plan.rows.values() if r.source == out)
        log.info("%d images: %d to extract, %d reused from %s, %d from an interrupted run",
                 len(dataset), len(plan.todo), from_store, out.name, len(plan.rows) - from_store)
        reused = len(plan.rows)
        job = ShardJob(backbone, list(layers), engine, tuple(views), policy, batch_size, workers, progress, shards,
                       [dataset.root / dataset.paths[i] for i in plan.todo], [dataset.paths[i] for i in plan.todo],
                       [plan.fingerprints[i] for i in plan.todo])
        ran = resolve_engine(engine, backbone.precision, backbone.spec.onnx_on_cpu)  # what a site running nothing would
        started = time.perf_counter()  # shards() is a generator: the work starts here (on a cluster, the actors)
        for shard, ok, failed, ran in site.shards(job):
            for k, row in ok:
                i = plan.todo[k]
                plan.rows[i] = Row(dataset.paths[i], plan.fingerprints[i], shard, row)
            plan.failures.update((plan.todo[k], reason) for k, reason in failed)
        seconds = time.perf_counter() - started
        kept = [] if prune else [Row(p, (size, mtime), out, i) for (p, size, mtime), i in previous.items()
                                 if p not in set(dataset.paths)]
        extracted = len(plan.todo) - sum(1 for i in plan.todo if i in plan.failures)
        dims = {layer: code_dim(backbone, layer) for layer in layers}
        skipped = _write(out, config, dataset, plan, kept, old, backbone, dims, ran, extracted, seconds)
        shards.remove()
    removed = len({key[0] for key in previous} - set(dataset.paths)) if prune else 0
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return ExtractResult(out, len(plan.rows) + len(kept), extracted, reused, len(skipped), removed, seconds, ran)


def _write(out: Path, config: StoreConfig, dataset: Dataset, plan: _Plan, kept: list[Row], old: FeatureStore | None,
           backbone: Backbone, feature_dims: dict[str, int], engine: str, extracted: int,
           seconds: float) -> list[tuple[str, str]]:
    """Assemble the store from the plan's rows (and ``kept`` rows of other files), unless nothing changed; the
    skipped files, with their reasons."""
    order = sorted(plan.rows)
    labels = None
    if dataset.labelled:
        class_index = {c: k for k, c in enumerate(dataset.class_names)}
        labels = [class_index[dataset.labels[i]] for i in order]
    targets = None if dataset.targets is None else [dataset.targets[i] for i in order]
    groups = None if dataset.groups is None else [dataset.groups[i] for i in order]
    multilabels = None
    if dataset.multilabel:
        multilabels = np.array([[name in dataset.label_sets[i] for name in dataset.class_names] for i in order],
                               np.uint8).reshape(len(order), len(dataset.class_names))
    skipped = sorted(dataset.skipped + [(dataset.paths[i], reason) for i, reason in plan.failures.items()])
    rows = [plan.rows[i] for i in order]
    if kept:  # a cache: one canonical order, so an unchanged cache is not rewritten
        rows = sorted(rows + kept, key=lambda r: r.path)
    if old is not None and old.checked and [(r.source, r.index) for r in rows] == [(out, i) for i in range(len(old))] \
            and old.skipped == skipped and old.class_names == dataset.class_names \
            and _same(old.labels, labels) and _same(old.targets, targets) and old.groups == groups \
            and _same(old.multilabels, None if multilabels is None else multilabels.tolist()):
        return skipped
    # The speed of the last run that extracted anything, so reports on cached codes can quote it.
    speed = (extracted / seconds if extracted and seconds > 0 else
             old.attrs.get("extract_images_per_second", 0.0) if old is not None else 0.0)
    runs = json.loads(old.attrs.get("runs", "[]")) if old is not None else []
    if extracted or not runs:
        runs.append({"created": now_iso(), "engine": engine, "extracted": extracted,
                     "images_per_second": round(extracted / seconds, 2) if extracted and seconds > 0 else 0.0})
    assemble(out, config, rows, feature_dims, labels, dataset.class_names, skipped, {
        "weights_source": backbone.weights_source,
        "runs": runs,
        "extract_images_per_second": float(speed),
        "dataset_root": str(Path(dataset.root).resolve()),
        "versions": library_versions(),
        "created": now_iso(),
    }, targets, groups, multilabels)
    return skipped


def _same(stored, values) -> bool:
    """Whether a stored array (or None) holds ``values`` (or None)."""
    return (stored is None) == (values is None) and (values is None or stored.tolist() == values)
