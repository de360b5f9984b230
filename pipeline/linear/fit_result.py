"""What the fit stage found and saved: :class:`FitResult`, written to ``metrics.json`` and printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..results import CVResult, FinalModel, Protocol
from ..store.layout import layer_label
from ..task import CLASSIFICATION, Task, get_task
from .multilabel import SCORES as MULTILABEL_SCORES

_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "r2": "R2", "mae": "MAE", "micro_f1": "micro-F1",
           "subset_accuracy": "subset accuracy", "map": "mAP"}


def _kind(r: CVResult) -> str:
    return (r.classifier + (" bal." if r.class_weight else "") + (f" +{'+'.join(r.views)}" if r.views else "")
            + (" blocks" if r.blocks else ""))


def _same(r: CVResult, wanted: dict) -> bool:
    """Whether ``r`` is the candidate ``wanted`` (as metrics.json's ``best`` names it)."""
    return (r.layer, r.classifier, r.class_weight, list(r.views), bool(r.blocks)) == (
        wanted["layer"], wanted["classifier"], wanted.get("class_weight"), wanted.get("views", []),
        wanted.get("blocks", False))


@dataclass
class FitResult:
    """Everything the fit stage found and saved, as written to ``metrics.json``."""

    task: Task
    store: str
    run_dir: str
    backbone: str
    weights_checksum: str
    images: int
    dataset: dict  # classes and their counts, or the target's statistics
    protocol: Protocol
    results: list[CVResult]
    best: CVResult
    final: dict[str, FinalModel]
    seconds: float
    versions: dict
    created: str
    duplicates: dict | None = None  # the groups kept inside one fold, and what grouping changed
    nested: CVResult | None = None  # the honest figure of choosing between the candidates inside each fold

    def to_json(self) -> dict:
        return {**({} if self.task.classes else {"task": self.task.name}),
                "store": self.store, "run_dir": self.run_dir, "backbone": self.backbone,
                "weights_checksum": self.weights_checksum, "images": self.images, **self.dataset,
                "protocol": asdict(self.protocol), "results": [r.to_json() for r in self.results],
                "best": {"layer": self.best.layer, "classifier": self.best.classifier,
                         **({"class_weight": self.best.class_weight} if self.best.class_weight else {}),
                         **({"views": list(self.best.views)} if self.best.views else {}),
                         **({"blocks": True} if self.best.blocks else {})},
                **({"nested_choice": self.nested.to_json()} if self.nested else {}),
                "final": {kind: m.to_json() for kind, m in self.final.items()}, "seconds": self.seconds,
                **({"duplicates": self.duplicates} if self.duplicates else {}),
                "versions": self.versions, "created": self.created}

    @classmethod
    def from_json(cls, data: dict) -> "FitResult":
        """The result :meth:`to_json` wrote to ``metrics.json``."""
        named = {"task", "store", "run_dir", "backbone", "weights_checksum", "images", "protocol", "results", "best",
                 "nested_choice", "final", "seconds", "duplicates", "versions", "created"}
        results = [CVResult.from_json(r) for r in data["results"]]
        wanted = data["best"]
        best = next(r for r in results if _same(r, wanted))
        return cls(get_task(data.get("task", CLASSIFICATION.name)), data["store"], data["run_dir"], data["backbone"],
                   data["weights_checksum"], int(data["images"]), {k: v for k, v in data.items() if k not in named},
                   Protocol.from_json(data["protocol"]), results, best,
                   {kind: FinalModel.from_json(m) for kind, m in data["final"].items()}, float(data["seconds"]),
                   data["versions"], data["created"], data.get("duplicates"),
                   None if data.get("nested_choice") is None else CVResult.from_json(data["nested_choice"]))

    def format(self) -> str:
        """The human-readable summary (the same figures as metrics.json)."""
        p = self.protocol
        regression = self.task.numeric
        first, second = self.task.metrics
        w = max(14, *(len(layer_label(r.layer)) for r in self.results))
        k = max(10, *(len(_kind(r)) for r in self.results))
        if regression:
            head = [f"{self.images} images, {self.task.describe(self.dataset)}, backbone {self.backbone}",
                    f"nested CV: {p.outer_folds}-fold x {p.repeats} repeat(s), alpha chosen by {p.inner}"]
            columns = (f"{'layer':{w}} {'model':{k}} {'R2':>8}  {'95% interval':15} {'MAE':>8}  "
                       f"{'alpha (most chosen)':15}")
        else:
            how = (f"streamed fit: SGD on chunks, epochs and alpha chosen on {p.inner}" if p.outer_folds == 0 else
                   f"nested CV: {p.outer_folds}-fold x {p.repeats} repeat(s), C chosen by {p.inner}")
            head = [f"{self.images} images, {self.task.describe(self.dataset)}, backbone {self.backbone}",
                    f"{how} (seed {p.seed})"]
            columns = (f"{'layer':{w}} {'classifier':{k}} {_LABELS[first]:>8}  {'95% interval':15} "
                       f"{_LABELS[second]:>8}  {'C (most chosen)' if p.outer_folds else 'alpha':15}")
        lines = [*head, *[f"note: {n}" for n in p.notes], "", columns]
        metric = p.metric if p.metric in self.best.scores else first
        for r in sorted(self.results, key=lambda r: -r.scores[metric].mean):
            a, b = r.scores[first], r.scores[second]
            lines.append(f"{layer_label(r.layer):{w}} {_kind(r):{k}} {a.mean:8.3f}  "
                         f"[{a.ci95[0]:.3f}, {a.ci95[1]:.3f}]  "
                         f"{b.mean:{'8.4g' if regression else '8.3f'}}  {next(iter(r.chosen)):15}")
        if p.outer_folds:
            hyper_name = self.task.hyper
            lines.append(f"{hyper_name} (most chosen): the value the outer folds picked most often; each saved "
                         f"model's {hyper_name}, chosen again on every image, is on its line below")
        if any(r.class_weight for r in self.results):
            lines.append("bal.: classes weighted inversely to their size")
        for views in dict.fromkeys(r.views for r in self.results if r.views):
            lines.append(f"+{'+'.join(views)}: trained on each image and its {'+'.join(views)} view too, predicted "
                         "on the mean of their probabilities")
        for r in [r for r in sorted(self.results, key=lambda r: -r.scores[metric].mean) if r.blocks][:1]:
            lines.append(f"blocks: each layer scaled to weigh alike, those kept chosen inside each outer fold by a "
                         f"group lasso; in the {p.outer_folds * p.repeats} folds of {_kind(r)}, "
                         + ", ".join(f"{name} kept {r.kept.get(name, 0)}x" for name in r.blocks.names))
        lines.append(f"\nbest: {self.best.name}" + ("" if metric == first else f" (by {_LABELS[metric]})"))
        if self.task.several:
            lines.extend(_label_lines(self.best))
        if self.nested:
            a, b = self.nested.scores[first], self.nested.scores[second]
            picks = ", ".join(f"{name} {n}x" for name, n in self.nested.chosen.items())
            lines.append(f"chosen inside each outer fold instead (the honest figure of this choice): "
                         f"{_LABELS[first]} {a.mean:.3f} [{a.ci95[0]:.3f}, {a.ci95[1]:.3f}], {_LABELS[second]} "
                         f"{b.mean:.3f}; picked {picks}")
        if self.duplicates:
            d = self.duplicates
            kept = [f"{len(d['groups'])} near-duplicate group(s)"] + (
                [f"{d['manifest_groups']} manifest group(s)"] if d.get("manifest_groups") else [])
            lines.append(f"kept inside one fold: {', '.join(kept)}; best accuracy {d['accuracy_grouped']:.3f} "
                         f"grouped, {d['accuracy_ungrouped']:.3f} if they were not")
        for m in self.final.values():
            hyper = ", ".join(f"{k}={v:g}" for k, v in m.hyper.items() if not isinstance(v, list))
            if "blocks" in m.hyper:
                hyper += ", keeping " + "+".join(m.hyper["blocks"])
            if "thresholds" in m.hyper:
                hyper += ", thresholds " + " ".join(f"{t:.2f}" for t in m.hyper["thresholds"])
            line = f"saved {Path(self.run_dir) / m.bundle} ({layer_label(m.layer)}, {hyper})"
            if m.test is not None:
                line += f"; test on {m.test.data}: " + ", ".join(
                    f"{_LABELS[name]} {value:.4g}" for name, value in m.test.scores.items())
            lines.append(line)
            if m.reject is not None and m.reject["threshold"] > 0:
                r = m.reject
                lines.append(f"  unknown under top probability {r['threshold']:.3f}: out of fold it rejected "
                             f"{r['rejected']:.1%} of known images (accuracy on the rest {r['accuracy_kept']:.3f}, "
                             f"{r['accuracy_all']:.3f} on all)")
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _label_lines(best: CVResult) -> list[str]:
    """The several-label figures of the best candidate: every score, then precision, recall and F1 per label
    (out of fold, at each fold's thresholds)."""
    lines = ["  " + ", ".join(f"{_LABELS[m]} {best.scores[m].mean:.3f}" for m in MULTILABEL_SCORES
                              if m in best.scores)]
    if best.per_class:
        w = max(5, *map(len, best.per_class))
        lines.append(f"  {'label':{w}} {'precision':>9} {'recall':>7} {'F1':>6} {'images':>7}")
        lines.extend(f"  {name:{w}} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f} {v['support']:7d}"
                     for name, v in best.per_class.items())
    return lines
