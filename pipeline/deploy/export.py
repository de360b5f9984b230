"""Export a trained classifier as one graph from uint8 pixels to class probabilities (docs/deploy.md).

A bundle becomes the backbone's feature network followed by one Dense layer
that folds the code scaling and the linear classifier (read off the fitted
estimator as an affine map), then its probabilities as layers: a softmax, or
the SVM's Platt sigmoids (folded into the same Dense) and their normalisation.
A bundle trained with views of each image (:mod:`pipeline.data.views`) runs them as
one batch and averages their probabilities, as ``predict.py`` does. A
fine-tuned ``.keras`` network already is such a graph. The class names, input
size and resize policy travel with the model (:class:`ModelCard`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import keras
import numpy as np

from ..backbones.factory import create_model
from ..backbones.spec import safe_name
from ..data.decode import ResizePolicy
from ..data.loader import decoded_batches
from ..data.views import views_of
from ..errors import UserError
from ..linear.bundle import load_bundle
from ..linear.kinds import get_kind, is_network
from ..linear.scaling import signed_power
from ..outputs import remove
from ..store.layout import layer_parts
from .card import ModelCard, card_path, write_card
from .config import ExportConfig
from .predict import (
    bundle_backbone,
    collect_images,
    fine_tuned_network,
)

log = logging.getLogger(__name__)



def _affine(decision, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` with ``decision(X) == X @ W + b`` for a linear model's decision function."""
    b = np.atleast_1d(decision(np.zeros((1, d)))[0]).astype(np.float64)
    W = np.asarray(decision(np.eye(d)), np.float64).reshape(d, -1) - b
    return W, b


def _per_label(ovr, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of a one-vs-rest model's per-label logits: each label's decision value, through its Platt
    sigmoid's affine part where it is calibrated (sigmoid(-(a f + c)))."""
    columns = []
    for est in ovr.estimators_:
        if hasattr(est, "calibrated_classifiers_"):
            (calibrated,) = est.calibrated_classifiers_
            (platt,) = calibrated.calibrators
            W, b = _affine(calibrated.estimator.decision_function, d)
            W, b = -W * platt.a_, -(b * platt.a_ + platt.b_)
        else:
            W, b = _affine(est.decision_function, d)
        columns.append((W, b))
    return np.concatenate([W for W, _ in columns], axis=1), np.concatenate([b for _, b in columns])


def _head(estimator, codes, d: int):
    """The fitted scikit-learn classifier on ``codes`` (a Keras tensor) as layers: class probabilities."""
    platt = None
    if hasattr(estimator, "calibrated_classifiers_"):  # the SVM: Platt sigmoids over its decision values
        (calibrated,) = estimator.calibrated_classifiers_
        platt = [(c.a_, c.b_) for c in calibrated.calibrators]
        estimator = calibrated.estimator
        estimator = getattr(estimator, "estimator", estimator)  # a streamed fit's FrozenEstimator
    scale, clf = estimator.named_steps["scale"], estimator.named_steps["clf"]
    multilabel = getattr(clf, "multilabel_", False)  # one model per label: a sigmoid each, not normalised
    d = len(scale.columns_) if hasattr(scale, "columns_") else d  # a BlockScaler passes on its kept columns
    W, b = _per_label(clf, d) if multilabel else _affine(clf.decision_function, d)
    if hasattr(scale, "columns_"):  # BlockScaler: the blocks it keeps
        codes = keras.ops.take(codes, scale.columns_, axis=-1)
    if hasattr(scale, "nonnegative_"):  # PowerScaler and BlockScaler: the signed power first
        codes = signed_power(codes, scale.power, scale.nonnegative_, keras.ops)
    if hasattr(scale, "mean_"):  # the standardisation folds into the Dense layer
        W, b = W / scale.scale_[:, None], b - (scale.mean_ / scale.scale_) @ W
    else:  # Normalizer (l2), as sklearn's normalize: zero norms left alone
        norm = keras.ops.sqrt(keras.ops.sum(codes * codes, axis=-1, keepdims=True))
        codes = codes / keras.ops.where(norm == 0, 1.0, norm)
    if platt is not None:  # sigmoid(-(a f + b)) per decision column, folded into the Dense layer
        a, c = np.array([p[0] for p in platt]), np.array([p[1] for p in platt])
        W, b = -W * a, -(b * a + c)
    binary = W.shape[1] == 1 and not multilabel
    activation = "sigmoid" if platt is not None or binary or multilabel else "softmax"
    dense = keras.layers.Dense(W.shape[1], activation=activation, dtype="float32", name="classifier")
    p = dense(codes)
    dense.set_weights([W.astype(np.float32), b.astype(np.float32)])
    if multilabel:
        return p
    if binary:
        return keras.ops.concatenate([1.0 - p, p], axis=-1)
    if platt is not None:  # one-vs-rest sigmoids normalised, uniform where all of them vanish
        total = keras.ops.sum(p, axis=-1, keepdims=True)
        return keras.ops.where(total > 0, p / keras.ops.where(total > 0, total, 1.0), 1.0 / W.shape[1])
    return p


def classifier_network(model_path: str | Path, weights=None) -> tuple[keras.Model, ModelCard]:
    """A fit-stage bundle or a fine-tuned ``.keras`` model as one Keras network, and its card."""
    model_path = Path(model_path)
    if is_network(model_path):
        net = fine_tuned_network(model_path)
        if not net.task.classes:
            raise UserError(f"{model_path} predicts a numeric target; export takes classifiers", param="model")
        return net.model, ModelCard(net.class_names, net.policy.size, net.policy.to_dict(),
                                    f"fine-tuned {net.backbone}", reject_threshold=net.reject_threshold)
    bundle = load_bundle(model_path)
    kind = get_kind(bundle.classifier)
    if kind.unexported:
        raise UserError(f"{model_path} does not export: {kind.unexported}", param="model")
    if list(bundle.estimator.classes_) != list(range(len(bundle.class_names))):
        raise UserError(f"{model_path} was not trained on every one of its classes", param="model")
    backbone = bundle_backbone(bundle, weights, precision="float32")
    features = create_model(backbone, "features", layers=layer_parts(bundle.layer))
    pixels = features.inputs[0]
    seen = views_of(pixels, bundle.views, keras.ops)  # the views go through the network as one batch
    outputs = features(keras.ops.concatenate(seen, axis=0) if bundle.views else pixels)
    codes = outputs if not isinstance(outputs, (list, tuple)) else outputs[0] if len(outputs) == 1 else \
        keras.layers.Concatenate()(list(outputs))
    probabilities = _head(bundle.estimator, codes, int(codes.shape[-1]))
    if bundle.views:  # the mean over each image's views
        probabilities = keras.ops.mean(keras.ops.reshape(probabilities, (len(seen), -1, probabilities.shape[-1])),
                                       axis=0)
    network = keras.Model(pixels, probabilities, name=f"{safe_name(bundle.backbone)}_{bundle.classifier}")
    policy = ResizePolicy.from_dict(bundle.store_config["resize"])
    multilabel = {"output": "float32 probabilities of each label, shape [batch, labels], in class_names order",
                  "label_thresholds": bundle.metrics["thresholds"]} if kind.task.several else {}
    return network, ModelCard(list(bundle.class_names), policy.size, policy.to_dict(),
                              f"{bundle.classifier} on {bundle.backbone}/{bundle.layer}",
                              reject_threshold=(bundle.metrics.get("reject") or {}).get("threshold"), **multilabel)


def export(cfg: ExportConfig) -> Path:
    """Write ``cfg.model`` as ``cfg.format`` to ``cfg.out`` with its card beside it (the settings checked that
    ``out`` is new, an earlier export, or to be replaced)."""
    out, fmt = Path(cfg.out), cfg.format
    network, card = classifier_network(cfg.model, cfg.weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    if fmt == "keras":
        network.save(tmp)
    elif fmt == "savedmodel":
        _savedmodel(network, tmp)
    else:
        data = _onnx(network, card) if fmt == "onnx" else _tflite(network, card, cfg.quantize, cfg.calibration)
        tmp.write_bytes(data)
    remove(card_path(out))
    remove(out)
    os.replace(tmp, out)
    write_card(out, card)
    log.info("exported %s as %s to %s", cfg.model, fmt + (f" ({cfg.quantize})" if cfg.quantize else ""), out)
    return out


def _function(network: keras.Model):
    import tensorflow as tf

    size = int(network.inputs[0].shape[1])
    signature = [tf.TensorSpec((None, size, size, 3), tf.uint8, name="pixels")]
    return tf.function(lambda pixels: network(pixels, training=False), input_signature=signature), signature


def _savedmodel(network: keras.Model, path: Path) -> None:
    """A SavedModel whose ``serving_default`` signature takes ``pixels``; the weights are frozen into the graph
    (the torch-named layers' variable names are not valid TensorFlow scope names)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function, signature = _function(network)
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    module = tf.Module()
    module.serve = tf.function(lambda pixels: {"probabilities": frozen(pixels)[0]}, input_signature=signature)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _onnx(network: keras.Model, card: ModelCard) -> bytes:
    import tf2onnx

    from ..backbones import onnx_ops  # noqa: F401 - the ops tf2onnx lacks

    function, signature = _function(network)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cnn_codes", json.dumps(card.to_json())
    return proto.SerializeToString()


def _tflite(network: keras.Model, card: ModelCard, quantize: str | None, calibration) -> bytes:
    import tensorflow as tf

    function, _ = _function(network)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], network)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        files, _ = collect_images([calibration])
        samples = [batch.pixels[:1] for batch in decoded_batches(files[:200], ResizePolicy.from_dict(card.resize), 1)
                   if batch.ok]
        if not samples:  # the converter would quietly write a float model
            raise UserError(f"no image under {calibration} could be decoded for calibration", param="calibration")
        converter.representative_dataset = lambda: ([sample] for sample in samples)
    return converter.convert()
