"""The extract stage's settings (:mod:`pipeline.store.extract`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import DEFAULT_BACKBONE, ENGINES, PRECISIONS
from ..data.decode import RESIZE_MODES
from ..data.views import VIEWS, check_views
from ..errors import UserError
from ..outputs import check_out
from ..settings import MAX_BATCH, Settings, setting, within

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
    batch_size: int = setting(32, check=within(1, MAX_BATCH))
    workers: int | None = setting(None, check=within(1, 256))  # decoding threads
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    resize: str = setting("crop", choices=RESIZE_MODES)
    unlabelled: bool = False
    progress: bool = True
    overwrite: bool = False  # replace an out that is not this data's store
    allow_outside: bool = False  # a manifest may name images outside its folder

    def check(self) -> None:
        if Path(self.out).suffix not in STORE_SUFFIXES:
            raise UserError(f"must name an .h5 file, not {self.out}", param="out")
        check_out(self.out, "extract", inputs=(self.data, self.weights), overwrite=self.overwrite,
                  recognise=lambda path: _store_of(path, self.data))
        object.__setattr__(self, "views", check_views(self.views))  # canonical order, once each


def _store_of(path: Path, data: Path) -> bool:
    from .reader import is_store_of  # h5py, only where a store exists

    return is_store_of(path, data)
