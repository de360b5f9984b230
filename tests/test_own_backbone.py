"""A network of the user's own as the backbone: a .keras file and a SavedModel folder, each with its card."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import run_command, write_images

from pipeline.backbones.engine import frozen_network
from pipeline.backbones.loading import load_backbone
from pipeline.backbones.registry import get_spec
from pipeline.data.decode import decode_image
from pipeline.deploy.predict import load_predictor
from pipeline.deploy.runtime import ExportedModel
from pipeline.errors import UserError
from pipeline.store.reader import read_store

CARD = {"input_size": 32, "mean": [127.5, 127.5, 127.5], "std": [64.0, 64.0, 64.0],
        "layers": {"early": "conv1", "penultimate": "conv2"}}


def network(seed: int = 0) -> keras.Model:
    """A small convnet, as a user's own fine-tuned one would be, with named layers."""
    init = keras.initializers.GlorotUniform(seed)
    x = inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1", kernel_initializer=init)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2", kernel_initializer=init)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits", kernel_initializer=init)(x))


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    network().save(root / "net.keras")
    (root / "net.json").write_text(json.dumps(CARD))
    write_images(root / "data", {"red": 8, "green": 8, "blue": 8}, size=40)
    return root


def test_a_keras_file_goes_through_every_stage(own, tmp_path):
    """extract (Keras and ONNX Runtime agree), fit, predict, export: the codes are the named layers pooled."""
    name = str(own / "net.keras")
    backbone = load_backbone(name)
    assert backbone.spec.name == name and backbone.weights_source.endswith(backbone.spec.weights.sha256)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    on_keras, on_onnx = (frozen_network(backbone, "features", layers=("early", "penultimate"), engine=e)(pixels)
                         for e in ("keras", "onnx"))
    reference = keras.Model(backbone.classifier.inputs, backbone.classifier.get_layer("conv2").output)
    expected = reference.predict_on_batch((pixels - 127.5) / 64.0).mean(axis=(1, 2))
    np.testing.assert_allclose(on_keras[1], expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(on_keras, on_onnx, strict=True):
        assert np.abs(a - b).max() < 1e-4
    store, run = tmp_path / "f.h5", tmp_path / "run"
    assert run_command("extract", own / "data", "--backbone", name, "--layers", "all", "--out", store,
                       "-q").returncode == 0
    assert read_store(store).config.backbone == name
    done = run_command("fit_svm", store, "--out", run, "--classifier", "softmax", "--folds", "2", "--repeats", "1",
                       "--duplicate-threshold", "0", "-q")
    assert done.returncode == 0, done.stderr
    image = own / "data" / "red" / "img_0003.png"
    done = run_command("predict", run / "softmax.skops", image, "-q")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    done = run_command("export", run / "softmax.skops", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert done.returncode == 0, done.stderr
    predictor = load_predictor(run / "softmax.skops", engine="keras")
    decoded = decode_image(image, predictor.policy)[None]
    expected = np.asarray(predictor.probabilities(decoded, 1))
    assert np.abs(ExportedModel(tmp_path / "m.onnx")(decoded) - expected).max() < 1e-4


def test_codes_of_another_file_are_refused(own, tmp_path):
    """The file's identity is in the store and the bundle: a network saved again with other weights under the
    same name is another backbone for both, refused in one line."""
    folder = tmp_path / "mine"
    folder.mkdir()
    network(seed=0).save(folder / "net.keras")
    (folder / "net.json").write_text(json.dumps(CARD))
    name = str(folder / "net.keras")
    assert run_command("extract", own / "data", "--backbone", name, "--out", tmp_path / "f.h5", "-q").returncode == 0
    assert run_command("fit_svm", tmp_path / "f.h5", "--out", tmp_path / "run", "--classifier", "softmax", "--folds",
                       "2", "--repeats", "1", "--duplicate-threshold", "0", "-q").returncode == 0
    network(seed=1).save(folder / "net.keras")
    from pipeline.backbones.loading import forget_loaded
    from pipeline.backbones.registry import _REGISTRY

    forget_loaded()
    _REGISTRY.pop(name)  # a new process, as the user's next command is
    done = run_command("extract", own / "data", "--backbone", name, "--out", tmp_path / "f.h5", "-q")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "different" in done.stderr or "another" in done.stderr, done.stderr
    done = run_command("predict", tmp_path / "run" / "softmax.skops", own / "data" / "red" / "img_0000.png", "-q")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_a_saved_model_folder_is_a_backbone(own, tmp_path):
    """A SavedModel's serving outputs are its layers: the same codes as the .keras file it was exported from."""
    model = network()
    keras.Model(model.inputs, [model.get_layer("conv1").output, model.get_layer("conv2").output]).export(
        str(tmp_path / "saved"), verbose=False)
    (tmp_path / "saved.json").write_text(json.dumps({**CARD, "layers": {"early": "output_0",
                                                                        "penultimate": "output_1"}}))
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    saved, kept = (load_backbone(str(p)) for p in (tmp_path / "saved", own / "net.keras"))
    layers = ("early", "penultimate")
    for a, b in zip(frozen_network(saved, "features", layers=layers, engine="keras")(pixels),
                    frozen_network(kept, "features", layers=layers, engine="keras")(pixels), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert run_command("extract", own / "data", "--backbone", tmp_path / "saved", "--out", tmp_path / "f.h5",
                       "-q").returncode == 0


@pytest.mark.parametrize("card,message", [
    (None, "needs a card beside it, net.json"),
    ({**CARD, "input_size": "big"}, "input_size is not valid: 'big'"),
    ({**CARD, "std": [1, 0, 1]}, "std is not valid"),
    ({**CARD, "layers": {"penultimate": "conv2", "early": "conv1"}}, "ending with \"penultimate\""),
    ({**CARD, "layers": {"penultimate": "nope"}}, "cannot use"),
])
def test_a_bad_card_is_one_line(card, message, own, tmp_path):
    network().save(tmp_path / "net.keras")
    if card is not None:
        (tmp_path / "net.json").write_text(json.dumps(card))
    done = run_command("extract", own / "data", "--backbone", tmp_path / "net.keras", "--out", tmp_path / "f.h5")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


def test_a_path_that_is_no_network_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="neither a registered backbone nor a network file"):
        get_spec(str(tmp_path / "missing.keras"))


def test_an_onnx_network_gives_the_codes_of_its_keras_original(own, tmp_path):
    """The same network as an .onnx file (channels last, as tf2onnx writes it): the same codes as the .keras file
    through every stage that takes codes; fine-tuning and export say in one line what it cannot do."""
    import tensorflow as tf
    import tf2onnx

    model = network()
    two = keras.Model(model.inputs, [model.get_layer("conv1").output, model.get_layer("conv2").output])
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: two(x)), opset=17,
                                             input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
    (tmp_path / "net.onnx").write_bytes(proto.SerializeToString())
    outputs = [o.name for o in proto.graph.output]
    (tmp_path / "net.json").write_text(json.dumps({**CARD, "layers": {"early": outputs[0],
                                                                      "penultimate": outputs[1]}}))
    name = str(tmp_path / "net.onnx")
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    layers = ("early", "penultimate")
    for a, b in zip(frozen_network(load_backbone(name), "features", layers=layers)(pixels),
                    frozen_network(load_backbone(str(own / "net.keras")), "features", layers=layers,
                                   engine="keras")(pixels), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    store, run = tmp_path / "f.h5", tmp_path / "run"
    assert run_command("extract", own / "data", "--backbone", name, "--out", store, "-q").returncode == 0
    assert run_command("fit_svm", store, "--out", run, "--classifier", "softmax", "--folds", "2", "--repeats", "1",
                       "--duplicate-threshold", "0", "-q").returncode == 0
    image = own / "data" / "blue" / "img_0001.png"
    done = run_command("predict", run / "softmax.skops", image, "--explain", tmp_path / "heat", "-q")
    assert done.returncode == 0 and len(list((tmp_path / "heat").glob("*.png"))) == 1, done.stderr
    for done in (run_command("export", run / "softmax.skops", "--format", "onnx", "--out", tmp_path / "m.onnx"),
                 run_command("finetune", own / "data", "--backbone", name, "--out", tmp_path / "ft")):
        assert done.returncode == 2 and "is an ONNX network" in done.stderr and "Traceback" not in done.stderr


def test_the_report_takes_your_network(own, tmp_path):
    """evaluate.py takes the path as a backbone: its codes cached under a file name of its own."""
    done = run_command("evaluate", "--data", own / "data", "--backbones", own / "net.keras",
                       "--classifiers", "softmax", "--folds", "2", "--repeats", "1", "--no-advice",
                       "--duplicate-threshold", "0", "--features", tmp_path / "features", "--out", tmp_path / "r", "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "report.html").is_file()
    assert [p.name for p in (tmp_path / "features").glob("*.h5")] == ["data_net.keras.h5"]
