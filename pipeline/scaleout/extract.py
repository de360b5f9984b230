"""Extraction on a Ray cluster: the same shards as a local run, written by the actors, assembled by the driver
(:class:`OnCluster`, the extract stage's site on a cluster).

The files are listed on the cluster too (:mod:`.listing`). Each actor writes
every batch it finishes as a shard of the store's own format in
``<store>.parts/``, which must be on storage every node reaches. The driver
only collects each image's shard and row, so its memory does not grow with the
images' codes, and a rerun after the driver was killed reuses every finished
shard, exactly as after a local interruption.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from ..backbones.codes import codes_of_views
from ..backbones.engine import frozen_network
from ..backbones.loading import load_backbone
from ..errors import UserError
from ..store.extract import ShardBlock, ShardJob
from ..store.layout import StoreConfig
from ..store.writer import Shards
from .cluster import actor_pool, decode_batch, file_dataset, prepare_worker
from .listing import ClusterListing

log = logging.getLogger(__name__)

# Decoding tasks reserve half a CPU: two decode per core beside the actor, and a reservation unlike the actor's
# keeps Ray from fusing decoding into the actor's process, where it would run one image at a time.
DECODE_CPUS = 0.5


class Encoder:
    """A Ray Data actor: the frozen network, loaded once, turns decoded batches into shards."""

    def __init__(self, backbone: str, weights: str | None, precision: str, engine: str, layers: list[str],
                 store: str, config: dict):
        prepare_worker()
        model = load_backbone(backbone, weights, precision)
        if model.weights_checksum != config["weights_checksum"]:
            raise UserError(f"{backbone}'s weights on this node ({model.weights_source}) differ from the driver's")
        self.network = frozen_network(model, "features", layers, engine)
        self.shards = Shards(Path(store), StoreConfig.from_json(config))

    def __call__(self, batch: dict) -> dict:
        ok = np.flatnonzero(batch["error"] == "")
        codes = {}
        if len(ok):
            codes = codes_of_views(self.network, batch["pixels"][ok], self.shards.config.views)
        fps = np.stack([batch["size"], batch["mtime"]], axis=1)
        failed = [(batch["path"][k], tuple(fps[k]), batch["error"][k]) for k in np.flatnonzero(batch["error"] != "")]
        self.shards.write(list(batch["path"][ok]), fps[ok], codes, failed)
        row = np.full(len(batch["path"]), -1)
        row[ok] = np.arange(len(ok))
        return {"position": batch["position"], "row": row, "error": batch["error"],
                "shard": np.asarray([str(self.shards.files[-1])] * len(row), dtype=object),
                "engine": np.asarray([self.network.engine] * len(row), dtype=object)}


class OnCluster:
    """An extraction :class:`~pipeline.store.extract.Site` on the Ray cluster at ``address``: folders listed
    there (:class:`~.listing.ClusterListing`, which keeps the fingerprints it took), shards written by actors."""

    def __init__(self, address: str):
        self.address = address
        self.lister = ClusterListing(address)  # joins the cluster

    def fingerprint(self, path: Path) -> tuple[int, int]:
        return self.lister.fingerprint(path)

    def shards(self, job: ShardJob) -> Iterator[ShardBlock]:
        """Extract ``job.files`` on the cluster; yields each finished shard like a local run."""
        if not job.files:
            return
        pool = actor_pool()
        fps = np.asarray(job.fingerprints, np.int64).reshape(-1, 2)
        columns = {"position": np.arange(len(job.files)), "file": [str(Path(f).resolve()) for f in job.files],
                   "path": list(job.paths), "size": fps[:, 0], "mtime": fps[:, 1], "error": [""] * len(job.files)}
        backbone = job.backbone
        source = backbone.weights_source
        weights = source.removeprefix("file:") if source.startswith("file:") else None  # else the spec's own
        dataset = (file_dataset(columns, job.batch_size)
                   .map_batches(decode_batch, fn_kwargs={"policy": job.policy}, batch_size=job.batch_size,
                                num_cpus=DECODE_CPUS)
                   .map_batches(Encoder, batch_size=job.batch_size, **pool.options(), fn_constructor_kwargs={
                       "backbone": backbone.spec.name, "weights": weights, "precision": backbone.precision,
                       "engine": job.engine, "layers": list(job.layers), "store": str(job.shards.store.resolve()),
                       "config": job.shards.config.to_json()}))
        log.info("extracting %d images on Ray: %d model actor(s)%s", len(job.files), pool.actors,
                 " on GPUs" if pool.num_gpus else "")
        with tqdm(total=len(job.files), unit="img", desc=f"{backbone.spec.name} on Ray", disable=not job.progress,
                  dynamic_ncols=True) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for shard in np.unique(batch["shard"]):
                    mine = batch["shard"] == shard
                    ok = [(int(k), int(r)) for k, r, e in zip(batch["position"][mine], batch["row"][mine],
                                                              batch["error"][mine]) if not e]
                    failed = [(int(k), str(e)) for k, e in zip(batch["position"][mine], batch["error"][mine]) if e]
                    yield Path(shard), ok, failed, str(batch["engine"][0])
                bar.update(len(batch["position"]))
