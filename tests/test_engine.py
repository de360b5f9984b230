"""The ONNX Runtime engine: the same codes and ImageNet answers as Keras, its cache, and how it is chosen."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_images

from pipeline.backbones import engine as engine_module
from pipeline.backbones.codes import resize_policy
from pipeline.backbones.engine import frozen_network, resolve_engine
from pipeline.backbones.loading import cache_dir, forget_loaded, load_backbone
from pipeline.data.decode import decode_image
from pipeline.errors import UserError
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store


def real_pixels(backbone, photos) -> np.ndarray:
    tux = sorted((ROOT / "data" / "tuxpaint").rglob("*.png"))[::40]
    return np.stack([decode_image(p, resize_policy(backbone.spec)) for p in [*photos, *tux]])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_both_engines_give_the_same_codes_and_imagenet_answers(name, imagenet_photos, backbones):
    """One backbone of each family: Lite1 and Lite2 are Lite0's operations at other widths and sizes (their
    ImageNet answers on Keras are test_backbones.py's)."""
    backbone = backbones(name)
    pixels = real_pixels(backbone, imagenet_photos)
    layers = list(backbone.spec.feature_layers)
    keras_codes = frozen_network(backbone, "features", layers, "keras")(pixels)
    onnx = frozen_network(backbone, "features", layers, "onnx")
    assert onnx.engine == "onnx" and onnx.outputs == tuple(layers)
    for layer, a, b in zip(layers, keras_codes, onnx(pixels)):
        assert a.shape == b.shape and b.dtype == np.float32
        # The early stages are means over 112 x 112 positions, summed in float32 in each engine's order: their
        # rounding reaches 1e-4 of the codes' scale on some instruction sets, the later stages' 1e-6.
        error = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        assert error.max() < 1e-3, layer
    truth = np.array([int(p.stem.rsplit("_", 1)[1]) for p in imagenet_photos])
    top1 = {e: frozen_network(backbone, "imagenet", engine=e)(pixels)[0][:len(truth)].argmax(1)
            for e in ("keras", "onnx")}
    np.testing.assert_array_equal(top1["keras"], top1["onnx"])
    assert (top1["onnx"] == truth).sum() >= 16


def test_a_store_made_by_one_engine_is_extended_by_the_other(tmp_path):
    write_images(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "f.h5"
    extract(ExtractConfig(data=tmp_path / "data", out=out, engine="keras", progress=False, batch_size=4))
    first = read_store(out)
    first_paths, first_codes = first.paths, first.codes()  # an opened store reads nothing once replaced
    write_images(tmp_path / "more", {"a": 3, "b": 3}, seed=1)
    for f in (tmp_path / "more").rglob("*.png"):
        f.rename(tmp_path / "data" / f.parent.name / f"new_{f.name}")
    result = extract(ExtractConfig(data=tmp_path / "data", out=out, engine="onnx", progress=False, batch_size=4,
                                   workers=1))
    assert (result.extracted, result.reused, result.engine) == (6, 12, "onnx")
    mixed = read_store(out)
    runs = json.loads(mixed.attrs["runs"])
    assert [(r["engine"], r["extracted"]) for r in runs] == [("keras", 12), ("onnx", 6)]
    old = [mixed.paths.index(p) for p in first_paths]
    np.testing.assert_array_equal(mixed.codes()[old], first_codes, "reused rows are copied, not recomputed")
    extract(ExtractConfig(data=tmp_path / "data", out=tmp_path / "ref.h5", engine="keras", progress=False))
    reference = read_store(tmp_path / "ref.h5")
    assert reference.paths == mixed.paths
    assert np.abs(reference.codes() - mixed.codes()).max() < 1e-4


def graphs(kind: str = "codes") -> list[Path]:
    return sorted((cache_dir() / "onnx").glob(f"efficientnet_lite0-{kind}-*.onnx"))


def _own_cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, with the converted weights of the shared one (the graphs are converted anew)."""
    own = tmp_path / "cache"
    own.mkdir()
    for name in os.listdir(cache_dir()):
        if name.endswith(".weights.h5"):
            os.symlink(cache_dir() / name, own / name)
    monkeypatch.setenv("CNN_CODES_CACHE_DIR", str(own))
    return own


@pytest.mark.slow
def test_a_corrupt_or_half_written_cached_graph_is_rebuilt(imagenet_photos, tmp_path, monkeypatch):
    _own_cache(tmp_path, monkeypatch)  # other test workers may be reading the shared cache's graphs

    def front(backbone):  # a small graph of its own: the front up to stage3, at 64 px
        return frozen_network(backbone, "front", ("stage3",), "onnx", size=64)

    reference = load_backbone("efficientnet_lite0")
    policy = dataclasses.replace(resize_policy(reference.spec), size=64)
    pixels = np.stack([decode_image(p, policy) for p in imagenet_photos[:4]])
    expected = front(reference)(pixels)[0]
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:1000] + bytes([b[1000] ^ 1]) + b[1001:], lambda b: b""):
        (path,) = graphs("front")
        path.write_bytes(damage(path.read_bytes()))
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = path.parent / f".{path.name.rsplit('-', 1)[0]}.{dead.stdout.strip()}.tmp"
        stale.write_bytes(b"left by a killed conversion")
        forget_loaded()
        fresh = load_backbone("efficientnet_lite0")  # a new backbone: no network built in this process yet
        codes = front(fresh)(pixels)[0]
        assert np.abs(codes - expected).max() < 1e-6
        assert len(graphs("front")) == 1 and engine_module._intact(graphs("front")[0]), "one graph, bytes as named"
        assert not stale.exists(), "temporary files of dead conversions are removed"


@pytest.mark.slow
def test_two_processes_converting_at_once_both_succeed(tmp_path, monkeypatch):
    write_images(tmp_path / "data", {"a": 3, "b": 3})
    load_backbone("efficientnet_lite0")  # its converted weights are in the shared cache: each process converts graphs
    _own_cache(tmp_path, monkeypatch)
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "extract.py"), str(tmp_path / "data"),
                               "--out", str(tmp_path / f"{k}.h5"), "--engine", "onnx", "--layers", "stage3",
                               "--quiet"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert "on onnx" in stdout
    a, b = read_store(tmp_path / "0.h5"), read_store(tmp_path / "1.h5")
    np.testing.assert_array_equal(a.codes(), b.codes())
    folder = tmp_path / "cache" / "onnx"
    assert 1 <= len(list(folder.glob("*.onnx"))) <= 2 and not list(folder.glob(".*"))


def test_auto_is_onnx_on_a_cpu_and_keras_on_a_gpu(monkeypatch):
    assert resolve_engine("auto") == "onnx"
    assert resolve_engine("auto", "mixed_bfloat16") == "keras", "mixed precision runs on Keras"
    assert resolve_engine("keras") == "keras"
    with pytest.raises(UserError, match="runs float32") as e:
        resolve_engine("onnx", "mixed_float16")
    assert e.value.param == "engine"
    with pytest.raises(UserError, match="must be one of auto, keras, onnx"):
        resolve_engine("tensorrt")
    monkeypatch.setattr(engine_module, "accelerators", lambda: ["/physical_device:GPU:0"])
    assert resolve_engine("auto") == "keras"
    monkeypatch.setattr(engine_module, "onnx_available", lambda: False)
    with pytest.raises(UserError, match="pip install"):
        resolve_engine("onnx")


def test_auto_runs_the_statistics_network_on_keras(backbones):
    """Its reductions defeat ONNX Runtime's fusions (README, "Advise"), while the codes run on ONNX."""
    assert resolve_engine("auto") == "onnx"
    assert frozen_network(backbones("mobilenet_v2"), "statistics").engine == "keras"


def test_every_command_that_runs_the_network_takes_engine():
    assert engine_module.ENGINES == ("auto", "keras", "onnx"), "scripts/cli.py writes these names out"
    for script in ("extract", "predict", "advise", "evaluate", "run"):
        helped = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
                                capture_output=True, text=True)
        assert "--engine {auto,keras,onnx}" in helped.stdout, script
