"""A network of the user's own as a backbone: a ``.keras`` file, a SavedModel folder, an ``.onnx`` file or a
keras-hub preset folder (DINOv2, SigLIP or CLIP, e.g. one fine-tuned and saved with ``save_to_preset``), described
by a small JSON card beside it (``NAME.json`` next to ``NAME.keras``, ``NAME.onnx`` or the ``NAME`` folder).

The card says what the registry says of a registered backbone::

    {"input_size": 224, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
     "layers": {"block3": "conv3_block4_out", "penultimate": "avg_pool"}}

``layers`` maps names of your choosing, early to late and ending with ``penultimate``, to the network's layers (a
``.keras`` file) or to its outputs (a SavedModel's serving signature, an ONNX graph); each is pooled as a registered
backbone's are (a feature map over its positions, a token sequence over its tokens, a vector as it is). Optional:
``default_layers``, ``bgr``, ``crop_fraction`` and ``interpolation``. The backbone's name is the file's absolute
path, and the file's sha256 is its weights' identity: stores and bundles refuse codes of another file. An ONNX
network runs on ONNX Runtime and gives codes only (extract, fit, predict, heatmaps); fine-tuning and export need a
Keras one. A preset's architecture and input size are its own, and its layers a registered transformer's: the card
gives its preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import keras
from keras import layers as klayers
from keras import ops

from ..errors import UserError
from . import vision_transformers
from .spec import BackboneSpec, OwnFile, Preprocessing

SUFFIXES = (".keras", ".onnx")  # and SavedModel folders (saved_model.pb inside), keras-hub preset folders
PRESET_FAMILIES = {"DINOV2Backbone": "dinov2", "SigLIPBackbone": "siglip", "CLIPBackbone": "clip"}
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@keras.saving.register_keras_serializable(package="pipeline")
class AsMap(klayers.Layer):
    """Any layer's output as a feature map that global average pooling reduces as the registry's backbones are:
    a map as it is, tokens ``(batch, tokens, width)`` as a 1 x tokens map, a vector as a 1x1 map."""

    def call(self, x):
        if len(x.shape) == 2:
            return x[:, None, None, :]
        return x[:, None] if len(x.shape) == 3 else x

    def compute_output_shape(self, shape):
        if len(shape) == 2:
            return (shape[0], 1, 1, shape[1])
        return (shape[0], 1, *shape[1:]) if len(shape) == 3 else shape


def is_network(name: str) -> bool:
    """Whether ``name`` is the path of a network of the user's own rather than a registered backbone's name."""
    path = Path(name)
    return path.suffix in SUFFIXES or (path / "saved_model.pb").is_file() or _is_preset(path)


def _is_preset(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "metadata.json").is_file()


def card_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(path.suffix) + ".json") if path.suffix else path.with_suffix(".json")


def file_identity(path: Path) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and bytes, in order)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def spec_for(name: str) -> BackboneSpec:
    """The backbone spec of the network at ``name``, from the card beside it; one line naming what is wrong."""
    path = Path(name).resolve()
    if not path.exists():
        raise UserError(f"{name} does not exist (neither a registered backbone nor a network file)", param="backbone")
    card = card_path(path)
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{name} needs a card beside it, {card.name}: its input_size, mean, std and layers "
                        "(docs/extract.md, \"Your own network\")", param="backbone") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {card}: {e}", param="backbone") from None
    if _is_preset(path):
        return _preset_spec(path, data, card)
    sources = _layers(data, card)
    onnx = path.suffix == ".onnx"
    return BackboneSpec(
        name=str(path),
        builder=partial(build, path=path, sources=sources),
        input_size=_field(data, "input_size", int, card, lambda v: 16 <= v <= 4096),
        preprocessing=_preprocessing(data, card),
        feature_layers=dict(sources) if onnx else {name: f"map_{name}" for name in sources},
        weights=OwnFile(str(path), file_identity(path)),
        crop_fraction=float(_field(data, "crop_fraction", (int, float), card, lambda v: 0.1 <= v <= 1, 0.875)),
        interpolation=_field(data, "interpolation", str, card, lambda v: v in INTERPOLATIONS, "bilinear"),
        default_layers=tuple(_field(data, "default_layers", list, card,
                                    lambda v: bool(v) and set(v) <= set(data.get("layers", {})), ["penultimate"])),
        sequential=False,
        description=f"your own network, {path.name}",
    )


def _preset_spec(path: Path, data: dict, card: Path) -> BackboneSpec:
    """A keras-hub preset folder's spec: its own architecture, a registered transformer's layers (blocks at a third
    and two thirds of its depth), the card's preprocessing."""
    saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
    family = PRESET_FAMILIES.get(saved.get("class_name"))
    if family is None:
        raise UserError(f"{path.name} is a keras-hub preset of {saved.get('class_name')}; presets taken as a backbone: "
                        f"{', '.join(PRESET_FAMILIES)}", param="backbone")
    arch = saved["config"] if family == "dinov2" else saved["config"]["vision_encoder"]["config"]
    keys = ("patch_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim") + (
        ("layer_scale_init_value", "position_embedding_shape", "num_register_tokens") if family == "dinov2" else ())
    depth = int(arch["num_layers"])
    blocks = tuple(sorted({max(1, depth // 3), max(1, 2 * depth // 3)}))
    return BackboneSpec(
        name=str(path),
        builder=partial(_from_preset, path=path, family=family, config={k: arch[k] for k in keys if k in arch}),
        input_size=int(arch["image_shape"][0]),
        preprocessing=_preprocessing(data, card),
        feature_layers=vision_transformers.feature_layers(blocks),
        weights=OwnFile(str(path), file_identity(path)),
        crop_fraction=float(_field(data, "crop_fraction", (int, float), card, lambda v: 0.1 <= v <= 1, 0.875)),
        interpolation=_field(data, "interpolation", str, card, lambda v: v in INTERPOLATIONS, "bicubic"),
        default_layers=("penultimate",),
        sequential=False,
        requires=("keras_hub",),
        onnx_on_cpu=False,
        description=f"your own keras-hub {family} preset, {path.name}",
    )


def _from_preset(spec, weights=None, *, path: Path, family: str, config: dict, input_size: int | None = None,
                 include_top: bool = True) -> keras.Model:
    """The preset's network, its weights from the preset folder unless a weights file is given."""
    return vision_transformers.build(spec, weights if weights is not None else str(path), family=family,
                                     config=config, input_size=input_size, include_top=include_top)


def _preprocessing(data: dict, card: Path) -> Preprocessing:
    return Preprocessing(
        tuple(_field(data, "mean", list, card, lambda v: _floats(v, 3))),
        tuple(_field(data, "std", list, card, lambda v: _floats(v, 3) and all(s > 0 for s in v))),
        bool(data.get("bgr", False)))


def _floats(values, n: int) -> bool:
    return len(values) == n and all(isinstance(v, (int, float)) for v in values)


def _field(data: dict, key: str, kind, card: Path, ok, default=None):
    value = data.get(key, default)
    if value is None or not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
        raise UserError(f"{card.name}: {key} is {'missing' if value is None else 'not valid: ' + repr(value)}",
                        param="backbone")
    return value


def _layers(data: dict, card: Path) -> dict[str, str]:
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers or list(layers)[-1] != "penultimate" \
            or not all(isinstance(v, str) for v in layers.values()):
        raise UserError(f"{card.name}: layers must map names, early to late and ending with \"penultimate\", to the "
                        "network's layer or output names", param="backbone")
    return dict(layers)


def build(spec, weights=None, *, path: Path, sources: dict[str, str], input_size: int | None = None,
          include_top: bool = True) -> keras.Model:
    """The network at ``path`` on preprocessed input, a map per feature layer as its outputs after its first (the
    penultimate code, or without the top the penultimate map). Its own weights; ``weights``, a Keras weights file
    of this same network as built here, replaces them."""
    size = input_size or spec.input_size
    if path.suffix == ".onnx":
        raise ValueError("an ONNX network runs on ONNX Runtime: it has no Keras graph")
    if path.suffix == ".keras":
        network = keras.models.load_model(path, compile=False)
        inputs = network.inputs[0]
        if tuple(inputs.shape[1:3]) not in ((size, size), (None, None)):
            raise ValueError(f"the network takes {tuple(inputs.shape[1:])} inputs, not {size} pixels")
        outputs = {name: network.get_layer(layer).output for name, layer in sources.items()}
    else:
        inputs = keras.Input((size, size, 3), name="images")
        served = klayers.TFSMLayer(str(path), call_endpoint="serving_default", name="saved_model")(inputs)
        missing = sorted(set(sources.values()) - set(served))
        if missing:
            raise ValueError(f"the SavedModel's outputs are {', '.join(sorted(served))}, not {', '.join(missing)}")
        outputs = {name: served[key] for name, key in sources.items()}
    maps = [AsMap(name=f"map_{name}")(ops.cast(tensor, "float32")) for name, tensor in outputs.items()]
    top = klayers.GlobalAveragePooling2D(name="summary")(maps[-1]) if include_top else maps[-1]
    model = keras.Model(inputs, [top, *maps], name=path.stem)
    if weights is not None and Path(weights).is_file():
        model.load_weights(weights)
    return model


def onnx_codes(spec: BackboneSpec, layers: tuple[str, ...], threads: int):
    """``(run, dims)`` for an ONNX network: ``run(uint8 pixels)`` gives the pooled codes of ``layers`` (the spec's
    preprocessing, then NCHW input where the graph takes channels first)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(spec.weights.path, options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    first = len(source.shape) == 4 and source.shape[1] == 3 and source.shape[-1] != 3
    outputs = {o.name: o for o in session.get_outputs()}
    names = [spec.feature_layers[layer] for layer in layers]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise UserError(f"{Path(spec.weights.path).name}'s outputs are {', '.join(outputs)}, not "
                        f"{', '.join(missing)}", param="backbone")
    p = spec.preprocessing
    mean, std = np.asarray(p.mean, np.float32), np.asarray(p.std, np.float32)

    def pooled(x, channels_first):
        if x.ndim == 4:
            return x.mean(axis=(2, 3) if channels_first else (1, 2))
        return x.mean(axis=1) if x.ndim == 3 else x

    def run(pixels):
        x = (np.asarray(pixels, np.float32)[..., ::-1] if p.bgr else np.asarray(pixels, np.float32))
        x = (x - mean) / std
        found = session.run(names, {source.name: np.ascontiguousarray(x.transpose(0, 3, 1, 2) if first else x)})
        return [pooled(np.asarray(o, np.float32), first and o.ndim == 4) for o in found]

    dims = tuple(int(outputs[n].shape[1] if first and len(outputs[n].shape) == 4 else outputs[n].shape[-1])
                 for n in names)
    return run, dims
