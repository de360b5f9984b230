"""A lost node loses nothing: a Ray cluster of a head and two worker nodes on this machine, a worker node killed in
the middle of a cluster extraction (its model actors with it), the other in the middle of a cluster prediction. Both
jobs finish with every image exactly once and the local run's answers; the prediction's Parquet holds the top
classes and the reason each unreadable file was skipped."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_images
from test_extract import add_bad_files

from pipeline.deploy.config import PredictConfig
from pipeline.deploy.predict import predict_images
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store

os.environ["RAY_AUTH_MODE"] = "token"  # the cluster and every driver, before Ray is imported
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
cluster_utils = pytest.importorskip("ray.cluster_utils")

IMAGES = 96


@pytest.fixture(scope="module")
def nodes():
    """A head and two worker nodes of two CPUs each, every one a raylet of its own (Ray's test cluster)."""
    ray.shutdown()  # a cluster another test module joined
    fast_death = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                  "health_check_failure_threshold": 2}  # a killed node is known dead in a second, not in fifteen
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "_system_config": fast_death})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def _wait_for(path: Path, pattern: str, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while len(list(path.glob(pattern))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {pattern} appeared in {path}"
        time.sleep(0.05)


@pytest.mark.ray
def test_a_worker_node_killed_mid_job_loses_nothing(nodes, tmp_path):
    cluster, (first, second) = nodes
    write_images(tmp_path / "data", {"cat": IMAGES // 2, "dog": IMAGES // 2}, size=32)
    local = extract(ExtractConfig(data=tmp_path / "data", out=tmp_path / "local.h5", layers=("penultimate",),
                                  batch_size=8, progress=False))
    assert local.extracted == IMAGES
    out = tmp_path / "ray.h5"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "extract.py"), str(tmp_path / "data"), "--out",
                             str(out), "--ray", cluster.address, "--layers", "penultimate", "--batch-size", "8",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out.with_name(out.name + ".parts"), "shard-*.npz", 2, proc)
    cluster.remove_node(first, allow_graceful=False)  # its raylet, its actor and its tasks, killed
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    store, reference = read_store(out), read_store(tmp_path / "local.h5")
    assert len(store.paths) == len(set(store.paths)) == IMAGES and store.paths == reference.paths
    assert np.abs(store.codes("penultimate") - reference.codes("penultimate")).max() < 1e-4

    fit(FitConfig(store=tmp_path / "local.h5", out=tmp_path / "fit", classifiers=("softmax",), folds=2, repeats=1,
                  progress=False))
    bundle = tmp_path / "fit" / "softmax.skops"
    add_bad_files(tmp_path / "data" / "dog")  # skipped by prediction as by extraction, each with its reason
    inputs = (tmp_path / "data", tmp_path / "missing.jpg")
    expected, _ = predict_images(PredictConfig(bundle, inputs, top_k=2, progress=False))
    parquet = tmp_path / "preds.parquet"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "predict.py"), str(bundle), *map(str, inputs),
                             "--top-k", "2", "--ray", cluster.address, "--out", str(parquet), "--batch-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # the driver has started; the actors load the network
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list(tmp_path.glob(".preds.parquet.*.tmp/*.parquet")):
        assert time.monotonic() < deadline, "no prediction was written"
        time.sleep(0.05)
    cluster.remove_node(second, allow_graceful=False)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    table = pq.read_table(parquet)
    assert table.column_names == ["path", "class_1", "probability_1", "class_2", "probability_2", "skipped"]
    rows = {row["path"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows == len(expected) > IMAGES, "every image once, the skipped ones too"
    for p in expected:
        row = rows[p.path]
        if p.skipped:
            assert row["skipped"] == p.skipped and row["class_1"] is None
        else:
            assert [row["class_1"], row["class_2"]] == [name for name, _ in p.top] and row["skipped"] == ""
            assert abs(row["probability_1"] - p.top[0][1]) < 1e-5
