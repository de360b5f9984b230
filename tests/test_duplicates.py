"""Near-duplicates: found from real codes, kept inside one fold, outer and inner, and reported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import blobs, write_store
from PIL import Image

from pipeline.linear import cv, duplicates
from pipeline.linear.config import FitConfig
from pipeline.linear.duplicates import duplicate_sets, near_duplicate_groups
from pipeline.linear.fit import fit
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store


def test_copies_of_real_photos_are_grouped_and_distinct_photos_are_not(imagenet_photos, tmp_path):
    """JPEG re-encoded and resized copies of ImageNet photos among the other photos (the calibration's
    photo row: README, "Fit")."""
    photos = imagenet_photos
    (tmp_path / "photos").mkdir()
    copied = []
    for path in photos:
        shutil.copy(path, tmp_path / "photos" / path.name)
    for path in photos[:3]:
        with Image.open(path) as image:
            image = image.convert("RGB")
        image.save(tmp_path / "photos" / f"{path.stem}_q85.jpg", quality=85)
        image.resize((round(image.width * 0.6), round(image.height * 0.6)), Image.Resampling.BICUBIC).save(
            tmp_path / "photos" / f"{path.stem}_small.png")
        copied.append({f"photos/{name}" for name in (path.name, f"{path.stem}_q85.jpg", f"{path.stem}_small.png")})
    extract(ExtractConfig(data=tmp_path, out=tmp_path / "f.h5", progress=False))
    store = read_store(tmp_path / "f.h5")
    found = [{store.paths[i] for i in s} for s in duplicate_sets(near_duplicate_groups(store.codes()))]
    assert sorted(map(sorted, found)) == sorted(map(sorted, copied))


def test_groups_are_transitive_and_blocks_change_nothing(monkeypatch):
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(40, 16)).astype(np.float32)
    codes[1] = codes[0] + 0.01 * rng.normal(size=16)  # 0 ~ 1 ~ 2: one group
    codes[2] = codes[1] + 0.01 * rng.normal(size=16)
    codes[30] = codes[20]
    whole = near_duplicate_groups(codes)
    monkeypatch.setattr(duplicates, "_BLOCK", 7)
    np.testing.assert_array_equal(near_duplicate_groups(codes), whole)
    assert [s.tolist() for s in duplicate_sets(whole)] == [[0, 1, 2], [20, 30]]


def test_a_group_never_falls_on_both_sides_of_a_fold():
    _, _, y = blobs((40, 40, 40))
    groups = np.arange(len(y))
    groups[[1, 2, 3]] = 1  # one group of three, and a pair across classes as a manifest's group may be
    groups[[50, 90]] = 50
    for train, test in cv.outer_folds(y, 5, 3, 0, groups):
        for members in ([1, 2, 3], [50, 90]):
            assert np.isin(members, test).all() or not np.isin(members, test).any()
    for train, valid in cv._inner_splits(y, 0, groups):
        assert np.isin([1, 2, 3], valid).all() or not np.isin([1, 2, 3], valid).any()
    plain = cv.outer_folds(y, 5, 1, 0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(plain, cv.outer_folds(y, 5, 1, 0, None)))


def test_fit_groups_copies_and_reports_both_estimates(tmp_path):
    X, _, y = blobs((30, 30, 30), spread=3.0)
    X[60:75] = X[0:15]  # 15 images of class a copied into class c, mislabelled copies: grouping matters
    store = write_store(tmp_path / "f.h5", {"penultimate": X}, y, ["a", "b", "c"])
    result = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=("softmax",), folds=3, repeats=1,
                           jobs=1))
    d = result.to_json()["duplicates"]
    assert len(d["groups"]) == 15 and all(len(g) == 2 for g in d["groups"])
    assert "15 group(s) of near-duplicate images (30 images) kept inside one fold" in result.protocol.notes
    assert d["accuracy_grouped"] == result.best.primary.mean != d["accuracy_ungrouped"]
    assert "kept inside one fold: 15 near-duplicate group(s)" in result.format()
    off = fit(FitConfig(store=store, out=tmp_path / "off", classifiers=("softmax",), folds=3, repeats=1, jobs=1,
                        duplicate_threshold=None))
    assert "duplicates" not in off.to_json() and off.best.primary.mean == pytest.approx(d["accuracy_ungrouped"])


def test_the_command_lines_default_is_the_librarys():
    from pipeline.commands import evaluate as evaluate_command
    from pipeline.commands import fit_svm

    for command, required in ((fit_svm, ["f.h5", "--out", "r"]), (evaluate_command, ["--data", "d"])):
        args = command.build_parser().parse_args(required)
        assert args.duplicate_threshold == duplicates.DEFAULT_THRESHOLD
