"""The fine-tuning stage: a new softmax on the pretrained base, in one of two modes.

``tail`` (the default on a CPU): the frozen front runs once per augmented view
and is cached; the blocks after the cut and the head train from the cache
(:mod:`pipeline.finetune.tail`). ``full`` (the default on a GPU): the whole network
runs on augmented pixels every epoch, head first, then the later layers at a
ten times smaller learning rate (:mod:`pipeline.finetune.full`). In both the head
starts from a linear probe on the training split, BatchNorm stays in inference
mode, a stratified validation split drives early stopping, and interrupted
training resumes. Outputs are in the fit stage's form, so reports compare them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..backbones.codes import resize_policy
from ..backbones.device import accelerators
from ..backbones.loading import load_backbone
from ..backbones.registry import get_spec
from ..backbones.spec import BackboneSpec
from ..data.discover import discover
from ..errors import UserError
from ..linear.kinds import get_kind
from ..linear.reject import reject_rule
from ..metrics import Score
from ..outputs import claim
from ..provenance import library_versions, now_iso
from ..results import CVResult, HeldOut
from ..run_files import CLASSES, HISTORY, METRICS
from ..task import Task, task_of_dataset
from .config import FinetuneConfig
from .curves import training_curves
from .full import decode_all, full_mode
from .split import split_images
from .tail import activation_folder, cache_views, default_size, tail_mode, tail_settings

log = logging.getLogger(__name__)

FINETUNED = get_kind("fine-tuned")


def resolve_mode(mode: str, spec: BackboneSpec) -> str:
    """``tail`` or ``full``: ``auto`` is ``full`` where a GPU is seen or the backbone cannot be cut between its
    stages (a vision transformer), ``tail`` on a CPU."""
    if mode == "tail" and not spec.sequential:
        raise UserError(f"tail mode trains a convnet's stages after a cut; {spec.name}'s layers are not in one line "
                        "(a transformer's): use full mode", param="mode")
    if mode == "auto":
        mode = "full" if accelerators() or not spec.sequential else "tail"
        why = ("a GPU is seen" if accelerators() else f"{spec.name} cannot be cut between its stages"
               if mode == "full" else "the default on a CPU: the frozen front runs once per view and is cached; "
               "full mode trains on pixels")
        log.info("fine-tuning mode: %s (%s)", mode, why)
    return mode


@dataclass
class FinetuneResult:
    """A fine-tuned network's figures: on the validation split, and on held-out test images if any."""

    task: Task
    data: str
    backbone: str
    image_size: int
    weights_checksum: str
    images: int
    skipped: list
    class_names: list[str]
    protocol: dict
    validation: CVResult
    validation_images: int
    test: HeldOut | None
    versions: dict
    created: str
    reject: dict | None = None  # the "unknown" rule, set on the validation split (pipeline.linear.reject)
    test_outputs: dict[str, np.ndarray] | None = None  # each test image's outputs, by path (not written)

    def to_json(self) -> dict:
        final = {"model": FINETUNED.file, "validation_images": self.validation_images}
        if self.test is not None:
            final["test"] = self.test.to_json()
        if self.reject is not None:
            final["reject"] = self.reject
        return {"task": self.task.name, "data": self.data, "backbone": self.backbone, "image_size": self.image_size,
                "weights_checksum": self.weights_checksum, "images": self.images, "skipped": self.skipped,
                "classes": len(self.class_names), "class_names": self.class_names, "protocol": self.protocol,
                "results": [self.validation.to_json()], "final": {"finetune": final},
                "versions": self.versions, "created": self.created}


def _scores(outputs: np.ndarray, y: np.ndarray, names: list[str], task: Task) -> tuple[dict[str, float],
                                                                                     dict | None]:
    """Scores of a network's ``outputs`` (and per-class figures for a classifier)."""
    if task.numeric:
        return metrics.regression_scores(y, outputs), None
    predicted = np.argmax(outputs, axis=1)
    return metrics.classification_scores(y, predicted), metrics.per_class(y, predicted, names)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train, save ``model.keras``, ``classes.json``, ``history.json``, ``curves.png`` and ``metrics.json``."""
    dataset = discover(cfg.data, outside=cfg.allow_outside)
    task = task_of_dataset(dataset)
    if task.loss is None:
        raise UserError(f"{cfg.data} gives several labels per image; fine-tuning takes one (a label column)",
                        param="data")
    if task.classes and not dataset.labelled:
        raise UserError(f"{cfg.data} has no labels: fine-tuning needs one sub-folder per class, or a manifest "
                        "with a label or a numeric target column", param="data")
    mode = resolve_mode(cfg.mode, get_spec(cfg.backbone))
    backbone = load_backbone(cfg.backbone, precision=cfg.precision)
    excluded = set(cfg.exclude_paths)
    kept = [i for i, p in enumerate(dataset.paths) if p not in excluded]  # dataset index of each file
    files = [dataset.root / dataset.paths[i] for i in kept]
    # The whole set's size decides the resolution, so a run without the excluded images shares the cache.
    size = cfg.image_size or (default_size(backbone, len(dataset.paths)) if mode == "tail"
                              else backbone.spec.input_size)
    policy = dataclasses.replace(resize_policy(backbone.spec), size=size)
    names = [] if task.numeric else dataset.class_names
    claim(cfg.out, "finetune")
    if mode == "tail":  # view 0 of every image first: it tells which images decode before the split
        cache, failed = cache_views(backbone, policy, activation_folder(cfg), files, [dataset.paths[i] for i in kept],
                                    [1] * len(files), tail_settings(cfg, backbone))
        cache.close()
        ok = sorted(set(range(len(files))) - {i for i, _ in failed})
        split = split_images(cfg, dataset, [kept[i] for i in ok], names, task)
        model, history, (val_out, test_out), protocol = tail_mode(cfg, backbone, policy, split)
    else:
        pixels, ok, failed = decode_all(files, policy, cfg.batch_size)
        split = split_images(cfg, dataset, [kept[i] for i in ok], names, task)
        model, history, (val_out, test_out), protocol = full_mode(cfg, backbone, policy, split, pixels)
    model.save(cfg.out / FINETUNED.file)
    CLASSES.write(cfg.out, names)
    HISTORY.write(cfg.out, history)
    (cfg.out / "curves.png").write_bytes(training_curves(history))

    val_y = split.targets[split.val]
    scores, per_class = _scores(val_out, val_y, names, task)
    n = len(val_y)
    validation = CVResult(
        "finetuned", FINETUNED.name,
        {name: Score(v, 0.0, None if task.numeric else metrics.wilson(v, n), (v,)) for name, v in scores.items()},
        {}, per_class=per_class, fit_seconds=sum(h["seconds"] for h in history.values()))
    held = None
    if test_out is not None:
        held = HeldOut("held-out images", len(split.test), *_scores(test_out, split.targets[split.test], names, task))
    result = FinetuneResult(
        task, str(cfg.data), backbone.spec.name, policy.size,
        backbone.weights_checksum, len(split.targets) - len(split.test),
        [(dataset.paths[kept[i]], reason) for i, reason in failed], names,
        {"mode": mode, "validation": f"{'stratified' if task.stratified else 'random'} {cfg.val_size:.0%} split",
         "seed": cfg.seed, "optimizer": cfg.optimizer, "linear_probe_init": bool(cfg.probe and not cfg.hidden),
         "top": cfg.top, "dropout": cfg.dropout, "patience": cfg.patience,
         **protocol},
        validation, n, held, library_versions(), now_iso(),
        reject_rule(val_y, val_out, cfg.reject_rate).to_json() if task.classes else None,
        None if test_out is None else {split.paths[i]: out for i, out in zip(split.test, test_out)})
    METRICS.write(cfg.out, result.to_json())
    return result
