"""The advise and run stages' settings (:mod:`pipeline.escalate.advise`, :mod:`pipeline.escalate.run`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES
from ..finetune.config import MODES
from ..settings import Settings, at_least, between, positive, setting

FINETUNE_CHOICES = ("auto", "always", "never")  # auto: where the advisor recommends it


@dataclass(frozen=True)
class AdviseConfig(Settings):
    """Settings of the advisor: ``source`` is an image folder, a CSV manifest or a feature store."""

    source: Path
    backbone: str | None = None  # None: the store's, or the default backbone
    sample: int = setting(200, check=at_least(1))  # images the similarity is measured on
    seed: int = 0
    weights: Path | None = None
    engine: str = setting("auto", choices=ENGINES)
    budget: float | None = setting(None, check=positive)  # minutes fine-tuning may take here


@dataclass(frozen=True)
class RunConfig(Settings):
    """Settings of the whole pipeline in one call."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    test_size: float = setting(0.2, check=between(0, 1))
    finetune: str = setting("auto", choices=FINETUNE_CHOICES)
    budget: float | None = setting(None, check=positive)
    mode: str = setting("auto", choices=MODES)
    image_size: int | None = setting(None, check=at_least(32))
    flip: bool = False
    tail_epochs: int = setting(15, check=at_least(1))
    epochs: tuple[int, int] = (5, 5)  # full mode's two phases
    seed: int = 0
    engine: str = setting("auto", choices=ENGINES)
    progress: bool = True
