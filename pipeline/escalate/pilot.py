"""The pilot: a short fine-tune against the linear stage on the same training-split images, before the full run.

The training part of the data (never the held-out images) is split once more:
a stratified quarter, the comparison images, is kept from both contenders. The
linear contender is the fit stage's chosen model kind, layer and C, refitted
on the rest of the codes; the fine-tuned one is the full run's recipe at a
fraction of its cost (:data:`EPOCHS` epochs at most and :data:`VIEWS` views in tail
mode, one epoch per phase in full mode) on the same rest, sharing the full
run's activation cache, so the views it computes are not computed again. Both
predict the comparison images, and the paired difference of their accuracies
(:func:`pipeline.metrics.paired_difference`) is the evidence the decision reads
(:mod:`pipeline.escalate.decide`). The pilot also times itself, which gives the
full run's estimated minutes on this machine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from ..backbones.registry import get_spec
from ..finetune.config import FinetuneConfig
from ..finetune.stage import finetune, resolve_mode
from ..finetune.tail import activation_folder
from ..linear.fit_result import FitResult
from ..linear.models import make_model
from ..linear.tasks import Classification
from ..metrics import PairedDifference, paired_difference
from ..run_files import HISTORY
from ..store.reader import FeatureStore

log = logging.getLogger(__name__)

SHARE = 0.25  # of the training part: the comparison images
EPOCHS = 8  # tail mode's epochs in the pilot, at most the full run's (full mode: one per phase); why: docs/run.md
VIEWS = 2  # tail mode's views per image in the pilot; the full run adds the others
LEVEL = 0.9  # the two-sided interval, whose lower end is a one-sided 95% bound (pipeline.escalate.decide)


@dataclass
class PilotResult:
    """The paired comparison (``a``: the linear contender, ``b``: the fine-tuned one), what each was, what the
    pilot cost and what the full run would."""

    comparison: PairedDifference
    linear: str
    mode: str
    seconds: float
    full_minutes: float  # the full fine-tune's estimated wall time here, from the pilot's measured speed

    @property
    def verdict(self) -> str:
        """``ahead`` (fine-tuning better at the interval's level), ``behind``, or ``inconclusive``."""
        low, high = self.comparison.interval
        return "ahead" if low > 0 else "behind" if high < 0 else "inconclusive"

    def to_json(self) -> dict:
        return {"comparison": self.comparison.to_json(), "linear": self.linear, "mode": self.mode,
                "seconds": self.seconds, "full_minutes": self.full_minutes, "verdict": self.verdict}

    @classmethod
    def from_json(cls, data: dict) -> "PilotResult":
        return cls(PairedDifference.from_json(data["comparison"]), data["linear"], data["mode"],
                   float(data["seconds"]), float(data["full_minutes"]))

    def format(self) -> str:
        c = self.comparison
        return (f"Pilot ({self.mode} mode, {self.seconds / 60:.1f} min, {c.images} training-split images kept "
                f"from both): linear ({self.linear}) {c.a:.3f}, fine-tuned {c.b:.3f}; difference {c.difference:+.3f}, "
                f"{c.level:.0%} interval [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}], McNemar p {c.p_value:.3g}: "
                f"fine-tuning {self.verdict}; the full fine-tune would take about {self.full_minutes:.2g} min here")


def _comparison_rows(store: FeatureStore, held_out: tuple[str, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the rows both contenders train on, the comparison rows): the training part, split stratified."""
    excluded = set(held_out)
    rows = np.array([i for i, p in enumerate(store.paths) if p not in excluded])
    train, compared = train_test_split(rows, test_size=SHARE, stratify=store.labels[rows], random_state=seed)
    return np.sort(train), np.sort(compared)


def linear_contender(store: FeatureStore, fitted: FitResult, train: np.ndarray, compared: np.ndarray
                     ) -> tuple[str, np.ndarray]:
    """The fit stage's chosen kind, layer, C and class weighting, refitted on ``train``; (its name, its
    predictions of ``compared``)."""
    kind = fitted.best.classifier
    final = fitted.final[kind]
    blocks = fitted.best.blocks  # weighed: the blocks the saved model keeps
    scaling = blocks.keeping(final.hyper["blocks"]) if blocks else Classification.normalise
    model = make_model(kind, final.hyper, scaling, final.class_weight)
    model.fit(store.codes(final.layer, train), store.labels[train])
    return f"{kind} on {final.layer} codes", model.predict(store.codes(final.layer, compared))


def pilot_config(full: FinetuneConfig, compared: list[str]) -> FinetuneConfig:
    """The full run's settings at the pilot's size: its held-out images left out, the comparison images as its
    test images, the full run's activation cache."""
    return dataclasses.replace(full, out=full.out.parent / "pilot", tail_epochs=min(EPOCHS, full.tail_epochs),
                               views=min(VIEWS, full.views),
                               head_epochs=1, finetune_epochs=1, test_paths=tuple(compared),
                               exclude_paths=full.test_paths, cache=activation_folder(full))


def _full_minutes(full: FinetuneConfig, mode: str, history: dict, seconds: float, trained: int,
                  images: int) -> float:
    """The full run's minutes, scaled from the pilot's measured epochs at their most (early stopping only
    shortens a run): an upper estimate. What the pilot spent outside its epochs (decoding, in tail mode the
    views it computed) is taken as the price of that work per image."""
    scale = (1 - full.val_size) * (images - len(full.test_paths)) / max(trained, 1)  # its training images/pilot's
    outside = max(seconds - sum(h["seconds"] for h in history.values()), 0.0)
    if mode == "full":
        epochs = sum(history[p]["seconds_per_epoch"] * e for p, e in (("head", full.head_epochs),
                                                                      ("finetune", full.finetune_epochs)))
        return (outside * images / (images - len(full.test_paths)) + epochs * scale) / 60
    made = images - len(full.test_paths) + trained * (min(VIEWS, full.views) - 1)  # image-views the pilot made
    todo = len(full.test_paths) + scale * trained * (full.views - 1)
    return (history["tail"]["seconds_per_epoch"] * full.tail_epochs * scale + outside / max(made, 1) * todo) / 60


def run_pilot(full: FinetuneConfig, store: FeatureStore, fitted: FitResult) -> PilotResult:
    """Run the pilot of the fine-tune ``full`` (whose ``test_paths`` are the held-out images) against the fit
    stage's choice ``fitted`` on ``store``'s codes."""
    started = time.perf_counter()
    train, compared = _comparison_rows(store, full.test_paths, full.seed)
    name, linear = linear_contender(store, fitted, train, compared)
    paths = [store.paths[i] for i in compared]
    mode = resolve_mode(full.mode, get_spec(full.backbone))
    log.info("pilot: %s mode on %d training-split images, scored on %d more", mode, len(train), len(paths))
    cfg = pilot_config(dataclasses.replace(full, mode=mode), paths)
    result = finetune(cfg)
    as_store = np.array([list(store.class_names).index(n) for n in result.class_names])
    tuned = as_store[[int(np.argmax(result.test_outputs[p])) for p in paths]]
    truth = store.labels[compared]
    seconds = time.perf_counter() - started
    history = HISTORY.read(cfg.out)
    trained = result.images - result.validation_images
    return PilotResult(paired_difference(linear == truth, tuned == truth, LEVEL, seed=full.seed), name, mode,
                       seconds, _full_minutes(full, mode, history, seconds, trained, len(store.paths)))
