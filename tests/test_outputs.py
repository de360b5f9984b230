"""No command deletes or hides what it did not create: an --out that exists and is not the command's own earlier
output is refused in one line (exit 2) unless --overwrite; an --out that holds an input is always refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import blobs, run_command, write_store

from pipeline.deploy.config import ExportConfig, PredictConfig, SuggestConfig
from pipeline.errors import UserError
from pipeline.escalate.config import AdviseConfig, RunConfig
from pipeline.finetune.config import FinetuneConfig
from pipeline.outputs import MARKER, check_out, file_name, replace_folder, write_bytes, written_by
from pipeline.report.config import EvaluateConfig
from pipeline.store.config import ExtractConfig


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of the user's: notes and a photo."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    return folder


def _untouched(folder: Path) -> bool:
    return (folder / "notes.txt").read_text() == "my notes" and (folder / "photo.jpg").is_file()


def _store(tmp_path) -> Path:
    X, _, y = blobs(n_per_class=(12, 12), dim=8)
    return write_store(tmp_path / "codes" / "f.h5", {"penultimate": X}, y, ["a", "b"])


FIT = ("--classifier", "softmax", "--folds", "2", "--duplicate-threshold", "0", "-q")


def _refused(done, flag="--out") -> bool:
    return done.returncode == 2 and done.stderr.startswith(f"error: {flag}: ") and \
        done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_fit_refuses_a_folder_of_the_users_and_replaces_it_only_when_told(tmp_path, user_folder):
    store = _store(tmp_path)
    done = run_command("fit_svm", store, "--out", user_folder, *FIT)
    assert _refused(done) and "(--overwrite)" in done.stderr and _untouched(user_folder)
    done = run_command("fit_svm", store, "--out", user_folder, *FIT,
                       "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (user_folder / "metrics.json").is_file() and not (user_folder / "notes.txt").exists()
    assert written_by(user_folder) == "fit"
    # its own earlier output is rewritten without asking, and nothing hidden is left beside it
    done = run_command("fit_svm", store, "--out", user_folder, *FIT)
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fit_refuses_the_folder_of_its_input_even_when_told_to_overwrite(tmp_path):
    store = _store(tmp_path)
    for extra in ((), ("--overwrite",)):
        done = run_command("fit_svm", store, "--out", store.parent, *FIT, *extra)
        assert _refused(done) and "holds the input" in done.stderr
        assert store.is_file()


def test_fit_refuses_an_existing_file_and_hides_nothing(tmp_path):
    store = _store(tmp_path)
    mine = tmp_path / "report.docx"
    mine.write_bytes(b"the user's document")
    done = run_command("fit_svm", store, "--out", mine, *FIT)
    assert _refused(done) and mine.read_bytes() == b"the user's document"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes", "report.docx"]


def test_extract_refuses_a_file_that_is_not_this_datas_store(tmp_path):
    mine = tmp_path / "thesis.h5"
    mine.write_bytes(b"not a store")
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="not write") as e:
        ExtractConfig(data=data, out=mine)
    assert e.value.param == "out" and e.value.remedy == "overwrite"
    other = _store(tmp_path)  # a store of another dataset: updating it here would drop all its rows
    with pytest.raises(UserError, match="not write"):
        ExtractConfig(data=data, out=other)
    ExtractConfig(data=data, out=other, overwrite=True)
    with pytest.raises(UserError, match="is the input"):
        ExtractConfig(data=data, out=tmp_path / "w.h5", weights=tmp_path / "w.h5")


def test_export_refuses_the_bundles_folder_and_a_folder_where_a_file_goes(tmp_path, user_folder):
    bundle = tmp_path / "run" / "svm.skops"
    bundle.parent.mkdir()
    bundle.write_bytes(b"PK")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds the input"):
            ExportConfig(bundle, "savedmodel", bundle.parent, overwrite=overwrite)
    with pytest.raises(UserError, match="not write"):
        ExportConfig(bundle, "savedmodel", user_folder)
    onnx = tmp_path / "model.onnx"
    onnx.mkdir()
    (onnx / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not write"):
        ExportConfig(bundle, "onnx", onnx)
    with pytest.raises(UserError, match="does not exist"):
        ExportConfig(bundle, "tflite", tmp_path / "m.tflite", quantize="int8", calibration=tmp_path / "nope")


def test_folder_stages_refuse_a_users_folder_and_accept_their_own(tmp_path, user_folder):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for make, stage in [(lambda **k: RunConfig(data=data, **k), "run"),
                        (lambda **k: FinetuneConfig(data=data, **k), "finetune"),
                        (lambda **k: EvaluateConfig(data=(data,), **k), "evaluate")]:
        with pytest.raises(UserError, match=f"that {stage} did not write"):
            make(out=user_folder)
        make(out=user_folder, overwrite=True)
        with pytest.raises(UserError, match="holds the input"):
            make(out=tmp_path, overwrite=True)
        own = tmp_path / f"{stage}_out"
        own.mkdir()
        (own / MARKER).write_text(f'{{"stage": "{stage}"}}')
        (own / "summary.md").write_text("earlier")
        make(out=own)
    with pytest.raises(UserError, match="run did not write"):  # one stage's folder is not another's
        RunConfig(data=data, out=tmp_path / "evaluate_out")


def test_predict_suggest_and_advise_refuse_files_they_did_not_write(tmp_path, user_folder):
    model = tmp_path / "m.skops"
    mine = user_folder / "notes.txt"
    with pytest.raises(UserError, match="not write"):
        PredictConfig(model, (tmp_path,), out=mine)
    with pytest.raises(UserError, match="not write") as e:
        PredictConfig(model, (tmp_path / "x.png",), explain=user_folder)
    assert e.value.param == "explain"
    with pytest.raises(UserError, match="is the input"):
        PredictConfig(model, (user_folder,), explain=user_folder, overwrite=True)
    earlier = tmp_path / "p.csv"
    earlier.write_text("path,class_1,probability_1,skipped\nx.png,a,0.9,\n")
    PredictConfig(model, (user_folder,), out=earlier)  # predict's own CSV: written again
    with pytest.raises(UserError, match="not write"):
        SuggestConfig(model, (user_folder,), out=mine)
    with pytest.raises(UserError, match="not write"):
        AdviseConfig(user_folder, json=mine)
    assert _untouched(user_folder)


def test_replace_folder_swaps_whole_and_removes_only_its_own_leftovers(tmp_path):
    out = tmp_path / "run"
    foreign = tmp_path / ".run.deadbeef.tmp"  # named like a leftover, but the user's
    foreign.mkdir()
    (foreign / "x").write_text("keep")
    replace_folder(out, "fit", lambda folder: (folder / "a.txt").write_text("1"))
    replace_folder(out, "fit", lambda folder: (folder / "b.txt").write_text("2"))
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert (foreign / "x").read_text() == "keep"

    def fails(folder):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        replace_folder(out, "fit", fails)
    assert (out / "b.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.deadbeef.tmp", "run"]


def test_check_out_allows_new_and_empty_places(tmp_path):
    check_out(tmp_path / "new", "fit")
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", "fit")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="broken symbolic link"):
        check_out(tmp_path / "dangling", "fit")


def test_heatmap_files_replace_a_planted_link_instead_of_following_it(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "heat").mkdir()
    (tmp_path / "heat" / "00001_img.png").symlink_to(target)
    write_bytes(tmp_path / "heat" / "00001_img.png", b"png")
    assert target.read_text() == "keep me"
    assert (tmp_path / "heat" / "00001_img.png").read_bytes() == b"png"
    assert not (tmp_path / "heat" / "00001_img.png").is_symlink()


def test_names_made_of_long_image_names_fit_the_file_system(tmp_path):
    name = file_name("00001_" + "é" * 250, ".png")
    assert len(name.encode()) <= 130 and name.endswith(".png")
    write_bytes(tmp_path / name, b"x")
    assert file_name("a/b", ".png") == "a_b.png"
