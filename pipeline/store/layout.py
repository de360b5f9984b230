"""What a feature store holds and how it is named, without HDF5: the configuration that must match for codes
to be mixed, the names of stored codes, and candidate layers (one stored layer, or several side by side:
``stage6+penultimate``). Predicting with an exported model needs only this much.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from ..errors import UserError

FORMAT_VERSION = 3  # 3: content digests (pipeline.store.digests); 2: fletcher32 checksums; 1 and 2 are still read
DIGESTS_SINCE = 3
JOIN = "+"  # "stage6+penultimate": the codes of both layers side by side, one candidate
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of a store (of any HDF5 file without a user block)


@dataclass(frozen=True)
class StoredDataset:
    """One dataset of a store, as docs/store.md lists it: its ``name`` (``<layer>``: one per layer), element
    ``dtype``, ``shape`` (N: images, D: a layer's width, C: classes or labels, M: files skipped, B: blocks) and
    when a store has it (``when``; empty: always)."""

    name: str
    dtype: str
    shape: str
    when: str = ""

    @property
    def kind(self) -> str:
        """numpy's dtype kind of its elements (strings are read as objects)."""
        return {"float32": "f", "float64": "f", "int64": "i", "uint8": "u", "utf-8": "O"}[self.dtype]


LAYOUT = (  # what a store holds; the reader checks each one it finds against this, docs/store.md lists it
    StoredDataset("features/<layer>", "float32", "[N, D]"),
    StoredDataset("views/<view>/<layer>", "float32", "[N, D]", "views extracted only"),
    StoredDataset("paths", "utf-8", "[N]"),
    StoredDataset("fingerprints", "int64", "[N, 2]"),
    StoredDataset("labels", "int64", "[N]", "labelled sets only"),
    StoredDataset("multilabels", "uint8", "[N, C]", "manifests with a labels column only"),
    StoredDataset("class_names", "utf-8", "[C]", "labelled sets only"),
    StoredDataset("targets", "float64", "[N]", "manifests with a target column only"),
    StoredDataset("groups", "utf-8", "[N]", "manifests with a group column only"),
    StoredDataset("skipped/paths", "utf-8", "[M]"),
    StoredDataset("skipped/reasons", "utf-8", "[M]"),
    StoredDataset("digests/<name>", "uint8", "[B, 32]", "format 3 on"),
)


def stored(name: str) -> StoredDataset:
    """The entry of :data:`LAYOUT` for the dataset ``name``."""
    return next(d for d in LAYOUT if d.name == name)


def layer_parts(layer: str) -> list[str]:
    """The stored layers a candidate layer names (one, or several joined by ``+``)."""
    return layer.split(JOIN)


def layer_label(layer: str) -> str:
    """``layer`` as tables show it: a join of more than three layers as its first and last (``stem+…+penultimate,
    9 layers``)."""
    parts = layer_parts(layer)
    return layer if len(parts) <= 3 else f"{parts[0]}+…+{parts[-1]} ({len(parts)} layers)"


def default_candidates(layers: Sequence[str]) -> list[str]:
    """The layer a fit takes by default: every stored layer side by side (joined, they beat each layer alone and
    every pair tried: docs/benchmarks.md, "Layers and scaling")."""
    return [JOIN.join(layers)]


@dataclass(frozen=True)
class StoreConfig:
    """What must be identical for two sets of codes to be mixed in one store."""

    backbone: str
    weights_checksum: str
    layers: tuple[str, ...]
    input_size: int
    preprocessing: dict
    resize: dict
    views: tuple[str, ...] = ()  # views of each image whose codes are stored too (pipeline.linear.tta)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "StoreConfig":
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "views"}
        values["layers"] = tuple(values["layers"])
        return cls(**values, views=tuple(data.get("views", ())))  # configs before views have none

    def differences(self, other: "StoreConfig") -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [k for k in mine if mine[k] != theirs[k]]


def config_attrs(config: StoreConfig) -> dict:
    return {k: v if isinstance(v, (str, int)) else json.dumps(v) for k, v in config.to_json().items()}


def config_from_attrs(attrs) -> StoreConfig:
    data = {}
    for f in fields(StoreConfig):
        value = attrs.get(f.name, "[]") if f.name == "views" else attrs[f.name]  # stores before views have none
        data[f.name] = json.loads(value) if f.name in ("layers", "preprocessing", "resize", "views") else value
    data["input_size"] = int(data["input_size"])
    return StoreConfig.from_json(data)


def code_key(layer: str, view: str | None = None) -> str:
    """The name of a stored layer's codes, of the images (``layer``) or of one view of them (``view/layer``)."""
    return layer if view is None else f"{view}/{layer}"


def dataset_name(key: str) -> str:
    """Where the codes :func:`code_key` names lie in a store."""
    return f"views/{key}" if "/" in key else f"features/{key}"


def refuse_mismatch(existing: StoreConfig, wanted: StoreConfig, where: Path) -> None:
    diff = existing.differences(wanted)
    if diff:
        raise UserError(
            f"{where} was made with a different {', '.join(diff)} "
            f"(backbone {existing.backbone}, layers {','.join(existing.layers)}): write to another file, or "
            "replace it", param="out", remedy="overwrite")
