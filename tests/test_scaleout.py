"""Scaling out: extraction and prediction on a real local Ray cluster (2 CPUs)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_images
from ray_head import local_head
from test_extract import add_bad_files

import pipeline.data.discover as images_module
from pipeline.data.discover import discover
from pipeline.errors import UserError
from pipeline.scaleout import listing
from pipeline.scaleout.extract import OnCluster
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store

os.environ["RAY_AUTH_MODE"] = "token"  # the cluster and every driver, before Ray is imported
# A fresh machine has no ~/.ray/auth_token, and `ray start` makes none: the cluster and its drivers share this one.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head`` on 2 CPUs, as a user would; every test's driver joins it."""
    with local_head(tmp_path_factory.mktemp("ray"), "--num-cpus=2", "--object-store-memory=200000000") as address:
        try:
            yield address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "data"
    write_images(root, {"cat": 40, "dog": 40}, size=48)
    add_bad_files(root / "dog")
    return root


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.h5"
    extract(ExtractConfig(data=images, out=out, layers=("stage6", "penultimate"), views=("flip",), batch_size=8,
                          progress=False))
    return read_store(out)


def extract_script(data: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "extract.py"), str(data), "--out", str(out), "--ray", address,
            "--layers", "stage6", "penultimate", "--views", "flip", "--batch-size", "8", "-q"]


def assert_same_store(store, local) -> None:
    assert store.paths == local.paths and store.labels.tolist() == local.labels.tolist()
    assert sorted(store.skipped) == sorted(local.skipped)
    for layer in local.layers:
        for view in (None, *store.views):
            assert np.abs(store.codes(layer, view=view) - local.codes(layer, view=view)).max() < 1e-4


def _wait_for_shards(parts: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list(parts.glob("shard-*.npz"))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no shards appeared"
        time.sleep(0.02)


@pytest.mark.ray
def test_ray_extraction_gives_the_local_codes_and_resumes_after_a_kill(cluster, images, local_store, tmp_path,
                                                                       monkeypatch):
    """The driver killed mid-job, then run again: the finished shards are reused, the store equals the local one
    (mirror images and skipped files with their reasons too), and the driver never looks at a file itself."""
    out = tmp_path / "ray.h5"
    proc = subprocess.Popen(extract_script(images, out, cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_shards(out.with_name(out.name + ".parts"), 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    finished = sum(len(np.load(shard)["paths"]) for shard in out.with_name(out.name + ".parts").glob("shard-*.npz"))

    def no_stat_here(path):
        raise AssertionError(f"the driver looked at {path}")

    monkeypatch.setattr(listing, "fingerprint", no_stat_here)  # the cluster's listing has every file's status
    config = ExtractConfig(data=images, out=out, layers=("stage6", "penultimate"), views=("flip",), batch_size=8,
                           progress=False)
    result = extract(config, OnCluster(cluster))
    assert 0 < finished <= result.reused < 80 and result.extracted + result.reused == 80
    assert result.skipped == 5 and result.engine == "onnx"
    store = read_store(out)
    assert store.views == ("flip",), "the cluster stores each image's mirror image too"
    assert_same_store(store, local_store)
    assert "decompression bomb" in dict(store.skipped)["dog/bomb.png"]
    assert not (tmp_path / "ray.h5.parts").exists()
    again = extract(config, OnCluster(cluster))
    assert (again.extracted, again.reused) == (0, 80)


@pytest.mark.ray
def test_the_cluster_lists_a_folder_by_the_local_rules(cluster, tmp_path, monkeypatch):
    root = tmp_path / "tree"
    write_images(root, {"cat": 3, "dog": 2, "": 2}, size=16)  # two loose images at the top, outside any class
    image = root / "cat" / "img_0000.png"
    for extra in ("cat/deep/er/x.png", ".hidden/h.png", "cat/.cache/c.png"):
        (root / extra).parent.mkdir(parents=True, exist_ok=True)
        (root / extra).write_bytes(image.read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / "dog" / "Thumbs.db").write_bytes(b"")
    (root / "dog" / "link.png").symlink_to(image)
    (root / "dog" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (root / "linked").symlink_to(root / "cat")  # a linked class folder is walked, as locally
    monkeypatch.setattr(images_module, "LISTING_CHUNK", 1)  # every first-level file a part of its own
    here = discover(root)
    there = listing.ClusterListing(cluster)
    assert discover(root, lister=there) == here and here.ignored == 2 and len(here.paths) == 12
    assert here.class_names == ["cat", "dog", "linked"] and here.labels.count("linked") == 4
    for rel in here.paths:
        if rel == "dog/gone.jpg":
            with pytest.raises(OSError, match="No such file"):
                there.fingerprint(root / rel)
        else:
            assert there.fingerprint(root / rel) == images_module.fingerprint(root / rel)
    (root / "dog" / os.fsdecode(b"\xff.png")).write_bytes(image.read_bytes())
    with pytest.raises(UserError, match="not valid UTF-8"):
        discover(root, lister=there)


def test_prediction_on_ray_needs_an_output_folder(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), str(tmp_path / "m.skops"),
                           str(tmp_path), "--ray", "local"], capture_output=True, text=True)
    assert done.returncode != 0 and "predictions go to a Parquet folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_ray_prediction_rows_give_each_label_over_its_threshold():
    """Several labels per image on a cluster: the labels column holds what predict.py gives locally."""
    from pipeline.data.decode import ResizePolicy
    from pipeline.deploy.predict import Predictor
    from pipeline.scaleout.predict import Classifier

    p = np.array([[0.6, 0.4, 0.95], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    predictor = Predictor(["car", "sign", "tree"], ResizePolicy(32), "test", lambda pixels, n: p[:n],
                          label_thresholds=np.array([0.5, 0.3, 0.9]))
    classifier = Classifier.__new__(Classifier)  # the actor without loading a model
    classifier.predictor, classifier.k, classifier.threshold = predictor, 2, None
    rows = classifier({"path": np.array(["a", "b", "c"], dtype=object), "pixels": np.zeros((3, 32, 32, 3), np.uint8),
                       "error": np.array(["", "", "unreadable"], dtype=object)})
    assert list(rows["labels"]) == ["tree;car;sign", "", None]
    assert [name for name, _ in predictor.given(p[0])] == ["tree", "car", "sign"]


def test_an_address_that_does_not_answer_is_refused_in_seconds():
    from pipeline.scaleout.cluster import check_address

    started = time.perf_counter()
    for address, message in (("127.0.0.1:1", "nothing answers"), ("bogus", "not a cluster address"),
                             ("ray://127.0.0.1:1", "nothing answers")):
        with pytest.raises(UserError, match=message):
            check_address(address)
    assert time.perf_counter() - started < 30


def test_the_test_head_never_takes_a_port_a_ray_node_takes_by_default(monkeypatch):
    """A random port that is one of a node's defaults made `ray start` fail (seen once: 52365, its dashboard
    agent's): the test head draws again."""
    import ray_head

    drawn = iter([52365, 15000, 40000])
    monkeypatch.setattr(ray_head, "_any_port", lambda: next(drawn))
    assert ray_head._free_port() == 40000
