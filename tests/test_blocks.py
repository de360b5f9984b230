"""Every stage as a block: scaled to count alike, the blocks that carry the signal chosen on training rows alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import blobs, write_store

from pipeline.errors import UserError
from pipeline.linear.blocks import Blocks, BlockScaler, competing, select_blocks
from pipeline.linear.bundle import load_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit

SIZES = (16, 8, 64)  # a narrow block of noise, a signal block, a wide block of noise
NAMES = ("stem", "stage4", "penultimate")


def _codes(n_per_class=(40, 40, 40), seed=0):
    """Never-negative codes as a network's: the signal in the middle block only."""
    signal, _, y = blobs(n_per_class, dim=SIZES[1], spread=2.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    noise = [np.abs(rng.normal(0, 1, (len(y), s))) for s in (SIZES[0], SIZES[2])]
    return np.hstack([noise[0], np.abs(signal), noise[1]]).astype(np.float32), y


def test_each_block_counts_alike_and_only_kept_blocks_remain():
    X, y = _codes()
    Z = BlockScaler(SIZES).fit_transform(X)
    spans = np.split(np.arange(X.shape[1]), np.cumsum(SIZES)[:-1])
    variances = [Z[:, s].var(axis=0).sum() for s in spans]  # 16 or 64 wide alike, the whole as wide as before
    np.testing.assert_allclose(variances, X.shape[1] / len(SIZES), rtol=1e-6)
    kept = BlockScaler(SIZES, keep=(False, True, True)).fit(X).transform(X)
    assert kept.shape == (len(X), SIZES[1] + SIZES[2])
    np.testing.assert_allclose(kept[:, :SIZES[1]].var(axis=0).sum(), kept.shape[1] / 2, rtol=1e-6)
    np.testing.assert_allclose(np.corrcoef(kept[:, 0], Z[:, SIZES[0]])[0, 1], 1.0)  # the same column, rescaled
    with pytest.raises(ValueError, match="do not make codes"):
        BlockScaler((16, 8)).fit(X)


def test_the_block_that_carries_the_signal_is_picked_and_noise_is_not():
    X, y = _codes()
    chosen, relevance = select_blocks(Blocks(SIZES, NAMES), X, y)
    assert chosen.kept() == ("stage4",), relevance
    assert relevance.argmax() == 1 and relevance.sum() == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(y)  # nothing carries the labels: some block, not a crash
    assert len(select_blocks(Blocks(SIZES, NAMES), X, shuffled)[0].kept()) >= 1


def test_competing_scalings():
    widths = {"stem+stage4+penultimate": SIZES, "penultimate": (64,)}
    both = competing("auto", widths)
    assert both["penultimate"] == ("power",) and both["stem+stage4+penultimate"][0] == "power"
    assert competing("blocks", widths)["stem+stage4+penultimate"] == (Blocks(SIZES, NAMES),)
    assert competing("power", widths) == "power"


def test_fit_weighs_blocks_inside_each_fold_and_saves_what_it_kept(tmp_path):
    X, y = _codes((60, 60, 60))
    layers = {name: X[:, s:e] for name, s, e in zip(NAMES, np.cumsum((0,) + SIZES[:-1]), np.cumsum(SIZES))}
    store = write_store(tmp_path / "f.h5", layers, y, ["a", "b", "c"])
    result = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=("softmax",), normalise="auto",
                           repeats=1, jobs=1, progress=False))
    weighed = next(r for r in result.results if r.blocks)
    plain = next(r for r in result.results if not r.blocks)
    assert weighed.layer == plain.layer == "+".join(NAMES) and len(result.results) == 2
    folds = result.protocol.outer_folds
    assert weighed.kept["stage4"] == folds and weighed.kept.get("penultimate", 0) < folds / 2, weighed.kept
    assert "blocks" in result.format() and f"stage4 kept {folds}x" in result.format()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(r.get("blocks", {}).get("kept") == weighed.kept for r in saved["results"])



def test_a_weighed_model_saves_its_blocks_predicts_and_exports(tmp_path):
    import keras

    from pipeline.deploy.export import _head

    X, y = _codes((60, 60, 60))
    layers = {name: X[:, s:e] for name, s, e in zip(NAMES, np.cumsum((0,) + SIZES[:-1]), np.cumsum(SIZES))}
    store = write_store(tmp_path / "f.h5", layers, y, ["a", "b", "c"])
    result = fit(FitConfig(store=store, out=tmp_path / "run", normalise="blocks", repeats=1, jobs=1,
                           progress=False))
    assert all(r.blocks for r in result.results) and result.final["svm"].hyper["blocks"] == ["stage4"]
    for kind in ("svm", "softmax"):
        bundle = load_bundle(tmp_path / "run" / f"{kind}.skops")
        estimator = getattr(bundle.estimator, "calibrated_classifiers_", [None])[0]
        scale = (estimator.estimator if estimator else bundle.estimator).named_steps["scale"]
        assert bundle.normalise == "blocks" and scale.columns_.tolist() == list(range(16, 24))
        proba = bundle.estimator.predict_proba(X)
        assert (proba.argmax(axis=1) == y).mean() > 0.9
        codes = keras.Input((X.shape[1],))
        exported = keras.Model(codes, _head(bundle.estimator, codes, X.shape[1]))
        np.testing.assert_allclose(exported.predict(X[:16], verbose=0), proba[:16], atol=1e-5)


def test_blocks_are_for_classes_only(tmp_path):
    X, y = _codes()
    store = write_store(tmp_path / "f.h5", {"a": X[:, :16], "b": X[:, 16:]}, y, ["a", "b", "c"])
    multi = write_store(tmp_path / "m.h5", {"a": X[:, :16], "b": X[:, 16:]}, None, ["x", "y"],
                        multilabels=np.stack([y == 0, y == 1], axis=1).astype(np.uint8))
    with pytest.raises(UserError, match="blocks for classes only"):
        fit(FitConfig(store=multi, out=tmp_path / "m", normalise="blocks", progress=False))
    with pytest.raises(UserError, match="normalise"):
        FitConfig(store=store, out=tmp_path / "x", normalise="every")
