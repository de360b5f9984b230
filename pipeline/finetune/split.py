"""The images a fine-tuning run trains on: those that decode, their targets, and the split into training,
validation (stratified, fixed by the seed) and the caller's held-out test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from ..data.discover import Dataset
from ..errors import UserError
from ..task import Task
from .config import FinetuneConfig


@dataclass
class Split:
    """The decodable images of a run (``files``, their ``paths`` in the dataset), their targets (class indices,
    or numbers where ``names`` is empty), the rows of each part, and the class weights of training."""

    files: list[Path]
    paths: list[str]
    targets: np.ndarray
    names: list[str]
    task: Task
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    class_weight: dict | None

    def part(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The paths and targets of ``rows``."""
        return [self.paths[i] for i in rows], self.targets[rows]


def split_images(cfg: FinetuneConfig, dataset: Dataset, ok: list[int], names: list[str], task: Task) -> Split:
    """The images ``ok`` of ``dataset`` (the ones that decode) split for training; ``names``: the class names,
    empty for a numeric target."""
    regression = task.numeric
    targets = (np.array([dataset.targets[i] for i in ok], np.float32) if regression
               else np.array([names.index(dataset.labels[i]) for i in ok]))
    held_out = set(cfg.test_paths)
    is_test = np.array([dataset.paths[i] in held_out for i in ok], dtype=bool)
    rest = np.flatnonzero(~is_test)
    if regression:
        if len(rest) < 5:
            raise UserError("fine-tuning a regression head needs at least 5 decodable images", param="data")
    elif len(names) < 2 or np.bincount(targets[rest], minlength=len(names)).min() < 2:
        raise UserError("fine-tuning needs at least two classes with at least 2 decodable images each",
                        param="data")
    train, val = train_test_split(rest, test_size=cfg.val_size, stratify=targets[rest] if task.stratified else None,
                                  random_state=cfg.seed)
    weights = None
    if cfg.class_weight == "balanced" and not regression:
        w = compute_class_weight("balanced", classes=np.arange(len(names)), y=targets[train])
        weights = {k: float(v) for k, v in enumerate(w)}
    return Split([dataset.root / dataset.paths[i] for i in ok], [dataset.paths[i] for i in ok], targets, names, task,
                 np.asarray(train), np.asarray(val), np.flatnonzero(is_test), weights)
