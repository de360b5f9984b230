"""Listing a folder of images on a Ray cluster, with the local rules, and each file's status taken there.

The driver reads only the folder's first level (names and types). Each
sub-folder, and each chunk of first-level files, is a Ray Data task that
sorts out the image candidates by the same rules as a local run
(:func:`pipeline.data.discover.list_folder`) and takes each one's size and mtime, so
on shared storage the many ``stat`` calls of a large archive spread over the
cluster. Paths travel as bytes: a name that is not UTF-8 reaches the driver
intact and is refused there, as locally.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.discover import ListingPart, fingerprint
from .cluster import connect


def list_part(batch: dict) -> dict:
    """One part per batch -> one row per candidate (path, size, mtime, or the error of its ``stat``), and a
    last row with an empty path counting the other files."""
    part = ListingPart(tuple(map(os.fsdecode, batch["files"][0])), os.fsdecode(batch["folder"][0]))
    found, ignored = part.list()
    rows = {"path": [], "size": [], "mtime": [], "errno": [], "strerror": [], "ignored": []}
    for path in found:
        try:
            (size, mtime), (errno, strerror) = fingerprint(path), (0, "")
        except OSError as e:
            (size, mtime), (errno, strerror) = (0, 0), (e.errno or 0, e.strerror or str(e))
        for key, value in zip(rows, (os.fsencode(path), size, mtime, errno, strerror, 0)):
            rows[key].append(value)
    for key, value in zip(rows, (b"", 0, 0, 0, "", ignored)):
        rows[key].append(value)
    return {key: np.asarray(values, dtype=object if key in ("path", "strerror") else np.int64)
            for key, values in rows.items()}


class ClusterListing:
    """A :data:`~pipeline.data.discover.Lister` that lists on the cluster at ``address`` and keeps the statuses it
    took, for :meth:`fingerprint`."""

    def __init__(self, address: str):
        connect(address)
        self.statuses: dict[str, tuple[int, int, int, str]] = {}

    def __call__(self, parts: list[ListingPart]) -> tuple[list[Path], int]:
        import ray.data

        if not parts:
            return [], 0
        items = [{"files": [os.fsencode(f) for f in p.files], "folder": os.fsencode(p.folder)} for p in parts]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(list_part, batch_size=1)
        found, ignored = [], 0
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for path, size, mtime, errno, strerror, n in zip(*(batch[k] for k in (
                    "path", "size", "mtime", "errno", "strerror", "ignored"))):
                if path:
                    found.append(Path(os.fsdecode(path)))
                    self.statuses[str(found[-1])] = (int(size), int(mtime), int(errno), str(strerror))
                ignored += int(n)
        return found, ignored

    def fingerprint(self, path: Path) -> tuple[int, int]:
        """The size and mtime the cluster saw; a file it did not list (a manifest's) is looked at here."""
        status = self.statuses.get(str(path))
        if status is None:
            return fingerprint(path)
        size, mtime, errno, strerror = status
        if errno or strerror:
            raise OSError(errno, strerror)
        return size, mtime
