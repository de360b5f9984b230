"""A scikit-learn transformer from image paths to CNN codes, cached in an HDF5 feature store.

It can sit first in a ``Pipeline`` inside ``GridSearchCV`` or
``cross_val_score``: codes are computed once per image (and file version) and
read back from the cache on every later call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..backbones.codes import resize_policy
from ..backbones.engine import frozen_network
from ..backbones.loading import cache_dir, load_backbone
from ..backbones.options import DEFAULT_BACKBONE
from ..backbones.spec import safe_name
from ..data.discover import Dataset
from ..errors import UserError
from .extract import update_store
from .reader import read_store


def _as_paths(X) -> list[Path]:
    values = np.asarray(X, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or not all(isinstance(v, (str, Path)) for v in values):
        raise ValueError("CodesTransformer expects a 1-D sequence of image paths (str or Path)")
    return [Path(v).resolve() for v in values]


class CodesTransformer(TransformerMixin, BaseEstimator):
    """Image paths -> globally pooled codes of one backbone layer.

    Parameters
    ----------
    backbone : a registered backbone name.
    layer : one of the backbone's feature layers (default ``penultimate``).
    cache : HDF5 store for the codes; default ``<weights cache>/codes/<backbone>-<layer>.h5``.
    weights : optional local weights file for the backbone.
    batch_size : images per forward pass.
    engine : ``auto``, ``keras`` or ``onnx`` (see :mod:`pipeline.backbones.engine`).
    """

    def __init__(self, backbone=DEFAULT_BACKBONE, layer="penultimate", cache=None, weights=None, batch_size=32,
                 engine="auto"):
        self.backbone = backbone
        self.layer = layer
        self.cache = cache
        self.weights = weights
        self.batch_size = batch_size
        self.engine = engine

    def _cache_path(self) -> Path:
        return Path(self.cache) if self.cache else cache_dir() / "codes" / f"{safe_name(self.backbone)}-{self.layer}.h5"

    def fit(self, X, y=None):
        """Check the settings (no learning: the backbone is frozen)."""
        _as_paths(X)
        backbone = load_backbone(self.backbone, self.weights)
        backbone.check_layers([self.layer])
        self.n_features_out_ = frozen_network(backbone, "features", [self.layer], self.engine).dims[0]
        return self

    def transform(self, X):
        """Codes for ``X`` (n_images x n_features), extracting only images the cache lacks."""
        check_is_fitted(self)
        paths = _as_paths(X)
        root = Path(paths[0].anchor if paths else "/")
        wanted = [p.relative_to(root).as_posix() for p in paths]
        backbone = load_backbone(self.backbone, self.weights)
        dataset = Dataset(root, sorted(set(wanted)), None, None)
        store_path = self._cache_path()
        update_store(dataset, store_path, backbone, [self.layer], resize_policy(backbone.spec),
                     batch_size=self.batch_size, progress=False, prune=False, engine=self.engine)
        store = read_store(store_path)
        failed = dict(store.skipped)
        bad = [w for w in wanted if w in failed]
        if bad:
            raise UserError(f"{len(bad)} image(s) could not be decoded, e.g. /{bad[0]}: {failed[bad[0]]}")
        index = {p: i for i, p in enumerate(store.paths)}
        rows = np.array([index[w] for w in wanted], dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        return store.codes(self.layer, rows=unique)[inverse]

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        return np.array([f"{self.layer}_{i}" for i in range(self.n_features_out_)], dtype=object)
