"""Each test file's seconds under ``make test``, for the order in which test workers take the files.

    python benchmarks/suite_durations.py [LOG]

Runs ``make test``'s pytest with ``--durations=0`` (or reads the log of such a run) and writes
``tests/durations.json``: the seconds each file's tests took (setup, call and teardown), which
``tests/conftest.py`` sorts by, longest first, so that no long file is left running alone at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+tests/([^:]+\.py)::")


def main() -> None:
    if len(sys.argv) > 1:
        text = Path(sys.argv[1]).read_text()
    else:
        text = subprocess.run([sys.executable, "-m", "pytest", "-n", "auto", "--dist", "loadfile",
                               "--no-loadscope-reorder", "-q", "--durations=0"], cwd=ROOT, capture_output=True,
                              text=True).stdout
    seconds: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            seconds[match.group(2)] += float(match.group(1))
    if not seconds:
        sys.exit("no --durations lines found")
    ordered = dict(sorted(((k, round(v, 1)) for k, v in seconds.items()), key=lambda kv: -kv[1]))
    (ROOT / "tests" / "durations.json").write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{len(ordered)} files, {sum(ordered.values()):.0f} s in all")


if __name__ == "__main__":
    main()
