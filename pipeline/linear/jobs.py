"""Running a cross-validation's folds on the cores this process may use, with a progress bar."""

from __future__ import annotations

from typing import Iterable

from joblib import Parallel
from tqdm.auto import tqdm

from ..machine import usable_cores


def run_folds(calls: Iterable, jobs: int | None = None, progress: bool = False, what: str = "folds") -> list:
    """The results of joblib's ``delayed`` ``calls``, in order, on ``jobs`` processes (default: the usable
    cores); ``progress`` shows folds done and the time left as they finish."""
    calls = list(calls)
    done = Parallel(n_jobs=jobs or usable_cores(), return_as="generator")(calls)
    return list(tqdm(done, total=len(calls), desc=what, unit="fold", disable=not progress or len(calls) < 2,
                     dynamic_ncols=True, leave=False))
