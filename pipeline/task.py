"""The registry of tasks: what each image of a store or a dataset carries (one class, several labels, or a number).

A task is resolved once, from the store's datasets (:func:`task_of_store`) or a dataset's labels
(:func:`task_of_dataset`), and carried typed in results, bundles (through their model kind) and reports. Code
asks the entry (its metrics, its training loss, its wording) instead of comparing names, as it asks
:mod:`pipeline.linear.kinds` about models; a test holds every other module to that.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Task:
    """One task: how its targets look (``several``: a 0/1 row of labels per image; ``numeric``: a number, no
    class names), the two figures reported first (``metrics``, the first ranking the candidates), how a network is
    trained for it (``loss``, the Keras ``metric`` and the ``monitor`` early stopping watches) and how its
    validation split is drawn (``stratified``)."""

    name: str
    metrics: tuple[str, str]
    several: bool = False
    numeric: bool = False
    loss: str | None = None  # None: no network is fine-tuned for it (several labels)
    metric: str | None = None
    monitor: str | None = None
    stratified: bool = True
    hyper: str = "C"  # the linear models' penalty, as the fit's table names it

    @property
    def classes(self) -> bool:
        """One class per image (the classifiers' task)."""
        return not (self.several or self.numeric)

    def describe(self, dataset: dict) -> str:
        """What the images carry, for a summary line (``dataset``: metrics.json's description of them)."""
        if self.several:
            return f"{dataset['labels']} labels, several per image"
        if self.numeric:
            t = dataset["target"]
            return f"numeric target (mean {t['mean']:.3g}, sd {t['std']:.3g})"
        return f"{dataset['classes']} classes"


CLASSIFICATION = Task("classification", ("accuracy", "macro_f1"), loss="sparse_categorical_crossentropy",
                      metric="accuracy", monitor="val_accuracy")
REGRESSION = Task("regression", ("r2", "mae"), numeric=True, loss="mse", metric="mae", monitor="val_loss",
                  stratified=False, hyper="alpha")
MULTILABEL = Task("multilabel", ("micro_f1", "map"), several=True, stratified=False)
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, REGRESSION, MULTILABEL)}


def get_task(name: str) -> Task:
    """The task called ``name`` (as results and cards write it), or one line."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}: this file was written by another version (tasks: "
                        f"{', '.join(TASKS)})") from None


def task_of_store(store) -> Task:
    """Several labels per image, a numeric target (and no labels), or classes."""
    if store.multilabels is not None:
        return MULTILABEL
    return REGRESSION if store.labels is None and store.targets is not None else CLASSIFICATION


def task_of_dataset(dataset) -> Task:
    """Several labels per image where a manifest has a labels column, a numeric target where it gives numbers
    and no classes, else classes (a dataset without labels included: the caller says what it needs)."""
    if dataset.multilabel:
        return MULTILABEL
    return REGRESSION if dataset.targets is not None and not dataset.labelled else CLASSIFICATION
