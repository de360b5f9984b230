"""The saved classifier: a joblib file with everything needed to reproduce a prediction, and its sha256.

A bundle is a pickle: loading one runs code, so only load bundles from a
source you trust. The sha256 written beside it (``sha256sum -c`` format) is
checked before loading, which catches corruption and accidental edits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import joblib

from .errors import UserError
from .provenance import file_sha256

BUNDLE_FORMAT = 1


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    joblib.dump(bundle, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle after checking its sha256; every failure is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bundle {path} does not exist")
    expected = checksum_path(path)
    if not expected.is_file():
        raise UserError(f"{expected.name} is missing: the bundle's integrity cannot be checked")
    if expected.read_text().split()[0] != file_sha256(path):
        raise UserError(f"bundle {path} fails its sha256 check: it is corrupt or was modified")
    try:
        bundle = joblib.load(path)
    except Exception as e:  # a pickle can fail in many ways; none of them is the user's fault to debug
        raise UserError(f"cannot load bundle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(bundle, Bundle):
        raise UserError(f"{path} is not a classifier bundle")
    if bundle.format_version > BUNDLE_FORMAT:
        raise UserError(f"{path} has bundle format {bundle.format_version}; upgrade this package")
    return bundle
