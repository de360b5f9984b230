"""The escalation's decision on synthetic evidence: clear win, clear loss, inconclusive (strong or weak heuristic),
over budget, and a small set; and the paired difference it reads."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.escalate.decide import decide
from pipeline.escalate.pilot import PilotResult
from pipeline.escalate.rule import Strategy
from pipeline.metrics import paired_difference


def _pilot(linear_right: int, tuned_right: int, images: int = 200, full_minutes: float = 5.0) -> PilotResult:
    """A pilot on ``images`` images where the two contenders are right on the given numbers, overlapping as much
    as they can (so only the difference is discordant)."""
    a = np.arange(images) < linear_right
    b = np.arange(images) < tuned_right
    return PilotResult(paired_difference(a, b), "svm on penultimate codes", "tail", 60.0, full_minutes)


def test_paired_difference_reads_the_discordant_images():
    same = paired_difference(np.ones(50, bool), np.ones(50, bool))
    assert same.difference == 0 and same.interval == (0.0, 0.0) and same.p_value == 1.0
    a, b = np.arange(100) < 70, np.arange(100) < 90  # B right on 20 more images, never worse
    d = paired_difference(a, b)
    assert d.a == pytest.approx(0.7) and d.b == pytest.approx(0.9) and d.difference == pytest.approx(0.2)
    assert 0.1 < d.interval[0] < 0.2 < d.interval[1] < 0.3
    assert d.p_value == pytest.approx(2 * 0.5 ** 20)  # McNemar's exact test: 20 of 20 discordant for B
    swapped = paired_difference(b, a)
    assert swapped.difference == pytest.approx(-0.2) and swapped.p_value == d.p_value
    with pytest.raises(ValueError):
        paired_difference(a, b[:-1])


def test_a_wider_level_widens_the_interval():
    rng = np.random.default_rng(0)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.82
    narrow, wide = paired_difference(a, b, level=0.8), paired_difference(a, b, level=0.99)
    assert wide.interval[0] < narrow.interval[0] and wide.interval[1] > narrow.interval[1]


@pytest.mark.parametrize("proposal", list(Strategy))
def test_a_clear_win_fine_tunes_and_a_clear_loss_does_not(proposal):
    win, loss = _pilot(150, 180), _pilot(180, 150)
    assert win.verdict == "ahead" and loss.verdict == "behind"
    assert decide(proposal, win).finetune
    assert not decide(proposal, loss).finetune
    assert "ahead" in decide(proposal, win).why and "behind" in decide(proposal, loss).why


def test_inconclusive_follows_the_heuristic_only_where_it_is_strong():
    tie = _pilot(170, 171)
    assert tie.verdict == "inconclusive"
    assert decide(Strategy.FINETUNE_WHOLE, tie).finetune and decide(Strategy.FINETUNE_LATER, tie).finetune
    assert not decide(Strategy.LINEAR_EARLIER, tie).finetune
    assert "cheaper" in decide(Strategy.LINEAR_EARLIER, tie).why


def test_over_budget_stays_linear_even_when_ahead():
    win = _pilot(150, 180, full_minutes=30.0)
    assert decide(Strategy.FINETUNE_WHOLE, win, budget=60).finetune
    over = decide(Strategy.FINETUNE_WHOLE, win, budget=10)
    assert not over.finetune and "over the budget of 10 min" in over.why


def test_a_small_set_has_no_pilot_and_stays_linear():
    d = decide(Strategy.LINEAR_PENULTIMATE, None)
    assert not d.finetune and "no pilot" in d.why


def test_the_evidence_is_printed():
    text = _pilot(150, 180).format()
    for part in ("0.750", "0.900", "+0.150", "90% interval", "McNemar", "would take about 5 min"):
        assert part in text
