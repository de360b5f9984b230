"""The advisor: which of the four situations (small or large, like ImageNet or not) a dataset is in.

Similarity is the pretrained network's own: per BatchNorm layer, the median over
channels of the KL divergence between its ImageNet running statistics and the
same statistics on the user's images, averaged over layers. The thresholds and
the four strategies are the rule's (:mod:`pipeline.escalate.rule`); the advisor
table they come from: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ..backbones.codes import resize_policy
from ..backbones.engine import frozen_network
from ..backbones.factory import batchnorm_layers
from ..backbones.loading import Backbone, load_backbone
from ..backbones.options import DEFAULT_BACKBONE
from ..data.decode import ResizePolicy
from ..data.discover import discover
from ..data.loader import decoded_batches
from ..errors import UserError
from ..store.reader import read_store
from .config import AdviseConfig
from .rule import (
    CALIBRATED_ON,
    FAR_DIVERGENCE,
    FINETUNE_FORWARD_PASSES,
    SIMILAR_DIVERGENCE,
    SMALL_IMAGES,
    SMALL_MEDIAN_CLASS,
    Strategy,
)
from .transferability import LayerScores, layer_scores

log = logging.getLogger(__name__)

@dataclass
class Advice:
    """The figures, the thresholds and the verdict (:attr:`strategy`)."""

    images: int
    classes: int
    smallest_class: int
    median_class: float
    backbone: str
    sampled: int
    divergence: float | None  # None: the backbone has no BatchNorm to measure it with
    entropy: float | None
    small: bool
    similar: bool
    far: bool
    thresholds: dict
    images_per_second: float  # the frozen network's forward passes on this machine
    finetune_minutes: float  # fine-tuning's estimated wall time here
    budget_minutes: float | None = None
    transferability: dict[str, LayerScores] | None = None  # cheap scores per layer, when advising on a store

    @property
    def over_budget(self) -> bool:
        return self.budget_minutes is not None and self.finetune_minutes > self.budget_minutes

    @property
    def strategy(self) -> Strategy:
        return Strategy.for_situation(self.small, self.similar, self.far, self.over_budget)

    @property
    def recommendation(self) -> str:
        return self.strategy.value

    def to_json(self) -> dict:
        return {"images": self.images, "classes": self.classes, "smallest_class": self.smallest_class,
                "median_class": self.median_class, "backbone": self.backbone, "sampled": self.sampled,
                "divergence": self.divergence, "entropy": self.entropy, "small": self.small,
                "similar": self.similar, "far": self.far, "images_per_second": self.images_per_second,
                "finetune_minutes": self.finetune_minutes, "budget_minutes": self.budget_minutes,
                "over_budget": self.over_budget, "recommendation": self.recommendation,
                "thresholds": self.thresholds,
                **({"transferability": {k: v.to_json() for k, v in self.transferability.items()}}
                   if self.transferability else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Advice":
        """The advice :meth:`to_json` wrote (what it derives, the verdict among them, is derived again)."""
        derived = {"over_budget", "recommendation", "transferability"}
        scores = data.get("transferability")
        return cls(**{k: v for k, v in data.items() if k not in derived},
                   transferability=None if scores is None else {k: LayerScores.from_json(v)
                                                                 for k, v in scores.items()})

    def format(self) -> str:
        size = "small" if self.small else "large"
        like = "similar to" if self.similar else "far from" if self.far else "unlike"
        t = self.thresholds
        if self.divergence is None:
            similarity = (f"similarity to ImageNet: not measured ({self.backbone} has no BatchNorm statistics to "
                          "compare with); for a large set the pilot decides")
        else:
            similarity = (f"similarity to ImageNet ({self.backbone}, {self.sampled} images): BatchNorm divergence "
                          f"{self.divergence:.3f} ({like} ImageNet; similar below {t['similar_divergence']}, far "
                          f"from {t['far_divergence']}), ImageNet-head entropy {self.entropy:.2f}")
        lines = [
            f"dataset: {self.images} images, {self.classes} classes "
            f"(smallest {self.smallest_class}, median {self.median_class:g})",
            f"size: {size} (small means under {t['small_images']} images or a median class under "
            f"{t['small_median_class']})",
            similarity,
            *[f"cheap scores of {layer} codes: k-NN accuracy {v.knn_accuracy:.3f}, LogME {v.logme:.3f}"
              for layer, v in (self.transferability or {}).items()],
            f"situation: {size} and {like if self.divergence is not None else 'unmeasured likeness to'} ImageNet",
            f"fine-tuning would take about {self.finetune_minutes:.0f} min here (the frozen network runs "
            f"{self.images_per_second:.0f} images/s)" + (f", over the budget of {self.budget_minutes:g} min"
                                                          if self.over_budget else ""),
            f"recommendation: {self.recommendation}" + ("" if self.small else
                                                          " (the run stage decides with a pilot on your data)"),
        ]
        if self.backbone not in CALIBRATED_ON:
            lines.append(f"note: the threshold was calibrated on {', '.join(CALIBRATED_ON)}")
        return "\n".join(lines)


def _passes(network, files: list[Path], policy: ResizePolicy, batch_size: int, runs: list):
    """Yield ``(outputs, n)`` of each batch of ``files`` that decoded, appending ``(seconds, images)`` of each call
    to ``runs``."""
    for batch in decoded_batches(files, policy, batch_size):
        n = len(batch.ok)
        if not n:
            continue
        started = time.perf_counter()
        outputs = [np.asarray(o, np.float64)[:n] for o in network(batch.pixels)]
        runs.append((time.perf_counter() - started, len(batch.pixels)))
        yield outputs, n


def _rate(runs: list) -> float:
    steady = runs[1:] or runs  # the first call pays for tracing and warm-up
    return sum(n for _, n in steady) / max(sum(t for t, _ in steady), 1e-9)


def imagenet_similarity(backbone: Backbone, files: list[Path], policy: ResizePolicy, batch_size: int = 32,
                        engine: str = "auto") -> tuple[float | None, float | None, int, float]:
    """(BatchNorm divergence, mean normalised ImageNet-head entropy, images used, forward passes per second
    after the first batch) over ``files``; a backbone without BatchNorm (a vision transformer) gives no
    divergence and no entropy, only the speed of its codes."""
    norms, runs = batchnorm_layers(backbone), []
    if not norms:
        count = sum(n for _, n in _passes(frozen_network(backbone, "features", engine=engine), files, policy,
                                           batch_size, runs))
        if count == 0:
            raise UserError("none of the sampled images could be decoded")
        return None, None, count, _rate(runs)
    network = frozen_network(backbone, "statistics", engine=engine)
    sums = [np.zeros(2 * layer.input.shape[-1]) for layer in norms]
    entropy, count = 0.0, 0
    for outputs, n in _passes(network, files, policy, batch_size, runs):
        for k in range(len(norms)):
            sums[k] += np.concatenate([outputs[2 * k].sum(0), outputs[2 * k + 1].sum(0)])
        logits = outputs[-1]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        entropy += float((-(p * np.log(p + 1e-12)).sum(axis=1) / np.log(p.shape[1])).sum())
        count += n
    if count == 0:
        raise UserError("none of the sampled images could be decoded")
    divergences = []
    for layer, s in zip(norms, sums):
        c = len(s) // 2
        mean, var = s[:c] / count, np.maximum(s[c:] / count - (s[:c] / count) ** 2, 0) + layer.epsilon
        ref_mean = keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
        ref_var = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64) + layer.epsilon
        kl = 0.5 * (np.log(ref_var / var) + (var + (mean - ref_mean) ** 2) / ref_var - 1)
        divergences.append(float(np.median(kl)))
    return float(np.mean(divergences)), entropy / count, count, _rate(runs)


def advise(cfg: AdviseConfig) -> Advice:
    """Advice for an image folder / CSV manifest, or for the images behind a feature store; with a budget,
    fine-tuning is advised only when its estimated time here fits."""
    source, backbone, scores = Path(cfg.source), cfg.backbone, None
    if source.suffix in (".h5", ".hdf5"):
        store = read_store(source)
        if store.labels is not None:
            scores = layer_scores(store, store.layers, np.arange(len(store)), cfg.seed)
        root = Path(store.attrs.get("dataset_root", source.parent))
        paths, labels = store.paths, store.labels
        backbone = backbone or store.config.backbone
        resize_mode = store.config.resize.get("mode", "crop")
    else:
        dataset = discover(source, outside=cfg.allow_outside)
        root, paths = dataset.root, dataset.paths
        labels = None if dataset.labels is None else np.unique(dataset.labels, return_inverse=True)[1]
        backbone = backbone or DEFAULT_BACKBONE
        resize_mode = "crop"
    if not paths:
        raise UserError(f"no images in {source}")
    counts = np.bincount(labels) if labels is not None else np.array([len(paths)])
    counts = counts[counts > 0]
    rng = np.random.default_rng(cfg.seed)
    chosen = sorted(rng.choice(len(paths), size=min(cfg.sample, len(paths)), replace=False))
    files = [root / paths[i] for i in chosen]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise UserError(f"the images behind {source} are not at {root} any more (e.g. {missing[0]})")
    model = load_backbone(backbone, cfg.weights)
    divergence, entropy, used, rate = imagenet_similarity(model, files, resize_policy(model.spec, resize_mode),
                                                          engine=cfg.engine)
    small = len(paths) < SMALL_IMAGES or float(np.median(counts)) < SMALL_MEDIAN_CLASS
    # unmeasured (no BatchNorm): as a set unlike ImageNet and far from it, so that a large set's pilot decides
    similar = divergence is not None and divergence < SIMILAR_DIVERGENCE
    return Advice(
        images=len(paths), classes=len(counts), smallest_class=int(counts.min()),
        median_class=float(np.median(counts)), backbone=backbone, sampled=used, divergence=divergence,
        entropy=entropy, small=small, similar=similar, far=divergence is None or divergence >= FAR_DIVERGENCE,
        thresholds={"small_images": SMALL_IMAGES, "small_median_class": SMALL_MEDIAN_CLASS,
                    "similar_divergence": SIMILAR_DIVERGENCE, "far_divergence": FAR_DIVERGENCE},
        images_per_second=rate, finetune_minutes=len(paths) * FINETUNE_FORWARD_PASSES / rate / 60,
        budget_minutes=cfg.budget, transferability=scores,
    )


def write_advice(advice: Advice, path: str | Path) -> None:
    Path(path).write_text(json.dumps(advice.to_json(), indent=2))
