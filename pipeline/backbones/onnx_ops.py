"""TensorFlow ops tf2onnx cannot convert by itself, written in ONNX ops; importing this module registers them.

``Erfc``: TensorFlow's exact GELU (the vision transformers' MLPs) is ``0.5 * x * erfc(-x / sqrt(2))``.
"""

from __future__ import annotations

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    @classmethod
    def version_9(cls, ctx, node, **kwargs):
        """erfc(x) = 1 - erf(x)."""
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
        node.type = "Erf"
        erf_out = node.output[0]
        sub = ctx.insert_new_node_on_output("Sub", erf_out, name=utils.make_name(node.name),
                                            inputs=[one.output[0], erf_out])
        ctx.copy_shape(erf_out, sub.output[0])
