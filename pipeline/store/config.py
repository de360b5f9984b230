"""The extract stage's settings (:mod:`pipeline.store.extract`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES, PRECISIONS
from ..data.decode import RESIZE_MODES
from ..data.views import VIEWS, check_views
from ..errors import UserError
from ..settings import Settings, at_least, setting

STORE_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class ExtractConfig(Settings):
    """Settings of one extraction."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] | None = None  # None: the backbone's default layers
    views: tuple[str, ...] = setting((), choices=VIEWS)  # stored beside each image's codes (pipeline.data.views)
    weights: Path | None = None
    batch_size: int = setting(32, check=at_least(1))
    workers: int | None = None
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    resize: str = setting("crop", choices=RESIZE_MODES)
    unlabelled: bool = False
    progress: bool = True

    def check(self) -> None:
        if Path(self.out).suffix not in STORE_SUFFIXES:
            raise UserError(f"must name an .h5 file, not {self.out}", param="out")
        object.__setattr__(self, "views", check_views(self.views))  # canonical order, once each
