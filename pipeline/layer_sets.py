"""Candidate layers: one stored layer, or several side by side (``stage6+penultimate``).

Kept apart from the store so that what only names layers (predicting with an
exported model among them) needs no HDF5.
"""

from __future__ import annotations

from typing import Sequence

JOIN = "+"  # "stage6+penultimate": the codes of both layers side by side, one candidate


def layer_parts(layer: str) -> list[str]:
    """The stored layers a candidate layer names (one, or several joined by ``+``)."""
    return layer.split(JOIN)


def default_candidates(layers: Sequence[str]) -> list[str]:
    """The layers a fit compares by default: each stored layer, and the last two side by side (with stage6 and
    penultimate stored, the best of the three beat the penultimate alone on three sets: README, "Fit")."""
    layers = [x for x in layers if JOIN not in x]
    return [*layers, JOIN.join(layers[-2:])] if len(layers) >= 2 else layers
