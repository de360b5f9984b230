"""Engines that run the factory's frozen networks: Keras, or the same graph in ONNX Runtime (docs/extract.md).

The ONNX graph is the project's own Keras model, converted once with tf2onnx
and cached; its file name holds the key and the sha256 of its bytes, and it is
written under a temporary name then renamed, so a concurrent, killed or damaged
conversion never passes for a valid graph.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from ..errors import UserError
from ..machine import usable_cores
from ..provenance import file_sha256
from .device import accelerators
from .factory import create_model
from .loading import Backbone, cache_dir
from .options import ENGINES
from .own import onnx_codes

log = logging.getLogger(__name__)

OPSET = 17


@dataclass(frozen=True)
class FrozenNetwork:
    """A frozen network on one engine: ``network(pixels)`` maps a uint8 batch to a list of float32 arrays."""

    engine: str
    outputs: tuple[str, ...]
    dims: tuple[int, ...]
    run: Callable[[np.ndarray], list[np.ndarray]]

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        return self.run(pixels)


def onnx_available() -> bool:
    return keras.backend.backend() == "tensorflow" and all(
        importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tf2onnx"))


def resolve_engine(engine: str = "auto", precision: str = "float32", onnx_on_cpu: bool = True) -> str:
    """``keras`` or ``onnx``: ``auto`` is ONNX Runtime on a CPU (where ``onnx_on_cpu``, the backbone's spec says
    it is the faster there) and Keras where a GPU is seen."""
    if engine not in ENGINES:
        raise UserError(f"must be one of {', '.join(ENGINES)}, not {engine!r}", param="engine")
    if engine == "onnx":
        if not onnx_available():
            raise UserError("the ONNX engine needs the TensorFlow backend, onnxruntime and tf2onnx "
                            "(pip install 'cnn-codes[fast]')", param="engine")
        if precision != "float32":
            raise UserError(f"the ONNX engine runs float32, not {precision}", param="engine")
        return engine
    if engine == "auto":
        engine = "onnx" if onnx_on_cpu and onnx_available() and precision == "float32" and not accelerators() \
            else "keras"
    return engine


def describe(engine: str) -> str:
    if engine == "onnx":
        return f"ONNX Runtime on the CPU ({usable_cores()} threads)"
    return f"Keras on {keras.backend.backend()} ({', '.join(accelerators()) or 'CPU'})"


def frozen_network(backbone: Backbone, head: str = "features", layers: Sequence[str] = ("penultimate",),
                   engine: str = "auto", size: int | None = None) -> FrozenNetwork:
    """The ``features`` (pooled codes of ``layers``), ``imagenet``, ``statistics`` or ``front`` (the unpooled
    activations of one layer, at ``size`` pixels) network on ``engine`` (``auto`` runs statistics on Keras).

    Networks are built once per backbone, head, layers, size and engine.
    """
    if size is not None and head != "front":
        raise ValueError(f"only a front network takes a size, not {head!r}")
    if backbone.classifier is None:  # an ONNX network of the user's own
        return _own_onnx(backbone, head, layers, engine)
    if engine == "auto" and head == "statistics":
        # Its hundred-odd reductions of activations defeat ONNX Runtime's fusions: Keras runs it faster
        # (docs/benchmarks.md, "The advisor table").
        engine = "keras"
    engine = resolve_engine(engine, backbone.precision, backbone.spec.onnx_on_cpu)
    layers = tuple(backbone.check_layers(layers)) if head in ("features", "front") else ()
    size = size or backbone.spec.input_size
    key = ("frozen", head, layers, engine, size)
    if key not in backbone.models:
        backbone.models[key] = (_onnx if engine == "onnx" else _keras)(backbone, head, layers, size)
        log.info("%s (%s) runs on %s", backbone.spec.name, head, describe(engine))
    return backbone.models[key]


def _keras(backbone: Backbone, head: str, layers: tuple[str, ...], size: int) -> FrozenNetwork:
    model = create_model(backbone, head, layers=layers or ("penultimate",), input_size=size)

    def run(pixels):
        out = model.predict_on_batch(pixels)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    names = layers or tuple(f"output_{k}" for k in range(len(model.outputs)))
    return FrozenNetwork("keras", names, tuple(int(o.shape[-1]) for o in model.outputs), run)


def _graph_model(backbone: Backbone, graph: str, layers: tuple[str, ...], size: int
                 ) -> tuple[keras.Model, tuple[str, ...]]:
    """The Keras model that becomes one ONNX graph, and its outputs' names."""
    if graph == "statistics":
        model = create_model(backbone, "statistics")
        return model, tuple(f"output_{k}" for k in range(len(model.outputs)))
    if graph == "front":
        return create_model(backbone, "front", layers=layers, input_size=size), layers
    if graph == "imagenet":
        return create_model(backbone, "imagenet"), ("imagenet",)
    # every feature layer, and not the ImageNet head: VGG's is 124 M of its 138 M parameters
    layers = tuple(backbone.spec.feature_layers)
    return create_model(backbone, "features", layers=layers), layers


def _onnx(backbone: Backbone, head: str, layers: tuple[str, ...], size: int) -> FrozenNetwork:
    import onnxruntime as ort

    graph = head if head in ("statistics", "front", "imagenet") else "codes"
    session, names = _session(backbone, graph, ort, layers if graph == "front" else (), size)
    wanted = layers if head in ("features", "front") else ("imagenet",) if head == "imagenet" else names
    index = [names.index(n) for n in wanted]
    dims = tuple(int(session.get_outputs()[i].shape[-1]) for i in index)
    output_names = [session.get_outputs()[i].name for i in index]
    input_name = session.get_inputs()[0].name

    def run(pixels):
        return session.run(output_names, {input_name: np.ascontiguousarray(pixels, np.uint8)})

    return FrozenNetwork("onnx", wanted, dims, run)


def _own_onnx(backbone: Backbone, head: str, layers: Sequence[str], engine: str) -> FrozenNetwork:
    if head != "features":
        create_model(backbone, head)  # says, in one line, what an ONNX network cannot do
    if engine == "keras":
        raise UserError(f"{backbone.spec.name} is an ONNX network: it runs on ONNX Runtime", param="engine")
    layers = tuple(backbone.check_layers(layers))
    key = ("frozen", head, layers, "onnx", backbone.spec.input_size)
    if key not in backbone.models:
        run, dims = onnx_codes(backbone.spec, layers, usable_cores())
        backbone.models[key] = FrozenNetwork("onnx", layers, dims, run)
    return backbone.models[key]


def _session(backbone: Backbone, graph: str, ort, layers: tuple[str, ...], size: int):
    """An ONNX Runtime session on the cached graph, converting it first when no valid file is cached."""
    import tf2onnx

    spec = backbone.spec
    key = {"backbone": spec.name, "graph": graph, "weights": backbone.weights_checksum,
           "layers": list(layers or spec.feature_layers), "input_size": size, "opset": OPSET,
           "tf2onnx": tf2onnx.__version__, "keras": keras.__version__}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "onnx"
    prefix = f"{spec.slug}-{graph}-{key_hash}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    options.inter_op_num_threads = 1
    # Idle threads sleep rather than spin, so the decoding threads get the cores between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for path in sorted(folder.glob(f"{glob.escape(prefix)}-*.onnx")):
        if _intact(path):
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                return session, tuple(json.loads(session.get_modelmeta().custom_metadata_map["outputs"]))
            except Exception as e:  # noqa: BLE001 - any unreadable cached graph is rebuilt
                log.warning("rebuilding %s: %s", path.name, e)
        path.unlink(missing_ok=True)
    path = _convert(backbone, graph, folder, prefix, layers, size)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, tuple(json.loads(session.get_modelmeta().custom_metadata_map["outputs"]))


def _intact(path: Path) -> bool:
    """Whether the file's bytes hash to the sha256 prefix its name ends with."""
    match = re.search(r"-([0-9a-f]{16})\.onnx$", path.name)
    ok = bool(match) and file_sha256(path)[:16] == match.group(1)
    if not ok:
        log.warning("the cached graph %s is corrupt; converting again", path.name)
    return ok


def _convert(backbone: Backbone, graph: str, folder: Path, prefix: str, layers: tuple[str, ...], size: int) -> Path:
    import tensorflow as tf
    import tf2onnx

    from . import onnx_ops  # noqa: F401 - the ops tf2onnx lacks

    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    log.info("converting %s to ONNX (once; cached in %s)", backbone.spec.name, folder)
    model, names = _graph_model(backbone, graph, layers, size)
    signature = [tf.TensorSpec((None, size, size, 3), tf.uint8, name="pixels")]
    function = tf.function(lambda pixels: model(pixels, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "outputs", json.dumps(list(names))
    tmp = folder / f".{prefix}.{os.getpid()}.tmp"
    tmp.write_bytes(proto.SerializeToString())
    target = folder / f"{prefix}-{file_sha256(tmp)[:16]}.onnx"
    os.replace(tmp, target)
    return target


def _remove_stale(folder: Path) -> None:
    """Temporary files of conversions whose process has ended."""
    for tmp in folder.glob(".*.tmp"):
        try:
            os.kill(int(tmp.name.rsplit(".", 2)[1]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass
