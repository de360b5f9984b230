"""The advisor on real data from both sides of ImageNet, and on the images behind a store."""

from __future__ import annotations

import pytest
from conftest import write_images

from pipeline.errors import UserError
from pipeline.escalate.advise import (
    FINETUNE_FORWARD_PASSES,
    SIMILAR_DIVERGENCE,
    Strategy,
    advise,
)
from pipeline.escalate.config import AdviseConfig
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.reader import read_store


@pytest.mark.parametrize("name,similar", [
    ("tuxpaint", True), ("foolbox", True), ("mnist", False), ("fashion_mnist", False),
])
@pytest.mark.slow
def test_similarity_to_imagenet_on_real_sets(real_sets, name, similar):
    advice = advise(AdviseConfig(real_sets[name], sample=60))
    assert advice.similar is similar
    # Not just on the right side: clear of the threshold by a third of its value at least.
    margin = abs(advice.divergence - SIMILAR_DIVERGENCE) / SIMILAR_DIVERGENCE
    assert margin > 0.33, advice.divergence


@pytest.mark.slow
def test_verdicts_for_the_two_calibration_cases(real_sets):
    tux = advise(AdviseConfig(real_sets["tuxpaint"], sample=40))
    assert (tux.images, tux.classes, tux.smallest_class, tux.small) == (220, 7, 11, True)
    assert tux.strategy is Strategy.LINEAR_PENULTIMATE and not tux.strategy.finetunes
    fashion = advise(AdviseConfig(real_sets["fashion_mnist"], sample=40))
    assert (fashion.images, fashion.classes, fashion.small, fashion.far) == (3000, 10, False, False)
    assert fashion.strategy is Strategy.LINEAR_EARLIER, "unlike ImageNet but not far: the codes won in the table"
    mnist = advise(AdviseConfig(real_sets["mnist"], sample=40))
    assert (mnist.images, mnist.small, mnist.far) == (5000, False, True)
    assert mnist.strategy is Strategy.FINETUNE_WHOLE and mnist.to_json()["recommendation"] == mnist.strategy.value
    digits = advise(AdviseConfig(real_sets["digits"], sample=40))
    assert (digits.images, digits.small, digits.far) == (1797, True, True)
    assert digits.strategy is Strategy.LINEAR_EARLIER, "fine-tuning tied with the codes on digits in the table"
    text = fashion.format()
    assert "BatchNorm divergence" in text and "similar below 0.1" in text and "under 2500 images" in text


@pytest.mark.slow
def test_a_budget_turns_a_large_set_to_the_linear_strategy(real_sets):
    free = advise(AdviseConfig(real_sets["mnist"], sample=64))
    assert free.images_per_second > 1 and free.finetune_minutes > 0 and not free.over_budget
    assert free.strategy is Strategy.FINETUNE_WHOLE
    # the estimate is the set's size times a fixed cost in forward passes at the measured speed
    assert free.finetune_minutes == pytest.approx(5000 * FINETUNE_FORWARD_PASSES / free.images_per_second / 60)
    tight = advise(AdviseConfig(real_sets["mnist"], sample=64, budget=free.finetune_minutes / 4))
    assert tight.over_budget and tight.strategy is Strategy.LINEAR_EARLIER
    assert "over the budget" in tight.format() and tight.to_json()["over_budget"] is True
    roomy = advise(AdviseConfig(real_sets["mnist"], sample=64, budget=free.finetune_minutes * 4))
    assert roomy.strategy is Strategy.FINETUNE_WHOLE
    with pytest.raises(UserError, match="positive"):
        advise(AdviseConfig(real_sets["mnist"], sample=8, budget=0))


def test_advice_for_the_images_behind_a_store(tmp_path):
    write_images(tmp_path / "data", {"a": 4, "b": 4})
    extract(ExtractConfig(data=tmp_path / "data", out=tmp_path / "f.h5", backbone="mobilenet_v2", progress=False))
    advice = advise(AdviseConfig(tmp_path / "f.h5", sample=8))
    assert advice.backbone == "mobilenet_v2" and advice.images == 8 and advice.sampled == 8
    assert set(advice.transferability) == set(read_store(tmp_path / "f.h5").layers)  # cheap scores, every layer
    assert "k-NN accuracy" in advice.format() and "transferability" in advice.to_json()
    (tmp_path / "data" / "a" / "img_0000.png").unlink()
    with pytest.raises(UserError, match="not at"):
        advise(AdviseConfig(tmp_path / "f.h5", sample=8))
