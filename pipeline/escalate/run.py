"""The whole pipeline in one call: extract, advise, fit, pilot, fine-tune where it pays, keep the better model.

Every candidate is scored on the same held-out images (a stratified split fixed
by the seed, unseen by any training or choice): a paired, honest comparison.
Each finished stage is recorded in the run folder (:mod:`pipeline.escalate.stages`)
and ``summary.md`` is written after each, so a run cut short says what it
found, and a rerun with the same settings goes on where it stopped:
extraction and fine-tuning resume themselves, the advice, the linear stage and
the pilot are taken up whole.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..backbones.registry import get_spec
from ..data.discover import discover
from ..errors import UserError
from ..finetune.config import FinetuneConfig
from ..finetune.stage import FinetuneResult, finetune
from ..linear.classify import split_test
from ..linear.config import FitConfig
from ..linear.fit import FitResult, fit
from ..linear.kinds import get_kind
from ..outputs import claim, write_bytes
from ..provenance import now_iso
from ..run_files import SUMMARY
from ..store.config import ExtractConfig
from ..store.extract import extract
from ..store.reader import read_store
from .advise import Advice, advise
from .config import AdviseConfig, RunConfig
from .decide import Decision, decide, needs_pilot
from .pilot import PilotResult, run_pilot
from .rule import Strategy
from .stages import Stages, stage_key
from .transferability import LayerScores, layer_scores

log = logging.getLogger(__name__)

FINETUNED = get_kind("fine-tuned")


def _layers(backbone: str) -> tuple[str, ...]:
    """The backbone's run layers, or its default layers; where that is the penultimate alone, two earlier ones
    too (the small-and-unlike case needs them)."""
    spec = get_spec(backbone)
    return spec.run_layers or (spec.default_layers if len(spec.default_layers) > 1 else
                               tuple(spec.feature_layers)[-3:])


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
    """What ``run`` did, chose and why."""

    data: str
    backbone: str
    seed: int
    held_out_images: int
    advice: Advice
    proposal: Strategy  # the heuristic's: the set's situation's strategy
    transferability: dict[str, LayerScores]  # the cheap scores of each layer's codes, on the training part
    pilot: PilotResult | None
    decision: Decision | None  # None: not decided yet (the run is at the pilot, or stopped before it)
    candidates: list[Candidate]
    chosen: Candidate
    why: str
    created: str
    fit: FitResult
    finetuned: FinetuneResult | None = None  # the fine-tuning stage's result, where it ran

    @property
    def finetune_ran(self) -> bool:
        return self.decision is not None and self.decision.finetune

    def to_json(self) -> dict:
        return {"data": self.data, "backbone": self.backbone, "seed": self.seed,
                "held_out_images": self.held_out_images, "advice": self.advice.to_json(),
                "proposal": self.proposal.value,
                "transferability": {layer: s.to_json() for layer, s in self.transferability.items()},
                **({"pilot": self.pilot.to_json()} if self.pilot else {}),
                **({"finetune": {"ran": self.decision.finetune, "why": self.decision.why}} if self.decision else {}),
                "candidates": [c.to_json() for c in self.candidates], "chosen": self.chosen.to_json(),
                "why": self.why, "created": self.created}


def finetune_config(cfg: RunConfig, proposal: Strategy, test_paths: tuple[str, ...]) -> FinetuneConfig:
    """The full fine-tune ``run`` makes: the whole network for a set unlike ImageNet, the later layers else."""
    return FinetuneConfig(
        data=cfg.data, out=cfg.out / "finetune", backbone=cfg.backbone, mode=cfg.mode, image_size=cfg.image_size,
        flip=cfg.flip, tail_epochs=cfg.tail_epochs, head_epochs=cfg.epochs[0], finetune_epochs=cfg.epochs[1],
        engine=cfg.engine, seed=cfg.seed, test_paths=test_paths, allow_outside=cfg.allow_outside,
        overwrite=True,  # the run's own subfolder: the pilot's activation cache may be there already, unmarked
        unfreeze=10_000 if proposal is Strategy.FINETUNE_WHOLE else 30, progress=cfg.progress)


def finetuned_candidate(ft: FinetuneConfig) -> tuple[Candidate, FinetuneResult]:
    """Run the full fine-tune ``ft``; the network scored on its test images (the held-out ones), and the
    stage's result."""
    started = time.perf_counter()
    finetuned = finetune(ft)
    test = finetuned.test
    return Candidate("fine-tuned network", str(ft.out / FINETUNED.file), test.scores["accuracy"],
                     test.scores["macro_f1"], time.perf_counter() - started,
                     train_seconds=finetuned.validation.fit_seconds), finetuned


def _pilot(cfg: RunConfig, advice: Advice, ft: FinetuneConfig, store, fitted: FitResult, stages: Stages,
           key: str) -> PilotResult | None:
    """The pilot's evidence where the decision needs it (a large set, fine-tuning left to it), taken up from an
    earlier run where it finished with the same ``key``."""
    if cfg.finetune != "auto" or not needs_pilot(advice.small):
        return None
    saved = stages.result("pilot", key)
    if saved is not None:
        return PilotResult.from_json(saved)
    pilot = run_pilot(ft, store, fitted)
    stages.finish("pilot", key, pilot.to_json())
    return pilot


def _decision(cfg: RunConfig, proposal: Strategy, pilot: PilotResult | None) -> Decision:
    if cfg.finetune != "auto":
        return Decision(cfg.finetune == "always", f"asked to fine-tune {cfg.finetune}")
    return decide(proposal, pilot, cfg.budget)


def _linear(cfg: RunConfig, store_path: Path, test_paths: tuple[str, ...], stages: Stages, key: str,
            extracted: float) -> tuple[FitResult, float]:
    """The fit stage on the training part and the wall time of the path that made it (``extracted``: the
    extraction's seconds, then the fit's), taken up from an earlier run where it finished with the same ``key``
    and its bundles are still there."""
    saved = stages.result("linear", key)
    if saved is not None:
        fitted = FitResult.from_json(saved["fit"])
        if all((cfg.out / "linear" / m.bundle).is_file() for m in fitted.final.values()):
            return fitted, saved["seconds"]
    started = time.perf_counter()
    fitted = fit(FitConfig(store=store_path, out=cfg.out / "linear", test_paths=test_paths, seed=cfg.seed,
                           overwrite=cfg.overwrite, progress=cfg.progress))
    seconds = extracted + time.perf_counter() - started
    stages.finish("linear", key, {"seconds": seconds, "fit": fitted.to_json()})
    return fitted, seconds


def run(cfg: RunConfig) -> RunResult:
    """Run everything into ``cfg.out``, going on where an earlier run with the same settings stopped; writes
    summary.json and summary.md after each stage."""
    claim(cfg.out, "run")
    stages = Stages(cfg.out)
    manifest = Path(cfg.data).suffix.lower() == ".csv"  # reading it is cheap
    if manifest and discover(cfg.data, outside=cfg.allow_outside).multilabel:
        raise UserError("compares candidates on one label per image; for several labels per image, extract and "
                        "fit (the fit stage makes one model per label)", param="data")
    store_path = cfg.out / "features.h5"
    started = time.perf_counter()
    layers = _layers(cfg.backbone)
    extract(ExtractConfig(data=cfg.data, out=store_path, backbone=cfg.backbone, layers=layers,
                          engine=cfg.engine, progress=cfg.progress, allow_outside=cfg.allow_outside,
                          overwrite=cfg.overwrite))
    extracted = time.perf_counter() - started
    store = read_store(store_path)
    if store.labels is None:
        raise UserError("comparing candidates needs class labels; fit and fine-tune a numeric target "
                        "separately", param="data")
    # what decides every stage: these images' codes (the store's attributes change whenever its content does)
    data_key = stage_key(store=store.attrs.get("attrs_sha256", str(store.identity)), data=Path(cfg.data).resolve(),
                         backbone=cfg.backbone, seed=cfg.seed, engine=cfg.engine)
    saved = stages.result("advice", data_key)
    advice = Advice.from_json(saved) if saved is not None else advise(AdviseConfig(
        cfg.data, cfg.backbone, seed=cfg.seed, engine=cfg.engine, allow_outside=cfg.allow_outside))
    stages.finish("advice", data_key, advice.to_json())
    log.info("%s", advice.format())
    proposal = Strategy.for_situation(advice.small, advice.similar, advice.far)
    train_idx, test_idx = split_test(store.labels, cfg.test_size, cfg.seed)
    test_paths = tuple(store.paths[i] for i in sorted(test_idx))
    linear_key = stage_key(data=data_key, test_size=cfg.test_size)
    fitted, linear_seconds = _linear(cfg, store_path, test_paths, stages, linear_key, extracted)
    scores = layer_scores(store, layers, train_idx, cfg.seed)
    log.info("cheap scores (k-NN accuracy, LogME) on the training part: %s", ", ".join(
        f"{layer} {s.knn_accuracy:.3f}, {s.logme:.3f}" for layer, s in scores.items()))
    candidates = [Candidate(f"{kind} on {final.layer} codes", str(cfg.out / "linear" / final.bundle),
                            final.test.scores["accuracy"], final.test.scores["macro_f1"], linear_seconds,
                            cv_accuracy_by_layer={r.layer: r.primary.mean for r in fitted.results
                                                  if r.classifier == kind})
                  for kind, final in fitted.final.items()]
    result = RunResult(str(cfg.data), cfg.backbone, cfg.seed, len(test_paths), advice, proposal, scores, None,
                       None, candidates, *_chosen(candidates, len(test_paths)), now_iso(), fitted)
    _summarize(cfg, result)
    ft = finetune_config(cfg, proposal, test_paths)
    finetune_key = stage_key(linear=linear_key, finetune={k: v for k, v in asdict(ft).items()
                                                          if k not in ("progress", "overwrite")})
    result.pilot = _pilot(cfg, advice, ft, store, fitted, stages, finetune_key)
    if result.pilot is not None:
        log.info("%s", result.pilot.format())
    result.decision = _decision(cfg, proposal, result.pilot)
    log.info("fine-tune: %s (%s)", "yes" if result.decision.finetune else "no", result.decision.why)
    _summarize(cfg, result)
    if result.decision.finetune:
        saved = stages.result("finetune", finetune_key)
        if saved is not None and (ft.out / FINETUNED.file).is_file():
            candidates.append(Candidate(**saved))
        else:
            candidate, result.finetuned = finetuned_candidate(ft)
            stages.finish("finetune", finetune_key, candidate.to_json())
            candidates.append(candidate)
        result.chosen, result.why = _chosen(candidates, len(test_paths))
        result.created = now_iso()
        _summarize(cfg, result)
    return result


def _chosen(candidates: list[Candidate], held_out: int) -> tuple[Candidate, str]:
    """The candidate with the best held-out accuracy (macro-F1 breaks ties), and why."""
    best = max(candidates, key=lambda c: (c.test_accuracy, c.test_macro_f1))
    return best, (f"highest accuracy on the {held_out} held-out images ({best.test_accuracy:.3f}; "
                  + ", ".join(f"{c.name} {c.test_accuracy:.3f}" for c in candidates if c is not best) + ")")


def _summarize(cfg: RunConfig, result: RunResult) -> None:
    """summary.json and summary.md as the run stands."""
    SUMMARY.write(cfg.out, result.to_json())
    write_bytes(cfg.out / "summary.md", (format_summary(result) + "\n").encode())


def _finetuning(result: RunResult) -> str:
    """What became of fine-tuning, as the run stands."""
    again = "the run is at it, or stopped before it ended (rerun the same command to go on)"
    if result.decision is None:
        return f"Fine-tuning: not decided yet: {again}."
    if result.decision.finetune and not any(c.model.endswith(FINETUNED.file) for c in result.candidates):
        return f"Fine-tuning: decided ({result.decision.why}), not finished: {again}."
    return f"Fine-tuning {'ran' if result.finetune_ran else 'skipped'}: {result.decision.why}."


def format_summary(result: RunResult) -> str:
    """What ``run`` chose and why, in Markdown (summary.md)."""
    a = result.advice
    lines = [
        f"# {result.data} with {result.backbone}",
        "",
        f"Heuristic: {a.images} images in {a.classes} classes ({'small' if a.small else 'large'}), "
        + (f"BatchNorm divergence {a.divergence:.3f} ({'similar to' if a.similar else 'unlike'} ImageNet)"
           if a.divergence is not None else f"likeness to ImageNet not measured ({a.backbone} has no BatchNorm)")
        + f" -> proposes: {result.proposal.value}.",
        "",
        "Cheap scores of the cached codes on the training part (shown, not trusted alone):",
        "",
        "| layer | k-NN accuracy | LogME |",
        "|---|---|---|",
        *[f"| {layer} | {s.knn_accuracy:.3f} | {s.logme:.3f} |" for layer, s in result.transferability.items()],
        "",
        *([f"{result.pilot.format()}.", ""] if result.pilot else []),
        _finetuning(result),
        "",
        "| candidate | held-out accuracy | held-out macro-F1 | minutes |",
        "|---|---|---|---|",
        *[f"| {c.name} | {c.test_accuracy:.3f} | {c.test_macro_f1:.3f} | {c.seconds / 60:.1f} |"
          for c in result.candidates],
        "",
        f"Chosen: **{result.chosen.name}** ({result.chosen.model}): {result.why}.",
    ]
    return "\n".join(lines)
