"""The evaluation grid and its report: the numbers are the fit stage's, the folds are shared, codes are reused."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_command, write_images

from pipeline.deploy.config import PredictConfig
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.report.bundle_report import evaluate_bundle
from pipeline.report.cache import store_path
from pipeline.report.config import BundleReportConfig, EvaluateConfig
from pipeline.report.grid import evaluate
from pipeline.report.render import write_report
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract

MISLABELLED = ["b/mislabelled_0.png", "b/mislabelled_1.png"]


def _dataset(root):
    write_images(root, {"a": 8, "b": 8, "c": 8}, size=40, seed=3)
    for k, name in enumerate(MISLABELLED):  # two images of class a filed under b: the gallery must show them
        shutil.copy(root / "a" / f"img_{k:04d}.png", root / name)
    return root


def _default(backbone: str) -> tuple[str, ...]:
    """The layers evaluate compares by default, joined: the backbone's default layers, as fit takes them."""
    from pipeline.backbones.registry import get_spec

    return get_spec(backbone).default_layers


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid run with one backbone, then again with a second one; both reports."""
    base = tmp_path_factory.mktemp("grid")
    data = _dataset(base / "shapes")
    # standardised codes: power-scaled, the best model here gives the two planted copies their true class at 0.56
    # and 0.46 only, under cleanlab's per-class thresholds on 26 images, and it flags nothing
    common = dict(data=(data,), features=base / "features", folds=3, repeats=1, progress=False,
                  normalise="standard")
    first = evaluate(EvaluateConfig(out=base / "report1", backbones=("efficientnet_lite0",), **common))
    lite0_store = store_path(base / "features", data, "efficientnet_lite0", _default("efficientnet_lite0"))
    mtime = lite0_store.stat().st_mtime_ns
    second = evaluate(EvaluateConfig(out=base / "report2", backbones=("efficientnet_lite0", "mobilenet_v2"),
                                     command="evaluate.py --data shapes", **common))
    paths = write_report(second, base / "report2")
    return {"base": base, "data": data, "first": first.to_json(), "second": second.to_json(), "paths": paths,
            "lite0_mtime": (mtime, lite0_store.stat().st_mtime_ns)}


def test_second_run_extracts_only_the_new_backbone(grid):
    (lite0,) = {c["backbone"]: c["extraction"] for c in grid["first"]["sections"][0]["configs"]}.values()
    assert lite0["extracted"] == 26 and lite0["images_per_second"] > 0
    again = {c["backbone"]: c["extraction"] for c in grid["second"]["sections"][0]["configs"]}
    assert again["efficientnet_lite0"]["extracted"] == 0 and again["efficientnet_lite0"]["reused"] == 26
    assert again["efficientnet_lite0"]["images_per_second"] == lite0["images_per_second"]  # quoted from the cache
    assert again["mobilenet_v2"]["extracted"] == 26
    assert grid["lite0_mtime"][0] == grid["lite0_mtime"][1]


def test_report_numbers_equal_the_fit_stage_on_the_same_folds(grid, tmp_path):
    report = json.loads(grid["paths"]["json"].read_text())
    section = report["sections"][0]
    assert len(section["configs"]) == 4
    for backbone in ("efficientnet_lite0", "mobilenet_v2"):
        store = store_path(grid["base"] / "features", grid["data"], backbone, _default(backbone))
        metrics = fit(FitConfig(store=store, out=tmp_path / backbone, folds=3, repeats=1, seed=0,
                                normalise=section["protocol"]["normalise"])).to_json()
        for r in metrics["results"]:
            mine = next(c for c in section["configs"]
                        if (c["backbone"], c["classifier"]) == (backbone, r["classifier"]))
            for key in ("accuracy", "macro_f1"):
                assert mine[key]["folds"] == r[key]["folds"]
                assert mine[key]["mean"] == pytest.approx(r[key]["mean"], abs=1e-12)
                assert mine[key]["ci95"] == pytest.approx(r[key]["ci95"], abs=1e-12)
            assert mine["chosen_C"] == r["chosen_C"]


def test_configurations_are_ranked_and_paired(grid):
    configs = grid["second"]["sections"][0]["configs"]
    means = [c["accuracy"]["mean"] for c in configs]
    assert means == sorted(means, reverse=True)
    best = np.array(configs[0]["accuracy"]["folds"])
    assert configs[0]["vs_best"] is None
    for c in configs[1:]:
        assert c["vs_best"]["folds"] == 3
        assert c["vs_best"]["mean"] == pytest.approx(float(np.mean(np.array(c["accuracy"]["folds"]) - best)))
        assert c["vs_best"]["ci95"][0] <= c["vs_best"]["mean"] <= c["vs_best"]["ci95"][1]
    nested = grid["second"]["sections"][0]["protocol"]["nested_choice"]  # each fold chose across both backbones
    assert sum(nested["chosen_candidate"].values()) == 3
    assert all(name.split(" on ")[1].split()[0] in ("efficientnet_lite0", "mobilenet_v2")
               for name in nested["chosen_candidate"])
    assert nested["accuracy"]["mean"] <= configs[0]["accuracy"]["mean"] + 1e-6  # folds are saved to 6 places
    gap = nested["accuracy"]["mean"] - configs[0]["accuracy"]["mean"]
    assert nested["vs_best"]["mean"] == pytest.approx(gap, abs=1e-6)


def test_best_configuration_details(grid):
    section = grid["second"]["sections"][0]
    d = section["best"]
    confusion = np.array(d["confusion"])
    assert confusion.sum() == section["images"] == 26
    assert confusion.sum(axis=1).tolist() == list(section["class_counts"].values())
    assert d["misclassified_total"] == confusion.sum() - np.trace(confusion)
    assert d["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert [m["support"] for m in d["per_class"].values()] == confusion.sum(axis=1).tolist()
    confidences = [m["confidence"] for m in d["misclassified"]]
    assert confidences == sorted(confidences, reverse=True)
    shown = {m["path"]: m for m in d["misclassified"]}
    for path in MISLABELLED:  # the label errors are found, with the class they really belong to
        assert shown[path]["true"] == "b" and shown[path]["predicted"] == "a"
    flagged = {m["path"]: m for m in d["label_issues"]}  # and confident learning names them as label issues
    assert MISLABELLED[0] in flagged and d["label_issues_total"] == len(flagged)
    assert all(flagged[path]["given"] == "b" and flagged[path]["suggested"] == "a" for path in MISLABELLED
               if path in flagged)
    curve = d["coverage"]  # accuracy against coverage: all images kept, it is the accuracy
    assert curve["coverage"][-1] == 1 and curve["accuracy"][-1] == pytest.approx(d["accuracy"])
    assert curve["threshold"] == sorted(curve["threshold"], reverse=True)
    assert d["reject"]["accuracy_all"] == pytest.approx(d["accuracy"]) and d["reject"]["rejected"] <= 0.05
    assert section["map"]["methods"] == ["PCA", "t-SNE"]
    assert section["advice"]["recommendation"] and section["advice"]["images"] == 26
    heat = d["heatmaps"]  # the most confident mistakes first, then right answers, each for its predicted class
    mistakes = [m for m in heat["images"] if m["mistake"]]
    assert [m["path"] for m in mistakes] == [m["path"] for m in d["misclassified"][:4]]
    assert heat["images"][:len(mistakes)] == mistakes and len(heat["images"]) == len(mistakes) + 4
    assert all(m["true"] == m["predicted"] for m in heat["images"][len(mistakes):])
    assert "occlusion" in heat["method"]


def test_report_files_hold_the_same_numbers(grid):
    paths, section = grid["paths"], grid["second"]["sections"][0]
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for c in section["configs"]:
        cell = f"{c['accuracy']['mean']:.3f} [{c['accuracy']['ci95'][0]:.3f}, {c['accuracy']['ci95'][1]:.3f}]"
        assert cell in html and cell in md
    assert html.count("data:image/png;base64,") == 4
    dup = section["best"]["duplicates"]  # each mislabelled copy is grouped with its original, in one fold
    pairs = [["a/img_0000.png", MISLABELLED[0]], ["a/img_0001.png", MISLABELLED[1]]]
    assert sorted(map(sorted, dup["groups"])) == pairs
    galleries = (len(section["best"]["misclassified"]) + len(section["best"]["label_issues"]) + 4
                 + len(section["best"]["heatmaps"]["images"]))
    assert html.count("data:image/jpeg;base64,") == galleries > 0
    assert html.count('alt="heatmap of ') == len(section["best"]["heatmaps"]["images"]) and "report.html" in md
    assert "Possibly mislabelled images" in html and "Possibly mislabelled images" in md
    nested = section["protocol"]["nested_choice"]["accuracy"]
    assert all(f"Chosen inside each outer fold</b>: accuracy {nested['mean']:.3f}" in text.replace("**", "</b>")
               for text in (html, md))
    assert "src=\"figures/" not in html and "http" not in html.split("<body>")[1]  # self-contained, offline
    for figure in json.loads(paths["json"].read_text())["sections"][0]["figures"].values():
        assert (paths["md"].parent / figure).stat().st_size > 1000 and f"]({figure})" in md
    meta = json.loads(paths["json"].read_text())["meta"]
    assert set(meta["backbones"]) == {"efficientnet_lite0", "mobilenet_v2"}
    assert all(len(b["weights_checksum"]) == 64 for b in meta["backbones"].values())
    assert meta["command"] == "evaluate.py --data shapes" and meta["seed"] == 0 and "keras" in meta["versions"]


def test_bundle_report_agrees_with_predict(grid, tmp_path):
    from pipeline.deploy.predict import predict_images

    store = store_path(grid["base"] / "features", grid["data"], "efficientnet_lite0", _default("efficientnet_lite0"))
    fit(FitConfig(store=store, out=tmp_path / "fit", layers=("penultimate",), classifiers=("softmax",), folds=3,
                  repeats=1))
    test = tmp_path / "new"
    write_images(test, {"a": 5, "c": 5}, size=40, seed=11)  # a class missing from the test set is fine
    # the store extract makes of the new images by default holds the bundle's layer among others: it is reused
    extract(ExtractConfig(data=test, out=store_path(tmp_path / "features", test, "efficientnet_lite0",
                                                    _default("efficientnet_lite0")), progress=False))
    typed = evaluate_bundle(BundleReportConfig(tmp_path / "fit" / "softmax.skops", test, tmp_path / "features",
                                               advise=False, progress=False))
    paths = write_report(typed, tmp_path / "report")
    report = typed.to_json()
    section = report["sections"][0]
    predictions, _ = predict_images(PredictConfig(tmp_path / "fit" / "softmax.skops", (test,), progress=False))
    expected = np.mean([p.top[0][0] == p.path.split("/")[-2] for p in predictions])
    assert section["configs"][0]["accuracy"]["mean"] == pytest.approx(expected)
    low, high = section["configs"][0]["accuracy"]["ci95"]
    assert low <= expected <= high
    assert section["best"]["per_class"]["b"]["support"] == 0 and section["images"] == 10
    assert (section["configs"][0]["extraction"]["extracted"], section["configs"][0]["extraction"]["reused"]) == (0, 10)
    assert not list((tmp_path / "features").glob("*_penultimate.h5")), "no second store of the same codes"
    assert report["meta"]["bundle"]["sha256"] == (tmp_path / "fit" / "softmax.skops.sha256").read_text().split()[0]
    assert "Cross-validated accuracy when the bundle was trained" in paths["html"].read_text()
    top = {Path(p.path).relative_to(test).as_posix(): p.top[0][0] for p in predictions}
    explained = section["best"]["heatmaps"]["images"]  # heatmaps of the class the bundle predicted
    assert explained and all(top[m["path"]] == m["predicted"] for m in explained)


def test_views_compete_in_the_grid_and_a_bundle_report_averages_them(tmp_path):
    from pipeline.deploy.predict import predict_images

    data = _dataset(tmp_path / "shapes")
    typed = evaluate(EvaluateConfig(data=(data,), out=tmp_path / "report", classifiers=("softmax",),
                                    views=("flip",), features=tmp_path / "features", folds=3, repeats=1,
                                    advise=False, progress=False, heatmaps=0))
    section = typed.to_json()["sections"][0]
    assert sorted(tuple(c.get("views", ())) for c in section["configs"]) == [(), ("flip",)]
    assert section["protocol"]["views"] == [[], ["flip"]]
    md = write_report(typed, tmp_path / "report")["md"].read_text()
    assert "| softmax, with flip |" in md and "| softmax |" in md
    store = store_path(tmp_path / "features", data, "efficientnet_lite0", _default("efficientnet_lite0"), ("flip",))
    fit(FitConfig(store=store, out=tmp_path / "fit", classifiers=("softmax",), views="on", folds=3, repeats=1))
    test = tmp_path / "new"
    write_images(test, {"a": 4, "c": 4}, size=40, seed=11)
    report = evaluate_bundle(BundleReportConfig(tmp_path / "fit" / "softmax.skops", test, tmp_path / "features",
                                                advise=False, progress=False, heatmaps=0)).to_json()
    config = report["sections"][0]["configs"][0]
    predictions, _ = predict_images(PredictConfig(tmp_path / "fit" / "softmax.skops", (test,), progress=False))
    assert config["views"] == ["flip"]
    assert config["accuracy"]["mean"] == pytest.approx(np.mean([p.top[0][0] == p.path.split("/")[-2]
                                                                for p in predictions]))
    assert store_path(tmp_path / "features", test, "efficientnet_lite0", _default("efficientnet_lite0"),
                      ("flip",)).is_file()


@pytest.mark.parametrize("args, message", [
    (["--data", "no/such/folder"], "--data: dataset no/such/folder does not exist"),
    (["--data", "x", "--bundle", "no/such.skops"], "bundle no/such.skops does not exist"),
    (["--data", "x", "--classifiers", "svm", "--folds", "1"], "--folds: must be from 2 to 100, not 1"),
    (["--data", "x", "--bundle", "model.keras"], "--bundle: takes a fitted classifier bundle (.skops); compare "
     "fine-tuned networks in the grid, or predict with one"),
])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    done = run_command("evaluate", *args, "--out", tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in done.stderr


HOSTILE = "<img src=x onerror=alert(1)>"


def test_class_names_made_of_html_are_escaped_in_every_report(tmp_path):
    """A class folder named as an HTML tag is shown as text, never run, in report.html and report.md."""
    write_images(tmp_path / "data", {HOSTILE: 6, "plain": 6}, size=32)
    typed = evaluate(EvaluateConfig(data=(tmp_path / "data",), out=tmp_path / "report", classifiers=("softmax",),
                                    features=tmp_path / "features", folds=2, repeats=1, progress=False, advise=False,
                                    heatmaps=0, duplicate_threshold=None))
    paths = write_report(typed, tmp_path / "report")
    html, markdown = paths["html"].read_text(), paths["md"].read_text()
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert HOSTILE not in markdown and "&lt;img" in markdown
    from pipeline.report.render import _environment

    env = _environment()
    for template in env.list_templates():
        assert env.autoescape(template) == template.endswith(".html.j2"), template


def _browser():
    """Headless Chromium through Debian's chromedriver; None where it is not installed (CI installs it)."""
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or shutil.which("chromium") is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but chromium / chromedriver are not installed")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--hide-scrollbars", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=options, service=Service(chromedriver))


@pytest.mark.browser
def test_report_renders_in_a_browser(grid, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.set_window_size(1280, 900)
        driver.get(grid["paths"]["html"].resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 200)
        screenshot = tmp_path / "report.png"
        driver.save_screenshot(str(screenshot))
        width = driver.execute_script("return document.documentElement.clientWidth")
        tables = {t.get_attribute("class"): t for t in driver.find_elements(By.TAG_NAME, "table")}
        assert {"configs", "per-class", "advice", "meta", "backbones"} <= set(tables)
        for table in tables.values():
            assert table.is_displayed() and table.size["height"] > 20
            # nothing cut off: every table fits inside its container and the page
            right, room = driver.execute_script(
                "return [arguments[0].getBoundingClientRect().right,"
                " arguments[0].parentElement.getBoundingClientRect().right]", table)
            assert right <= min(room, width) + 0.5
        rows = tables["configs"].find_elements(By.TAG_NAME, "tr")
        assert len(rows) == 1 + 4 and "efficientnet_lite0" in tables["configs"].text
        images = driver.find_elements(By.TAG_NAME, "img")
        section = grid["second"]["sections"][0]
        best = section["best"]
        galleries = len(best["misclassified"]) + len(best["label_issues"]) + 4 + len(best["heatmaps"]["images"])
        assert len(images) == 4 + galleries
        for image in images:
            assert image.is_displayed()
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        charts = [i for i in images if "chart" in i.get_attribute("class")]
        assert len(charts) == 4 and all(c.size["width"] > 300 for c in charts)
    finally:
        driver.quit()
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), float)
    assert pixels.shape[0] > 2000 and pixels.std() > 20  # a long page with content, not a blank one


@pytest.mark.slow
def test_finetuning_joins_the_grid_on_the_same_folds(grid, tmp_path):
    report = evaluate(EvaluateConfig(
        data=(grid["data"],), out=tmp_path, backbones=("efficientnet_lite0",), classifiers=("softmax",),
        finetune=True, image_size=64, epochs=(1, 1), features=grid["base"] / "features", folds=2, repeats=1,
        advise=False, progress=False, heatmaps=0)).to_json()
    section = report["sections"][0]
    kinds = {c["classifier"]: c for c in section["configs"]}
    assert set(kinds) == {"softmax", "fine-tuned"}
    tuned = kinds["fine-tuned"]
    assert len(tuned["accuracy"]["folds"]) == 2 and tuned["fit_seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "finetune" / "shapes_efficientnet_lite0").iterdir()) == [
        "fold0", "fold1"]
    other = section["configs"][1]
    assert other["vs_best"]["mean"] == pytest.approx(
        float(np.mean(np.subtract(other["accuracy"]["folds"], section["configs"][0]["accuracy"]["folds"]))))
    assert "finetune_folds" in section["protocol"]


def test_every_stage_weighed_as_blocks_shows_which_layers_carried_it(tmp_path):
    """``--layers all --normalise auto``: the joined layers compete plainly and as blocks, and the report draws
    how often each layer was kept."""
    data = _dataset(tmp_path / "shapes")
    report = evaluate(EvaluateConfig(data=(data,), out=tmp_path / "report", features=tmp_path / "features",
                                     layers=("all",), normalise="auto", classifiers=("softmax",), folds=3, repeats=1,
                                     heatmaps=0, advise=False, progress=False, engine="keras"))  # no new graph
    configs = report.to_json()["sections"][0]["configs"]
    weighed = [c for c in configs if c.get("blocks")]
    assert len(configs) == 2 and len(weighed) == 1 and weighed[0]["layer"].startswith("stem+stage1+")
    assert set(weighed[0]["blocks"]["kept"]) <= set(weighed[0]["blocks"]["names"]) and weighed[0]["blocks"]["kept"]
    paths = write_report(report, tmp_path / "report")
    markdown = paths["md"].read_text()
    assert "![layers kept per fold](figures/" in markdown and "softmax, blocks" in markdown
    assert "layers kept per fold" in paths["html"].read_text()
    assert "stem+<wbr>stage1+<wbr>stage2" in paths["html"].read_text(), "a long joined name may wrap"
