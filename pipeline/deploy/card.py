"""The card of an exported model: what its user must know (classes, input size, resize policy, thresholds),
written beside the model (``MODEL.json``; ``cnn_codes.json`` inside a SavedModel folder), and the sha256 that
binds the two.

The card's ``sha256`` covers the model's bytes and every other field of the
card, so a flipped byte in either, or a card edited or moved to another
model, is refused before anything runs. A card is checked (types, ranges,
bounded sizes) before anything is allocated from it. Imports nothing heavy:
reading an exported model needs numpy, pillow and onnxruntime alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..data.decode import ResizePolicy
from ..errors import UserError
from ..settings import IMAGE_SIZES, is_probability

CARD_FILE = "cnn_codes.json"  # inside a SavedModel folder
MAX_CARD_BYTES = 16 * 2**20
MAX_CLASSES = 100_000
MAX_NAME = 1_000  # characters of one class name


def card_path(model: Path) -> Path:
    """The card beside an exported model (``model.onnx.json``; inside a SavedModel folder)."""
    model = Path(model)
    return model / CARD_FILE if model.is_dir() else model.with_name(model.name + ".json")


@dataclass(frozen=True)
class ModelCard:
    """What a user of the exported model must know: its classes, and how to turn an image into its input."""

    class_names: list[str]
    input_size: int
    resize: dict  # a ResizePolicy: decode, resize and crop as extraction did
    source: str
    input: str = "uint8 pixels, shape [batch, size, size, 3], RGB"
    output: str = "float32 class probabilities, shape [batch, classes], in class_names order"
    reject_threshold: float | None = None  # a top probability under it: "unknown" (predict.py --reject)
    label_thresholds: list[float] | None = None  # several labels per image: a label is given over its threshold
    sha256: str = ""  # of the model's bytes and the card's other fields (model_digest)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data, where: str = "the card") -> "ModelCard":
        """A card from its JSON, every field checked; anything wrong is one line."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"class_names", "input_size", "resize", "source"} <= set(data):
            raise UserError(f"{where} is not a model card", param="model")
        if set(data) - known:
            raise UserError(f"{where} has fields this version does not know: {sorted(set(data) - known)[:5]}",
                            param="model")
        names = data["class_names"]
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_CLASSES or not all(
                isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names) or len(set(names)) != len(names):
            raise UserError(f"{where}: class_names must be 1 to {MAX_CLASSES:,} distinct non-empty names",
                            param="model")
        policy = ResizePolicy.from_dict(data["resize"])
        if not IMAGE_SIZES[0] <= policy.size <= IMAGE_SIZES[1]:
            raise UserError(f"{where}: input size must be from {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} pixels, "
                            f"not {policy.size}", param="model")
        if data["input_size"] != policy.size:
            raise UserError(f"{where}: input_size {data['input_size']!r} differs from its resize policy's",
                            param="model")
        for key in ("source", "input", "output", "sha256"):
            if key in data and not isinstance(data[key], str):
                raise UserError(f"{where}: {key} must be text", param="model")
        if data.get("reject_threshold") is not None and not is_probability(data["reject_threshold"]):
            raise UserError(f"{where}: reject_threshold must be a probability, not {data['reject_threshold']!r}",
                            param="model")
        thresholds = data.get("label_thresholds")
        if thresholds is not None and (not isinstance(thresholds, list) or len(thresholds) != len(names)
                                       or not all(map(is_probability, thresholds))):
            raise UserError(f"{where}: label_thresholds must be one probability per class name", param="model")
        return cls(**data)


def model_digest(model: Path, card: ModelCard) -> str:
    """sha256 of the model (a file's bytes, or a folder's files with their names, the card aside) and of the
    card's fields but ``sha256``."""
    model, h = Path(model), hashlib.sha256()
    files = sorted(p for p in model.rglob("*") if p.is_file() and p.name != CARD_FILE) if model.is_dir() \
        else [model]
    for path in files:
        if model.is_dir():
            h.update(path.relative_to(model).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    content = {k: v for k, v in card.to_json().items() if k != "sha256"}
    h.update(json.dumps(content, sort_keys=True).encode())
    return h.hexdigest()


def write_card(model: Path, card: ModelCard) -> Path:
    """Write ``card`` beside ``model`` with the sha256 that binds them."""
    path = card_path(model)
    signed = ModelCard(**{**card.to_json(), "sha256": model_digest(model, card)})
    path.write_text(json.dumps(signed.to_json(), indent=2) + "\n")
    return path


def read_card(model: Path) -> ModelCard:
    """The card of an exported ``model``, checked, after the sha256 check of the model and the card."""
    path = card_path(model)
    if not path.is_file():
        raise UserError(f"{path.name} is missing beside {model}: the model's classes and integrity cannot be "
                        "checked; export it again or copy its card beside it", param="model")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise UserError(f"{path} is too large for a model card", param="model")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not a model card: {e}", param="model") from None
    card = ModelCard.from_json(data, str(path))
    if not card.sha256:
        raise UserError(f"{path} carries no sha256 (exported by an older version): export the model again",
                        param="model")
    if card.sha256 != model_digest(model, card):
        raise UserError(f"{model} or its card {path.name} fails the sha256 check: one was changed or damaged; "
                        "export it again", param="model")
    return card


def is_exported(path: Path) -> bool:
    """Whether ``path`` is an exported model with its card (for :func:`pipeline.outputs.check_out`)."""
    try:
        return isinstance(json.loads(card_path(path).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False
