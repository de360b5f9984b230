"""Numeric targets from a CSV manifest: ridge in the fit stage, a linear unit in fine-tuning, predictions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.data.discover import discover
from pipeline.deploy.config import PredictConfig
from pipeline.deploy.predict import predict_images, write_csv
from pipeline.errors import UserError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.stage import finetune
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store


@pytest.fixture(scope="module")
def brightness(tmp_path_factory):
    """Two kinds of picture (stripes or a disc) with targets near 1 and near 3: codes must carry the kind."""
    root = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    rows = ["path,target"]
    for i in range(40):
        kind = i % 2
        shape = ((xx // 6) % 2 == 0) if kind == 0 else ((xx - 24) ** 2 + (yy - 24) ** 2 < 200)
        pixels = np.where(shape[..., None], [220, 60, 40], [30, 90, 200]) + rng.normal(0, 15, (48, 48, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"img_{i:02d}.png")
        rows.append(f"img_{i:02d}.png,{1 + 2 * kind + rng.normal(0, 0.1):.4f}")
    (root / "targets.csv").write_text("\n".join(rows) + "\n")
    return root


def test_manifest_targets_reach_the_store(brightness, tmp_path):
    dataset = discover(brightness / "targets.csv")
    assert dataset.labels is None and len(dataset.targets) == 40
    extract(ExtractConfig(data=brightness / "targets.csv", out=tmp_path / "f.h5", progress=False))
    store = read_store(tmp_path / "f.h5")
    np.testing.assert_allclose(store.targets, dataset.targets)
    (tmp_path / "bad.csv").write_text("path,target\nimg_00.png,bright\n")
    (tmp_path / "img_00.png").write_bytes((brightness / "img_00.png").read_bytes())
    with pytest.raises(UserError, match="not a number"):
        discover(tmp_path / "bad.csv")


def test_ridge_with_cross_validation_and_value_predictions(brightness, tmp_path):
    extract(ExtractConfig(data=brightness / "targets.csv", out=tmp_path / "f.h5", progress=False))
    fitted = fit(FitConfig(store=tmp_path / "f.h5", out=tmp_path / "run", test_size=0.25, jobs=1))
    metrics = fitted.to_json()
    result = metrics["results"][0]
    assert metrics["task"] == "regression" and result["classifier"] == "ridge"
    assert result["r2"]["mean"] > 0.5 and 0 < result["mae"]["mean"] < 0.6  # chance: R2 about 0
    assert metrics["final"]["ridge"]["test"]["images"] == 10
    assert "R2" in fitted.format()
    predictions, description = predict_images(PredictConfig(
        tmp_path / "run" / "ridge.skops", (brightness / "img_00.png", brightness / "img_01.png"), progress=False))
    assert "predicted values" in description
    truth = {f"img_{i:02d}.png": float(line.split(",")[1]) for i, line in
             enumerate((brightness / "targets.csv").read_text().splitlines()[1:3])}
    for p in predictions:
        assert abs(p.value - truth[p.path.rsplit("/", 1)[1]]) < 0.5
    write_csv(predictions, tmp_path / "p.csv", 3)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "path,value,skipped"


@pytest.mark.slow
def test_finetuning_a_regression_head(brightness, tmp_path):
    metrics = finetune(FinetuneConfig(data=brightness / "targets.csv", out=tmp_path / "ft", image_size=64,
                                      head_epochs=2, finetune_epochs=1, unfreeze=5, batch_size=8,
                                      progress=False)).to_json()
    result = metrics["results"][0]
    assert metrics["task"] == "regression" and set(result) >= {"r2", "mae"}
    assert result["mae"]["mean"] < 0.6, "the head starts from ridge on the codes, so it is close already"
    predictions, _ = predict_images(PredictConfig(tmp_path / "ft" / "model.keras", (brightness / "img_05.png",),
                                                  progress=False))
    assert predictions[0].value is not None and np.isfinite(predictions[0].value)
