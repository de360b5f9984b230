"""The advise and run stages' settings (:mod:`pipeline.escalate.advise`, :mod:`pipeline.escalate.run`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES
from ..finetune.config import FinetuneConfig, full_epochs
from ..outputs import check_out
from ..settings import Settings, between, epoch_pair, positive, same_as, seed_setting, setting, within

FINETUNE_CHOICES = ("auto", "always", "never")  # auto: where the advisor recommends it


@dataclass(frozen=True)
class AdviseConfig(Settings):
    """Settings of the advisor: ``source`` is an image folder, a CSV manifest or a feature store."""

    source: Path
    backbone: str | None = None  # None: the store's, or the default backbone
    sample: int = setting(200, check=within(1, 10**5))  # images the similarity is measured on
    seed: int = seed_setting()
    weights: Path | None = None
    engine: str = setting("auto", choices=ENGINES)
    budget: float | None = setting(None, check=positive)  # minutes fine-tuning may take here
    allow_outside: bool = False  # a manifest may name images outside its folder
    json: Path | None = None  # where the figures and verdict are written as JSON too
    overwrite: bool = False  # replace a json file that advise did not write

    def check(self) -> None:
        check_out(self.json, "advise", inputs=(self.source,), overwrite=self.overwrite, param="json",
                  recognise=_advice)


@dataclass(frozen=True)
class RunConfig(Settings):
    """Settings of the whole pipeline in one call."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    test_size: float = setting(0.2, check=between(0, 1))
    finetune: str = setting("auto", choices=FINETUNE_CHOICES)
    budget: float | None = setting(None, check=positive)
    mode: str = same_as(FinetuneConfig, "mode")
    image_size: int | None = same_as(FinetuneConfig, "image_size")
    flip: bool = same_as(FinetuneConfig, "flip")
    tail_epochs: int = same_as(FinetuneConfig, "tail_epochs")
    epochs: tuple[int, int] = setting(full_epochs(), check=epoch_pair)  # full mode's two phases
    seed: int = seed_setting()
    engine: str = same_as(FinetuneConfig, "engine")
    progress: bool = True
    overwrite: bool = False  # write into an out that run did not write
    allow_outside: bool = False  # a manifest may name images outside its folder

    def check(self) -> None:
        check_out(self.out, "run", inputs=(self.data,), overwrite=self.overwrite)


def _advice(path: Path) -> bool:
    """advise's JSON: an object with the advisor's figures."""
    try:
        return {"divergence", "small", "similar"} <= set(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return False
