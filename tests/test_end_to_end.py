"""run.py's orchestration: one held-out set for every candidate, fine-tuning only where advised."""

from __future__ import annotations

import json

import pytest
from conftest import write_images

from pipeline.escalate import run as end_to_end
from pipeline.escalate.config import RunConfig
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
    fine_tuning_won = summary["chosen"]["name"] == "fine-tuned network"
    assert summary["advisor_agreed"] == (fine_tuning_won == result.advice.strategy.finetunes)
    on_disk = json.loads((data / "run" / "summary.json").read_text())
    assert on_disk["chosen"]["name"] == summary["chosen"]["name"]
    assert "Chosen:" in (data / "run" / "summary.md").read_text()


def test_fine_tuning_only_where_advised(data, monkeypatch):
    def no_finetune(cfg):
        raise AssertionError("the advisor did not recommend fine-tuning")

    monkeypatch.setattr(end_to_end, "finetune", no_finetune)
    summary = run(RunConfig(data=data / "data", out=data / "run_auto", progress=False)).to_json()
    assert summary["advice"]["small"] and not summary["finetune"]["ran"] and summary["advisor_agreed"] is None
    assert "advisor recommends" in summary["finetune"]["why"]
