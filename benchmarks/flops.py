"""FLOP counts and the machine's FLOP limit, for the benchmarks' share-of-the-hardware figures."""

from __future__ import annotations

import time

import numpy as np


def model_gflop(model, shape: tuple[int, ...], dtype: str = "float32") -> float:
    """GFLOP of one forward pass of a Keras model on one input of ``shape`` (batch excluded), counted by
    TensorFlow's profiler on the frozen graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = convert_variables_to_constants_v2(tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec([1, *shape], dtype))).graph
    options = {**option_builder.ProfileOptionBuilder.float_operation(), "output": "none"}
    return model_analyzer.profile(graph, options=options).total_float_ops / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's practical FLOP limit: float32 matmul through numpy's BLAS on every core, best of ``repeats``."""
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
