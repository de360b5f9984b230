"""Connecting to a Ray cluster, sizing the model's actor pool, and the CPU decoding step both jobs share.

Ray Data runs each job as a stream: a task decodes a batch of files on any
node's CPUs, an actor (kept warm, one per GPU, or one per node on the CPU
engine) runs the network on it. Actors that die are restarted and their batch
retried (Ray Data's default for actor pools).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pipeline

from ..data.decode import DecodeError, ResizePolicy, decode_image
from ..errors import UserError

log = logging.getLogger(__name__)


PROBE_SECONDS = 5.0  # how long a cluster's address may take to answer before it is called unreachable


def check_address(address: str) -> None:
    """Refuse in one line, within seconds, an address that is not ``auto``, ``local`` or ``[ray://]host:port``,
    or whose port does not answer (Ray itself would wait minutes for it)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{address!r} is not a cluster address: auto, local, HOST:PORT or ray://HOST:PORT",
                        param="ray")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as e:
        raise UserError(f"nothing answers at {address} ({e.strerror or e}); is the cluster's head running there?",
                        param="ray") from None


def connect(address: str) -> None:
    """Join the cluster at ``address``: ``auto`` (the one ``ray start`` runs here), ``local`` (a new one in
    this process, ended with it) or ``host:port`` / ``ray://host:port``. The workers import this package as
    shipped from here, so every node runs the same code. A cluster that wants a token finds it as Ray
    does (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``: set by the caller, as the command line does)."""
    try:
        import ray
    except ImportError:
        raise UserError("needs Ray: pip install 'cnn-codes[ray]'", param="ray") from None
    if ray.is_initialized():
        return
    check_address(address)
    runtime_env = {"py_modules": [str(Path(pipeline.__file__).parent)]}
    try:
        ray.init(address=None if address == "local" else address, runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = "; start one first (docs/scaleout.md), or use a local one" if address == "auto" else ""
        raise UserError(f"cannot join the Ray cluster at {address!r}: {e}{hint}", param="ray") from None
    log.info("Ray cluster: %s", ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items())
                                           if k in ("CPU", "GPU")))


@dataclass(frozen=True)
class ActorPool:
    """How many model actors, and what each one reserves."""

    actors: int
    num_gpus: float
    num_cpus: float

    def options(self) -> dict:
        """Ray Data's options: from one actor to ``actors``, so that the job goes on with fewer after a node is
        lost (a fixed size waits for an actor that can no longer be placed)."""
        return {"concurrency": (1, self.actors), "num_gpus": self.num_gpus, "num_cpus": self.num_cpus}


ACTOR_CPUS = 0.75  # a CPU model actor's reservation (its engine's threads use the node's cores, as locally)


def actor_pool() -> ActorPool:
    """One actor per GPU where the cluster has GPUs; otherwise up to one per node, never reserving every CPU:
    decoding must always find room, or the actors wait for batches no task can decode (a cluster of one-CPU
    nodes, or the actor of a lost node restarted beside another)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return ActorPool(gpus, 1, 1)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ActorPool(max(1, min(nodes, int(resources.get("CPU", 2)) - 1)), 0, ACTOR_CPUS)


def file_dataset(columns: dict[str, list], batch_size: int):
    """A Ray dataset of one row per file from ``columns``, one block per batch; built from Arrow tables, which
    hold a million rows in a fraction of the memory of as many dicts."""
    import pyarrow as pa
    import ray.data

    table = pa.table(columns)
    return ray.data.from_arrow([table.slice(k, batch_size) for k in range(0, max(1, table.num_rows), batch_size)])


def decode_batch(batch: dict, policy: ResizePolicy) -> dict:
    """A Ray Data batch with ``file`` (absolute paths) and ``error`` (a reason already known, or empty) gains
    ``pixels``, and the reason of each file that cannot be decoded."""
    n = len(batch["file"])
    pixels = np.zeros((n, policy.size, policy.size, 3), np.uint8)
    errors = list(batch["error"])
    for k, path in enumerate(batch["file"]):
        if errors[k]:
            continue
        try:
            pixels[k] = decode_image(str(path), policy)
        except DecodeError as e:
            errors[k] = str(e)
    return {**batch, "pixels": pixels, "error": np.asarray(errors, dtype=object)}


def prepare_worker() -> None:
    """Once per actor, before any model: TensorFlow takes a GPU's memory only as it needs it, so actors
    and other jobs can share a device."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
