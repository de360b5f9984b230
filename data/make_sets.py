"""Build the advisor table's own sets (benchmarks/advisor_table.py) from the package registries.

    python data/make_sets.py glyphs glyphs_cluttered cells clipart

- ``glyphs``: ten Greek letters rendered in the fonts of Debian's
  fonts-dejavu-core and fonts-liberation (regular, bold, italic, serif, mono),
  at random sizes, angles and places, light on dark with noise and blur:
  large and far from ImageNet. ``glyphs_cluttered``: ten confusable ones,
  smaller, fainter, turned further, among scribbles of their own shade.
- ``cells``: greyscale microscopy-like fields of six kinds (few or many round
  cells, elongated ones, cells with a dark nucleus, rings, clumps), drawn at
  random: medical-like patterns, unlike ImageNet.
- ``clipart``: Debian's openclipart-png, the seven of its top-level categories
  with 360 drawings or more (many of objects ImageNet knows).

Set-up tooling like fetch_data.py; nothing here is committed (fonts: Bitstream
Vera / SIL OFL; openclipart: public domain).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from fetch_data import DATA_DIR, DONE, _apt_download, _run
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pipeline.errors import UserError

log = logging.getLogger(__name__)

FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation")
GLYPHS = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "zeta": "ζ", "eta": "η",
          "theta": "θ", "lambda": "λ", "xi": "ξ"}
CLUTTERED_GLYPHS = {"alpha": "α", "sigma": "σ", "omicron": "ο", "delta": "δ", "nu": "ν", "upsilon": "υ",
                    "kappa": "κ", "chi": "χ", "rho": "ρ", "phi": "φ"}
CLIPART_PACKAGE = "openclipart-png"
CLIPART_CLASSES = ("computer", "food", "people", "recreation", "shapes", "signs_and_symbols", "transportation")


def _unpack(packages, into: Path) -> Path:
    """``apt-get download`` each package and unpack it under ``into/root``."""
    root = into / "root"
    for package in packages:
        deb = _apt_download(package, into)
        if _run(["dpkg-deb", "-x", str(deb), str(root)]).returncode != 0:
            raise UserError(f"dpkg-deb -x {deb.name} failed")
    return root


def _glyph(font: ImageFont.FreeTypeFont, char: str, rng: np.random.Generator, size: int,
           clutter: bool = False) -> Image.Image:
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    draw = ImageDraw.Draw(canvas)
    shade = int(rng.integers(150, 240) if clutter else rng.integers(170, 256))
    draw.text((size, size), char, fill=shade, font=font, anchor="mm")
    if clutter:  # strokes and arcs of the glyph's own shade: a letter among scribbles
        for _ in range(int(rng.integers(2, 6))):
            box = sorted(rng.uniform(size // 2, 3 * size // 2, 2)), sorted(rng.uniform(size // 2, 3 * size // 2, 2))
            xy = (box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4)
            width = int(rng.integers(1, 4))
            if rng.random() < 0.5:
                draw.line(xy, fill=shade, width=width)
            else:
                draw.arc(xy, *sorted(rng.uniform(0, 360, 2)), fill=shade, width=width)
    canvas = canvas.rotate(float(rng.uniform(-35, 35) if clutter else rng.uniform(-20, 20)),
                           resample=Image.BILINEAR)
    dx, dy = rng.integers(-size // 8, size // 8 + 1, 2)
    box = (size // 2 + dx, size // 2 + dy, size // 2 + dx + size, size // 2 + dy + size)
    glyph = np.asarray(canvas.crop(box), np.float64)
    background = rng.uniform(*((30, 100) if clutter else (0, 80))) + rng.normal(0, rng.uniform(2, 20), glyph.shape)
    image = Image.fromarray(np.clip(np.maximum(glyph, background), 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


def make_glyphs(per_class: int, dest: Path | None = None, size: int = 64, seed: int = 0, clutter: bool = False
                ) -> Path:
    """``per_class`` renderings of each of :data:`GLYPHS` (with ``clutter``: of the confusable
    :data:`CLUTTERED_GLYPHS`, smaller, lower in contrast, turned further, among scribbles), one folder per
    letter."""
    glyphs = CLUTTERED_GLYPHS if clutter else GLYPHS
    dest = dest or DATA_DIR / f"glyphs{'_cluttered' if clutter else ''}_{per_class * len(glyphs)}"
    if (dest / DONE).exists():
        return dest
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        fonts = sorted(p for p in _unpack(FONT_PACKAGES, Path(tmp)).rglob("*.ttf"))
        if not fonts:
            raise UserError(f"no fonts in {', '.join(FONT_PACKAGES)}")
        shutil.rmtree(dest, ignore_errors=True)
        for name, char in glyphs.items():
            (dest / name).mkdir(parents=True)
            for i in range(per_class):
                points = int(rng.integers(22, 40) if clutter else rng.integers(30, 52))
                font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), points)
                _glyph(font, char, rng, size, clutter).save(dest / name / f"{i:04d}.png")
    (dest / DONE).touch()
    return dest


def _cell(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, rng: np.random.Generator) -> None:
    shade = int(rng.integers(150, 230))
    if kind == "elongated":
        a = rng.uniform(0, np.pi)
        dx, dy = 2.2 * r * np.cos(a), 2.2 * r * np.sin(a)
        draw.line((x - dx, y - dy, x + dx, y + dy), fill=shade, width=max(2, int(r)))
        return
    draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    if kind == "nucleus":
        q = r * rng.uniform(0.3, 0.5)
        draw.ellipse((x - q, y - q, x + q, y + q), fill=int(shade * 0.3))
    elif kind == "ring":
        q = r * rng.uniform(0.5, 0.7)
        draw.ellipse((x - q, y - q, x + q, y + q), fill=0)


CELL_KINDS = ("few", "many", "elongated", "nucleus", "ring", "clumps")


def _cells(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    count = {"few": rng.integers(2, 5), "many": rng.integers(12, 20)}.get(kind, rng.integers(4, 9))
    centres = rng.uniform(0.1 * size, 0.9 * size, (count, 2))
    for x, y in centres:
        r = rng.uniform(0.05, 0.09) * size
        if kind == "clumps":  # several small cells overlapping
            for _ in range(int(rng.integers(3, 6))):
                _cell(draw, "few", x + rng.normal(0, r), y + rng.normal(0, r), 0.6 * r, rng)
        else:
            _cell(draw, "few" if kind == "many" else kind, x, y, r, rng)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2)))), np.float64)
    pixels = pixels * rng.uniform(0.6, 1) + rng.uniform(10, 60) + rng.normal(0, rng.uniform(3, 15), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_cells(per_class: int, dest: Path | None = None, size: int = 96, seed: int = 0) -> Path:
    """``per_class`` fields of each of :data:`CELL_KINDS`, one folder per kind."""
    dest = dest or DATA_DIR / f"cells_{per_class * len(CELL_KINDS)}"
    if (dest / DONE).exists():
        return dest
    rng = np.random.default_rng(seed)
    shutil.rmtree(dest, ignore_errors=True)
    for kind in CELL_KINDS:
        (dest / kind).mkdir(parents=True)
        for i in range(per_class):
            _cells(kind, rng, size).save(dest / kind / f"{i:04d}.png")
    (dest / DONE).touch()
    return dest


def make_clipart(per_class: int, dest: Path | None = None) -> Path:
    """The first ``per_class`` drawings (by path) of each of :data:`CLIPART_CLASSES`, searched recursively."""
    dest = dest or DATA_DIR / f"clipart_{per_class * len(CLIPART_CLASSES)}"
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        png = _unpack([CLIPART_PACKAGE], Path(tmp)) / "usr/share/openclipart/png"
        shutil.rmtree(dest, ignore_errors=True)
        for name in CLIPART_CLASSES:
            (dest / name).mkdir(parents=True)
            found = sorted((png / name).rglob("*.png"))
            if len(found) < per_class:
                raise UserError(f"openclipart has {len(found)} {name} drawings, fewer than {per_class}")
            for image in found[:per_class]:
                shutil.copy2(image, dest / name / image.relative_to(png / name).as_posix().replace("/", "__"))
    (dest / DONE).touch()
    return dest


MAKERS = {"glyphs": make_glyphs, "glyphs_cluttered": lambda n: make_glyphs(n, clutter=True), "cells": make_cells,
          "clipart": make_clipart}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", choices=sorted(MAKERS), help="sets to build")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default %(default)s)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in p.parse_args().names:
            print(MAKERS[name](p.parse_args().per_class))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
