"""The codes a report compares, cached one store per dataset, backbone and layer set, so that a rerun with one
more backbone extracts only that backbone; and what a report says of each store's extraction."""

from __future__ import annotations

import json
from pathlib import Path

from ..backbones.registry import get_spec
from ..backbones.spec import safe_name
from ..store.extract import ExtractResult
from ..store.reader import FeatureStore
from .content import Extraction


def store_path(features: Path, data: Path, backbone: str, layers: tuple[str, ...], views: tuple[str, ...] = ()) -> Path:
    """Where the codes of ``data`` through ``backbone`` are cached (the extract command's default name for the
    backbone's default layers)."""
    default = tuple(layers) == tuple(get_spec(backbone).default_layers)
    suffix = ("" if default else "_" + "+".join(layers)) + "".join(f"_{v}" for v in views)
    return features / f"{Path(data).resolve().stem}_{safe_name(backbone)}{suffix}.h5"


def extraction_record(result: ExtractResult, store: FeatureStore) -> Extraction:
    """What the report says of a store's extraction; the speed is this run's, or the one cached with the codes."""
    return Extraction(str(store.path), result.images, result.extracted, result.reused,
                      (json.loads(store.attrs.get("runs", "[]")) or [{}])[-1].get("engine"),
                      float(store.attrs.get("extract_images_per_second", 0.0)),
                      "this run" if result.extracted else "when the codes were cached")
