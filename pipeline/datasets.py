"""Fetch the real image sets this project uses from the package registries into ``data/``.

Nothing here is committed: the images keep their own licences (Tux Paint
stamps: GPL-2; foolbox: MIT) and are fetched at set-up.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
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


def fetch_foolbox(dest: Path = DATA_DIR / "foolbox") -> Path:
    """foolbox's 20 ImageNet validation photos, as ``dest/imagenet/imagenet_NN_LABEL.jpg``."""
    if (dest / DONE).exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        got = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                    FOOLBOX_REQUIREMENT])
        wheels = list(Path(tmp).glob("foolbox-*.whl"))
        if got.returncode != 0 or not wheels:
            raise UserError(f"pip download {FOOLBOX_REQUIREMENT} failed: {got.stderr.strip()}")
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "imagenet").mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith("foolbox/data/imagenet_"):
                    (dest / "imagenet" / Path(name).name).write_bytes(z.read(name))
    (dest / DONE).touch()
    return dest


FETCHERS = {"tuxpaint": fetch_tuxpaint, "foolbox": fetch_foolbox}
