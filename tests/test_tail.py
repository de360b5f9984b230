"""Tail fine-tuning: views, the layerwise optimizer, the activation cache, and the cached tail against pixels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import write_images

from pipeline.backbones.codes import resize_policy
from pipeline.backbones.engine import frozen_network
from pipeline.backbones.factory import create_model
from pipeline.data.discover import fingerprint
from pipeline.data.views import ShiftedViews
from pipeline.deploy.config import PredictConfig
from pipeline.deploy.predict import predict_images
from pipeline.errors import UserError
from pipeline.finetune.averaging import MIXES, WeightAverage, interpolate
from pipeline.finetune.cache import CachedViews, CacheKey, build_cache
from pipeline.finetune.config import FULL_SIZE_BELOW, FinetuneConfig
from pipeline.finetune.optimizers import make_optimizer
from pipeline.finetune.stage import finetune
from pipeline.finetune.tail import default_size, tail_network


def test_views_shift_within_reach_and_flip_only_when_asked():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    paths = ["a.png", "b.png", "c.png"]
    views = ShiftedViews(count=4, flip=True, shift=0.25)
    assert views.apply(0, pixels, paths) is pixels
    one = views.apply(1, pixels, paths)
    offsets = views.offsets(1, paths, 16)
    assert np.abs(offsets).max() <= 4 and offsets.any()
    for i, (dy, dx) in enumerate(offsets):  # the view is the mirrored shift: the overlap matches the original
        unflipped = one[i, :, ::-1]
        y0, x0 = max(0, -dy), max(0, -dx)
        np.testing.assert_array_equal(unflipped[y0:16 - max(0, dy), x0:16 - max(0, dx)],
                                      pixels[i, y0 + dy:16 - max(0, dy) + dy, x0 + dx:16 - max(0, dx) + dx])
    two = dataclasses.replace(views, flip=False).apply(1, pixels, paths)
    np.testing.assert_array_equal(two, one[:, :, ::-1])
    # a view depends on the image's path, not on the batch it came in
    np.testing.assert_array_equal(views.apply(2, pixels[1:2], paths[1:2])[0], views.apply(2, pixels, paths)[1])


def test_blocks_step_slower_than_the_head():
    fast, slow = keras.Variable(np.zeros(3), name="fast"), keras.Variable(np.zeros(3), name="slow")
    optimizer = make_optimizer("adam", 1e-2, slow={slow.path}, slow_factor=0.1)
    optimizer.apply([keras.ops.ones(3), keras.ops.ones(3)], [fast, slow])
    step_fast, step_slow = -keras.ops.convert_to_numpy(fast), -keras.ops.convert_to_numpy(slow)
    np.testing.assert_allclose(step_fast, 1e-2, rtol=1e-3)  # Adam's first step is the learning rate
    np.testing.assert_allclose(step_slow, 1e-3, rtol=1e-3)


class _CountingFront:
    """A front that records how many images it ran, and can fail after some batches."""

    def __init__(self, network, fail_after=None):
        self.network, self.images, self.calls, self.fail_after = network, 0, 0, fail_after
        self.engine = network.engine

    def __call__(self, pixels):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        self.images += len(pixels)
        return self.network(pixels)


def test_small_sets_train_at_full_resolution(backbones):
    backbone = backbones("efficientnet_lite0")
    assert default_size(backbone, FULL_SIZE_BELOW - 1) == backbone.spec.input_size == 224
    assert default_size(backbone, FULL_SIZE_BELOW) == 160, "5/7 of the side, in steps of 32"


def test_the_cache_reuses_valid_rows_and_survives_a_kill(tmp_path, backbones):
    backbone = backbones("efficientnet_lite0")
    files = write_images(tmp_path / "data", {"a": 4, "b": 4}, size=40)
    paths = [str(f.relative_to(tmp_path / "data")) for f in files]
    policy = dataclasses.replace(resize_policy(backbone.spec), size=64)
    key = CacheKey(backbone.spec.name, backbone.weights_checksum, "stage5", policy, ShiftedViews(3, seed=1))
    front = frozen_network(backbone, "front", ("stage5",), "keras", size=64)
    folder = tmp_path / "cache"

    def build(wanted, counting):
        cache, failed = build_cache(folder, key, counting, files, paths, [fingerprint(f) for f in files], wanted,
                                    batch_size=3, progress=False)
        return cache, failed

    first = _CountingFront(front)
    cache, failed = build([3, 3, 3, 1, 1, 1, 1, 1], first)
    assert not failed and first.images == 1 + 8 + 2 * 3 and cache.shape == (4, 4, 112)  # 1: the shape probe
    before = {k: cache.read(k, paths[:3]) for k in range(3)}
    np.testing.assert_allclose(before[0], front(policy_pixels(files[:3], policy))[0], rtol=2e-3, atol=2e-3)
    assert not np.allclose(before[0], before[1]), "view 1 is shifted"
    cache.close()

    files[0].write_bytes(files[4].read_bytes())  # one image changes
    killed = _CountingFront(front, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        build([3, 3, 3, 3, 1, 1, 1, 1], killed)
    assert not list(folder.glob(".*.tmp")), "a killed build leaves no temporary file"
    with h5py.File(key.file(folder, 1), "r") as f:
        assert len(f["paths"]) == 3, "the previous file stands"

    again = _CountingFront(front)
    cache, _ = build([3, 3, 3, 3, 1, 1, 1, 1], again)
    assert again.images == 1 + 3 + 2, "the changed image's 3 views and the other new image's 2 extra views"
    for k in range(3):
        np.testing.assert_array_equal(cache.read(k, paths[1:3]), before[k][1:3])
    cache.close()

    with h5py.File(key.file(folder, 2), "r+") as f:  # a row rewritten behind its digest (fletcher32 recomputed)
        f["activations"][1] = 0
    cache, _ = build([3, 3, 3, 3, 1, 1, 1, 1], _CountingFront(front))  # the damaged file is computed again
    np.testing.assert_array_equal(cache.read(2, paths[1:3]), before[2][1:3])
    cache.close()
    with h5py.File(key.file(folder, 2), "r+") as f:
        f["activations"][1] = 0
    opened = CachedViews([h5py.File(key.file(folder, k), "r") for k in range(3)])
    with pytest.raises(UserError, match="activations fails its sha256 check; delete it and rerun"):
        opened.read(2, paths[:3])
    opened.close()


def policy_pixels(files, policy):
    from pipeline.data.decode import decode_image

    return np.stack([decode_image(f, policy) for f in files])


def test_the_cached_tail_is_the_saved_network_on_pixels(tmp_path, backbones):
    """What trains from the cache is model.keras: the same outputs from pixels, to float16 rounding."""
    backbone = backbones("efficientnet_lite0")
    model = create_model(backbone, "finetune", classes=3, input_size=64)
    head = model.get_layer("head")
    head.set_weights([w + np.random.default_rng(0).normal(0, 0.05, w.shape) for w in head.get_weights()])
    tail, codes, first = tail_network(model, backbone, "stage5")
    assert first.startswith("_blocks") and tail.input.shape[1:] == (4, 4, 112)
    pixels = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3)).astype(np.uint8)
    activations = frozen_network(backbone, "front", ("stage5",), "auto", size=64)(pixels)[0]
    cached = tail.predict_on_batch(activations.astype(np.float16).astype(np.float32))
    model.save(tmp_path / "model.keras")
    direct = keras.models.load_model(tmp_path / "model.keras").predict_on_batch(pixels)
    np.testing.assert_allclose(cached, direct, atol=2e-3)


@pytest.fixture(scope="module")
def tail_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tail")
    write_images(root / "data", {"red": 10, "green": 10, "blue": 10}, size=40)
    cfg = FinetuneConfig(data=root / "data", out=root / "run", image_size=64, views=3, flip=True, tail_epochs=3,
                         batch_size=8, progress=False)
    return cfg, finetune(cfg).to_json()


@pytest.mark.slow
def test_tail_mode_is_the_default_on_a_cpu_and_writes_the_fit_stage_form(tail_run):
    cfg, metrics = tail_run
    assert metrics["protocol"]["mode"] == "tail" and metrics["protocol"]["cut"] == "stage5"
    assert metrics["protocol"]["learning_rates"] == {"head": 1e-3, "blocks": pytest.approx(3e-4)}
    history = json.loads((cfg.out / "history.json").read_text())
    assert list(history) == ["tail"] and 1 <= len(history["tail"]["loss"]) <= 3
    views = sorted(p.name.rsplit("-", 1)[1] for p in (cfg.out / "activations").glob("*.h5"))
    assert views == ["view0.h5", "view1.h5", "view2.h5"]
    with h5py.File(next((cfg.out / "activations").glob("*view2.h5")), "r") as f:
        assert f["activations"].dtype == np.float16 and len(f["paths"]) == 24, "views 1+ of the training split"
    acc = metrics["results"][0]["accuracy"]["mean"]
    assert acc > 0.6, f"three colours tell apart after tail fine-tuning (chance 0.33), got {acc}"


@pytest.mark.slow
def test_tail_model_predicts_from_pixels(tail_run):
    cfg, _ = tail_run
    predictions, description = predict_images(PredictConfig(cfg.out / "model.keras", (cfg.data / "blue",),
                                                            progress=False))
    assert "fine-tuned" in description and len(predictions) == 10
    assert sum(pred.top[0][0] == "blue" for pred in predictions) >= 8


@pytest.mark.slow
def test_a_rerun_reuses_the_cache(tail_run, monkeypatch):
    cfg, _ = tail_run
    import pipeline.finetune.cache as activation_cache

    def no_compute(*args, **kwargs):
        raise AssertionError("every view was cached")

    monkeypatch.setattr(activation_cache, "_compute", no_compute)
    assert finetune(dataclasses.replace(cfg, tail_epochs=1)).validation_images == 6


@pytest.mark.slow
def test_training_that_only_hurts_keeps_the_probe(tail_run):
    cfg, _ = tail_run
    result = finetune(dataclasses.replace(cfg, learning_rate=100.0, tail_epochs=2))  # steps that wreck the net
    history = json.loads((cfg.out / "history.json").read_text())["tail"]
    assert history["kept_start"] and max(history["val_accuracy"]) <= history["val_accuracy_before"]
    assert result.validation.scores["accuracy"].mean == pytest.approx(history["val_accuracy_before"])


def test_the_mix_of_start_and_trained_weights_is_the_best_on_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    net.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = [np.array([[1, -1], [0, 0], [0, 0], [0, 0]], "float32"), np.zeros(2, "float32")]  # wrong way round
    trained = [-start[0] + rng.normal(0, 0.3, (4, 2)).astype("float32"), np.zeros(2, "float32")]
    net.set_weights(start)
    before = net.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    net.set_weights(trained)
    mix, by_mix = interpolate(net, start, (x, y), "accuracy", False, before)
    assert by_mix["0.0"] < 0.2 and mix > 0.5, "the start is wrong on most rows: mostly trained weights win"
    assert by_mix[str(mix)] == max(by_mix.values()) and set(by_mix) == {str(m) for m in MIXES}
    for got, a, b in zip(net.get_weights(), start, trained):
        np.testing.assert_allclose(got, (1 - mix) * a + mix * b, atol=1e-6)


def test_the_weight_average_is_the_mean_of_the_later_epochs_and_survives_a_restart(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    net.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(net.get_weights()))
    path = tmp_path / "backup" / "average.npz"
    net.fit(x, y, epochs=5, batch_size=8, callbacks=[record, WeightAverage(path, first=2)], verbose=0)
    for got, *epochs in zip(net.get_weights(), *seen):
        np.testing.assert_allclose(got, np.mean(epochs[2:], axis=0), atol=1e-6)
    assert not np.allclose(seen[-1][0], net.get_weights()[0]), "the average is not the last epoch's weights"
    assert not path.exists(), "the saved mean goes once training ends"

    interrupted = WeightAverage(path, first=0)  # an epoch ends, then the process dies
    interrupted.set_model(net)
    interrupted.on_epoch_end(0)
    resumed = WeightAverage(path, first=0)
    resumed.set_model(net)
    resumed.on_train_begin()
    assert resumed.count == 1 and all(np.array_equal(a, b) for a, b in zip(resumed.mean, net.get_weights()))


def test_a_resumed_training_keeps_its_whole_history_and_stops_when_it_would_have():
    """Killed after two epochs and resumed (BackupAndRestore), training reports every epoch, numbered from the
    first, and early stopping counts the epochs before the interruption: it stops where an uninterrupted run does."""
    import tempfile

    from pipeline.finetune.epochs import EpochLog, ResumedEarlyStopping

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 2, 32)

    def train(folder: Path, stop_after: int | None = None) -> dict:
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        net.compile(optimizer=keras.optimizers.SGD(1e-9), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])  # it learns nothing: early stopping waits out its patience
        log = EpochLog(folder / "epochs.json")

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == stop_after:
                    raise KeyboardInterrupt

        net.fit(x, y, validation_data=(x, y), epochs=10, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(str(folder / "backup")), log,
            ResumedEarlyStopping(log, monitor="val_accuracy", patience=3), Kill()])
        return log.history()

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        whole = train(Path(a))
        with pytest.raises(KeyboardInterrupt):
            train(Path(b), stop_after=2)
        resumed = train(Path(b))
    assert len(whole["loss"]) == 4  # the first epoch, then three without improvement
    assert len(resumed["loss"]) == len(whole["loss"])
    np.testing.assert_allclose(resumed["val_accuracy"], whole["val_accuracy"])


def test_the_backup_of_another_network_is_set_aside_not_loaded(tmp_path):
    """A rerun with another version of the network (another release, other settings) would fail to load the
    backup: it starts over instead, and the same network takes its backup up."""
    from pipeline.finetune.epochs import EpochLog, backup

    def network(units):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(units, name="head")(inputs))

    folder, log, average = tmp_path / "backup" / "tail", EpochLog(tmp_path / "backup" / "epochs.json"), \
        tmp_path / "backup" / "average.npz"
    backup(network(3), folder, log, average)
    for path in (folder / "latest.weights.h5", log.path, average):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("state")
    backup(network(3), folder, log, average)  # the same network, built anew: its state is kept
    assert (folder / "latest.weights.h5").exists() and log.path.exists() and average.exists()
    backup(network(4), folder, log, average)
    assert not folder.exists() and not log.path.exists() and not average.exists()
