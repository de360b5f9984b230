"""Calibrate the near-duplicate threshold: code similarity of copies against that of distinct images of a class.

    python benchmarks/duplicate_threshold.py [--per-class 20] [--work DIR]

For each set, every image gets four copies: the same file re-saved (an exact
copy), a JPEG at quality 85, a resized copy (shrunk to 60% when its short side
has at least 200 pixels, as photos are; enlarged twice otherwise, since the
small images of these sets shrunk lose their content), and a copy padded by 5%
on every side (a re-framed scan). All are extracted with the default backbone
and layer (pipeline.linear.duplicates.similarity), and the script prints, per set and
per kind of copy, the share of copies whose similarity to their original
reaches the threshold (they are caught), and the highest similarity between
two distinct originals of one class, which must stay under it (distinct
images are never grouped).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

from fetch_data import (  # noqa: E402
    fetch_digits,
    fetch_fashion_mnist,
    fetch_foolbox,
    fetch_tuxpaint,
    first_per_class,
)

from pipeline.linear.duplicates import DEFAULT_THRESHOLD, similarity  # noqa: E402
from pipeline.store.config import ExtractConfig  # noqa: E402
from pipeline.store.extract import extract  # noqa: E402
from pipeline.store.reader import read_store  # noqa: E402

SETS = {"tuxpaint": fetch_tuxpaint, "fashion_mnist": fetch_fashion_mnist, "digits": fetch_digits,
        "foolbox_photos": fetch_foolbox}


def _copies(source: Path, dest: Path, per_class: int) -> None:
    """Originals as PNG, and their copies, as ``class/name__kind.ext``."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:per_class]:
            out = dest / folder.name
            out.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                image = image.convert("RGB")
            image.save(out / f"{path.stem}__original.png")
            image.save(out / f"{path.stem}__exact.png")
            image.save(out / f"{path.stem}__jpeg.jpg", quality=85)
            scale = 0.6 if min(image.size) >= 200 else 2.0
            image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BICUBIC).save(out / f"{path.stem}__resized.png")
            pad = max(1, round(0.05 * max(image.size)))
            framed = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), image.getpixel((0, 0)))
            framed.paste(image, (pad, pad))
            framed.save(out / f"{path.stem}__padded.png")


def measure(name: str, source: Path, work: Path, per_class: int, threshold: float) -> dict[str, float]:
    folder = work / name
    if not folder.exists():
        _copies(source, folder, per_class)
    extract(ExtractConfig(data=folder, out=work / f"{name}.h5", progress=False))
    store = read_store(work / f"{name}.h5")
    stems = [Path(p).stem.rsplit("__", 1) for p in store.paths]
    sim = similarity(store.codes())
    originals = {(Path(p).parent.name, s): i for i, (p, (s, kind)) in enumerate(zip(store.paths, stems))
                 if kind == "original"}
    out = {}
    for kind in ("exact", "jpeg", "resized", "padded"):
        out[kind] = float(np.mean([sim[i, originals[(Path(p).parent.name, s)]] >= threshold
                                   for i, (p, (s, k)) in enumerate(zip(store.paths, stems)) if k == kind]))
    index = np.array(list(originals.values()))
    same = store.labels[index][:, None] == store.labels[index][None, :]
    np.fill_diagonal(same, False)
    out["distinct"] = float(sim[np.ix_(index, index)][same].max()) if same.any() else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "duplicate_threshold")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"share of copies caught at threshold {args.threshold}, and the highest similarity of distinct images")
    print("| set | exact copy | JPEG 85 | resized | padded 5% | distinct, one class (highest) |")
    print("|---|---|---|---|---|---|")
    for name, fetch in SETS.items():
        source = fetch()
        if name == "fashion_mnist":
            source = first_per_class(source, args.per_class, args.work / "sources" / name)
        m = measure(name, source, args.work, args.per_class, args.threshold)
        print(f"| {name} | {m['exact']:.0%} | {m['jpeg']:.0%} | {m['resized']:.0%} | {m['padded']:.0%} | "
              f"{m['distinct']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
