"""Whether to fine-tune: the heuristic proposes (:mod:`pipeline.escalate.rule`), the pilot decides
(:mod:`pipeline.escalate.pilot`).

The rule, in order:

1. A small set stays linear: no pilot runs (on every small row of the advisor
   table fine-tuning lost or tied, docs/benchmarks.md).
2. Over the budget (the full run's minutes as the pilot measured them), linear.
3. Fine-tuning ahead with confidence (the lower end of the pilot's 90%
   interval above zero: a one-sided 95% bound, since only a gain would make us
   pay for the full run): fine-tune.
4. Fine-tuning behind with confidence (the upper end below zero): linear.
5. Inconclusive: fine-tune only where the heuristic is strong (it names a
   fine-tuning strategy for the set), else linear, the cheaper of two
   contenders the data cannot tell apart.

The level is fixed in advance, not fitted to the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .pilot import PilotResult
from .rule import Strategy


@dataclass(frozen=True)
class Decision:
    """Whether to fine-tune, and why in one line."""

    finetune: bool
    why: str

    def to_json(self) -> dict:
        return asdict(self)


def needs_pilot(small: bool) -> bool:
    """Whether a set is one where fine-tuning is plausible enough to pilot: a large one."""
    return not small


def decide(proposal: Strategy, pilot: PilotResult | None, budget: float | None = None) -> Decision:
    """The decision for a set the heuristic places in ``proposal`` (its situation's strategy), from the pilot's
    evidence (None: none ran, the set is small), within ``budget`` minutes (None: no limit)."""
    if pilot is None:
        return Decision(False, f"a small set: {proposal.value}, no pilot")
    c = pilot.comparison
    evidence = (f"fine-tuning {c.difference:+.3f} against linear, {c.level:.0%} interval "
                f"[{c.interval[0]:+.3f}, {c.interval[1]:+.3f}] on {c.images} images")
    if budget is not None and pilot.full_minutes > budget:
        return Decision(False, f"the full fine-tune's estimated {pilot.full_minutes:.0f} min are over the budget "
                               f"of {budget:g} min ({evidence})")
    if pilot.verdict == "ahead":
        return Decision(True, f"the pilot found fine-tuning ahead ({evidence})")
    if pilot.verdict == "behind":
        return Decision(False, f"the pilot found fine-tuning behind ({evidence})")
    if proposal.finetunes:
        return Decision(True, f"the pilot was inconclusive ({evidence}) and the heuristic proposes to "
                              f"{proposal.value}")
    return Decision(False, f"the pilot was inconclusive ({evidence}) and the heuristic proposes a "
                           f"{proposal.value}: the cheaper one")
