"""The advisor checked against outcomes: run.py with both strategies on six set-and-size rows.

    python benchmarks/advisor_table.py [--only NAME ...] [--work DIR]

Each row runs the whole of ``run.py`` with ``--finetune always`` (fine-tuning in
the mode the device gets by default) and prints the advisor's verdict, the
best linear candidate's and the fine-tuned network's held-out accuracy and
wall time, and which won (fine-tuning must beat the best linear candidate).
Subsets are the first images of each class, copied into the work folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

from fetch_data import (  # noqa: E402
    fetch_digits,
    fetch_fashion_mnist,
    fetch_mnist,
    fetch_tuxpaint,
    first_per_class,
)

from pipeline.escalate.config import RunConfig  # noqa: E402
from pipeline.escalate.run import run  # noqa: E402


@dataclass(frozen=True)
class Row:
    name: str
    fetch: object
    per_class: int | None  # None: the whole set
    flip: bool  # whether a mirror keeps the class


ROWS = (
    Row("tuxpaint", fetch_tuxpaint, None, True),
    Row("fashion_mnist_300", fetch_fashion_mnist, 30, True),
    Row("fashion_mnist_3000", fetch_fashion_mnist, 300, True),
    Row("mnist_300", fetch_mnist, 30, False),
    Row("mnist_3000", fetch_mnist, 300, False),
    Row("digits", fetch_digits, None, False),
)


def measure(row: Row, work: Path) -> dict:
    data = row.fetch() if row.per_class is None else first_per_class(row.fetch(), row.per_class,
                                                                      work / "data" / row.name)
    started = time.perf_counter()
    result = run(RunConfig(data=data, out=work / "runs" / row.name, finetune="always", flip=row.flip,
                           progress=False))
    linear = max((c for c in result.candidates if c.name != "fine-tuned network"),
                 key=lambda c: (c.test_accuracy, c.test_macro_f1))
    tuned = next(c for c in result.candidates if c.name == "fine-tuned network")
    finetune_won = tuned.test_accuracy > linear.test_accuracy
    return {"row": row.name, "images": result.advice.images, "divergence": result.advice.divergence,
            "verdict": result.advice.recommendation, "linear": linear, "tuned": tuned,
            "estimate": result.advice.finetune_minutes,
            "winner": "fine-tune" if finetune_won else "linear",
            "agrees": finetune_won == result.advice.strategy.finetunes, "total": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=[r.name for r in ROWS], help="rows to run (default: all)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "advisor_table")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| set | images | divergence | advisor | best linear (acc, min) | fine-tuned (acc, min; estimated min) "
          "| winner | agrees |")
    print("|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        if args.only and row.name not in args.only:
            continue
        m = measure(row, args.work)
        lin, tun = m["linear"], m["tuned"]
        print(f"| {m['row']} | {m['images']} | {m['divergence']:.3f} | {m['verdict']} | "
              f"{lin.name}: {lin.test_accuracy:.3f}, {lin.seconds / 60:.1f} | {tun.test_accuracy:.3f}, "
              f"{tun.seconds / 60:.1f}; {m['estimate']:.1f} | {m['winner']} | {'yes' if m['agrees'] else 'NO'} |",
              flush=True)


if __name__ == "__main__":
    main()
