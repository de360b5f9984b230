"""Decoding images on a thread pool, a bounded number of batches ahead of the model.

Pillow releases the GIL, so threads decode in parallel with each other and the
model, and memory is bounded by the images in flight, not the data set's size.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..machine import usable_cores
from .decode import DecodeError, ResizePolicy, decode_image


@dataclass
class Batch:
    """Decoded images of one batch: ``pixels[k]`` belongs to item ``ok[k]``; ``failed`` holds ``(item, reason)``."""

    items: list[int]
    ok: list[int]
    pixels: np.ndarray
    failed: list[tuple[int, str]]


def _decode(path: Path, policy: ResizePolicy):
    try:
        return decode_image(path, policy)
    except DecodeError as e:
        return str(e)


def default_workers() -> int:
    return max(2, usable_cores())


def decoded_batches(paths: Sequence[Path], policy: ResizePolicy, batch_size: int,
                    workers: int | None = None, prefetch_batches: int = 3) -> Iterator[Batch]:
    """Yield batches of decoded images in order, keeping ``prefetch_batches`` batches in flight."""
    size = policy.size
    with ThreadPoolExecutor(workers or default_workers(), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        upcoming = iter(range(len(paths)))

        def submit(count: int) -> None:
            for i in upcoming:
                pending.append((i, pool.submit(_decode, paths[i], policy)))
                count -= 1
                if count == 0:
                    return

        submit(batch_size * prefetch_batches)
        while pending:
            items, ok, failed = [], [], []
            pixels = np.zeros((batch_size, size, size, 3), np.uint8)
            while pending and len(items) < batch_size:
                i, future = pending.popleft()
                result = future.result()
                items.append(i)
                if isinstance(result, str):
                    failed.append((i, result))
                else:
                    pixels[len(ok)] = result
                    ok.append(i)
            submit(len(items))
            yield Batch(items, ok, pixels, failed)
