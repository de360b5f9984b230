"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as ``taskset``, a container or a test worker sets it;
    ``os.cpu_count()`` counts the machine's): the default number of parallel jobs and threads, so that work is
    never split over more processes than there are cores to run them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
