"""Which accelerator Keras will use, and the numeric precision that pays on it."""

from __future__ import annotations

import contextlib
import logging

import keras

from ..errors import UserError
from .options import PRECISIONS

log = logging.getLogger(__name__)


def accelerators() -> list[str]:
    """Names of the GPUs the active Keras backend can place work on (empty on a CPU machine)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def resolve_precision(precision: str = "auto") -> str:
    """The Keras dtype policy for ``precision``: ``auto`` is mixed float16 on a GPU (tensor cores), float32 on
    a CPU (where mixed precision was measured slower for these convnets)."""
    if precision not in PRECISIONS:
        raise UserError(f"must be one of {', '.join(PRECISIONS)}, not {precision!r}", param="precision")
    if precision == "auto":
        precision = "mixed_float16" if accelerators() else "float32"
    return precision


@contextlib.contextmanager
def dtype_policy(precision: str = "auto"):
    """Layers created inside the block take ``precision``'s dtype policy (and keep it); the global one is
    restored after."""
    policy = resolve_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
