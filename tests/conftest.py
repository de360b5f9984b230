"""Shared fixtures: an isolated weights cache, real data from the registries, tiny generated images."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# Under pytest-xdist each worker keeps to a core of its own (before any library sizes its thread pools by the
# cores it may use), so the workers do not fight over the cores every backend would otherwise spread over.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(_WORKER.removeprefix("gw")) % len(_cores)]})
sys.path.insert(0, str(ROOT / "data"))  # data/fetch_data.py: the registries' data sets, fetched at set-up


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Converted weights and graphs go to a fresh cache, so conversion itself is tested (subprocesses inherit
    it); the test workers of one run (pytest-xdist) share it, as processes converting at once may."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "weights-cache"
    shared.mkdir(exist_ok=True)
    os.environ["CNN_CODES_CACHE_DIR"] = str(shared)
    yield


@pytest.fixture(scope="session")
def imagenet_photos() -> list[Path]:
    """foolbox's 20 ImageNet validation photos (fetched from PyPI by ``make test`` or here)."""
    from fetch_data import fetch_foolbox

    photos = sorted((fetch_foolbox() / "imagenet").glob("imagenet_*.jpg"))
    assert len(photos) == 20
    return photos


@pytest.fixture(scope="session")
def backbones():
    """Load each backbone once per session."""
    from pipeline.backbones.loading import load_backbone

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_backbone(name)
        return loaded[name]

    return get


def write_images(root: Path, per_class: dict[str, int], size: int = 40, seed: int = 0) -> list[Path]:
    """Small distinct images: a class colour plus per-image noise and a shape."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, (name, count) in enumerate(per_class.items()):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(70 * k) % 256, (140 + 50 * k) % 256, (210 - 30 * k) % 256], np.float64)
        for i in range(count):
            arr = base + rng.normal(0, 40, (size, size, 3))
            y, x = rng.integers(0, size // 2, 2)
            arr[y:y + size // 3, x:x + size // 3] = rng.integers(0, 256, 3)
            path = folder / f"img_{i:04d}.png"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def write_store(path: Path, layers: dict[str, np.ndarray], labels, class_names, backbone="efficientnet_lite0",
                groups=None, views: dict[str, dict[str, np.ndarray]] | None = None, multilabels=None):
    """A feature store from arrays, through the same shard-and-assemble path extraction uses; ``views``: the codes
    of each view, by view and layer; ``multilabels``: several labels per image (0/1, one column per class name)."""
    from pipeline.store.layout import StoreConfig
    from pipeline.store.writer import Row, Shards, assemble

    views = views or {}
    config = StoreConfig(backbone, "checksum", tuple(layers), 224, {"mean": [0.0] * 3, "std": [1.0] * 3,
                                                                     "bgr": False}, {"size": 224, "mode": "crop"},
                         tuple(views))
    n = len(next(iter(layers.values())))
    names = [f"img_{i:05d}.png" for i in range(n)]
    shards = Shards(path, config)
    codes = {(k, view): np.asarray(v, np.float32)
             for view, by_layer in [(None, layers), *views.items()] for k, v in by_layer.items()}
    shards.write(names, np.zeros((n, 2), np.int64), codes, [])
    assemble(path, config, [Row(p, (0, 0), shards.files[0], i) for i, p in enumerate(names)],
             {k: np.asarray(v).shape[1] for k, v in layers.items()},
             None if labels is None else list(labels), class_names, [], {"weights_source": "test"}, groups=groups,
             multilabels=multilabels)
    shards.remove()
    return path


def blobs(n_per_class=(30, 30, 30), dim=32, spread=1.0, seed=0):
    """Separable Gaussian classes and, alongside, pure noise of the same shape."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (len(n_per_class), dim))
    y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per_class)])
    X = centres[y] + rng.normal(0, spread, (len(y), dim))
    return X.astype(np.float32), rng.normal(0, 1, X.shape).astype(np.float32), y


@pytest.fixture(scope="session")
def real_sets() -> dict[str, Path]:
    """The real data sets from the registries (``make test`` fetches them first; fetched here otherwise)."""
    import fetch_data

    return {"tuxpaint": fetch_data.fetch_tuxpaint(), "foolbox": fetch_data.fetch_foolbox() / "imagenet",
            "mnist": fetch_data.fetch_mnist(), "fashion_mnist": fetch_data.fetch_fashion_mnist(),
            "digits": fetch_data.fetch_digits()}


def run_command(script: str, *argv) -> subprocess.CompletedProcess:
    """``python scripts/SCRIPT.py ARGV`` run in this process, through the same entry point (parser, settings,
    one-line errors and exit codes), without paying for another TensorFlow start-up; a traceback would escape
    as the exception itself. The process boundary is tested apart (test_cli.py)."""
    from pipeline.commands import cli

    module = importlib.import_module(f"pipeline.commands.{script}")
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(module.build_parser, module.main, prog=f"python scripts/{script}.py", argv=list(map(str, argv)))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def pytest_report_header(config):
    """The machine class in the log (the suite's time and its float rounding differ between them)."""
    flags, model = set(), "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512"
    return f"machine: {model}, {isa}, {os.cpu_count()} cores"


# Each file's seconds under make test, measured (benchmarks/suite_durations.py); a file not listed is estimated from
# its tests' markers (seconds a test of each marker takes, about; an unmarked one: 1)
DURATIONS = json.loads((Path(__file__).parent / "durations.json").read_text())
MARKER_SECONDS = {"ray": 45, "slow": 15, "browser": 15}


def pytest_collection_modifyitems(items):
    """The longest files first (:data:`DURATIONS`): test workers take a file at a time, so the longest start early
    and none runs alone at the end."""
    estimate: dict[str, float] = {}
    for item in items:
        heavy = [s for m, s in MARKER_SECONDS.items() if item.get_closest_marker(m)]
        estimate[item.path.name] = estimate.get(item.path.name, 0) + max(heavy, default=1)
    items.sort(key=lambda item: -DURATIONS.get(item.path.name, estimate[item.path.name]))
