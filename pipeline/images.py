"""Finding images (class folders, CSV manifest, unlabelled folder) and decoding them robustly.

Every candidate file either yields an array or a recorded reason: one bad file
never stops a run and is never dropped silently.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import stat
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

try:  # libspng decodes PNGs about 2.5x faster than Pillow, to the same pixels
    import pyspng
except ImportError:  # pragma: no cover - the ``fast`` extra is not installed
    pyspng = None

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
RESIZE_MODES = ("crop", "pad", "stretch")

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


class DecodeError(Exception):
    """A file that cannot become an image; the message is the reason recorded."""


@dataclass(frozen=True)
class ResizePolicy:
    """How a decoded image becomes a ``size`` x ``size`` input: ``crop`` (the shorter side to ``size /
    crop_fraction``, then the centre square, as in ImageNet evaluation), ``pad`` (fitted, white bars) or
    ``stretch`` (aspect ignored)."""

    size: int
    mode: str = "crop"
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise UserError(f"must be one of {', '.join(RESIZE_MODES)}, not {self.mode!r}", param="resize")
        if not 0 < self.crop_fraction <= 1:
            raise UserError(f"crop fraction must be in (0, 1], not {self.crop_fraction}")
        if self.interpolation not in _RESAMPLE:
            raise UserError(f"interpolation must be one of {', '.join(_RESAMPLE)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def _scale(self, width: int, height: int) -> float:
        if self.mode == "crop":
            return self.size / self.crop_fraction / min(width, height)
        return self.size / max(width, height)

    def apply(self, im: Image.Image) -> np.ndarray:
        resample = _RESAMPLE[self.interpolation]
        size, (w, h) = self.size, im.size
        if self.mode == "stretch":
            im = im.resize((size, size), resample)
        elif self.mode == "crop":
            side = size / self._scale(w, h)  # the crop's side in source pixels
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            im = im.resize((size, size), resample, box=box)
        else:
            s = self._scale(w, h)
            inner = im.resize((max(1, round(w * s)), max(1, round(h * s))), resample)
            im = Image.new("RGB", (size, size), (255, 255, 255))
            im.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        return np.asarray(im, dtype=np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _open_regular(path: str | Path):
    """A binary file object for ``path`` if it is a regular file (after symlinks); a FIFO or device never blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DecodeError("not a regular file")
    return os.fdopen(fd, "rb")


_SPNG_MODES = {0: "L", 2: "RGB", 6: "RGBA"}  # PNG colour type -> mode, at 8 bits per sample (pyspng lacks LA)


def _png_with_spng(f, im: Image.Image) -> Image.Image:
    """The PNG decoded by libspng where its pixels equal Pillow's: 8-bit grey, RGB or RGBA, no transparency
    key, no EXIF (whose orientation Pillow applies) and every chunk's CRC right (pyspng does not check them);
    otherwise ``im`` untouched, for Pillow to decode or refuse."""
    f.seek(0)
    data = f.read()
    mode = _SPNG_MODES.get(data[25]) if len(data) > 25 and data[24] == 8 else None
    if mode is None or mode != im.mode or "transparency" in im.info or b"eXIf" in data or not _crcs_ok(data):
        return im
    return Image.fromarray(pyspng.load(data, format=mode))


def _crcs_ok(data: bytes) -> bool:
    """Whether every chunk of the PNG ``data`` is complete and matches its CRC-32, up to IEND."""
    at, view = 8, memoryview(data)
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 8 + length
        if end + 4 > len(data) or zlib.crc32(view[at + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if kind == b"IEND":
            return True
        at = end + 4
    return False


def decode_image(path: str | Path, policy: ResizePolicy) -> np.ndarray:
    """Decode ``path`` into a ``uint8`` array of shape ``(size, size, 3)``, or raise :class:`DecodeError`.

    Any failure while decoding one file, whatever the decoder raises, becomes that file's reason.
    """
    try:
        with _open_regular(path) as f, Image.open(f) as im:
            w, h = im.size
            if w * h > policy.max_pixels:
                raise DecodeError(f"decompression bomb: {w}x{h} pixels is over the limit of {policy.max_pixels}")
            if im.format == "JPEG":  # decode at reduced size straight from the DCT when much larger
                s = policy._scale(w, h)
                im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
            elif im.format == "PNG" and pyspng is not None:
                im = _png_with_spng(f, im)
            im = ImageOps.exif_transpose(im)
            return policy.apply(to_rgb(im))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised or empty file)") from None
    except OSError as e:
        raise DecodeError(f"unreadable: {e.strerror or e}" if e.errno else f"cannot decode: {e}") from None
    except Exception as e:  # a decoder's bug on a crafted file is still one file's problem
        raise DecodeError(f"cannot decode: {type(e).__name__}: {e}") from None


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

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)


def _is_candidate(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and name.lower() not in _JUNK_NAMES \
        and path.suffix.lower() in IMAGE_EXTENSIONS


def _classify(paths) -> tuple[list[Path], int]:
    """The image candidates among ``paths`` and the count of other files (folders are neither)."""
    found, ignored = [], 0
    for p in paths:
        if p.is_file() or p.is_symlink():
            if _is_candidate(p):
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
    folders = [e.path for e in top if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    files = [e.path for e in top if not e.is_dir(follow_symlinks=False)]
    parts = [ListingPart(files=tuple(files[k:k + LISTING_CHUNK])) for k in range(0, len(files), LISTING_CHUNK)]
    found, ignored = (lister or list_here)(parts + [ListingPart(folder=f) for f in folders])
    return sorted(found), ignored


def discover(source: str | Path, unlabelled: bool = False, lister: Lister | None = None) -> Dataset:
    """Images of a CSV manifest (``path``, ``label`` and/or a numeric ``target``, optionally ``group``: images of
    one group are never split between training and test) or a folder: labelled by its
    first-level sub-folders (searched recursively) if they hold images and not ``unlabelled``; ``lister``
    lists a folder's parts (:func:`list_folder`)."""
    source = Path(source)
    if source.suffix.lower() == ".csv" and source.is_file():
        return _from_manifest(source)
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


def _from_manifest(manifest: Path) -> Dataset:
    root = manifest.parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read manifest {manifest}: {e}") from None
    if not rows or "path" not in rows[0]:
        raise UserError(f"manifest {manifest} needs a header row with a 'path' column (and 'label' or 'target')")
    labelled, regression, grouped = "label" in rows[0], "target" in rows[0], "group" in rows[0]
    paths, labels, targets, groups, skipped = [], [], [], [], []
    seen: dict[str, tuple] = {}
    for line, row in enumerate(rows, start=2):
        rel = (row["path"] or "").strip()
        if not rel:
            continue
        if "\0" in rel:
            raise UserError(f"manifest {manifest}, line {line}: the path contains a NUL byte", param="data")
        entry = (row.get("label"), row.get("target"), row.get("group"))
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
        if grouped:
            groups.append((row["group"] or "").strip())
        if regression:
            try:
                targets.append(float(row["target"]))
            except (TypeError, ValueError):
                raise UserError(f"manifest {manifest}, line {line}: target {row['target']!r} is not a number") from None
    if labelled and any(not label for label in labels):
        raise UserError(f"manifest {manifest} has rows with an empty label")
    class_names = sorted(set(labels)) if labelled else None
    return Dataset(root, paths, labels if labelled else None, class_names, skipped=skipped,
                   targets=targets if regression else None, groups=groups if grouped else None)
