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
    """The layer a fit takes by default: every stored layer side by side (power-scaled, stage5, stage6 and
    penultimate joined beat each layer alone and every pair tried on three sets: README, "Fit")."""
    return [JOIN.join(layers)]
