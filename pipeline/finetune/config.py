"""The fine-tuning stage's settings (:mod:`pipeline.finetune.stage`), and the names of the choices they take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES, PRECISIONS
from ..linear.config import DEFAULT_REJECT_RATE
from ..outputs import check_out
from ..settings import (
    IMAGE_SIZES,
    MAX_BATCH,
    MAX_EPOCHS,
    Settings,
    at_least,
    between,
    positive,
    seed_setting,
    setting,
    share,
    within,
)

MODES = ("auto", "tail", "full")  # auto: full where a GPU is seen, tail on a CPU
OPTIMIZERS = ("adam", "sgd")
CLASS_WEIGHTS = ("balanced",)  # or None: every image counts the same
# Under this many images tail mode trains at the backbone's full resolution, which scored better on small sets
# for little more time; on thousands of images the doubled time per epoch costs too much (docs/benchmarks.md).
FULL_SIZE_BELOW = 1000


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Settings of one fine-tuning run: the shared ones, then tail mode's, then full mode's."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    mode: str = setting("auto", choices=MODES)
    image_size: int | None = setting(None, check=within(*IMAGE_SIZES))  # None: pipeline.finetune.tail.default_size
    top: str = "penultimate"  # the feature layer the new head pools
    learning_rate: float = setting(1e-3, check=positive)  # the head's
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    hidden: int | None = setting(None, check=within(1, 65536))  # a hidden dense layer before the softmax
    dropout: float = setting(0.2, check=share)
    val_size: float = setting(0.2, check=between(0, 1))
    patience: int = setting(4, check=within(1, MAX_EPOCHS))
    class_weight: str | None = setting("balanced", choices=CLASS_WEIGHTS)
    probe: bool = True  # the head starts as a linear probe on the training codes (LP-FT)
    test_paths: tuple[str, ...] = ()  # scored at the end, never trained or chosen on
    exclude_paths: tuple[str, ...] = ()  # left out altogether (another stage's held-out images)
    cache: Path | None = None  # tail mode's activation cache folder; None: out/activations
    batch_size: int = setting(32, check=within(1, MAX_BATCH))
    seed: int = seed_setting()
    precision: str = setting("auto", choices=PRECISIONS)
    reject_rate: float = setting(DEFAULT_REJECT_RATE, check=share)
    progress: bool = True
    # tail mode
    cut: str | None = None  # None: pipeline.finetune.tail.default_cut
    views: int = setting(4, check=within(1, 64))
    flip: bool = False  # mirrors too (tail's views, full mode's augmentation)
    tail_epochs: int = setting(15, check=within(1, MAX_EPOCHS))
    block_lr_factor: float = setting(0.3, check=positive)
    engine: str = setting("auto", choices=ENGINES)
    # full mode
    head_epochs: int = setting(5, check=within(0, MAX_EPOCHS))
    finetune_epochs: int = setting(5, check=within(0, MAX_EPOCHS))
    unfreeze: int = setting(30, check=at_least(0))
    unfreeze_from: str | None = None
    augment: bool = True
    overwrite: bool = False  # write into an out that finetune did not write
    allow_outside: bool = False  # a manifest may name images outside its folder

    def check(self) -> None:
        check_out(self.out, "finetune", inputs=(self.data, self.cache), overwrite=self.overwrite)


def full_epochs() -> tuple[int, int]:
    """Full mode's two phases' epochs by default (``head_epochs``, ``finetune_epochs``), for the stages that take
    them as one pair."""
    return FinetuneConfig.default("head_epochs"), FinetuneConfig.default("finetune_epochs")
