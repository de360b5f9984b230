"""The advisor checked against outcomes on the smaller rows of the advisor table (docs/benchmarks.md): the whole
pipeline with both strategies, and the verdict must name the winner (benchmarks/advisor_table.py runs every row)."""

from __future__ import annotations

import pytest
from fetch_data import first_per_class

from pipeline.escalate.config import RunConfig
from pipeline.escalate.run import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,per_class,flip", [("tuxpaint", None, True), ("mnist", 30, False)])
def test_the_verdict_names_the_winner(real_sets, tmp_path, name, per_class, flip):
    data = real_sets[name] if per_class is None else first_per_class(real_sets[name], per_class, tmp_path / name)
    result = run(RunConfig(data=data, out=tmp_path / "run", finetune="always", flip=flip, progress=False))
    figures = {c.name: round(c.test_accuracy, 3) for c in result.candidates}
    assert result.finetune_ran and result.advisor_agreed, (result.advice.recommendation, figures)
