"""Generators of bad and odd image files for the robustness tests, and the
assertion every run test ends with.

Every generator writes into a directory the test owns (``tmp_path``) and
returns the path; pixels come from fixed seeds, so files are identical from
run to run. Real photos from the shared data folder are referenced in place.
"""

from __future__ import annotations

import io
import math
import os
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- pixels
def smooth(h: int, w: int) -> np.ndarray:
    """Asymmetric RGB image: every row and column differs (so a rotation or a
    flip changes the pixels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [(x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), ((x + 2 * y) * 7) % 256], axis=-1
    ).astype(np.uint8)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array_or_image, **kw) -> pathlib.Path:
    path = pathlib.Path(path)
    im = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    im.save(path, **kw)
    return path


# ------------------------------------------------------------- bad files
def missing(d) -> pathlib.Path:
    """A path to a file that does not exist."""
    return pathlib.Path(d) / "missing.jpg"


def zero_byte(d) -> pathlib.Path:
    p = pathlib.Path(d) / "empty.jpg"
    p.write_bytes(b"")
    return p


def truncated_jpeg(d) -> pathlib.Path:
    """A JPEG cut in the middle of its entropy-coded data."""
    data = _jpeg_bytes(noise(96, 128, seed=1), quality=90)
    p = pathlib.Path(d) / "truncated.jpg"
    p.write_bytes(data[: len(data) // 2])
    return p


def corrupt_jpeg(d) -> pathlib.Path:
    """A JPEG whose header is followed by random bytes."""
    data = _jpeg_bytes(noise(40, 40, seed=2))
    p = pathlib.Path(d) / "corrupt.jpg"
    p.write_bytes(data[:30] + np.random.default_rng(5).bytes(2000))
    return p


def text_as_jpeg(d) -> pathlib.Path:
    """A text file with an image extension."""
    p = pathlib.Path(d) / "notes.jpg"
    p.write_text("this is not an image\n" * 20)
    return p


def _jpeg_bytes(a, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------- odd files
def png_alpha(d) -> pathlib.Path:
    a = np.dstack([smooth(48, 64), np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)])
    return save(pathlib.Path(d) / "alpha.png", a)  # 4 channels: RGBA


def png_palette(d) -> pathlib.Path:
    idx = np.random.default_rng(7).integers(0, 4, (50, 70), dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    return save(pathlib.Path(d) / "palette.png", im, transparency=2)


def grayscale_jpeg(d) -> pathlib.Path:
    return save(pathlib.Path(d) / "gray.jpg", smooth(60, 80)[..., 0], quality=90)


def gray16_png(d) -> pathlib.Path:
    a = (np.linspace(0, 65535, 40 * 50).reshape(40, 50)).astype(np.uint16)
    p = save(pathlib.Path(d) / "gray16.png", a)  # uint16: I;16
    with Image.open(p) as im:
        assert im.mode.startswith("I"), im.mode
    return p


def cmyk_jpeg(d) -> pathlib.Path:
    return save(
        pathlib.Path(d) / "cmyk.jpg", Image.fromarray(smooth(50, 60)).convert("CMYK"), quality=95
    )


def animated_gif(d) -> pathlib.Path:
    frames = [Image.fromarray(noise(40, 56, seed=s)).convert("P") for s in range(3)]
    p = pathlib.Path(d) / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return p


def webp(d) -> pathlib.Path:
    return save(pathlib.Path(d) / "img.webp", smooth(48, 72), lossless=True)


def tiff(d) -> pathlib.Path:
    return save(pathlib.Path(d) / "img.tif", smooth(52, 44), compression="tiff_lzw")


def sized(d, w: int, h: int, ext: str = "png") -> pathlib.Path:
    return save(pathlib.Path(d) / f"size_{w}x{h}.{ext}", noise(h, w, seed=w * 7 + h))


def constant(d, colour=(90, 140, 200), w: int = 80, h: int = 60) -> pathlib.Path:
    a = np.empty((h, w, 3), np.uint8)
    a[:] = colour
    return save(pathlib.Path(d) / "constant.png", a)


def exif_rotated_jpeg(path, stored: np.ndarray, orientation: int) -> pathlib.Path:
    """A JPEG of ``stored`` pixels carrying an EXIF Orientation tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return save(path, stored, quality=95, exif=exif.tobytes())


def png_bomb(d, limit: int | None = None, aspect: int = 2) -> tuple[pathlib.Path, tuple[int, int]]:
    """A 1-bit PNG with more than twice ``limit`` pixels (PIL's
    ``MAX_IMAGE_PIXELS`` by default): plain PIL refuses it with
    ``DecompressionBombError``. Written without PIL (rows of a repeating
    stripe pattern compress to almost nothing). ``aspect`` = width / height.
    Returns ``(path, (width, height))``."""
    limit = limit or Image.MAX_IMAGE_PIXELS
    h = math.isqrt((2 * limit) // aspect) + 8
    w = aspect * h
    row_bytes = (w + 7) // 8
    stripes = [
        b"\x00" + (b"\xf0\x0f" * row_bytes)[:row_bytes],
        b"\x00" + (b"\x0f\xf0" * row_bytes)[:row_bytes],
    ]
    comp = zlib.compressobj(9)
    chunks = []
    for y in range(h):
        chunks.append(comp.compress(stripes[(y // 16) % 2]))
    chunks.append(comp.flush())
    idat = b"".join(chunks)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    p = pathlib.Path(d) / "bomb.png"
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return p, (w, h)


# ------------------------------------------------------------- datasets
def make_dataset(name: str, files, label: str | None = None, gt=None):
    """A fresh (non-persistent) dataset with one sample per file, in order.
    ``gt``: optional ground-truth labels, one per file (``ground_truth``)."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    samples = []
    for i, f in enumerate(files):
        s = fo.Sample(filepath=os.fspath(f))
        if gt is not None and gt[i] is not None:
            s["ground_truth"] = fo.Classification(label=gt[i])
        samples.append(s)
    ds.add_samples(samples)
    return ds


# ------------------------------------------------------------ assertions
def assert_every_sample_accounted(view, field: str) -> dict:
    """Every sample of ``view`` has exactly one of: a prediction in ``field``
    (a Classification with a label and finite logits and confidence), or a
    non-empty reason in ``<field>_error``. Returns ``{filepath: label or
    error}``."""
    import fiftyone as fo

    view.reload() if hasattr(view, "reload") else None
    err_field = f"{field}_error"
    schema = view.get_field_schema()
    assert field in schema, f"{field} not on the dataset"
    preds = view.values(field)
    errs = view.values(err_field) if err_field in schema else [None] * len(preds)
    paths = view.values("filepath")
    out = {}
    for path, p, e in zip(paths, preds, errs):
        has_pred = p is not None
        has_err = e is not None
        assert has_pred != has_err, (
            f"{path}: expected exactly one of a prediction or an error, got "
            f"prediction={p!r}, error={e!r}"
        )
        if has_pred:
            assert isinstance(p, fo.Classification) and p.label, (path, p)
            assert p.logits is not None and len(p.logits) >= 1, (path, p)
            assert all(v is not None and math.isfinite(v) for v in p.logits), (path, p.logits)
            assert p.confidence is not None and math.isfinite(p.confidence), (path, p)
            assert 0.0 <= p.confidence <= 1.0 + 1e-6, (path, p.confidence)
            out[path] = p.label
        else:
            assert isinstance(e, str) and e.strip(), (path, e)
            out[path] = e
    return out
