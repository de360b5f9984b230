"""Discovery of image sets and robust decoding of every format and mode the issue lists."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decode import DecodeError, ResizePolicy, decode_image
from pipeline.data.discover import discover
from pipeline.errors import UserError

POLICY = ResizePolicy(32, "stretch")


def gradient(w=48, h=32) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, 255 - x + 0 * y], axis=2).astype(np.uint8))


@pytest.mark.parametrize("fmt,ext,tolerance", [
    ("JPEG", "jpg", 6), ("PNG", "png", 0.01), ("WEBP", "webp", 6), ("BMP", "bmp", 0.01),
    ("GIF", "gif", 12), ("TIFF", "tif", 0.01),
])
def test_formats_decode_to_the_same_pixels(tmp_path, fmt, ext, tolerance):
    image = gradient()
    image.save(tmp_path / f"x.{ext}", fmt)
    reference = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    decoded = decode_image(tmp_path / f"x.{ext}", POLICY)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded - reference).mean() < tolerance


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    decoded = decode_image(tmp_path / "anim.gif", POLICY)
    assert decoded[..., 0].min() > 200 and decoded[..., 2].max() < 50


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)  # stored: left half red, right half blue
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    decoded = decode_image(tmp_path / "rotated.jpg", POLICY).astype(int)
    top, bottom = decoded[:10].mean(axis=(0, 1)), decoded[-10:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, "left edge must become the top after rotation"
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("make,expected", [
    (lambda: Image.new("L", (8, 8), 100), (100, 100, 100)),
    (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
    (lambda: Image.new("RGB", (8, 8), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 20, 30)),
    (lambda: Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("RGBA", (8, 8), (0, 0, 0, 255)), (0, 0, 0)),
    (lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
    (lambda: Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),
    (lambda: Image.fromarray(np.full((8, 8), 32896, np.uint16)), (128, 128, 128)),
])
def test_modes_become_rgb(tmp_path, make, expected):
    image = make()
    path = tmp_path / ("x.tif" if image.mode == "CMYK" else "x.png")
    image.save(path)
    decoded = decode_image(path, ResizePolicy(8, "stretch", interpolation="nearest"))
    np.testing.assert_allclose(decoded.reshape(-1, 3).mean(axis=0), expected, atol=1.5)


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    image.save(tmp_path / "t.png", transparency=0)
    assert decode_image(tmp_path / "t.png", POLICY).min() == 255


def test_resize_policies(tmp_path):
    wide = Image.new("RGB", (100, 50), (0, 0, 0))
    wide.paste((255, 0, 0), (0, 0, 10, 50))  # a red band at the far left
    wide.save(tmp_path / "wide.png")
    crop = decode_image(tmp_path / "wide.png", ResizePolicy(20, "crop", crop_fraction=1.0))
    pad = decode_image(tmp_path / "wide.png", ResizePolicy(20, "pad"))
    stretch = decode_image(tmp_path / "wide.png", ResizePolicy(20, "stretch"))
    assert crop[..., 0].max() < 30, "the centre crop cuts the band off"
    assert pad[0, 10].tolist() == [255, 255, 255] and pad[10, 0, 0] > 200, "pad keeps it, with white bars"
    assert stretch[:, 0, 0].min() > 200 and stretch[:, -1, 0].max() < 30


def test_jpeg_draft_decoding_matches_full_decoding(tmp_path):
    big = gradient(2000, 1500).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(2))
    big.save(tmp_path / "big.jpg", quality=95)
    policy = ResizePolicy(224)
    fast = decode_image(tmp_path / "big.jpg", policy).astype(float)
    with Image.open(tmp_path / "big.jpg") as im:
        full = policy.apply(im.convert("RGB")).astype(float)
    assert np.abs(fast - full).mean() < 2.0


def _bad_files(folder):
    good = io.BytesIO()
    gradient(200, 200).save(good, "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    (folder / "text.png").write_text("this is not an image")
    gradient(300, 300).save(folder / "bomb.png")
    os.symlink(folder / "does-not-exist.jpg", folder / "dangling.jpg")


@pytest.mark.parametrize("name,reason", [
    ("empty.jpg", "not an image"),
    ("truncated.jpg", "cannot decode"),
    ("text.png", "not an image"),
    ("bomb.png", "decompression bomb"),
    ("dangling.jpg", "unreadable"),
])
def test_bad_files_raise_with_a_reason(tmp_path, name, reason):
    _bad_files(tmp_path)
    with pytest.raises(DecodeError, match=reason):
        decode_image(tmp_path / name, ResizePolicy(32, max_pixels=50_000))


def test_pillow_decompression_bomb_error_is_a_reason(tmp_path, monkeypatch):
    gradient(300, 300).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(tmp_path / "bomb.png", ResizePolicy(32))


def test_unreadable_file(tmp_path, monkeypatch):
    gradient().save(tmp_path / "locked.png")

    def denied(path, *args, **kwargs):  # what open() raises on a file without read permission
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(DecodeError, match="Permission denied"):
        decode_image(tmp_path / "locked.png", POLICY)


def test_discover_class_folders_ignores_junk(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls / "nested").mkdir(parents=True)
        gradient().save(tmp_path / cls / "a.jpg")
        gradient().save(tmp_path / cls / "nested" / "b.png")
        (tmp_path / cls / ".DS_Store").write_bytes(b"\0")
        (tmp_path / cls / "Thumbs.db").write_bytes(b"\0")
        (tmp_path / cls / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    gradient().save(tmp_path / ".hidden" / "c.png")
    (tmp_path / "empty_class").mkdir()
    gradient().save(tmp_path / "loose.png")
    ds = discover(tmp_path)
    assert ds.paths == ["cat/a.jpg", "cat/nested/b.png", "dog/a.jpg", "dog/nested/b.png"]
    assert ds.labels == ["cat", "cat", "dog", "dog"]
    assert ds.class_names == ["cat", "dog", "empty_class"]
    assert ds.skipped == [("loose.png", "not inside a class folder")]
    assert ds.ignored == 6


def test_discover_unlabelled(tmp_path):
    gradient().save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    gradient().save(tmp_path / "sub" / "b.png")
    assert discover(tmp_path / "sub").labels is None
    forced = discover(tmp_path, unlabelled=True)
    assert forced.labels is None and forced.paths == ["a.png", "sub/b.png"]


def test_discover_manifest(tmp_path):
    gradient().save(tmp_path / "a.png")
    gradient().save(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nb.png,dog\nmissing.png,dog\n")
    ds = discover(tmp_path / "m.csv")
    assert ds.paths == ["a.png", "b.png"] and ds.labels == ["cat", "dog"]
    assert ds.skipped == [("missing.png", "file not found")]
    (tmp_path / "grouped.csv").write_text("path,label,group\na.png,cat,p1\nb.png,dog,\n")
    assert discover(tmp_path / "grouped.csv").groups == ["p1", ""]
    assert ds.groups is None
    (tmp_path / "unlabelled.csv").write_text("path\na.png\n")
    assert discover(tmp_path / "unlabelled.csv").labels is None
    (tmp_path / "bad.csv").write_text("path,label\na.png,\n")
    with pytest.raises(UserError, match="empty label"):
        discover(tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(UserError, match="'path' column"):
        discover(tmp_path / "nopath.csv")


def test_discover_missing_folder(tmp_path):
    with pytest.raises(UserError, match="neither a folder"):
        discover(tmp_path / "nope")


CORPUS = Path(__file__).parent / "corpus"


def _decodes_or_has_a_reason(path, policy) -> str:
    try:
        pixels = decode_image(path, policy)
    except DecodeError as e:
        assert str(e), path
        return "reason"
    assert pixels.shape == (policy.size, policy.size, 3) and pixels.dtype == np.uint8
    return "decoded"


def test_committed_corpus_of_mutated_files():
    """Mutated JPEG, PNG, GIF, TIFF, WebP and BMP files: every one decodes or gets a recorded reason."""
    files = sorted(CORPUS.iterdir())
    assert {f.suffix for f in files} == {".jpg", ".png", ".gif", ".tif", ".webp", ".bmp"}
    outcomes = [_decodes_or_has_a_reason(f, ResizePolicy(16)) for f in files]
    assert outcomes.count("reason") >= 6


def test_any_decoder_exception_becomes_the_files_reason(tmp_path, monkeypatch):
    """EXIF orientation 6 with a text value in an integer tag once raised struct.error out of the decoder."""
    import struct

    from PIL import ImageOps

    def broken(im):
        raise struct.error("unpack requires a buffer of 2 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(DecodeError, match="struct.error|unpack"):
        decode_image(CORPUS / "jpeg_exif_orientation_text.jpg", ResizePolicy(16))


def test_fuzzed_images_decode_or_fail_cleanly(tmp_path):
    """Thousands of byte mutations of tiny images in every format, in seconds: no exception escapes."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (12, 12, 3)).astype(np.uint8))
    originals = []
    for fmt in ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        originals.append(buffer.getvalue())
    path, policy, outcomes = tmp_path / "fuzz.img", ResizePolicy(8), []
    for i in range(3000):
        data = bytearray(originals[i % len(originals)])
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.1:
            data = data[: int(rng.integers(1, len(data)))]
        path.write_bytes(bytes(data))
        outcomes.append(_decodes_or_has_a_reason(path, policy))
    assert outcomes.count("reason") > 300 and outcomes.count("decoded") > 100


def test_fifo_or_symlink_to_one_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "pipe.jpg", tmp_path / "link.jpg")
    for name in ("pipe.jpg", "link.jpg"):
        with pytest.raises(DecodeError, match="not a regular file"):
            decode_image(tmp_path / name, POLICY)


def test_names_the_store_cannot_hold_are_refused_before_any_work(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    gradient().save(tmp_path / "data" / "a" / "fine.png")
    gradient().save(os.fsencode(tmp_path / "data" / "a") + b"/bad\xff.png")
    with pytest.raises(UserError, match="not valid UTF-8.*bad"):
        discover(tmp_path / "data")
    gradient().save(tmp_path / "x.png")
    (tmp_path / "nul.csv").write_text("path,label\nx.png,a\nx\0y.png,b\n")
    with pytest.raises(UserError, match="line 3: the path contains a NUL byte"):
        discover(tmp_path / "nul.csv")


def test_manifest_listing_a_file_twice_with_two_labels_is_refused(tmp_path):
    gradient().save(tmp_path / "x.png")
    (tmp_path / "twice.csv").write_text("path,label\nx.png,cat\nx.png,dog\n")
    with pytest.raises(UserError, match="line 3: x.png is listed again with another label"):
        discover(tmp_path / "twice.csv")
    (tmp_path / "same.csv").write_text("path,label\nx.png,cat\nx.png,cat\n")
    assert discover(tmp_path / "same.csv").paths == ["x.png"]


def test_fast_png_decoding_gives_pillows_pixels_and_outcomes(tmp_path, monkeypatch):
    """libspng is used only where its pixels equal Pillow's; every other PNG, and every bad one, fares the same."""
    from pipeline.data import decode as images

    assert images.pyspng is not None, "the fast extra is installed by make test"
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (50, 70, 4)).astype(np.uint8)
    variants = {
        "rgb": Image.fromarray(rgba[..., :3]), "rgba": Image.fromarray(rgba), "grey": Image.fromarray(rgba[..., 0]),
        "grey_alpha": Image.fromarray(rgba[..., :2]), "palette": Image.fromarray(rgba[..., :3]).quantize(16),
        "grey16": Image.fromarray(rgba[..., 0].astype(np.uint16) * 257), "bilevel": Image.fromarray(rgba[..., 0] > 99),
    }
    for name, im in variants.items():
        im.save(tmp_path / f"{name}.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "keyed.png", transparency=(1, 2, 3))
    turned = Image.fromarray(rgba[..., :3])
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "turned.png", exif=exif)
    files = sorted(tmp_path.glob("*.png")) + sorted(CORPUS.glob("*.png"))
    calls = []
    real = images.pyspng.load
    monkeypatch.setattr(images.pyspng, "load", lambda *a, **k: calls.append(1) or real(*a, **k))
    for policy in (ResizePolicy(24), ResizePolicy(24, "pad")):
        fast = [_outcome(f, policy) for f in files]
        with monkeypatch.context() as m:
            m.setattr(images, "pyspng", None)
            slow = [_outcome(f, policy) for f in files]
        for f, a, b in zip(files, fast, slow):
            assert type(a) is type(b), f.name
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, f.name)
    assert len(calls) >= 2 * 3, "rgb, rgba and grey took the fast path"
    assert _outcome(tmp_path / "turned.png", ResizePolicy(24)).shape == (24, 24, 3)


def _outcome(path, policy):
    try:
        return decode_image(path, policy)
    except DecodeError as e:
        return str(e)


def test_a_linked_class_folder_is_read_like_any_other(tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    gradient().save(tmp_path / "data" / "cats" / "a.png")
    (tmp_path / "elsewhere").mkdir()
    gradient().save(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "data" / "dogs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    dataset = discover(tmp_path / "data")
    assert dataset.class_names == ["cats", "dogs"] and dataset.paths == ["cats/a.png", "dogs/b.png"]


def test_a_manifest_may_not_reach_outside_its_folder_unless_allowed(tmp_path):
    (tmp_path / "secret").mkdir()
    gradient().save(tmp_path / "secret" / "x.png")
    (tmp_path / "set").mkdir()
    gradient().save(tmp_path / "set" / "y.png")
    (tmp_path / "set" / "m.csv").write_text("path,label\ny.png,a\n../secret/x.png,b\n")
    with pytest.raises(UserError, match="line 3: ../secret/x.png lies outside the manifest's folder") as e:
        discover(tmp_path / "set" / "m.csv")
    assert e.value.remedy == "allow_outside"
    (tmp_path / "set" / "abs.csv").write_text(f"path,label\n{tmp_path / 'secret' / 'x.png'},b\n")
    with pytest.raises(UserError, match="lies outside"):
        discover(tmp_path / "set" / "abs.csv")
    assert discover(tmp_path / "set" / "m.csv", outside=True).paths == ["y.png", "../secret/x.png"]
    # one file named twice, spelt two ways, with two labels: refused, never stored twice
    (tmp_path / "set" / "twice.csv").write_text("path,label\n../secret/x.png,a\n../set/../secret/./x.png,b\n")
    with pytest.raises(UserError, match="listed again with another label"):
        discover(tmp_path / "set" / "twice.csv", outside=True)
