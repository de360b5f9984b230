"""Running an exported model without TensorFlow: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``.

Imports nothing of Keras, TensorFlow or scikit-learn, so ``pip install
'cnn-codes[runtime]'`` (numpy, pillow, onnxruntime) is enough to classify
images with an exported ONNX model; decoding is the extract stage's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .card import read_card

EXTENSIONS = (".onnx", ".tflite")


class ExportedModel:
    """An exported classifier: ``model(pixels)`` maps a uint8 batch to class probabilities; ``card``
    (:class:`~pipeline.deploy.card.ModelCard`, beside it) says the class names, input size and resize policy.
    The card is checked, and the sha256 binding it to the model, before the model is loaded."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.suffix not in EXTENSIONS:
            raise UserError(f"{path} is not an exported model ({', '.join(EXTENSIONS)})", param="model")
        self.card = read_card(path)
        try:
            self._run = self._onnx(path) if path.suffix == ".onnx" else self._tflite(path)
        except Exception as e:  # noqa: BLE001 - a bad file or runtime: one line
            raise UserError(f"cannot load exported model {path}: {type(e).__name__}: {e}", param="model") from None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = self._run(np.ascontiguousarray(pixels, np.uint8))
        if out.ndim != 2 or out.shape[1] != len(self.card.class_names):
            raise UserError(f"the model gives {out.shape[1:]} outputs per image, its card names "
                            f"{len(self.card.class_names)} classes", param="model")
        return out

    @staticmethod
    def _onnx(path: Path):
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda pixels: session.run(None, {name: pixels})[0]

    @staticmethod
    def _tflite(path: Path):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(pixels):
            if tuple(source["shape"]) != pixels.shape:
                interpreter.resize_tensor_input(source["index"], pixels.shape)
                interpreter.allocate_tensors()
                source["shape"] = np.array(pixels.shape)
            interpreter.set_tensor(source["index"], pixels)
            interpreter.invoke()
            return interpreter.get_tensor(target["index"]).copy()

        interpreter.allocate_tensors()
        return run
