"""The full fine-tuning network's augmentation layer: geometry, mirrors, inference and saving."""

import keras
import numpy as np
import pytest

from pipeline.data.augment import RandomAffine


def run(layer, x, training=True):
    return keras.ops.convert_to_numpy(layer(x, training=training))


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 20, 24, 3)).astype("float32")


def test_inference_passes_images_through(images):
    np.testing.assert_array_equal(run(RandomAffine(seed=0), images, training=False), images)


def test_no_warp_is_the_identity_and_flip_mirrors_about_half(images):
    np.testing.assert_array_equal(run(RandomAffine(0, 0, 0, flip=False, seed=0), images), images)
    out = run(RandomAffine(0, 0, 0, flip=True, seed=0), images)
    same = [np.array_equal(a, b) for a, b in zip(out, images)]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(out, images)]
    assert all(s != m for s, m in zip(same, mirrored))
    assert 3 <= sum(mirrored) <= 13


def test_a_shift_moves_the_image_and_repeats_the_edge():
    ramp = np.broadcast_to(np.arange(24, dtype="float32")[None, :, None], (20, 24, 3))
    out = run(RandomAffine(0, 0, 0.2, flip=False, seed=1), np.stack([ramp] * 8))
    for image in out:
        assert np.allclose(image, image[:1])  # a horizontal ramp shifted up or down is the same ramp
        row = image[0, :, 0]
        inside = (row[:-1] > 1e-6) & (row[1:] < 23 - 1e-6)
        assert inside.sum() >= 10 and np.allclose(np.diff(row)[inside], 1, atol=1e-4)  # moved by a constant
        assert np.all(np.diff(row) >= -1e-6) and row.min() >= 0 and row.max() <= 23  # outside: the edge repeated
    offsets = out[:, 0, 12, 0] - 12
    assert np.abs(offsets).max() > 0.5 and len(np.unique(offsets.round(3))) > 4  # a shift per image


def test_a_warp_keeps_shape_and_range(images):
    out = run(RandomAffine(seed=0), images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert np.abs(out - images).mean() > 10


def test_saved_and_loaded_with_its_settings(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, RandomAffine(0.1, 0.2, 0.3, flip=False, seed=5, name="augmentation")(inputs))
    model.save(tmp_path / "m.keras")
    layer = keras.models.load_model(tmp_path / "m.keras").get_layer("augmentation")
    assert isinstance(layer, RandomAffine)
    assert (layer.rotation, layer.zoom, layer.translation, layer.flip, layer.seed) == (0.1, 0.2, 0.3, False, 5)
