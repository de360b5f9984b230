"""What every figure of the project shares: matplotlib's object-oriented API (``Figure``, no pyplot), which
draws without a display and leaves the process's backend alone, and PNG bytes out."""

from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure

DPI = 110


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def subplots(*args, **kwargs):
    """A new figure of ``figsize`` and its axes (``Figure.subplots``'s arguments)."""
    fig = Figure(figsize=kwargs.pop("figsize"))
    return fig, fig.subplots(*args, **kwargs)


def colours(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]
