"""The run folder's JSON files: written whole, read back checked, and one line for a file that is not what this
version writes."""

from __future__ import annotations

import re

import pytest

from pipeline.errors import UserError
from pipeline.run_files import CLASSES, HISTORY, METRICS


def test_what_is_written_is_read_back(tmp_path):
    metrics = {"backbone": "efficientnet_lite0", "results": [], "final": {}}
    METRICS.write(tmp_path, metrics)
    CLASSES.write(tmp_path, ["cat", "dog"])
    assert METRICS.read(tmp_path) == metrics and CLASSES.read(tmp_path) == ["cat", "dog"]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("content, message", [
    (None, "is missing: a fit's or a fine-tune's metrics should be there"),
    ("{garbage", "is not a fit's or a fine-tune's metrics: Expecting property name"),
    ('{"backbone": "x", "results": []}', "as this version writes it (it lacks final)"),
    ('["backbone"]', "as this version writes it (it lacks backbone, results, final)"),
    (b"\xff\xfe", "is not a fit's or a fine-tune's metrics"),
])
def test_a_file_from_elsewhere_is_one_line_naming_it(tmp_path, content, message):
    if content is not None:
        path = METRICS.path(tmp_path)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        METRICS.read(tmp_path, param="model")
    assert str(tmp_path / "metrics.json") in caught.value.message and caught.value.param == "model"


def test_a_list_where_an_object_belongs_and_the_reverse_are_refused(tmp_path):
    HISTORY.path(tmp_path).write_text("[1, 2]")
    CLASSES.path(tmp_path).write_text('{"cat": 0}')
    for file in (HISTORY, CLASSES):
        with pytest.raises(UserError, match="as this version writes it"):
            file.read(tmp_path)


def test_a_damaged_record_of_stages_runs_every_stage_again(tmp_path, caplog):
    """run.py's record of finished stages is a journal, not a result: a damaged one is logged and started over."""
    from pipeline.escalate.stages import Stages
    from pipeline.run_files import STAGES

    STAGES.path(tmp_path).write_text("{garbage")
    stages = Stages(tmp_path)
    assert stages.result("linear", "k") is None and "every stage runs again" in caplog.text
    stages.finish("linear", "k", {"accuracy": 0.9})
    assert Stages(tmp_path).result("linear", "k") == {"accuracy": 0.9}
