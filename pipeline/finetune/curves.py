"""Training curves of a fine-tuning run: loss and accuracy (or MAE) per epoch, training and validation."""

from __future__ import annotations

import numpy as np

from ..plots import png, subplots


def training_curves(history: dict) -> bytes:
    """Loss and accuracy (or MAE) per epoch, training and validation, phase after phase."""
    fig, axes = subplots(1, 2, figsize=(10, 3.5))
    start = 0
    for phase, h in history.items():
        epochs = np.arange(start + 1, start + 1 + len(h.get("loss", [])))
        for ax, key in zip(axes, ("loss", "mae" if "mae" in h else "accuracy")):
            ax.plot(epochs, h.get(key, []), marker="o", label=f"{phase} train")
            ax.plot(epochs, h.get(f"val_{key}", []), marker="s", linestyle="--", label=f"{phase} validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
        start += len(h.get("loss", []))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
