"""Library versions and other facts recorded in every artefact, so results can be reproduced."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import sys

_PACKAGES = ("numpy", "h5py", "pillow", "keras", "scikit-learn", "tensorflow", "jax", "torch")


def library_versions() -> dict[str, str]:
    keras = sys.modules.get("keras")  # never import TensorFlow just to name it
    backend = keras.backend.backend() if keras else os.environ.get("KERAS_BACKEND", "tensorflow")
    versions = {"python": platform.python_version(), "keras_backend": backend}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
