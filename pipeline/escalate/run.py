"""The whole pipeline in one call: advise, extract, fit, fine-tune where advised, keep the better model.

Every candidate is scored on the same held-out images (a stratified split fixed
by the seed, unseen by any training or choice): a paired, honest comparison.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from ..backbones.registry import get_spec
from ..errors import UserError
from ..finetune.config import FinetuneConfig
from ..finetune.stage import finetune
from ..linear.classify import split_test
from ..linear.config import FitConfig
from ..linear.fit import FitResult, fit
from ..linear.kinds import get_kind
from ..provenance import now_iso
from ..store.config import ExtractConfig
from ..store.extract import extract
from ..store.reader import read_store
from .advise import Advice, advise
from .config import AdviseConfig, RunConfig
from .rule import Strategy

log = logging.getLogger(__name__)

FINETUNED = get_kind("fine-tuned")


def _layers(backbone: str) -> tuple[str, ...]:
    """The backbone's default layers; where that is the penultimate alone, two earlier ones too (the
    small-and-unlike case needs them)."""
    spec = get_spec(backbone)
    return spec.default_layers if len(spec.default_layers) > 1 else tuple(spec.feature_layers)[-3:]


@dataclass
class Candidate:
    """A model scored on the held-out images."""

    name: str
    model: str
    test_accuracy: float
    test_macro_f1: float
    seconds: float  # wall time of the path that made it: extract and fit, or fine-tune
    cv_accuracy_by_layer: dict | None = None  # linear candidates
    train_seconds: float | None = None  # the fine-tuned network's training alone

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunResult:
    """What ``run`` did, chose and why; ``fit`` is the fit stage's result."""

    data: str
    backbone: str
    seed: int
    held_out_images: int
    advice: Advice
    finetune_ran: bool
    finetune_why: str
    candidates: list[Candidate]
    chosen: Candidate
    why: str
    advisor_agreed: bool | None
    created: str
    fit: FitResult

    def to_json(self) -> dict:
        return {"data": self.data, "backbone": self.backbone, "seed": self.seed,
                "held_out_images": self.held_out_images, "advice": self.advice.to_json(),
                "finetune": {"ran": self.finetune_ran, "why": self.finetune_why},
                "candidates": [c.to_json() for c in self.candidates], "chosen": self.chosen.to_json(),
                "why": self.why, "advisor_agreed": self.advisor_agreed, "created": self.created}


def run(cfg: RunConfig) -> RunResult:
    """Run everything into ``cfg.out``; writes summary.json and summary.md."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    advice = advise(AdviseConfig(cfg.data, cfg.backbone, seed=cfg.seed, engine=cfg.engine, budget=cfg.budget))
    log.info("%s", advice.format())
    store_path = cfg.out / "features.h5"
    started = time.perf_counter()
    extract(ExtractConfig(data=cfg.data, out=store_path, backbone=cfg.backbone, layers=_layers(cfg.backbone),
                          engine=cfg.engine, progress=cfg.progress))
    store = read_store(store_path)
    if store.labels is None:
        raise UserError("comparing candidates needs class labels; fit and fine-tune a numeric target "
                        "separately", param="data")
    _, test_idx = split_test(store.labels, cfg.test_size, cfg.seed)
    test_paths = tuple(store.paths[i] for i in sorted(test_idx))
    fitted = fit(FitConfig(store=store_path, out=cfg.out / "linear", test_paths=test_paths, seed=cfg.seed))
    linear_seconds = time.perf_counter() - started

    candidates = []
    for kind, final in fitted.final.items():
        candidates.append(Candidate(
            f"{kind} on {final.layer} codes", str(cfg.out / "linear" / final.bundle),
            final.test.scores["accuracy"], final.test.scores["macro_f1"], linear_seconds,
            cv_accuracy_by_layer={r.layer: r.primary.mean for r in fitted.results if r.classifier == kind}))
    strategy = advice.strategy
    do_finetune = cfg.finetune == "always" or (cfg.finetune == "auto" and strategy.finetunes)
    if do_finetune:
        started = time.perf_counter()
        finetuned = finetune(FinetuneConfig(
            data=cfg.data, out=cfg.out / "finetune", backbone=cfg.backbone, mode=cfg.mode, image_size=cfg.image_size,
            flip=cfg.flip, tail_epochs=cfg.tail_epochs, head_epochs=cfg.epochs[0], finetune_epochs=cfg.epochs[1],
            engine=cfg.engine, seed=cfg.seed, test_paths=test_paths,
            unfreeze=10_000 if strategy is Strategy.FINETUNE_WHOLE else 30, progress=cfg.progress))
        test = finetuned.test
        candidates.append(Candidate("fine-tuned network", str(cfg.out / "finetune" / FINETUNED.file),
                                    test.scores["accuracy"], test.scores["macro_f1"], time.perf_counter() - started,
                                    train_seconds=finetuned.validation.fit_seconds))
    best = max(candidates, key=lambda c: (c.test_accuracy, c.test_macro_f1))
    reason = (f"highest accuracy on the {len(test_paths)} held-out images "
              f"({best.test_accuracy:.3f}; " + ", ".join(
                  f"{c.name} {c.test_accuracy:.3f}" for c in candidates if c is not best) + ")")
    result = RunResult(
        str(cfg.data), cfg.backbone, cfg.seed, len(test_paths), advice, do_finetune,
        f"asked to fine-tune {cfg.finetune}" if cfg.finetune != "auto" else
        f"the advisor recommends: {advice.recommendation}",
        candidates, best, reason,
        # Did the candidate the advisor favoured win? Only known when both kinds ran.
        (best.model.endswith(FINETUNED.file) == strategy.finetunes) if do_finetune else None,
        now_iso(), fitted)
    (cfg.out / "summary.json").write_text(json.dumps(result.to_json(), indent=2))
    (cfg.out / "summary.md").write_text(format_summary(result) + "\n")
    return result


def format_summary(result: RunResult) -> str:
    """What ``run`` chose and why, in Markdown (summary.md)."""
    a = result.advice
    lines = [
        f"# {result.data} with {result.backbone}",
        "",
        f"Advisor: {a.images} images in {a.classes} classes ({'small' if a.small else 'large'}), "
        f"BatchNorm divergence {a.divergence:.3f} ({'similar to' if a.similar else 'unlike'} ImageNet) "
        f"-> {a.recommendation}.",
        f"Fine-tuning {'ran' if result.finetune_ran else 'skipped'}: {result.finetune_why}.",
        "",
        "| candidate | held-out accuracy | held-out macro-F1 | minutes |",
        "|---|---|---|---|",
        *[f"| {c.name} | {c.test_accuracy:.3f} | {c.test_macro_f1:.3f} | {c.seconds / 60:.1f} |"
          for c in result.candidates],
        "",
        f"Chosen: **{result.chosen.name}** ({result.chosen.model}): {result.why}.",
    ]
    return "\n".join(lines)
