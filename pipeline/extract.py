"""The extract stage: images -> frozen backbone -> globally pooled codes in an HDF5 store.

Work is incremental and crash-safe: rows whose file is unchanged (same path,
size and mtime) are reused from the previous store or from the shards of an
interrupted run, so only new and changed images go through the network.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backbones.engine import FrozenNetwork, frozen_network
from .backbones.loading import Backbone, load_backbone
from .errors import UserError
from .images import Dataset, ResizePolicy, discover, fingerprint
from .loader import decoded_batches
from .provenance import library_versions, now_iso
from .store import Row, Shards, StoreConfig, assemble, code_key, read_store, refuse_mismatch, writing
from .tta import check_views, views_of

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction; the defaults are the command line's."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] | None = None  # None: the backbone's default layers
    views: tuple[str, ...] = ()  # views whose codes are stored beside each image's (pipeline.tta)
    weights: Path | None = None
    batch_size: int = 32
    workers: int | None = None
    precision: str = "auto"
    engine: str = "auto"
    resize: str = "crop"
    unlabelled: bool = False
    ray: str | None = None  # a Ray cluster's address, "auto" or "local" (pipeline.scaleout)
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


def extract(cfg: ExtractConfig) -> ExtractResult:
    """Run (or resume, or update) the extraction described by ``cfg``."""
    if cfg.batch_size < 1:
        raise UserError("must be at least 1", param="batch_size")
    out = Path(cfg.out)
    if out.suffix not in (".h5", ".hdf5"):
        raise UserError(f"must name an .h5 file, not {out}", param="out")
    listing = None
    if cfg.ray is not None:
        from .scaleout.listing import ClusterListing

        listing = ClusterListing(cfg.ray)
    dataset = discover(cfg.data, unlabelled=cfg.unlabelled, lister=listing)
    if not dataset.paths and not dataset.skipped:
        raise UserError(f"no images found in {cfg.data}", param="data")
    backbone = load_backbone(cfg.backbone, cfg.weights, cfg.precision)
    layers = backbone.check_layers(cfg.layers or backbone.spec.default_layers)
    policy = resize_policy(backbone.spec, cfg.resize)
    return update_store(dataset, out, backbone, layers, policy, batch_size=cfg.batch_size,
                        workers=cfg.workers, progress=cfg.progress, engine=cfg.engine, cluster=cfg.ray,
                        fingerprint=listing.fingerprint if listing else fingerprint, views=check_views(cfg.views))


def resize_policy(spec, mode: str = "crop") -> ResizePolicy:
    return ResizePolicy(spec.input_size, mode, spec.crop_fraction, spec.interpolation)


def update_store(dataset: Dataset, out: Path, backbone: Backbone, layers: list[str], policy: ResizePolicy, *,
                 batch_size: int = 32, workers: int | None = None, progress: bool = True,
                 prune: bool = True, engine: str = "auto", cluster: str | None = None,
                 fingerprint=fingerprint, views: tuple[str, ...] = ()) -> ExtractResult:
    """Bring the store ``out`` up to date with ``dataset``, extracting only what is new or changed, as the one
    writer (:func:`~pipeline.store.writing`); ``prune=False`` keeps rows of other files (a cache of codes).
    ``cluster``: a Ray address (:mod:`pipeline.scaleout`) to extract on instead of this process;
    ``fingerprint``: a file's size and mtime (a cluster's listing has them already); ``views``: the views
    (:mod:`pipeline.tta`) whose codes are stored beside each image's."""
    with writing(out):
        return _update_store(dataset, out, backbone, layers, policy, batch_size, workers, progress, prune, engine,
                             cluster, fingerprint, views)


def _update_store(dataset, out, backbone, layers, policy, batch_size, workers, progress, prune,
                  engine, cluster, fingerprint, views) -> ExtractResult:
    spec = backbone.spec
    config = StoreConfig(spec.name, backbone.weights_checksum, tuple(layers), spec.input_size,
                         spec.preprocessing.to_dict(), policy.to_dict(), tuple(views))
    out.parent.mkdir(parents=True, exist_ok=True)

    previous: dict[tuple, int] = {}
    old = None
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
            fp = fingerprints[i] = fingerprint(dataset.root / rel)
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
    reused = len(rows)
    from_store = sum(1 for r in rows.values() if r.source == out)
    log.info("%d images: %d to extract, %d reused from %s, %d from an interrupted run",
             len(dataset), len(todo), from_store, out.name, reused - from_store)

    feature_dims = {layer: code_dim(backbone, layer) for layer in layers}
    files = [dataset.root / dataset.paths[i] for i in todo]
    fps = [fingerprints[i] for i in todo]
    if cluster is None:
        network = frozen_network(backbone, "features", layers, engine)
        engine = network.engine
        blocks = _local_shards(network, shards, files, [dataset.paths[i] for i in todo], fps, policy, batch_size,
                               workers, progress, spec.name, views)
    else:
        from .scaleout.extract import cluster_shards

        blocks = cluster_shards(cluster, backbone, layers, engine, out, config, files,
                                [dataset.paths[i] for i in todo], fps, policy, batch_size, progress)
    started = time.perf_counter()  # both are generators: the work starts here (on a cluster, with the actors)
    for shard, ok, failed, engine in blocks:  # positions in todo: (position, row in shard), (position, reason)
        for k, row in ok:
            rows[todo[k]] = Row(dataset.paths[todo[k]], fingerprints[todo[k]], shard, row)
        failures.update((todo[k], reason) for k, reason in failed)
    seconds = time.perf_counter() - started

    current = set(dataset.paths)
    kept = [] if prune else [Row(p, (size, mtime), out, i) for (p, size, mtime), i in previous.items()
                             if p not in current]
    order = sorted(rows)
    labels = None
    if dataset.labelled:
        class_index = {c: k for k, c in enumerate(dataset.class_names)}
        labels = [class_index[dataset.labels[i]] for i in order]
    targets = None if dataset.targets is None else [dataset.targets[i] for i in order]
    groups = None if dataset.groups is None else [dataset.groups[i] for i in order]
    skipped = sorted(dataset.skipped + [(dataset.paths[i], reason) for i, reason in failures.items()])
    final_rows = [rows[i] for i in order]
    if kept:  # a cache: one canonical order, so an unchanged cache is not rewritten
        final_rows = sorted(final_rows + kept, key=lambda r: r.path)
    unchanged = old is not None and [(r.source, r.index) for r in final_rows] == [
        (out, i) for i in range(len(old))] and old.skipped == skipped and old.class_names == dataset.class_names \
        and (labels is None) == (old.labels is None) and (labels is None or old.labels.tolist() == labels) \
        and (targets is None) == (old.targets is None) and (targets is None or old.targets.tolist() == targets) \
        and old.groups == groups
    extracted = len(todo) - sum(1 for i in todo if i in failures)
    if not unchanged:
        # The speed of the last run that extracted anything, so reports on cached codes can quote it.
        speed = (extracted / seconds if extracted and seconds > 0 else
                 old.attrs.get("extract_images_per_second", 0.0) if old is not None else 0.0)
        runs = json.loads(old.attrs.get("runs", "[]")) if old is not None else []
        if extracted or not runs:
            runs.append({"created": now_iso(), "engine": engine, "extracted": extracted,
                         "images_per_second": round(extracted / seconds, 2) if extracted and seconds > 0 else 0.0})
        assemble(out, config, final_rows, feature_dims, labels, dataset.class_names, skipped, {
            "weights_source": backbone.weights_source,
            "runs": runs,
            "extract_images_per_second": float(speed),
            "dataset_root": str(Path(dataset.root).resolve()),
            "versions": library_versions(),
            "created": now_iso(),
        }, targets, groups)
    shards.remove()
    removed = len({key[0] for key in previous} - current) if prune else 0
    result = ExtractResult(out, len(order) + len(kept), extracted, reused, len(skipped), removed, seconds,
                           engine)
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return result


def code_dim(backbone: Backbone, layer: str) -> int:
    """The length of ``layer``'s pooled code (its channels), from the graph alone."""
    return int(backbone.classifier.get_layer(backbone.spec.feature_layers[layer]).output.shape[-1])


def _local_shards(network, shards: Shards, files, paths, fps, policy, batch_size, workers, progress, desc, views):
    """Extract ``files`` on this machine, one shard per batch; yields ``(shard, [(position, row)], [(position,
    reason)], engine)``, positions in ``files``."""
    for batch, codes in iter_codes(network, files, policy, batch_size, workers, progress, desc, views):
        failed = [(paths[k], fps[k], reason) for k, reason in batch.failed]
        shards.write([paths[k] for k in batch.ok], [fps[k] for k in batch.ok], codes, failed)
        yield shards.files[-1], [(k, row) for row, k in enumerate(batch.ok)], batch.failed, network.engine


def iter_codes(network: FrozenNetwork, files: list[Path], policy: ResizePolicy, batch_size: int,
               workers: int | None = None, progress: bool = True, desc: str = "extract", views: tuple[str, ...] = ()):
    """Yield ``(batch, {code key: codes of batch.ok})`` for ``files`` (with ``views``, theirs too), decoding in
    parallel with the network."""
    bar = tqdm(total=len(files), unit="img", desc=desc, disable=not progress or not files, dynamic_ncols=True)
    skipped = 0
    try:
        for batch in decoded_batches(files, policy, batch_size, workers):
            yield batch, codes_of_views(network, batch.pixels, views, len(batch.ok))
            bar.update(len(batch.items))
            if batch.failed:
                skipped += len(batch.failed)
                bar.set_postfix(skipped=skipped, refresh=False)
    finally:
        bar.close()


def codes_of_views(network: FrozenNetwork, pixels: np.ndarray, views: tuple[str, ...] = (),
                   n: int | None = None) -> dict[str, np.ndarray]:
    """``{code key: codes}`` of the first ``n`` images of a batch and of each of their ``views``."""
    codes = {}
    for v, seen in zip((None, *views), views_of(pixels, views)):
        codes |= {code_key(name, v): np.asarray(o[:n], np.float32)
                  for name, o in zip(network.outputs, network(seen))}
    return codes
