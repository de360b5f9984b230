"""Heatmaps: occlusion finds the region that decides the class, with a toy model and with a real bundle."""

import csv

import numpy as np
import pytest
from conftest import run_command
from PIL import Image

from pipeline.deploy.explain import GRID, explained, occlusion, overlay

SIZE = 112
CELL = SIZE // GRID  # 16 px


def _image(square: bool, seed: int) -> np.ndarray:
    """Grey noise; with ``square``, a white square filling the grid cell (1, 5)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 140, (SIZE, SIZE, 3)).astype(np.uint8)
    if square:
        pixels[CELL:2 * CELL, 5 * CELL:6 * CELL] = 255
    return pixels


def test_occlusion_peaks_where_a_toy_model_looks():
    def probabilities(batch, n):  # class 1 is "bright in cell (1, 5)"
        bright = batch[:, CELL:2 * CELL, 5 * CELL:6 * CELL].mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - bright, bright], axis=1)

    heat = occlusion(probabilities, _image(True, 0), target=1, batch_size=8)
    assert heat.shape == (GRID, GRID)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (1, 5)
    assert heat[1, 5] > 0.3 and np.abs(np.delete(heat.ravel(), 1 * GRID + 5)).max() < 1e-9
    drawn = np.asarray(overlay(_image(True, 0), heat))
    assert drawn.shape == (SIZE, SIZE, 3)
    assert np.abs(drawn[CELL + 8, 5 * CELL + 8].astype(int) - 255).max() > 20  # coloured where the evidence is
    assert np.array_equal(drawn[100, 8], _image(True, 0)[100, 8])  # untouched far from it
    shown = explained(_image(True, 0), heat, "square")  # as a person reads it
    assert shown.width > 2 * SIZE and shown.height > SIZE
    page = np.asarray(shown)
    top = next(r for r in range(page.shape[0]) if np.array_equal(page[r, 8:8 + SIZE], _image(True, 0)[0]))
    assert np.array_equal(page[top:top + SIZE, 8:8 + SIZE], _image(True, 0)), "the image itself, beside its overlay"
    assert (page[:top] < 128).any() and (page[top + SIZE:] < 128).any(), "a line above and below, in black"


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """A bundle telling images with a white square in one cell from plain noise."""
    root = tmp_path_factory.mktemp("squares")
    for name, square in (("square", True), ("plain", False)):
        (root / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(_image(square, 100 * square + i)).save(root / "data" / name / f"{i}.png")
    assert run_command("extract", root / "data", "--out", root / "f.h5", "-q").returncode == 0
    assert run_command("fit_svm", root / "f.h5", "--out", root / "run", "--classifier", "softmax",
                       "-q").returncode == 0
    return root


def test_a_real_bundles_heatmap_peaks_on_the_deciding_region(squares):
    from pipeline.deploy.predict import load_predictor

    predictor = load_predictor(squares / "run" / "softmax.skops")
    target = predictor.class_names.index("square")
    decoded = np.asarray(Image.fromarray(_image(True, 999)).resize((predictor.policy.size,) * 2, Image.NEAREST))
    heat = occlusion(predictor.probabilities, decoded, target, batch_size=32)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (1, 5)


def test_predict_explain_writes_one_heatmap_per_image(squares, tmp_path):
    Image.fromarray(_image(True, 500)).save(tmp_path / "new.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "p.csv"
    done = run_command("predict", squares / "run" / "softmax.skops", tmp_path / "new.png", tmp_path / "broken.jpg",
                       "--explain", tmp_path / "heat", "--out", out, "-q")
    assert done.returncode == 0, done.stderr
    with open(out) as f:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert rows["new.png"]["class_1"] == "square"
    heatmap = rows["new.png"]["heatmap"]
    width, height = Image.open(heatmap).size  # the image and its overlay side by side, a scale, the class named
    assert width > 2 * 224 and height > 224 and rows["broken.jpg"]["heatmap"] == ""
    assert "wrote 1 heatmaps to" in done.stdout
    done = run_command("predict", squares / "run" / "softmax.skops", tmp_path / "new.png", "--explain",
                       tmp_path / "heat", "--ray", "local", "--out", tmp_path / "p.parquet")
    assert done.returncode == 2 and "--explain: heatmaps are drawn on this machine" in done.stderr


def test_explaining_survives_long_names_and_never_follows_a_planted_link(squares, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    long_name = "x" * 250 + ".png"
    Image.fromarray(_image(True, 5)).save(images / long_name)
    Image.fromarray(_image(False, 6)).save(images / "plain.png")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    heat = tmp_path / "heat"
    heat.mkdir()
    (heat / "00001_plain.png").symlink_to(precious)  # where predict will write the first heatmap
    done = run_command("predict", squares / "run" / "softmax.skops", images / "plain.png", images / long_name,
                       "--explain", heat, "--overwrite", "-q")
    assert done.returncode == 0, done.stderr
    assert precious.read_text() == "keep me" and not (heat / "00001_plain.png").is_symlink()
    assert len(list(heat.glob("*.png"))) == 2
