"""The pictures of reports, as PNG (charts, :mod:`pipeline.plots`) and JPEG (thumbnails) bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from PIL import Image, ImageOps

from ..data.decode import to_rgb
from ..plots import colours, png, subplots
from ..results import variant


def kind(config: dict) -> str:
    """A configuration's classifier with its class weighting, views and blocks: ``svm, balanced, with flip``."""
    return variant(config["classifier"], config.get("class_weight"), config.get("views", ()),
                   bool(config.get("blocks")))


def accuracy_chart(configs: list[dict]) -> bytes:
    """Accuracy of every configuration with its 95% interval: one row per backbone (and layer), one colour per
    classifier, the best marked; the question it answers is "which one should I use"."""
    layered = len({c["layer"] for c in configs}) > 1
    rows = list(dict.fromkeys((c["backbone"], c["layer"]) for c in configs))  # best group first
    kinds = list(dict.fromkeys(kind(c) for c in configs))
    palette = dict(zip(kinds, colours(len(kinds))))
    fig, ax = subplots(figsize=(8.5, 0.9 + 0.32 * len(rows) * len(kinds) + 0.25 * len(rows)))
    step = 0.8 / len(kinds)
    for c in configs:
        r = rows.index((c["backbone"], c["layer"]))
        y = r + (kinds.index(kind(c)) - (len(kinds) - 1) / 2) * step
        mean, (low, high) = c["accuracy"]["mean"], c["accuracy"]["ci95"]
        best = c is configs[0]
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="*" if best else "o",
                    markersize=13 if best else 7, color=palette[kind(c)], capsize=3, lw=1.6)
        ax.annotate(f"{mean:.3f}" + ("  best" if best else ""), (high, y), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=9, fontweight="bold" if best else None)
    ax.axvline(configs[0]["accuracy"]["mean"], color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(rows)), [f"{b} · {lay}" if layered else b for b, lay in rows], fontsize=10)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    lows = min(c["accuracy"]["ci95"][0] for c in configs)
    ax.set_xlim(max(0.0, lows - 0.05), min(1.0, max(c["accuracy"]["ci95"][1] for c in configs) + 0.08) + 0.02)
    folds = len(configs[0]["accuracy"].get("folds", []))
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in ax.get_xticks() if low - 1e-9 <= t <= min(high, 1.0) + 1e-9])  # none past 1
    ax.set_xlabel("accuracy: mean and 95% interval" + (f" over {folds} folds" if folds > 1 else ""))
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=palette[k], label=k) for k in kinds]
    ax.legend(handles=handles, title="classifier", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return png(fig)


def blocks_chart(configs: list[dict]) -> bytes | None:
    """Which stages carried the decision: for the best configuration of each backbone that weighed its layers as
    blocks (the others chose on the same folds alike), the share of outer folds whose selection kept each layer;
    None without any."""
    weighed = list({c["backbone"]: c for c in reversed(configs) if c.get("blocks")}.values())[::-1]
    if not weighed:
        return None
    names = weighed[0]["blocks"]["names"]
    palette = colours(len(weighed))
    fig, ax = subplots(figsize=(8.5, 1.2 + 0.3 * len(names) * max(1, len(weighed) / 2)))
    step = 0.8 / len(weighed)
    folds = len(weighed[0]["accuracy"].get("folds", [])) or 1
    for i, c in enumerate(weighed):
        shares = [c["blocks"]["kept"].get(name, 0) / folds for name in c["blocks"]["names"]]
        ax.barh(np.arange(len(shares)) + (i - (len(weighed) - 1) / 2) * step, shares, height=step, color=palette[i],
                label=f"{c['backbone']} · {c['layer'] if len(c['layer']) < 40 else 'every layer'}")
    ax.set_yticks(range(len(names)), names, fontsize=10)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(f"share of the {folds} outer folds whose group lasso kept the layer")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return png(fig)


def confusion_chart(confusion: list[list[int]], class_names: list[str]) -> bytes:
    """Counts and row-normalised (recall) confusion matrices side by side, annotated while they stay legible."""
    counts = np.asarray(confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    side = max(4.0, 0.42 * n + 1.5)
    fig, axes = subplots(1, 2, figsize=(2 * side + 1.2, side), sharey=True)
    for ax, values, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], rates, "normalised by true class",
                                                                      ".2f")):
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(title, fontsize=11)
        ax.set_xticks(range(n), class_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                      fontsize=9)
        ax.set_yticks(range(n), class_names, fontsize=9)
        ax.set_xlabel("predicted")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8 if n > 10 else 9,
                            color="white" if rates[i, j] > 0.5 else "black")
    axes[0].set_ylabel("true")
    axes[1].tick_params(labelleft=False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    return png(fig)


def map_chart(embeddings: dict[str, np.ndarray], y: np.ndarray, class_names: list[str]) -> bytes:
    """The codes in two dimensions, one panel per method, coloured by class."""
    palette = colours(len(class_names))
    fig, axes = subplots(1, len(embeddings), figsize=(5.2 * len(embeddings) + 1.6, 4.8), squeeze=False)
    for ax, (method, xy) in zip(axes[0], embeddings.items()):
        for k, name in enumerate(class_names):
            mine = y == k
            if mine.any():
                ax.scatter(xy[mine, 0], xy[mine, 1], s=14, color=palette[k], label=name, alpha=0.8, linewidths=0)
        ax.set_title(method, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=9, markerscale=1.6,
                       ncols=1 if len(class_names) <= 20 else 2)
    return png(fig)


def coverage_chart(coverage: dict[str, list[float]], reject: dict) -> bytes:
    """Accuracy on the images kept against the share kept, when the least confident are called unknown; the
    default threshold (``predict.py --reject``) marked."""
    fig, ax = subplots(figsize=(6, 3.6))
    ax.plot(coverage["coverage"], coverage["accuracy"], marker=".", color=colours(1)[0])
    kept = 1 - reject["rejected"]
    ax.plot([kept], [reject["accuracy_kept"]], marker="*", markersize=13, ls="", color="black",
            label=f"unknown under {reject['threshold']:.3f}: {kept:.0%} kept, accuracy {reject['accuracy_kept']:.3f}")
    ax.set_xlabel("coverage: share of images given a class")
    ax.set_ylabel("accuracy on them")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return png(fig)


def thumbnail(path: Path, size: int = 128) -> bytes | None:
    """A JPEG thumbnail of the image at ``path`` (None when it cannot be read any more)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            image = to_rgb(ImageOps.exif_transpose(image))
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            return buffer.getvalue()
    except (OSError, ValueError):
        return None
