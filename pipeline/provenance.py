"""Library versions and other facts recorded in every artefact, so results can be reproduced."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform

import keras

_PACKAGES = ("numpy", "h5py", "pillow", "keras", "scikit-learn", "tensorflow", "jax", "torch")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
