"""The whole pipeline in one call: advise, extract, fit, fine-tune where advised, keep the better model.

Every candidate is scored on the same held-out images (a stratified split
fixed by the seed, never seen by any training or model choice), so the
comparison is paired and the choice honest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .advise import advise
from .backbones.registry import get_spec
from .classify import split_test
from .errors import UserError
from .extract import DEFAULT_BACKBONE, ExtractConfig, extract
from .finetune import FinetuneConfig, finetune
from .fit import FitConfig, fit
from .provenance import now_iso
from .store import read_store

log = logging.getLogger(__name__)

FINETUNE_CHOICES = ("auto", "always", "never")


@dataclass(frozen=True)
class RunConfig:
    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    test_size: float = 0.2
    finetune: str = "auto"
    image_size: int | None = None
    epochs: tuple[int, int] = (5, 5)
    seed: int = 0
    progress: bool = True


def _layers(backbone: str) -> tuple[str, ...]:
    """The penultimate layer plus two earlier ones, for the small-and-unlike case."""
    names = list(get_spec(backbone).feature_layers)
    earlier = [n for n in ("stage4", "stage6") if n in names] or names[:-1][-2:]
    return (*earlier, "penultimate")


def run(cfg: RunConfig) -> dict:
    """Run everything into ``cfg.out``; returns the summary (as written) plus the fit stage's metrics as ``fit``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    advice = advise(cfg.data, cfg.backbone, seed=cfg.seed)
    log.info("%s", advice.format())
    store_path = cfg.out / "features.h5"
    extract(ExtractConfig(data=cfg.data, out=store_path, backbone=cfg.backbone, layers=_layers(cfg.backbone),
                          progress=cfg.progress))
    store = read_store(store_path)
    if store.labels is None:
        raise UserError("run.py compares classifiers and needs class labels; for a numeric target use "
                        "fit_svm.py and finetune.py")
    _, test_idx = split_test(store.labels, cfg.test_size, cfg.seed)
    test_paths = tuple(store.paths[i] for i in sorted(test_idx))
    fitted = fit(FitConfig(store=store_path, out=cfg.out / "linear", test_paths=test_paths, seed=cfg.seed))

    candidates = []
    for kind, entry in fitted["final"].items():
        layer_results = [r for r in fitted["results"] if r["classifier"] == kind]
        candidates.append({
            "name": f"{kind} on {entry['layer']} codes", "model": str(cfg.out / "linear" / entry["bundle"]),
            "test_accuracy": entry["test"]["accuracy"], "test_macro_f1": entry["test"]["macro_f1"],
            "cv_accuracy_by_layer": {r["layer"]: r["accuracy"]["mean"] for r in layer_results},
        })
    wants_finetune = advice.recommendation.startswith("fine-tune")
    do_finetune = cfg.finetune == "always" or (cfg.finetune == "auto" and wants_finetune)
    if do_finetune:
        finetuned = finetune(FinetuneConfig(
            data=cfg.data, out=cfg.out / "finetune", backbone=cfg.backbone, image_size=cfg.image_size,
            head_epochs=cfg.epochs[0], finetune_epochs=cfg.epochs[1], seed=cfg.seed, test_paths=test_paths,
            unfreeze=10_000 if advice.recommendation == "fine-tune the whole network" else 30,
            progress=cfg.progress))
        test = finetuned["final"]["finetune"]["test"]
        candidates.append({"name": "fine-tuned network", "model": str(cfg.out / "finetune" / "model.keras"),
                           "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                           "train_seconds": finetuned["results"][0]["fit_seconds"]})
    best = max(candidates, key=lambda c: (c["test_accuracy"], c["test_macro_f1"]))
    reason = (f"highest accuracy on the {len(test_paths)} held-out images "
              f"({best['test_accuracy']:.3f}; " + ", ".join(
                  f"{c['name']} {c['test_accuracy']:.3f}" for c in candidates if c is not best) + ")")
    summary = {
        "data": str(cfg.data), "backbone": cfg.backbone, "seed": cfg.seed, "held_out_images": len(test_paths),
        "advice": advice.to_json(),
        "finetune": {"ran": do_finetune, "why": f"--finetune {cfg.finetune}" if cfg.finetune != "auto" else
                     f"the advisor recommends: {advice.recommendation}"},
        "candidates": candidates, "chosen": best, "why": reason,
        # Did the candidate the advisor favoured win? Only known when both kinds ran.
        "advisor_agreed": ((best["name"] == "fine-tuned network") == wants_finetune) if do_finetune else None,
        "created": now_iso(),
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (cfg.out / "summary.md").write_text(format_summary(summary) + "\n")
    return {**summary, "fit": fitted}


def format_summary(summary: dict) -> str:
    a = summary["advice"]
    lines = [
        f"# {summary['data']} with {summary['backbone']}",
        "",
        f"Advisor: {a['images']} images in {a['classes']} classes ({'small' if a['small'] else 'large'}), "
        f"BatchNorm divergence {a['divergence']:.3f} ({'similar to' if a['similar'] else 'unlike'} ImageNet) "
        f"-> {a['recommendation']}.",
        f"Fine-tuning {'ran' if summary['finetune']['ran'] else 'skipped'}: {summary['finetune']['why']}.",
        "",
        "| candidate | held-out accuracy | held-out macro-F1 |",
        "|---|---|---|",
        *[f"| {c['name']} | {c['test_accuracy']:.3f} | {c['test_macro_f1']:.3f} |" for c in summary["candidates"]],
        "",
        f"Chosen: **{summary['chosen']['name']}** ({summary['chosen']['model']}): {summary['why']}.",
    ]
    return "\n".join(lines)
