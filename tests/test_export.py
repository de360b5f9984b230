"""Exported models: every format for both model kinds gives predict.py's probabilities; no TensorFlow needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_command, write_images, write_store
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.decode import ResizePolicy, decode_image
from pipeline.deploy.card import ModelCard, card_path, read_card, write_card
from pipeline.deploy.config import ExportConfig
from pipeline.deploy.export import export
from pipeline.deploy.predict import load_predictor
from pipeline.errors import UserError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.stage import finetune
from pipeline.linear.bundle import Bundle, load_bundle, save_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store

TUX = ROOT / "data" / "tuxpaint"

# Run in a process where TensorFlow, Keras, scikit-learn and h5py cannot be imported.
BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "sklearn", "h5py", "scipy", "tf2onnx"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
"""


def without_tensorflow(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED + code, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A calibrated SVM and a softmax bundle on Tux Paint (codes of stage6), an SVM on stage6 and penultimate
    codes side by side, a softmax trained on each image and its mirror image, and a tiny fine-tuned network."""
    root = tmp_path_factory.mktemp("export")
    extract(ExtractConfig(data=TUX, out=root / "tux.h5", layers=("stage6", "penultimate"), views=("flip",),
                          progress=False))
    fit(FitConfig(store=root / "tux.h5", out=root / "linear", layers=("stage6",), views="off", folds=2, repeats=1,
                  jobs=1))
    fit(FitConfig(store=root / "tux.h5", out=root / "joined", layers=("stage6+penultimate",), classifiers=("svm",),
                  views="off", folds=2, repeats=1, jobs=1))
    fit(FitConfig(store=root / "tux.h5", out=root / "views", layers=("stage6",), classifiers=("softmax",), views="on",
                  folds=2, repeats=1, jobs=1))
    write_images(root / "small", {"red": 8, "green": 8}, size=48)
    finetune(FinetuneConfig(data=root / "small", out=root / "finetuned", image_size=64, head_epochs=1,
                            finetune_epochs=1, unfreeze=4, batch_size=8, progress=False))
    return root


@pytest.fixture(scope="module")
def onnx_models(models, tmp_path_factory):
    """The SVM and the softmax bundle exported to ONNX once, for the tests that only read them."""
    root = tmp_path_factory.mktemp("onnx")
    return {kind: export(ExportConfig(models / "linear" / f"{kind}.skops", "onnx", root / f"{kind}.onnx"))
            for kind in ("svm", "softmax")}


def pixels_for(model_path, files) -> tuple[np.ndarray, np.ndarray]:
    """The decoded inputs of ``files`` and predict.py's probabilities for them."""
    predictor = load_predictor(model_path, engine="keras")
    pixels = np.stack([decode_image(f, predictor.policy) for f in files])
    return pixels, np.asarray(predictor.probabilities(pixels, len(pixels)), np.float64)


RUN = """
import sys, numpy as np
from pipeline.deploy.runtime import ExportedModel
model = ExportedModel(sys.argv[1])
np.save(sys.argv[3], model(np.load(sys.argv[2])))
print(",".join(model.card.class_names))
"""


EVERY_FORMAT = ("onnx", "tflite", "savedmodel", "keras")


# Every format for the calibrated SVM (the most folded head) and the fine-tuned network; the other heads' folding is
# the same code whatever the format (and test_the_classifier_head_equals_predict_proba covers every kind): ONNX.
@pytest.mark.parametrize("kind, formats", [("linear/svm.skops", EVERY_FORMAT), ("linear/softmax.skops", ("onnx",)),
                                           ("joined/svm.skops", ("onnx",)), ("views/softmax.skops", ("onnx",)),
                                           ("finetuned/model.keras", EVERY_FORMAT)])
@pytest.mark.slow
def test_every_format_gives_predict_pys_probabilities(kind, formats, models, onnx_models, tmp_path):
    source = models / kind
    files = sorted(TUX.rglob("*.png"))[::11]
    pixels, expected = pixels_for(source, files)
    np.save(tmp_path / "pixels.npy", pixels)
    names = (load_bundle(source).class_names if source.suffix == ".skops"
             else json.loads((source.parent / "classes.json").read_text()))
    for fmt, name in (("onnx", "m.onnx"), ("tflite", "m.tflite")):
        if fmt not in formats:
            continue
        shared = onnx_models.get(source.stem) if fmt == "onnx" and source.parent.name == "linear" else None
        out = shared or export(ExportConfig(source, fmt, tmp_path / name))
        done = without_tensorflow(RUN, out, tmp_path / "pixels.npy", tmp_path / "p.npy")
        assert done.returncode == 0, done.stderr
        got = np.load(tmp_path / "p.npy")
        assert np.abs(got - expected).max() < 1e-4, fmt
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
        assert done.stdout.strip() == ",".join(names), "the class names travel with the model"
    if "savedmodel" not in formats:
        return
    import keras
    import tensorflow as tf

    saved = tf.saved_model.load(str(export(ExportConfig(source, "savedmodel", tmp_path / "saved"))))
    got = saved.signatures["serving_default"](pixels=tf.constant(pixels))["probabilities"].numpy()
    assert np.abs(got - expected).max() < 1e-4
    card = json.loads(card_path(tmp_path / "saved").read_text())
    assert card["class_names"] == names
    assert card["reject_threshold"] == load_predictor(source).reject_threshold > 0, "--reject travels too"
    reloaded = keras.models.load_model(export(ExportConfig(source, "keras", tmp_path / "m.keras")))
    assert np.abs(np.asarray(reloaded.predict_on_batch(pixels)) - expected).max() < 1e-4


@pytest.mark.slow
def test_predict_py_takes_an_exported_model_without_tensorflow(models, onnx_models, tmp_path):
    bundle, out = models / "linear" / "svm.skops", onnx_models["svm"]
    birds = TUX / "birds"
    command = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    exported = without_tensorflow(command, ROOT / "scripts" / "predict.py", out, birds, "--top-k", "1", "--quiet")
    assert exported.returncode == 0, exported.stderr
    reference = subprocess.run([sys.executable, ROOT / "scripts" / "predict.py", bundle, birds, "--top-k", "1",
                                "--quiet", "--engine", "keras"], capture_output=True, text=True, cwd=ROOT)
    top1 = [[(cells[0], cells[1].split()[0]) for cells in (line.split("\t") for line in r.stdout.splitlines())
             if len(cells) > 1] for r in (exported, reference)]
    assert len(top1[0]) == len(list(birds.glob("*.png"))) and top1[0] == top1[1]


@pytest.mark.slow
def test_a_changed_exported_model_or_card_is_refused(onnx_models, tmp_path):
    """One flipped byte in the model, a card whose classes were reversed, a card gone: refused in one line."""
    out = tmp_path / "tux.onnx"
    for source, copy in ((onnx_models["softmax"], out), (card_path(onnx_models["softmax"]), card_path(out))):
        shutil.copyfile(source, copy)
    image = sorted((TUX / "birds").glob("*.png"))[0]
    assert run_command("predict", out, image, "-q").returncode == 0
    card = json.loads(card_path(out).read_text())
    data = out.read_bytes()
    for position in (len(data) // 3, len(data) - 10):
        flipped = bytearray(data)
        flipped[position] ^= 1
        out.write_bytes(flipped)
        done = run_command("predict", out, image, "-q")
        assert done.returncode == 2 and "fails the sha256 check" in done.stderr and "Traceback" not in done.stderr
    out.write_bytes(data)
    card_path(out).write_text(json.dumps({**card, "class_names": card["class_names"][::-1]}))
    assert "fails the sha256 check" in run_command("predict", out, image, "-q").stderr
    card_path(out).unlink()
    assert "is missing beside" in run_command("predict", out, image, "-q").stderr


@pytest.mark.slow
def test_an_exported_model_is_explained_as_its_bundle_without_tensorflow(models, onnx_models, tmp_path):
    """Occlusion needs forward passes only: the .onnx model's heatmap is the bundle's, with no TensorFlow."""
    bundle, out = models / "linear" / "softmax.skops", onnx_models["softmax"]
    bird = sorted((TUX / "birds").glob("*.png"))[0]
    command = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    done = without_tensorflow(command, ROOT / "scripts" / "predict.py", out, bird, "--explain", tmp_path / "onnx",
                              "--quiet")
    assert done.returncode == 0 and "wrote 1 heatmaps" in done.stdout, done.stderr
    assert run_command("predict", bundle, bird, "--explain", tmp_path / "bundle", "--engine", "keras",
                       "--quiet").returncode == 0
    from PIL import Image

    exported, original = (np.asarray(Image.open(next((tmp_path / d).glob("*.png"))), float) for d in ("onnx", "bundle"))
    assert np.abs(exported - original).mean() < 2.0  # 0-255 scale: the same overlay up to rounding


@pytest.mark.slow
def test_int8_and_float16_litert_models_are_smaller_and_agree(models, tmp_path):
    bundle = models / "linear" / "softmax.skops"
    files = sorted(TUX.rglob("*.png"))[::4]
    pixels, expected = pixels_for(bundle, files)
    np.save(tmp_path / "pixels.npy", pixels)
    full = export(ExportConfig(bundle, "tflite", tmp_path / "full.tflite")).stat().st_size
    for quantize, smaller in (("float16", 0.6), ("int8", 0.35)):
        out = export(ExportConfig(bundle, "tflite", tmp_path / f"{quantize}.tflite", quantize=quantize,
                                  calibration=TUX / "birds"))
        assert out.stat().st_size < smaller * full
        done = without_tensorflow(RUN, out, tmp_path / "pixels.npy", tmp_path / "p.npy")
        assert done.returncode == 0, done.stderr
        agreement = (np.load(tmp_path / "p.npy").argmax(1) == expected.argmax(1)).mean()
        assert agreement >= (0.98 if quantize == "float16" else 0.9), quantize


def test_what_cannot_be_exported_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    ridge = Pipeline([("scale", StandardScaler()), ("clf", Ridge())]).fit(rng.normal(size=(20, 4)), rng.normal(size=20))
    store = read_store(write_store(tmp_path / "f.h5", {"stage6": rng.normal(size=(4, 4))}, None, None))
    save_bundle(Bundle(ridge, "ridge", "stage6", [], store.config.to_json(), "test", 1.0, "standard"),
                tmp_path / "ridge.skops")
    with pytest.raises(UserError, match="does not export: it predicts a numeric target"):
        export(ExportConfig(tmp_path / "ridge.skops", "onnx", tmp_path / "r.onnx"))
    with pytest.raises(UserError, match="onnx models are written to .onnx files"):
        export(ExportConfig(tmp_path / "svm.skops", "onnx", tmp_path / "model.bin"))
    with pytest.raises(UserError, match="int8 needs calibration images"):
        export(ExportConfig(tmp_path / "svm.skops", "tflite", tmp_path / "q.tflite", quantize="int8"))
    done = run_command("export", tmp_path / "ridge.skops", "--format", "onnx", "--out", tmp_path / "r.onnx")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: model: ")
    assert "Traceback" not in done.stderr and not (tmp_path / "r.onnx").exists()


def _card(**changes) -> dict:
    return {**ModelCard(["cat", "dog"], 224, ResizePolicy(224).to_dict(), "test").to_json(), **changes}


@pytest.mark.parametrize("changes,message", [
    ({"input_size": 60000, "resize": {"size": 60000}}, "input size must be"),
    ({"input_size": 8, "resize": {"size": 8}}, "input size must be from 32"),
    ({"input_size": -1, "resize": {"size": -1}}, "input size must be"),
    ({"resize": {"size": 224, "mode": "crop", "extra": 1}}, "not a resize policy"),
    ({"reject_threshold": float("nan")}, "reject_threshold must be a probability"),
    ({"reject_threshold": "high"}, "reject_threshold must be a probability"),
    ({"class_names": []}, "class_names must be"),
    ({"class_names": ["a", "a"]}, "class_names must be"),
    ({"class_names": ["x" * 5000, "b"]}, "class_names must be"),
    ({"label_thresholds": [0.5]}, "label_thresholds must be one probability per class"),
    ({"surprise": True}, "fields this version does not know"),
    ({"input_size": 256}, "differs from its resize policy"),
])
def test_a_crafted_card_is_refused_before_anything_is_allocated(tmp_path, changes, message):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    card_path(model).write_text(json.dumps(_card(**changes)))
    with pytest.raises(UserError, match=message):
        read_card(model)


def test_a_card_binds_its_model(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    write_card(model, ModelCard(["cat", "dog"], 224, ResizePolicy(224).to_dict(), "test"))
    assert read_card(model).class_names == ["cat", "dog"]
    model.write_bytes(b"model bytez")
    with pytest.raises(UserError, match="fails the sha256 check"):
        read_card(model)
    model.write_bytes(b"model bytes")
    card = json.loads(card_path(model).read_text())
    card_path(model).write_text(json.dumps({**card, "class_names": ["dog", "cat"]}))
    with pytest.raises(UserError, match="fails the sha256 check"):
        read_card(model)
    card_path(model).write_text(json.dumps({**card, "sha256": ""}))
    with pytest.raises(UserError, match="carries no sha256"):
        read_card(model)



@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("normalise", ["power", "standard", "l2"])
@pytest.mark.parametrize("kind", ["svm", "softmax"])
def test_the_classifier_head_equals_predict_proba(kind, normalise, classes):
    """Binary and multi-class, every scaling: the folded Dense layer and its probabilities are scikit-learn's."""
    import keras

    from pipeline.deploy.export import _head
    from pipeline.linear.cv import fit_final

    rng = np.random.default_rng(classes)
    y = np.arange(90) % classes
    X = rng.normal(size=(90, 16)) + 2 * np.eye(classes, 16)[y]
    X[:, 8:] = np.abs(X[:, 8:])  # never negative: the power scaler's fourth root applies there
    model, _ = fit_final(kind, X, y, normalise)
    codes = keras.Input((16,))
    network = keras.Model(codes, _head(model, codes, 16))
    expected = model.predict_proba(X)
    assert np.abs(np.asarray(network.predict_on_batch(X.astype(np.float32))) - expected).max() < 1e-5
