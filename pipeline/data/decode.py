"""Decoding one image file robustly into the backbone's input: any format Pillow reads, any mode, EXIF orientation.

Every candidate file either yields an array or a recorded reason (:class:`DecodeError`):
one bad file never stops a run and is never dropped silently.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

try:  # libspng decodes PNGs faster than Pillow, to the same pixels (docs/benchmarks.md)
    import pyspng
except ImportError:  # pragma: no cover - the ``fast`` extra is not installed
    pyspng = None

RESIZE_MODES = ("crop", "pad", "stretch")
INPUT_SIZES = (1, 2048)  # the sides an image may be decoded to: a crafted card asking for more would exhaust memory

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
        if isinstance(self.size, bool) or not isinstance(self.size, int) \
                or not INPUT_SIZES[0] <= self.size <= INPUT_SIZES[1]:
            raise UserError(f"input size must be a whole number of pixels from {INPUT_SIZES[0]} to "
                            f"{INPUT_SIZES[1]}, not {self.size!r}", param="resize")
        if self.mode not in RESIZE_MODES:
            raise UserError(f"must be one of {', '.join(RESIZE_MODES)}, not {self.mode!r}", param="resize")
        if not isinstance(self.crop_fraction, (int, float)) or not 0 < self.crop_fraction <= 1:
            raise UserError(f"crop fraction must be in (0, 1], not {self.crop_fraction!r}", param="resize")
        if self.interpolation not in _RESAMPLE:
            raise UserError(f"interpolation must be one of {', '.join(_RESAMPLE)}", param="resize")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise UserError(f"max_pixels must be a positive whole number, not {self.max_pixels!r}", param="resize")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "ResizePolicy":
        """The policy a file (a store, a bundle, a model card) records, checked: known fields, valid values."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or "size" not in data or set(data) - known:
            raise UserError(f"not a resize policy: {str(data)[:200]!r}", param="resize")
        return cls(**data)

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
