"""The fit stage for stores whose codes exceed a memory budget: SGD on chunks read from the store.

Nested cross-validation refits every candidate many times on all the codes in
memory; past the budget that is neither possible nor needed, since a held-out
split of this size measures precisely. So the codes are streamed: a first pass
gathers the scaling statistics, then ``partial_fit`` runs over chunks drawn
from random 256-row blocks of the store, until accuracy on a stratified
validation split stops improving, each kind with its own incremental learner
(:class:`pipeline.linear.kinds.Incremental`: ``SGDClassifier``'s averaged hinge
loss for the SVM, a multinomial logistic regression trained by Adam for the
softmax). A calibrated kind's probabilities are Platt-calibrated on the
validation split. Memory holds one chunk, the labels
and the models, whatever the store's size.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from .. import metrics
from ..errors import UserError
from ..results import CVResult, HeldOut, Protocol
from ..store.layout import layer_parts
from ..store.reader import FeatureStore
from .kinds import get_kind
from .scaling import scaler

log = logging.getLogger(__name__)

BLOCK = 256  # the store's chunk rows: a block is read whole or not at all
# A chunk mixes at least this many random blocks: rows are sorted by path, hence by class folder, and SGD on
# chunks of a few classes at a time drifts. Budgets under MIN_BLOCKS * BLOCK rows are rounded up to it.
MIN_BLOCKS = 64
VALIDATION = 0.1
MAX_EPOCHS = 30
PATIENCE = 3
ALPHAS = tuple(10.0 ** np.arange(-6, -0.9, 0.5))  # the penalty grid (half decades), fitted in the same passes


def default_max_memory() -> int:
    """A quarter of the machine's memory: nested CV holds a few copies of the codes at once."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def codes_bytes(store: FeatureStore, layers) -> int:
    """What the codes of ``layers``, with their views, take in memory as float32."""
    return len(store) * 4 * (1 + len(store.views)) * sum(_dim(store, layer) for layer in layers)


class _Blocks:
    """Rows of one layer read in 256-row blocks, in random order, ``chunk_rows`` at a time."""

    def __init__(self, store: FeatureStore, layer: str, rows: np.ndarray, chunk_rows: int):
        self.store, self.layer = store, layer
        self.member = np.zeros(len(store), bool)
        self.member[rows] = True
        starts = np.arange(0, len(store), BLOCK)
        self.starts = starts[[self.member[s:s + BLOCK].any() for s in starts]]
        self.per_chunk = max(MIN_BLOCKS, chunk_rows // BLOCK)

    def chunks(self, rng: np.random.Generator | None = None):
        """``(rows, codes)`` per chunk; with ``rng``, blocks in random order and rows shuffled."""
        starts = self.starts if rng is None else rng.permutation(self.starts)
        with self.store.spans(self.layer) as read:
            for k in range(0, len(starts), self.per_chunk):
                spans = [(a, min(a + BLOCK, len(self.store))) for a in np.sort(starts[k:k + self.per_chunk])]
                rows = np.concatenate([np.arange(a, b) for a, b in spans])
                keep = self.member[rows]
                rows, codes = rows[keep], np.concatenate([read(a, b) for a, b in spans])[keep]
                if rng is not None:
                    order = rng.permutation(len(rows))
                    rows, codes = rows[order], codes[order]
                yield rows, codes


def stratified_split(y: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split into (kept, held out), ``fraction`` of each class held out at random. Unlike
    scikit-learn's splitters, this takes a few bytes per row: a million rows cost 17 MB, not a hundred."""
    rng = np.random.default_rng(seed)
    labels = y[rows]
    order = np.argsort(labels, kind="stable")
    held = np.zeros(len(rows), bool)
    for start, stop in zip(*_runs(labels[order])):
        count = round(fraction * (stop - start))
        if count == 0 or count == stop - start:
            raise UserError(f"class {labels[order[start]]} has {stop - start} rows: too few to hold "
                            f"{fraction:.0%} of them out and keep the rest")
        held[order[start + rng.choice(stop - start, count, replace=False)]] = True
    return rows[~held], rows[held]


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and stops of the runs of equal values in a sorted array."""
    edges = np.flatnonzero(np.diff(sorted_values)) + 1
    return np.concatenate([[0], edges]), np.concatenate([edges, [len(sorted_values)]])


COPIES = 8  # float32 chunks alive at once at the peak: the blocks read and joined, the scaler's temporaries
# (the signed power's sign, magnitude and power, the standardisation), the float64 copy SGD takes (two)


def _chunk_rows(store: FeatureStore, layer: str, budget: int) -> int:
    """Rows per chunk: the chunk and the copies reading and scaling make of it fit in ``budget`` (a million
    2,064-d codes under 2 GiB peaked at 4.5 GiB when this counted three copies: docs/benchmarks.md)."""
    return budget // (4 * _dim(store, layer)) // COPIES


def _dim(store: FeatureStore, layer: str) -> int:
    dims = json.loads(store.attrs["feature_dims"])
    return sum(int(dims[x]) for x in layer_parts(layer))


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _predict(model, blocks: _Blocks) -> tuple[np.ndarray, np.ndarray]:
    rows, predicted = [], []
    for r, codes in blocks.chunks():
        rows.append(r)
        predicted.append(model.predict(codes))
    return np.concatenate(rows), np.concatenate(predicted)


def stream_fit(kind: str, store: FeatureStore, layer: str, train_rows: np.ndarray, budget: int,
               normalise: str = "power", class_weight: str | None = None, seed: int = 0):
    """Fit ``kind`` on ``train_rows`` of ``store`` within ``budget`` bytes, one model per penalty in :data:`ALPHAS`
    in the same passes; returns the best on the validation split (a Pipeline, or the SVM calibrated around one),
    its :class:`CVResult` there, and ``{"alpha", "epochs"}``."""
    incremental = get_kind(kind).incremental
    started = time.perf_counter()
    y_all = store.labels
    classes = np.arange(len(store.class_names))
    fit_rows, val_rows = stratified_split(y_all, train_rows, VALIDATION, seed)
    dim, chunk_rows = _dim(store, layer), _chunk_rows(store, layer, budget)
    train, val = _Blocks(store, layer, fit_rows, chunk_rows), _Blocks(store, layer, val_rows, chunk_rows)
    scale = scaler(normalise)
    if hasattr(scale, "partial_fit"):  # the power and standard scalers; the l2 normaliser learns nothing
        for _, codes in train.chunks():
            scale.partial_fit(codes)
    else:
        scale.fit(np.zeros((1, dim)))
    weights = np.ones(len(classes))
    if class_weight == "balanced":
        counts = np.bincount(y_all[fit_rows], minlength=len(classes))
        weights = len(fit_rows) / (len(classes) * np.maximum(1, counts))
    models = {alpha: incremental.learner(alpha, seed) for alpha in ALPHAS}
    best = {alpha: (-1.0, None) for alpha in ALPHAS}  # validation accuracy, the model at it
    waited = dict.fromkeys(ALPHAS, 0)
    rng = np.random.default_rng(seed)
    for epochs in range(1, MAX_EPOCHS + 1):
        active = [alpha for alpha in ALPHAS if waited[alpha] < PATIENCE]
        if not active:
            break
        for rows, codes in train.chunks(rng):
            scaled = np.asarray(scale.transform(codes), np.float64)  # once, not once per penalty inside SGD
            y = y_all[rows]
            for alpha in active:
                models[alpha].partial_fit(scaled, y, classes=classes, sample_weight=weights[y])
        for alpha in active:
            rows, predicted = _predict(Pipeline([("scale", scale), ("clf", models[alpha])]), val)
            score = metrics.accuracy(y_all[rows], predicted)
            if score > best[alpha][0]:
                best[alpha], waited[alpha] = (score, copy.deepcopy(models[alpha])), 0
            else:
                waited[alpha] += 1
        log.info("epoch %d: validation accuracy %s", epochs,
                 ", ".join(f"{best[alpha][0]:.4f} (alpha {alpha:g})" for alpha in active))
    alpha = max(ALPHAS, key=lambda a: best[a][0])
    clf = best[alpha][1]
    clf = incremental.finish(clf, alpha, len(fit_rows))
    model = Pipeline([("scale", scale), ("clf", clf)])
    rows, predicted = _predict(model, val)
    y_val = y_all[rows]
    if get_kind(kind).calibrated:  # Platt sigmoids on (at most a budget's worth of) the validation split
        limit = max(len(classes), budget // (4 * dim) // 2)
        sample = np.sort(rng.permutation(rows)[:limit])
        model = CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid").fit(
            store.codes(layer, sample), y_all[sample])
    n = len(y_val)
    scores = metrics.classification_scores(y_val, predicted)
    result = CVResult(layer, kind, {name: metrics.Score(v, 0.0, metrics.wilson(v, n), (v,))
                                    for name, v in scores.items()},
                      {f"{alpha:g}": 1}, hyper="alpha",
                      per_class=metrics.per_class(y_val, predicted, store.class_names),
                      fit_seconds=time.perf_counter() - started)
    return model, result, {"alpha": alpha, "epochs": epochs}


def held_out(model, store: FeatureStore, layer: str, rows: np.ndarray, budget: int, data: str) -> HeldOut:
    """``model``'s figures on ``rows``, read chunk by chunk."""
    rows, predicted = _predict(model, _Blocks(store, layer, rows, _chunk_rows(store, layer, budget)))
    y = store.labels[rows]
    return HeldOut(data, int(len(y)), metrics.classification_scores(y, predicted),
                   metrics.per_class(y, predicted, store.class_names))


def protocol(normalise: str, class_weight, seed: int, budget: int, need: int, epochs: dict) -> Protocol:
    return Protocol(0, 0, f"a stratified {VALIDATION:.0%} validation split",
                    {"alpha": list(ALPHAS)}, normalise, [class_weight], seed, [
                        f"streamed: the codes take {size_text(need)}, over the {size_text(budget)} memory budget; "
                        "nested CV is pointless at this size and was not run",
                        "incremental (" + ", ".join(f"{k}: {get_kind(k).incremental.loss} loss, {e} epochs"
                                                    for k, e in epochs.items())
                        + "); figures are on the validation split"])
