"""What to label next: the ranking on synthetic codes, then suggest.py on real images, from files and from a store."""

import csv
import shutil

import numpy as np
import pytest
from conftest import run_command, write_images

from pipeline.linear.label_next import PREFILTER, margins, rank


def test_margins_of_probabilities_and_of_a_binary_decision_value():
    assert np.allclose(margins(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])), [0.2, 0.7])
    assert np.allclose(margins(np.array([-0.5, 2.0])), [1.0, 4.0])


def _pool(seed=0):
    """Two tight clusters of unlabelled codes far from the labelled ones: A (15 rows) the most uncertain, B (45
    rows) a little less; labelled images far from both."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, 16))
    codes = np.concatenate([centres[0] + rng.normal(0, 4, (15, 16)), centres[1] + rng.normal(0, 4, (45, 16))])
    margin = np.concatenate([np.linspace(0.01, 0.02, 15), np.linspace(0.03, 0.3, 45)])
    scores = np.stack([0.5 + margin / 2, 0.5 - margin / 2], axis=1)
    return scores, codes.astype(np.float32), (centres[2] + rng.normal(0, 4, (5, 16))).astype(np.float32)


def test_a_batch_is_uncertain_and_spread_over_the_clusters():
    scores, codes, labelled = _pool()
    chosen = rank(scores, codes, labelled, count=2).chosen
    assert len(chosen) == 2
    assert chosen[0] < 15 <= chosen[1]  # one of each cluster (not the two most uncertain), the most uncertain first
    assert set(chosen) <= set(np.argsort(margins(scores))[:PREFILTER * 2])


def test_near_duplicates_of_labelled_images_are_left_out():
    scores, codes, labelled = _pool()
    codes[0] = labelled[0]  # the most uncertain row is a copy of a labelled image
    ranking = rank(scores, codes, labelled, count=5)
    assert 0 in ranking.duplicates and 0 not in ranking.chosen
    assert ranking.nearest[0] == pytest.approx(1.0, abs=1e-5) and ranking.nearest[1:].max() < 0.95


def test_of_near_duplicate_unlabelled_images_only_the_most_uncertain_stays():
    scores, codes, labelled = _pool()
    codes[1] = codes[0]
    chosen = rank(scores, codes, labelled, count=60).chosen  # as many as there are: every candidate
    assert 0 in chosen and 1 not in chosen and len(chosen) == 59
    assert np.all(np.diff(margins(scores)[chosen]) >= 0)


def test_bad_inputs_are_refused():
    scores, codes, labelled = _pool()
    with pytest.raises(ValueError, match="rows of scores"):
        rank(scores[:3], codes, labelled, 2)
    with pytest.raises(ValueError, match="at least 1"):
        rank(scores, codes, labelled, 0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A bundle fitted on tiny images, and a folder of new ones holding two copies of its training images."""
    root = tmp_path_factory.mktemp("suggest")
    write_images(root / "data", {"red": 10, "green": 10})
    assert run_command("extract", root / "data", "--out", root / "f.h5", "-q").returncode == 0
    assert run_command("fit_svm", root / "f.h5", "--out", root / "run", "--classifier", "softmax",
                       "-q").returncode == 0
    write_images(root / "new", {"": 12}, seed=7)
    for name in ("img_0000.png", "img_0001.png"):
        shutil.copy(root / "data" / "red" / name, root / "new" / f"copy_{name}")
    (root / "new" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_suggest_ranks_new_images_and_skips_copies_of_labelled_ones(fitted, tmp_path):
    out = tmp_path / "s.csv"
    done = run_command("suggest", fitted / "run" / "softmax.skops", fitted / "new", "--count", "5", "--out", out,
                       "-q")
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert not any("copy_" in r["path"] or "broken" in r["path"] for r in rows)
    assert [float(r["margin"]) for r in rows] == sorted(float(r["margin"]) for r in rows)
    assert {r["predicted"] for r in rows} <= {"red", "green"}
    assert "2 left out as near-duplicates of the 20 labelled ones; 1 skipped" in done.stdout

    # the same images as a store of unlabelled codes: the same ranking
    assert run_command("extract", fitted / "new", "--unlabelled", "--out", tmp_path / "new.h5", "-q").returncode == 0
    from_store = tmp_path / "t.csv"
    assert run_command("suggest", fitted / "run" / "softmax.skops", tmp_path / "new.h5", "--count", "5", "--out",
                       from_store, "-q").returncode == 0
    assert [r["path"].rsplit("/", 1)[-1] for r in _rows(from_store)] == [r["path"].rsplit("/", 1)[-1] for r in rows]


def test_suggest_refuses_what_it_cannot_use_in_one_line(fitted, tmp_path):
    moved = tmp_path / "softmax.skops"
    shutil.copy(fitted / "run" / "softmax.skops", moved)
    shutil.copy(fitted / "run" / "softmax.skops.sha256", tmp_path / "softmax.skops.sha256")
    for argv, message in [
        ((moved, fitted / "new"), "--labelled: cannot tell which images the bundle was fitted on"),
        ((fitted / "run" / "model.keras", fitted / "new"), "model: suggests for a bundle (.skops)"),
        ((fitted / "run" / "softmax.skops", tmp_path / "nothing_here"), "no images found"),
    ]:
        done = run_command("suggest", *argv, "--out", tmp_path / "x.csv", "-q")
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "x.csv").exists()
    done = run_command("suggest", moved, fitted / "new", "--labelled", fitted / "f.h5", "--out", tmp_path / "y.csv",
                       "-q")
    assert done.returncode == 0 and len(_rows(tmp_path / "y.csv")) == 12  # 15 files: 2 copies, 1 broken


def test_suggest_refuses_a_store_decoded_another_way_than_the_bundles(fitted, tmp_path):
    assert run_command("extract", fitted / "new", "--unlabelled", "--resize", "pad", "--out", tmp_path / "pad.h5",
                       "-q").returncode == 0
    done = run_command("suggest", fitted / "run" / "softmax.skops", tmp_path / "pad.h5", "--out", tmp_path / "s.csv",
                       "-q")
    assert done.returncode == 2 and "another resize" in done.stderr and "(resize pad against crop)" in done.stderr
    assert not (tmp_path / "s.csv").exists()
