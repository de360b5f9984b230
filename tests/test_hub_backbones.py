"""keras-hub's vision transformers (DINOv2, SigLIP, CLIP), offline: each family built from a tiny architecture with
random weights, saved as a local preset and loaded through the path a downloaded preset takes; then every stage."""

from __future__ import annotations

import csv
import dataclasses
import json
from functools import partial

import numpy as np
import pytest
from conftest import run_command, write_images

from pipeline.backbones import vision_transformers
from pipeline.backbones.engine import frozen_network
from pipeline.backbones.loading import load_backbone
from pipeline.backbones.registry import TORCHVISION, available, get_spec, register
from pipeline.backbones.spec import BackboneSpec, HubPreset
from pipeline.data.decode import decode_image
from pipeline.deploy.predict import load_predictor
from pipeline.deploy.runtime import ExportedModel
from pipeline.errors import UserError

keras_hub = pytest.importorskip("keras_hub")

VISION = {"patch_size": 8, "num_layers": 3, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32}
TEXT = {"vocabulary_size": 50, "embedding_dim": 16, "hidden_dim": 16, "num_layers": 1, "num_heads": 2,
        "intermediate_dim": 32}
# DINOv2's position embeddings are learnt at another size than the input, as the real ones (518 against 224)
CONFIGS = {"dinov2": VISION | {"position_embedding_shape": (48, 48)}, "siglip": VISION, "clip": VISION}
SIZE = 32


def tiny_preset(family: str, folder) -> int:
    """A tiny random-weight model of ``family`` saved as a keras-hub preset (what a download leaves); its
    parameter count."""
    m, shape = keras_hub.models, (SIZE, SIZE, 3)
    if family == "dinov2":
        model = m.DINOV2Backbone(**CONFIGS[family], image_shape=shape)
    elif family == "siglip":
        model = m.SigLIPBackbone(m.SigLIPVisionEncoder(**VISION, image_shape=shape), m.SigLIPTextEncoder(**TEXT))
    else:
        model = m.CLIPBackbone(m.CLIPVisionEncoder(**VISION, image_shape=shape), m.CLIPTextEncoder(**TEXT),
                               projection_dim=16)
    model.save_to_preset(str(folder))
    return model.count_params()


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """One registered backbone per family whose preset is a local folder, as a downloaded one is."""
    root = tmp_path_factory.mktemp("hub")
    for family in CONFIGS:
        name = f"tiny_{family}"
        if name not in available():
            params = tiny_preset(family, root / family)
            register(BackboneSpec(
                name=name, builder=partial(vision_transformers.build, family=family, config=CONFIGS[family]),
                input_size=SIZE, preprocessing=TORCHVISION, feature_layers=vision_transformers.feature_layers((1, 2)),
                weights=HubPreset(str(root / family), params), default_layers=("patches", "penultimate"),
                sequential=False, requires=("keras_hub",)))
    write_images(root / "data", {"red": 8, "green": 8, "blue": 8}, size=40)
    return root


@pytest.mark.parametrize("family", [pytest.param("dinov2", marks=pytest.mark.slow),
                                    pytest.param("siglip", marks=pytest.mark.slow), "clip"])
def test_every_stage_on_a_vision_transformer(family, presets, tmp_path):
    """extract on Keras and on ONNX Runtime (the same codes), fit, predict with a heatmap, export to ONNX (the
    same probabilities as the bundle)."""
    name = f"tiny_{family}"
    backbone = load_backbone(name)
    assert backbone.weights_source == f"keras-hub:{presets / family}"
    pixels = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    layers = tuple(get_spec(name).feature_layers)
    on_keras, on_onnx = (frozen_network(backbone, "features", layers=layers, engine=e)(pixels)
                         for e in ("keras", "onnx"))
    for layer, a, b in zip(layers, on_keras, on_onnx, strict=True):
        assert a.shape == (5, 16), layer
        assert np.abs(a - b).max() < 1e-4, layer
    assert not np.allclose(on_keras[0], on_keras[-1]), "a middle block's patches are not the summary"

    store, run = tmp_path / "f.h5", tmp_path / "run"
    assert run_command("extract", presets / "data", "--backbone", name, "--layers", "all", "--out", store,
                       "-q").returncode == 0
    done = run_command("fit_svm", store, "--out", run, "--classifier", "softmax", "--folds", "2", "--repeats", "1",
                       "--duplicate-threshold", "0", "-q")  # a random tiny network's codes are all alike
    assert done.returncode == 0, done.stderr
    bundle, image = run / "softmax.skops", presets / "data" / "blue" / "img_0000.png"
    done = run_command("predict", bundle, image, "--out", tmp_path / "p.csv", "--explain", tmp_path / "heat", "-q")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "heat").glob("*.png"))) == 1
    with open(tmp_path / "p.csv") as f:
        row = next(csv.DictReader(f))
    assert run_command("export", bundle, "--format", "onnx", "--out", tmp_path / "m.onnx").returncode == 0
    predictor = load_predictor(bundle, engine="keras")
    images = sorted((presets / "data").rglob("*.png"))[::5]
    decoded = np.stack([decode_image(f, predictor.policy) for f in images])
    expected = np.asarray(predictor.probabilities(decoded, len(decoded)))
    exported = ExportedModel(tmp_path / "m.onnx")
    assert np.abs(exported(decoded) - expected).max() < 1e-4
    assert images[0] == image and predictor.class_names[int(expected[0].argmax())] == row["class_1"]
    assert row["heatmap"]

@pytest.mark.slow
def test_fine_tuning_a_transformer_is_full_mode_and_says_so(presets, tmp_path):
    """Tail mode cuts a convnet between its stages: refused in one line; auto is full mode, whose network
    predict.py loads."""
    data = presets / "data"
    done = run_command("finetune", data, "--backbone", "tiny_dinov2", "--mode", "tail", "--out", tmp_path / "t")
    assert done.returncode == 2 and "use full mode" in done.stderr and "Traceback" not in done.stderr
    done = run_command("finetune", data, "--backbone", "tiny_dinov2", "--out", tmp_path / "f", "--epochs", "1", "1",
                       "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["protocol"]["mode"] == "full"
    done = run_command("predict", tmp_path / "f" / "model.keras", data / "red" / "img_0001.png", "-q")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


@pytest.mark.slow
def test_without_batchnorm_the_advisor_leaves_the_decision_to_the_pilot(presets, tmp_path, monkeypatch):
    """No BatchNorm statistics to compare with ImageNet's: the advisor says so, and run.py goes through."""
    from pipeline.escalate import run
    from pipeline.linear.config import FitConfig

    # a random tiny network's codes are all alike: near-duplicates are not looked for
    monkeypatch.setattr(run, "FitConfig", partial(FitConfig, duplicate_threshold=None))
    done = run_command("advise", presets / "data", "--backbone", "tiny_clip")
    assert done.returncode == 0, done.stderr
    assert "not measured (tiny_clip has no BatchNorm" in done.stdout and "the pilot decides" in done.stdout
    done = run_command("run", presets / "data", "--backbone", "tiny_dinov2", "--out", tmp_path / "run", "-q")
    assert done.returncode == 0, done.stderr
    assert "likeness to ImageNet not measured" in (tmp_path / "run" / "summary.md").read_text()


def test_a_changed_download_is_refused(presets, tmp_path):
    """A preset's weights are pinned by their sha256 at first use: the same preset with other weights after it,
    as a changed or damaged download would be, is refused in one line."""
    from pipeline.backbones.loading import forget_loaded

    folder = tmp_path / "preset"
    tiny_preset("clip", folder)
    spec = get_spec("tiny_clip")
    pinned = dataclasses.replace(spec, name="pinned_clip", weights=HubPreset(str(folder), 1))
    load_backbone(pinned)
    load_backbone(pinned)  # the same weights again
    tiny_preset("clip", folder)  # other random weights
    forget_loaded()
    with pytest.raises(UserError, match="not those first used here") as info:
        load_backbone(pinned)
    assert "\n" not in str(info.value)


def test_a_preset_of_another_architecture_is_refused_in_one_line(presets, tmp_path):
    """A local preset of another family, or of the same family at another depth, given as a backbone's weights."""
    with pytest.raises(UserError, match="cannot load weights .* into tiny_clip") as info:
        load_backbone("tiny_clip", weights=presets / "dinov2")
    assert "\n" not in str(info.value) and info.value.param == "weights"
    keras_hub.models.DINOV2Backbone(**CONFIGS["dinov2"] | {"num_layers": 2},
                                    image_shape=(SIZE, SIZE, 3)).save_to_preset(str(tmp_path / "shallow"))
    with pytest.raises(UserError, match="not tiny_dinov2's architecture: num_layers 2 \\(not 3\\)"):
        load_backbone("tiny_dinov2", weights=tmp_path / "shallow")


def test_offline_first_use_names_what_it_needs(monkeypatch):
    """No network: one line with the download's size and how to point at a local copy, at once."""
    import kagglehub
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(UserError) as info:
        load_backbone("dinov2_small")
    message = str(info.value)
    assert "\n" not in message and "about 90 MB" in message and "preset folder" in message
    assert "efficientnet_lite0" in message


@pytest.mark.slow
@pytest.mark.parametrize("name,width", [("dinov2_small", 384), ("siglip_base_patch16_224", 768)])
def test_registered_transformers_build_their_real_architectures(name, width):
    """Registered architectures of two families, built with random weights: every feature layer is there, as wide
    as the model (the others differ in their sizes only; a download of another architecture than the one
    registered is refused in one line, as tested on the tiny ones)."""
    from pipeline.backbones.codes import layer_widths

    spec = get_spec(name)
    assert layer_widths(spec) == dict.fromkeys(spec.feature_layers, width)


@pytest.mark.slow
def test_a_preset_folder_of_your_own_is_a_backbone(presets, tmp_path):
    """A keras-hub preset folder (one fine-tuned and saved, say) with a card giving its preprocessing: its own
    architecture and layers, the codes of the registered backbone that loads the same preset."""
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(presets / "dinov2", folder)
    p = get_spec("tiny_dinov2").preprocessing
    (tmp_path / "mine.json").write_text(json.dumps({"mean": list(p.mean), "std": list(p.std)}))
    spec = get_spec(str(folder))
    assert list(spec.feature_layers) == ["block1", "block2", "patches", "penultimate"] and spec.input_size == SIZE
    pixels = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    mine, registered = (frozen_network(load_backbone(n), "features", layers=("patches", "penultimate"),
                                       engine="keras")(pixels) for n in (str(folder), "tiny_dinov2"))
    for a, b in zip(mine, registered, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    done = run_command("extract", presets / "data", "--backbone", folder, "--out", tmp_path / "f.h5", "-q")
    assert done.returncode == 0, done.stderr
