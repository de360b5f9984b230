"""Typed results the stages return; they become JSON only where a stage writes them (``to_json``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .metrics import Score


def _extras(class_weight: str | None, views, blocks=False) -> list[str]:
    return [*([class_weight] if class_weight else []), *([f"with {'+'.join(views)}"] if views else []),
            *(["blocks"] if blocks else [])]


def variant(classifier: str, class_weight: str | None = None, views=(), blocks=False) -> str:
    """A model kind with its class weighting, views and block weighing, as the outputs name it: ``svm, balanced,
    with flip, blocks``."""
    return ", ".join([classifier, *_extras(class_weight, views, blocks)])


@dataclass(frozen=True)
class Blocks:
    """How codes joined from several layers are scaled (:mod:`pipeline.linear.blocks`): per block (``sizes``,
    named ``names``), keeping the blocks ``keep`` (None: to be chosen on the rows a model is trained on)."""

    sizes: tuple[int, ...]
    names: tuple[str, ...]
    keep: tuple[bool, ...] | None = None

    def __str__(self) -> str:
        return "blocks"

    def kept(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.keep or (True,) * len(self.names)) if k)

    def keeping(self, names) -> "Blocks":
        """These blocks with those ``names`` kept (a saved model's choice)."""
        return replace(self, keep=tuple(n in names for n in self.names))


@dataclass
class CVResult:
    """One candidate (a layer's codes, a model kind, its class weighting and views) scored by nested
    cross-validation:
    ``scores`` (the first is shown first), and how often each value of the hyper-parameter ``hyper`` (C, alpha,
    or the candidate of a nested choice) was ``chosen``."""

    layer: str
    classifier: str
    scores: dict[str, Score]
    chosen: dict[str, int]
    hyper: str = "C"
    per_class: dict | None = None
    fit_seconds: float = 0.0
    fold_hyper: tuple = ()  # the value chosen in each outer fold, in the folds' order (not saved)
    class_weight: str | None = None
    fold_inner: tuple = ()  # each outer fold's inner-validation score at its chosen C (not saved)
    views: tuple = ()  # the views (pipeline.linear.tta) trained on and averaged over, beside the image itself
    blocks: Blocks | None = None  # the layers weighed as blocks (None: the protocol's normalisation)
    kept: dict = field(default_factory=dict)  # with blocks: how many outer folds kept each block

    @property
    def primary(self) -> Score:
        return next(iter(self.scores.values()))

    @property
    def name(self) -> str:
        return f"{self.classifier} on {self.layer}" + "".join(
            f", {x}" for x in _extras(self.class_weight, self.views, self.blocks))

    def to_json(self) -> dict:
        out = {"layer": self.layer, "classifier": self.classifier,
               **({"class_weight": self.class_weight} if self.class_weight else {}),
               **({"views": list(self.views)} if self.views else {}),
               **({"blocks": {"names": list(self.blocks.names), "sizes": list(self.blocks.sizes),
                              "kept": self.kept}} if self.blocks else {}),
               **{name: s.to_json() for name, s in self.scores.items()}, f"chosen_{self.hyper}": self.chosen}
        if self.per_class is not None:
            out["per_class"] = self.per_class
        out["fit_seconds"] = self.fit_seconds
        return out

    @classmethod
    def from_json(cls, data: dict) -> "CVResult":
        """The result :meth:`to_json` wrote (the per-fold choices, never saved, are empty)."""
        hyper = next(key.removeprefix("chosen_") for key in data if key.startswith("chosen_"))
        scores = {k: Score.from_json(v) for k, v in data.items() if isinstance(v, dict) and "mean" in v}
        blocks = data.get("blocks")
        if blocks:
            blocks = Blocks(tuple(map(int, blocks["sizes"])), tuple(blocks["names"])), dict(blocks["kept"])
        return cls(data["layer"], data["classifier"], scores, dict(data[f"chosen_{hyper}"]), hyper,
                   data.get("per_class"), float(data.get("fit_seconds", 0.0)), class_weight=data.get("class_weight"),
                   views=tuple(data.get("views", ())), blocks=blocks[0] if blocks else None,
                   kept=blocks[1] if blocks else {})


@dataclass
class HeldOut:
    """A model's figures on images no training or model choice saw."""

    data: str
    images: int
    scores: dict[str, float]
    per_class: dict | None = None

    def to_json(self) -> dict:
        out = {"data": self.data, "images": self.images, **self.scores}
        if self.per_class is not None:
            out["per_class"] = self.per_class
        return out

    @classmethod
    def from_json(cls, data: dict) -> "HeldOut":
        scores = {k: float(v) for k, v in data.items() if k not in ("data", "images", "per_class")}
        return cls(data["data"], int(data["images"]), scores, data.get("per_class"))


@dataclass
class FinalModel:
    """The model refitted on all the training data for one model kind, and where it was saved."""

    layer: str
    hyper: dict[str, float]
    bundle: str
    test: HeldOut | None = None
    reject: dict | None = None  # a RejectRule's figures (pipeline.linear.reject)
    class_weight: str | None = None
    views: tuple = ()

    def to_json(self) -> dict:
        out = {"layer": self.layer, **self.hyper, **({"class_weight": self.class_weight} if self.class_weight else {}),
               **({"views": list(self.views)} if self.views else {}), "bundle": self.bundle}
        if self.test is not None:
            out["test"] = self.test.to_json()
        if self.reject is not None:
            out["reject"] = self.reject
        return out

    @classmethod
    def from_json(cls, data: dict) -> "FinalModel":
        named = {"layer", "class_weight", "views", "bundle", "test", "reject"}
        return cls(data["layer"], {k: v for k, v in data.items() if k not in named}, data["bundle"],
                   None if data.get("test") is None else HeldOut.from_json(data["test"]), data.get("reject"),
                   data.get("class_weight"), tuple(data.get("views", ())))


@dataclass
class Protocol:
    """How cross-validated figures were obtained; recorded with them."""

    outer_folds: int
    repeats: int
    inner: str
    c_grid: dict
    normalise: str
    class_weights: list  # the weightings compared (None: none)
    seed: int
    notes: list = field(default_factory=list)
    metric: str = "accuracy"  # what chooses between candidates (macro_f1 when classes are imbalanced)
    views: list = field(default_factory=lambda: [[]])  # the view settings compared ([]: the images alone)

    @classmethod
    def from_json(cls, data: dict) -> "Protocol":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
