"""The evaluate stage's settings: the grid (:mod:`pipeline.report.grid`) and a bundle's report
(:mod:`pipeline.report.bundle_report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES
from ..data.views import VIEWS
from ..errors import UserError
from ..finetune.config import FinetuneConfig, full_epochs
from ..linear.config import BLOCK_SETTINGS, CLASS_WEIGHTS, DEFAULT_DUPLICATE_THRESHOLD, NORMALISATIONS, plain
from ..linear.kinds import CLASSIFIERS, classifiers, is_network
from ..outputs import check_out
from ..settings import MAX_JOBS, Settings, epoch_pair, same_as, seed_setting, setting, within
from ..store.layout import JOIN

HEATMAPS = 4  # of the most confident mistakes, and of images predicted right (pipeline.report.heatmaps)
FEATURES = Path("features")  # where codes are cached, one store per dataset, backbone and layer set


@dataclass(frozen=True)
class EvaluateConfig(Settings):
    """Settings of one grid: every dataset x backbone x layer x classifier (and fine-tuning)."""

    data: tuple[Path, ...]
    out: Path
    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    classifiers: tuple[str, ...] = setting(CLASSIFIERS, choices=classifiers)
    layers: tuple[str, ...] | None = None  # None: each backbone's default layers joined, as extract and fit take them
    views: tuple[str, ...] = setting((), choices=VIEWS)  # with and without these views compete
    finetune: bool = False
    image_size: int | None = same_as(FinetuneConfig, "image_size")
    epochs: tuple[int, int] = setting(full_epochs(), check=epoch_pair)  # full mode's two phases
    features: Path = FEATURES
    folds: int = setting(5, check=within(2, 100))
    repeats: int | None = setting(None, check=within(1, 100))
    normalise: str = setting("power", choices=NORMALISATIONS + BLOCK_SETTINGS)
    advise: bool = True
    seed: int = seed_setting()
    jobs: int | None = setting(None, check=within(1, MAX_JOBS))
    engine: str = setting("auto", choices=ENGINES)
    command: str = ""
    progress: bool = True
    duplicate_threshold: float | None = setting(DEFAULT_DUPLICATE_THRESHOLD, check=within(0, 1))
    class_weight: str | None = setting("auto", choices=CLASS_WEIGHTS)
    heatmaps: int = setting(HEATMAPS, check=within(0, 1000))  # mistakes and right answers explained (linear best only)
    overwrite: bool = False  # write into an out that evaluate did not write
    allow_outside: bool = False  # a manifest may name images outside its folder

    @property
    def plain(self) -> str:
        """The normalisation of the candidates not weighed as blocks (:mod:`pipeline.linear.blocks`)."""
        return plain(self.normalise)

    def layers_of(self, backbone: str, stored: tuple[str, ...] | None = None) -> list[str]:
        """The layers compared for ``backbone``: those asked for, or by default its default layers joined (what
        extract stores and fit fits when given no layers); with the ``stored`` layers known, ``all`` is every one
        of them joined."""
        from ..backbones.loading import ALL
        from ..backbones.registry import get_spec

        layers = self.layers or (JOIN.join(get_spec(backbone).default_layers),)
        return [JOIN.join(stored) if stored is not None and layer == ALL else layer for layer in layers]

    def check(self) -> None:
        if not self.data:
            raise UserError("give at least one dataset", param="data")
        missing = [d for d in self.data if not Path(d).exists()]
        if missing:
            raise UserError(f"dataset {missing[0]} does not exist", param="data")
        if not self.backbones:
            raise UserError("give at least one backbone", param="backbones")
        check_out(self.out, "evaluate", inputs=self.data, overwrite=self.overwrite)


@dataclass(frozen=True)
class BundleReportConfig(Settings):
    """Settings of a saved bundle's report on a new labelled folder."""

    bundle: Path
    data: Path
    features: Path = FEATURES
    seed: int = seed_setting()
    advise: bool = True
    command: str = ""
    progress: bool = True
    weights: Path | None = None
    engine: str = setting("auto", choices=ENGINES)
    heatmaps: int = setting(HEATMAPS, check=within(0, 1000))
    out: Path | None = None  # the report's folder
    overwrite: bool = False
    allow_outside: bool = False  # a manifest may name images outside its folder

    def check(self) -> None:
        check_out(self.out, "evaluate", inputs=(self.bundle, self.data), overwrite=self.overwrite)
        if is_network(self.bundle):
            raise UserError("takes a fitted classifier bundle (.skops); compare fine-tuned networks in the grid, "
                            "or predict with one", param="bundle")
