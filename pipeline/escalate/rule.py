"""The advisor's rule: the four situations (small or large, like ImageNet or not) and the strategy each gets.

The thresholds come from the advisor table (docs/benchmarks.md); importable
without Keras, so that ``--help`` can print them.
"""

from __future__ import annotations

import enum

SMALL_IMAGES = 2500  # small: under this many images, or a median class under SMALL_MEDIAN_CLASS
SMALL_MEDIAN_CLASS = 250
SIMILAR_DIVERGENCE = 0.1  # BatchNorm divergence from ImageNet under which a set is similar to it
FAR_DIVERGENCE = 0.23  # a large set unlike ImageNet fine-tunes only this far from it
CALIBRATED_ON = ("efficientnet_lite0", "mobilenet_v2")
# What fine-tuning costs, in passes of the advisor's statistics network (on Keras, as fine-tuning trains) per
# image, measured with the run command's defaults (docs/benchmarks.md).
FINETUNE_FORWARD_PASSES = 3.6


class Strategy(enum.Enum):
    """The four situations' strategies; the value is the recommendation as shown to people."""

    LINEAR_PENULTIMATE = "linear classifier on penultimate codes"
    LINEAR_EARLIER = "linear classifier on earlier-layer codes"
    FINETUNE_LATER = "fine-tune the later layers"
    FINETUNE_WHOLE = "fine-tune the whole network"

    @classmethod
    def for_situation(cls, small: bool, similar: bool, far: bool = True, over_budget: bool = False) -> "Strategy":
        """The four situations, as the advisor table corrected them: a large set unlike ImageNet fine-tunes
        only when far from it, and no set fine-tunes over the time budget."""
        if small or over_budget or not (similar or far):
            return cls.LINEAR_PENULTIMATE if similar else cls.LINEAR_EARLIER
        return cls.FINETUNE_LATER if similar else cls.FINETUNE_WHOLE

    @property
    def finetunes(self) -> bool:
        return self in (Strategy.FINETUNE_LATER, Strategy.FINETUNE_WHOLE)
