"""run.py's orchestration: one held-out set for every candidate, a pilot on large sets that decides, fine-tuning
only where it does."""

from __future__ import annotations

import json

import pytest
from conftest import write_images

from pipeline.escalate import run as end_to_end
from pipeline.escalate.config import RunConfig
from pipeline.escalate.decide import decide
from pipeline.escalate.run import run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_images(root / "data", {"red": 10, "green": 10}, size=48)
    return root


@pytest.mark.slow
def test_run_compares_candidates_on_the_same_held_out_images(data, monkeypatch):
    seen = {}
    real_fit, real_finetune = end_to_end.fit, end_to_end.finetune
    monkeypatch.setattr(end_to_end, "fit", lambda cfg: seen.setdefault("fit", cfg.test_paths) and real_fit(cfg))
    monkeypatch.setattr(end_to_end, "finetune",
                        lambda cfg: seen.setdefault("finetune", cfg.test_paths) and real_finetune(cfg))
    result = run(RunConfig(data=data / "data", out=data / "run", finetune="always", image_size=64,
                           tail_epochs=2, progress=False))
    summary = result.to_json()
    assert seen["fit"] == seen["finetune"] and len(seen["fit"]) == 4
    names = [c["name"] for c in summary["candidates"]]
    assert "fine-tuned network" in names and len(names) == 3
    assert summary["chosen"]["test_accuracy"] == max(c["test_accuracy"] for c in summary["candidates"])
    assert summary["held_out_images"] == 4
    assert summary["finetune"] == {"ran": True, "why": "asked to fine-tune always"} and "pilot" not in summary
    on_disk = json.loads((data / "run" / "summary.json").read_text())
    assert on_disk["chosen"]["name"] == summary["chosen"]["name"]
    assert "Chosen:" in (data / "run" / "summary.md").read_text()


def test_a_small_set_stays_linear_without_a_pilot(data, monkeypatch):
    def no_finetune(cfg):
        raise AssertionError("a small set was fine-tuned")

    monkeypatch.setattr(end_to_end, "finetune", no_finetune)
    monkeypatch.setattr(end_to_end, "run_pilot", no_finetune)
    summary = run(RunConfig(data=data / "data", out=data / "run_auto", progress=False)).to_json()
    assert summary["advice"]["small"] and not summary["finetune"]["ran"] and "pilot" not in summary
    assert "no pilot" in summary["finetune"]["why"]
    assert set(summary["transferability"]) == {"stage5", "stage6", "penultimate"}


@pytest.mark.slow
def test_a_real_pilot_decides_on_training_split_images_only(data, monkeypatch):
    """The pilot as a large set gets it: kept from the held-out images, scored on a quarter of the training part,
    computing views into the full run's activation cache; the decision is the rule's on its evidence."""
    monkeypatch.setattr(end_to_end, "needs_pilot", lambda small: True)
    full_runs = []
    real_finetune = end_to_end.finetune
    monkeypatch.setattr(end_to_end, "finetune", lambda cfg: full_runs.append(cfg) or real_finetune(cfg))
    out = data / "run_pilot"
    result = run(RunConfig(data=data / "data", out=out, image_size=64, tail_epochs=2, progress=False))
    pilot = result.pilot
    assert pilot is not None and pilot.mode == "tail" and pilot.comparison.images == 4  # 16 training images / 4
    assert 0 <= pilot.comparison.a <= 1 and 0 <= pilot.comparison.b <= 1 and pilot.full_minutes > 0
    assert result.decision == decide(result.proposal, pilot, None)
    pilot_run = json.loads((out / "pilot" / "metrics.json").read_text())
    assert pilot_run["images"] == 12 and pilot_run["final"]["finetune"]["test"]["images"] == 4
    views = sorted(p.name for p in (out / "finetune" / "activations").glob("*.h5"))
    assert views[1].endswith("view1.h5") and len(views) == (4 if full_runs else 2)  # the pilot's two views, then
    # the full run's other two, in one cache
    assert bool(full_runs) == result.decision.finetune
    summary = (out / "summary.md").read_text()
    assert "Pilot (tail mode" in summary and result.decision.why in summary


@pytest.mark.slow
def test_the_pilot_in_full_mode_times_its_phases(data, monkeypatch):
    """Full mode (a GPU's): one epoch per phase, and the full run's minutes estimated from their measured speed."""
    monkeypatch.setattr(end_to_end, "needs_pilot", lambda small: True)
    result = run(RunConfig(data=data / "data", out=data / "run_full", finetune="auto", mode="full", image_size=64,
                           epochs=(2, 2), progress=False))
    assert result.pilot.mode == "full" and result.pilot.full_minutes > 0
    history = json.loads((data / "run_full" / "pilot" / "history.json").read_text())
    assert [len(history[phase]["loss"]) for phase in ("head", "finetune")] == [1, 1]


@pytest.mark.slow
def test_a_rerun_goes_on_where_the_run_stopped(data, monkeypatch):
    """Killed in the fine-tune: summary.md already says what the linear stage found; the rerun takes up the advice
    and the linear stage (neither is done again) and finishes the fine-tune; a third run redoes nothing."""
    cfg = RunConfig(data=data / "data", out=data / "resumed", finetune="always", image_size=64, tail_epochs=2,
                    progress=False)
    real_finetune = end_to_end.finetune

    def killed(ft):
        raise KeyboardInterrupt

    monkeypatch.setattr(end_to_end, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    summary = (data / "resumed" / "summary.md").read_text()
    assert "Fine-tuning: decided (asked to fine-tune always), not finished" in summary and "Chosen:" in summary

    def not_again(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(end_to_end, "fit", not_again)
    monkeypatch.setattr(end_to_end, "advise", not_again)
    monkeypatch.setattr(end_to_end, "finetune", real_finetune)
    result = run(cfg)
    assert [c.name for c in result.candidates][-1] == "fine-tuned network"
    assert "Fine-tuning ran" in (data / "resumed" / "summary.md").read_text()
    monkeypatch.setattr(end_to_end, "finetune", not_again)
    again = run(cfg)
    assert again.chosen.to_json() == result.chosen.to_json()
    assert [c.to_json() for c in again.candidates][:2] == [c.to_json() for c in result.candidates][:2]
    # another seed is another split: the linear stage runs again
    with pytest.raises(AssertionError, match="ran again"):
        run(RunConfig(data=data / "data", out=data / "resumed", finetune="never", seed=1, progress=False))
