"""The saved classifier: a skops file with the fitted estimator and its metadata, and its sha256.

A bundle never unpickles: skops.io rebuilds only scikit-learn's own types and
the few the model kinds name (:func:`pipeline.linear.kinds.trusted_types`: this
project's SVM and scaler, the calibration wrappers), and refuses a file naming
any other type before creating anything, whether or not its checksum matches.
The sha256 beside it (``sha256sum -c`` format) catches corruption. A run
folder's bundles, checksums and metrics are replaced together
(:func:`pipeline.outputs.replace_folder`), so a reader never sees a mix of two runs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import skops.io as sio

from ..data.decode import ResizePolicy
from ..data.views import VIEWS
from ..errors import UserError
from ..provenance import file_sha256
from ..settings import IMAGE_SIZES, is_probability
from ..store.layout import HDF5_SIGNATURE, StoreConfig, layer_parts
from .kinds import KINDS, trusted_types

# 3: this package's types under pipeline.linear; 2 named them at the package's top (refused: fit again); 1 was a
# joblib pickle (refused)
BUNDLE_FORMAT = 3
TRUSTED = trusted_types()


@dataclass
class Bundle:
    """A fitted classifier on one layer of one backbone's codes."""

    estimator: object
    classifier: str
    layer: str
    class_names: list[str]
    store_config: dict
    weights_source: str
    C: float
    normalise: str
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str = ""
    views: list[str] = field(default_factory=list)  # predictions average over the image and these views
    format_version: int = BUNDLE_FORMAT

    @property
    def backbone(self) -> str:
        return self.store_config["backbone"]


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write the bundle, then its sha256 beside it; both through a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {f.name: getattr(bundle, f.name) for f in fields(bundle) if f.name != "estimator"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sio.dump({"meta": json.dumps(meta), "estimator": bundle.estimator}, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    tmp_sum = path.with_name(f".{path.name}.sha256.{os.getpid()}.tmp")
    tmp_sum.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp_sum, checksum_path(path))
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle after checking its sha256 and the types it names; every failure is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bundle {path} does not exist")
    with open(path, "rb") as f:
        if f.read(8) == HDF5_SIGNATURE:
            raise UserError(f"{path} is a store of codes, not a model bundle: fit a model on it and give its "
                            ".skops file")
    expected = checksum_path(path)
    if not expected.is_file():
        raise UserError(f"{expected.name} is missing: the bundle's integrity cannot be checked")
    try:
        digest = expected.read_text(encoding="utf-8").split()[0]
    except (UnicodeDecodeError, IndexError):
        raise UserError(f"{expected} is empty or not a checksum file; fit the model again") from None
    if digest != file_sha256(path):
        raise UserError(f"bundle {path} fails its sha256 check: it is corrupt or was modified")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK":  # a joblib pickle (format 1): loading it could run code
        raise UserError(f"{path} was saved by an older version as a pickle, which is never loaded because it can "
                        "run code; fit the model again from its feature store")
    try:
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED]
        if any(t.startswith("pipeline.") for t in untrusted):
            raise UserError(f"bundle {path} was saved by another version of this package (its types "
                            f"{', '.join(untrusted[:2])} are not this version's); fit the model again from its "
                            "feature store")
        if untrusted:
            raise UserError(f"bundle {path} names types that are not trusted ({', '.join(untrusted[:3])}); "
                            "it was not loaded")
        content = sio.load(path, trusted=TRUSTED)
        meta = json.loads(content["meta"])
        bundle = Bundle(estimator=content["estimator"], **meta)
    except UserError:
        raise
    except Exception as e:  # a crafted or damaged file fails in many ways; none of them is the user's to debug
        raise UserError(f"cannot load bundle {path}: {type(e).__name__}: {e}") from None
    if bundle.format_version > BUNDLE_FORMAT:
        raise UserError(f"{path} has bundle format {bundle.format_version}; upgrade this package")
    if bundle.classifier not in KINDS or not KINDS[bundle.classifier].linear:
        raise UserError(f"bundle {path} holds a model kind this version does not know: {bundle.classifier!r}")
    if not isinstance(bundle.views, list) or not all(isinstance(v, str) and v in VIEWS for v in bundle.views):
        raise UserError(f"bundle {path} names views this version does not know: {bundle.views!r}")
    _check_card(bundle, path)
    return bundle


def _check_card(bundle: Bundle, path: Path) -> None:
    """Every field of a bundle's metadata checked (types, ranges, sizes) before anything is built from it: a
    damaged or crafted file is one line, never a traceback or a network of absurd size."""
    def refuse(what: str):
        raise UserError(f"bundle {path} is damaged or was not written by this package: {what}")

    if not isinstance(bundle.store_config, dict):
        refuse("its store configuration is missing")
    try:
        config = StoreConfig.from_json(bundle.store_config)
        policy = ResizePolicy.from_dict(config.resize)
    except (KeyError, TypeError, ValueError, UserError) as e:
        refuse(f"its store configuration is not one ({type(e).__name__}: {e})")
    if not isinstance(config.backbone, str) or not isinstance(config.input_size, int) \
            or config.input_size != policy.size or not IMAGE_SIZES[0] <= policy.size <= IMAGE_SIZES[1]:
        refuse(f"its input size {config.input_size!r} is not its resize policy's or outside {IMAGE_SIZES}")
    if not isinstance(bundle.layer, str) or not set(layer_parts(bundle.layer)) <= set(config.layers):
        refuse(f"its layer {bundle.layer!r} is not one of its store's")
    names = bundle.class_names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        refuse("its class names are not distinct names")
    outputs = getattr(bundle.estimator, "classes_", None)
    if not KINDS[bundle.classifier].task.numeric and (outputs is None or len(outputs) != len(names)):
        refuse(f"its model has {0 if outputs is None else len(outputs)} classes for {len(names)} class names")
    if not isinstance(bundle.C, (int, float)) or not math.isfinite(bundle.C) or bundle.C < 0:
        refuse(f"C {bundle.C!r}")
    if not isinstance(bundle.metrics, dict):
        refuse("its metrics are not a table")
    reject = (bundle.metrics.get("reject") or {}).get("threshold") if isinstance(
        bundle.metrics.get("reject") or {}, dict) else "?"
    if reject is not None and not is_probability(reject):
        refuse(f"its threshold for unknown images {reject!r} is not a probability")
    thresholds = bundle.metrics.get("thresholds")
    if KINDS[bundle.classifier].task.several and (not isinstance(thresholds, list) or len(thresholds) != len(
            names) or not all(map(is_probability, thresholds))):
        refuse("its per-label thresholds are not one probability per label")
