"""Full-mode fine-tuning on tiny images: outputs comparable with the fit stage, prediction, resume (tail mode:
test_tail.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_images

from pipeline.deploy.config import PredictConfig
from pipeline.deploy.predict import predict_images
from pipeline.errors import UserError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.stage import finetune


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_images(root / "data", {"red": 10, "green": 10}, size=48)
    cfg = FinetuneConfig(data=root / "data", out=root / "run", mode="full", image_size=64, head_epochs=2,
                         finetune_epochs=1, unfreeze=10, batch_size=8, progress=False)
    return cfg, finetune(cfg).to_json()


@pytest.mark.slow
def test_outputs_in_the_fit_stage_form(finetuned):
    cfg, metrics = finetuned
    for name in ("model.keras", "classes.json", "history.json", "curves.png", "metrics.json"):
        assert (cfg.out / name).exists(), name
    result = metrics["results"][0]
    assert set(result) >= {"layer", "classifier", "accuracy", "per_class", "fit_seconds"}
    acc = result["accuracy"]
    assert 0 <= acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1] <= 1
    assert metrics["image_size"] == 64 and metrics["final"]["finetune"]["validation_images"] == 4
    history = json.loads((cfg.out / "history.json").read_text())
    assert list(history) == ["head", "finetune"] and history["head"]["seconds_per_epoch"] > 0
    assert metrics["protocol"]["mode"] == "full"
    assert metrics["protocol"]["learning_rates"] == {"head": 1e-3, "later layers": 1e-4}


@pytest.mark.slow
def test_predict_accepts_the_finetuned_model(finetuned):
    cfg, _ = finetuned
    predictions, description = predict_images(PredictConfig(cfg.out / "model.keras", (cfg.data / "red",),
                                                            progress=False))
    assert "fine-tuned" in description and len(predictions) == 10
    assert all(abs(sum(p for _, p in pred.top) - 1) < 1e-4 for pred in predictions)  # 2 classes, top-2


@pytest.mark.slow
def test_a_fresh_process_loads_the_augmented_network(finetuned):
    """model.keras holds full mode's RandomAffine: predict.py, in a process that never fine-tuned, loads it."""
    cfg, metrics = finetuned
    assert metrics["protocol"]["augment"] and not metrics["protocol"]["flip"]
    code = ("import sys; from pathlib import Path; from pipeline.deploy.predict import fine_tuned_network; "
            "layer = fine_tuned_network(Path(sys.argv[1])).model.get_layer('augmentation'); "
            "print(type(layer).__name__, layer.flip)")
    done = subprocess.run([sys.executable, "-c", code, str(cfg.out / "model.keras")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["RandomAffine", "False"]


@pytest.mark.slow
def test_rerun_after_phase_one_resumes(finetuned, caplog):
    cfg, _ = finetuned
    import logging

    with caplog.at_level(logging.INFO):
        result = finetune(cfg)
    assert "phase 1 already done" in caplog.text
    assert np.isfinite(result.validation.scores["accuracy"].mean)


def test_unlabelled_folder_is_refused(tmp_path):
    write_images(tmp_path / "flat", {"": 4})
    with pytest.raises(UserError, match="no labels"):
        finetune(FinetuneConfig(data=tmp_path / "flat", out=tmp_path / "run", progress=False))


def test_head_starts_as_the_linear_probe(backbones):
    import keras

    from pipeline.backbones.factory import create_model
    from pipeline.finetune.full import augmentation
    from pipeline.finetune.head import init_head_from_probe, pooled_codes
    from pipeline.linear.cv import fit_final
    from pipeline.task import CLASSIFICATION

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 64, 64, 3)).astype(np.uint8)
    labels = np.repeat([0, 1, 2], 4)
    model = create_model(backbones("efficientnet_lite0"), "finetune", classes=3, input_size=64,
                         augmentation=augmentation(0))
    init_head_from_probe(model, pooled_codes(model, pixels, 4), labels, CLASSIFICATION, seed=0)
    codes = keras.Model(model.inputs, model.get_layer("pool").output).predict(pixels, verbose=0)
    probe, _ = fit_final("softmax", codes, labels, "standard")  # a Dense head takes standardisation only
    np.testing.assert_allclose(model.predict(pixels, verbose=0), probe.predict_proba(codes), atol=1e-4)


def test_phase_two_unfreezes_from_a_named_block(backbones):
    import keras

    from pipeline.backbones.factory import create_model, set_trainable
    from pipeline.finetune.full import first_trainable

    model = create_model(backbones("efficientnet_lite0"), "finetune", classes=2, input_size=64)
    base = model.get_layer("base")
    names = [layer.name for layer in base.layers]
    assert not base.trainable_weights and model.trainable_weights, "phase 1: only the head trains"

    def trained(cfg):
        set_trainable(model, first_trainable(base, cfg))
        return [layer.name for layer in base.layers if layer.trainable_weights]

    from_stage5 = trained(FinetuneConfig(data=None, out=None, unfreeze_from="stage5"))
    assert from_stage5 and all(names.index(n) > names.index("stage5") for n in from_stage5)
    assert not any(isinstance(base.get_layer(n), keras.layers.BatchNormalization) for n in from_stage5)
    weighted = [layer.name for layer in base.layers if layer.weights]
    last = trained(FinetuneConfig(data=None, out=None, unfreeze=4))
    assert set(last) == {n for n in weighted[-4:] if not n.startswith("_bn") and "_bn" not in n}
    with pytest.raises(UserError, match="no layer 'nope'.*stage5"):
        trained(FinetuneConfig(data=None, out=None, unfreeze_from="nope"))
