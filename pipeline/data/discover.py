"""Finding images: class folders (searched recursively), a CSV manifest, or an unlabelled folder.

A folder is listed in parts (:class:`ListingPart`), here one after another or on
a cluster (:mod:`pipeline.scaleout.listing`); what is not an image is counted,
and what cannot be used is recorded with its reason.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
LABEL_SEPARATOR = ";"  # between the labels of one image in a manifest's labels column: car;sign


@dataclass
class Dataset:
    """Images found under ``root``: relative paths, labels (None if unlabelled) and what was left out."""

    root: Path
    paths: list[str]
    labels: list[str] | None
    class_names: list[str] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    targets: list[float] | None = None
    groups: list[str] | None = None  # a manifest's group column (one patient, object or session); "" stands alone
    label_sets: list[tuple[str, ...]] | None = None  # a manifest's labels column: several labels per image

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def multilabel(self) -> bool:
        return self.label_sets is not None

    def __len__(self) -> int:
        return len(self.paths)


def is_candidate(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and name.lower() not in _JUNK_NAMES \
        and path.suffix.lower() in IMAGE_EXTENSIONS


def _classify(paths) -> tuple[list[Path], int]:
    """The image candidates among ``paths`` and the count of other files (folders are neither)."""
    found, ignored = [], 0
    for p in paths:
        if p.is_file() or p.is_symlink():
            if is_candidate(p):
                found.append(p)
            else:
                ignored += 1
    return found, ignored


@dataclass(frozen=True)
class ListingPart:
    """A share of one folder's listing, listed on its own (on a cluster, by a task): some of the ``files`` of
    its first level to sort out, or one of its sub-``folder``s to walk (hidden folders skipped)."""

    files: tuple[str, ...] = ()
    folder: str = ""

    def list(self) -> tuple[list[Path], int]:
        if not self.folder:
            return _classify(map(Path, self.files))
        folder = Path(self.folder)
        return _classify(p for p in folder.rglob("*")
                         if not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


# Lists the parts of a folder, returns their candidates and the count of other files: here, one after another,
# by default; on a cluster, pipeline.scaleout.listing.ClusterListing.
Lister = Callable[[list[ListingPart]], tuple[list[Path], int]]
LISTING_CHUNK = 2048  # first-level files per part


def fingerprint(path: str | Path) -> tuple[int, int]:
    """What tells a file changed: its size and modification time (ns)."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def list_here(parts: list[ListingPart]) -> tuple[list[Path], int]:
    found, ignored = [], 0
    for part in parts:
        files, n = part.list()
        found += files
        ignored += n
    return found, ignored


def list_folder(folder: Path, lister: Lister | None = None) -> tuple[list[Path], int]:
    """Image candidates below ``folder`` (sorted; hidden folders skipped) and the count of other files. Only
    the first level is read here (names and types, no file's status); ``lister`` lists the parts."""
    with os.scandir(folder) as entries:
        top = sorted(entries, key=lambda e: e.name)
    folders = [e.path for e in top if e.is_dir() and not e.name.startswith(".")]  # a linked class folder too
    files = [e.path for e in top if not e.is_dir()]
    parts = [ListingPart(files=tuple(files[k:k + LISTING_CHUNK])) for k in range(0, len(files), LISTING_CHUNK)]
    found, ignored = (lister or list_here)(parts + [ListingPart(folder=f) for f in folders])
    return sorted(found), ignored


def dataset_root(source: str | Path) -> Path:
    """The folder a dataset's paths are relative to: the folder itself, or a manifest's folder."""
    source = Path(source)
    return source.parent if source.suffix.lower() == ".csv" and source.is_file() else source


def discover(source: str | Path, unlabelled: bool = False, lister: Lister | None = None,
             outside: bool = False) -> Dataset:
    """Images of a CSV manifest (``path``, ``label`` and/or a numeric ``target``, or ``labels``: several per
    image, separated by :data:`LABEL_SEPARATOR`; optionally ``group``: images of one group are never split
    between training and test) or a folder: labelled by its
    first-level sub-folders (searched recursively) if they hold images and not ``unlabelled``; ``lister``
    lists a folder's parts (:func:`list_folder`); ``outside``: a manifest may name files outside its folder."""
    source = Path(source)
    if source.suffix.lower() == ".csv" and source.is_file():
        return _from_manifest(source, outside)
    if not source.is_dir():
        raise UserError(f"{source} is neither a folder of images nor a CSV manifest")
    files, ignored = list_folder(source, lister)
    relative = [p.relative_to(source) for p in files]
    _refuse_undecodable_names([r.as_posix() for r in relative], source)
    in_subfolders = [r for r in relative if len(r.parts) > 1]
    if unlabelled or not in_subfolders:
        return Dataset(source, [r.as_posix() for r in relative], None, None, ignored=ignored)
    class_names = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [(r.as_posix(), "not inside a class folder") for r in relative if len(r.parts) == 1]
    if loose:
        log.warning("%d image(s) directly in %s are not in a class folder; recorded as skipped",
                    len(loose), source)
    return Dataset(source, [r.as_posix() for r in in_subfolders], [r.parts[0] for r in in_subfolders], class_names,
                   skipped=loose, ignored=ignored)


def _refuse_undecodable_names(paths: list[str], source: Path) -> None:
    """Names the store cannot hold (not valid UTF-8) are refused before any work, not after it."""
    bad = [p for p in paths if _not_utf8(p)]
    if bad:
        raise UserError(f"{len(bad)} file name(s) under {source} are not valid UTF-8, e.g. "
                        f"{bad[0].encode('utf-8', 'surrogateescape')!r}; rename them", param="data")


def _not_utf8(name: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in name)  # a surrogate: what UTF-8 cannot encode


def _inside(rel: str) -> bool:
    """Whether a manifest's path stays below the manifest's folder (as written: ``..`` and absolute paths
    leave it)."""
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts


def _from_manifest(manifest: Path, outside: bool = False) -> Dataset:
    root = dataset_root(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read manifest {manifest}: {e}") from None
    if not rows or "path" not in rows[0]:
        raise UserError(f"manifest {manifest} needs a header row with a 'path' column (and 'label', 'labels' or "
                        "'target')")
    labelled, regression, grouped = "label" in rows[0], "target" in rows[0], "group" in rows[0]
    multilabel = "labels" in rows[0]
    if multilabel and (labelled or regression):
        raise UserError(f"manifest {manifest} has a 'labels' column (several labels per image) and a 'label' or "
                        "'target' column: keep one", param="data")
    paths, labels, targets, groups, label_sets, skipped = [], [], [], [], [], []
    seen: dict[str, tuple] = {}
    for line, row in enumerate(rows, start=2):
        rel = os.path.normpath((row["path"] or "").strip()) if (row["path"] or "").strip() else ""
        if not rel:
            continue
        if "\0" in rel:
            raise UserError(f"manifest {manifest}, line {line}: the path contains a NUL byte", param="data")
        if not outside and not _inside(rel):
            raise UserError(f"manifest {manifest}, line {line}: {rel} lies outside the manifest's folder; move the "
                            "manifest up to a folder that holds its images, or allow it", param="data",
                            remedy="allow_outside")
        entry = (row.get("label"), row.get("labels"), row.get("target"), row.get("group"))
        if rel in seen:
            if seen[rel] != entry:
                raise UserError(f"manifest {manifest}, line {line}: {rel} is listed again with another label "
                                "or group", param="data")
            continue
        seen[rel] = entry
        if not (root / rel).exists():
            skipped.append((rel, "file not found"))
            continue
        paths.append(rel)
        if labelled:
            labels.append((row["label"] or "").strip())
        if multilabel:
            names = tuple(sorted({n.strip() for n in (row["labels"] or "").split(LABEL_SEPARATOR) if n.strip()}))
            if not names:
                raise UserError(f"manifest {manifest}, line {line}: {rel} has no label (give one or more, separated "
                                f"by '{LABEL_SEPARATOR}')", param="data")
            label_sets.append(names)
        if grouped:
            groups.append((row["group"] or "").strip())
        if regression:
            try:
                targets.append(float(row["target"]))
            except (TypeError, ValueError):
                raise UserError(f"manifest {manifest}, line {line}: target {row['target']!r} is not a number") from None
    if labelled and any(not label for label in labels):
        raise UserError(f"manifest {manifest} has rows with an empty label")
    class_names = sorted(set(labels)) if labelled else sorted(set().union(*label_sets)) if multilabel else None
    return Dataset(root, paths, labels if labelled else None, class_names, skipped=skipped,
                   targets=targets if regression else None, groups=groups if grouped else None,
                   label_sets=label_sets if multilabel else None)
