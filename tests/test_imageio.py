"""fiftyone_lazsl.core.imageio: every kind of input ends as RGB pixels or an
ImageLoadError naming the file. Inputs are generated with PIL into tmp_path;
real photos are read in place from the shared data folder."""

import math
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fiftyone_lazsl.core.imageio import (
    ImageLoadError,
    image_to_tensor,
    load_image,
    load_image_tensor,
    probe_image,
)
from fiftyone_lazsl.errors import UserError

RNG_SEED = 1234


def _noise(h, w, seed=RNG_SEED):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h, w):
    """Asymmetric, JPEG-friendly RGB image: every row and column differs."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [(x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), ((x + 2 * y) * 7) % 256], axis=-1
    ).astype(np.uint8)


def _pil(p, fn):
    """Apply fn to the image as plain PIL opens it (file closed afterwards)."""
    with Image.open(p) as im:
        return fn(im)


def _pil_rgb(p):
    return _pil(p, lambda im: np.asarray(im.convert("RGB")))


def _rgb(img):
    assert img.mode == "RGB"
    return np.asarray(img)


def _block_mean(a, f):
    """Box average over f x f blocks (partial blocks at the right/bottom
    border average what they have), rounded half up, as uint8."""
    h, w = a.shape[:2]
    oh, ow = math.ceil(h / f), math.ceil(w / f)
    out = np.zeros((oh, ow, a.shape[2]), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = a[i * f : (i + 1) * f, j * f : (j + 1) * f].reshape(-1, a.shape[2]).mean(0)
    return np.floor(out + 0.5).astype(np.uint8)


def _png_bytes(width, height, bit_depth, color_type, row_bytes, rows=None):
    """Minimal PNG writer (no PIL), for huge images that compress to nothing."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = rows if rows is not None else (b"\x00" + b"\x00" * row_bytes) * height
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _expect_error(path, reason_part, fn=load_image):
    with pytest.raises(ImageLoadError) as info:
        fn(path)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    assert str(err).startswith(f"cannot load image {path}: ")
    assert reason_part in err.reason, err.reason
    return err


# ---------------------------------------------------------------------------
# The error type


def test_image_load_error_message_attributes_and_pickle():
    err = ImageLoadError("/x/y.jpg", "truncated JPEG")
    assert str(err) == "cannot load image /x/y.jpg: truncated JPEG"
    assert (err.path, err.reason) == ("/x/y.jpg", "truncated JPEG")
    assert isinstance(err, UserError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ImageLoadError
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def test_public_functions_pickle_for_dataloader_workers():
    for fn in (load_image, load_image_tensor, image_to_tensor, probe_image):
        assert pickle.loads(pickle.dumps(fn)) is fn


# ---------------------------------------------------------------------------
# Bad files


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    _expect_error(p, "file not found")
    _expect_error(p, "file not found", probe_image)


def test_directory_with_image_name(tmp_path):
    p = tmp_path / "dir.jpg"
    p.mkdir()
    _expect_error(p, "is a directory")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _expect_error(p, "empty file (0 bytes)")
    _expect_error(p, "empty file (0 bytes)", probe_image)


def test_text_file_with_image_extension(tmp_path):
    for name in ("notes.jpg", "notes.png"):
        p = tmp_path / name
        p.write_text("this is not an image\n" * 20)
        _expect_error(p, "not a recognised image format")
        _expect_error(p, "not a recognised image format", probe_image)


def _save(tmp_path, name, array, **kw):
    p = tmp_path / name
    Image.fromarray(array).save(p, **kw)
    return p


@pytest.mark.parametrize(
    "name,keep,fmt",
    [
        ("cut.jpg", 0.5, "JPEG"),
        ("cut_header_only.jpg", None, "JPEG"),
        ("cut.png", 0.5, "PNG"),
        ("cut.gif", 0.6, "GIF"),
    ],
)
def test_truncated_files(tmp_path, name, keep, fmt):
    src = _save(
        tmp_path, "src" + name[-4:], _noise(64, 96), **({"quality": 90} if fmt == "JPEG" else {})
    )
    data = src.read_bytes()
    if keep is None:  # headers and start-of-scan, no entropy-coded data at all
        cut = data[: data.index(b"\xff\xda") + 14]
    else:
        cut = data[: int(len(data) * keep)]
    p = tmp_path / name
    p.write_bytes(cut)
    _expect_error(p, f"truncated {fmt} file")
    # the header is intact, so the size can still be probed
    assert probe_image(p) == (96, 64)


@pytest.mark.parametrize(
    "name,keep,fmt", [("cut.jpg", 0.5, "JPEG"), ("cut.png", 0.5, "PNG"), ("cut.gif", 0.6, "GIF")]
)
def test_truncated_files_fail_even_if_someone_set_load_truncated_images(
    tmp_path, monkeypatch, name, keep, fmt
):
    kw = {"quality": 90} if fmt == "JPEG" else {}
    src = _save(tmp_path, "src" + name[-4:], _noise(64, 96)[..., 0], **kw)
    p = tmp_path / name
    p.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    # premise: with the flag set, plain PIL silently returns a padded image
    _pil_rgb(p)
    _expect_error(p, f"truncated {fmt} file")


@pytest.mark.parametrize(
    "name,kw",
    [
        ("a.jpg", {"quality": 90}),
        ("p.jpg", {"quality": 90, "progressive": True}),
        ("a.png", {}),
        ("a.gif", {}),
        ("a.webp", {"lossless": True}),
        ("a.tif", {}),
        ("a_lzw.tif", {"compression": "tiff_lzw"}),
        ("a.bmp", {}),
    ],
)
def test_complete_files_unaffected_by_load_truncated_images(tmp_path, monkeypatch, name, kw):
    p = _save(tmp_path, name, _noise(40, 56), **kw)
    expected = _rgb(load_image(p))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    np.testing.assert_array_equal(_rgb(load_image(p)), expected)
    np.testing.assert_array_equal(expected, _pil_rgb(p))


def test_corrupt_jpeg_header(tmp_path):
    src = _save(tmp_path, "src.jpg", _noise(40, 40))
    p = tmp_path / "bad_header.jpg"
    p.write_bytes(src.read_bytes()[:30] + np.random.default_rng(5).bytes(2000))
    _expect_error(p, "corrupt JPEG header")
    _expect_error(p, "corrupt JPEG header", probe_image)


def test_corrupt_jpeg_scan_data(tmp_path):
    data = _save(tmp_path, "src.jpg", _noise(60, 80), quality=95).read_bytes()
    sos = data.index(b"\xff\xda")
    junk = np.random.default_rng(0).bytes(len(data) - sos - 16)
    p = tmp_path / "bad_scan.jpg"
    p.write_bytes(data[: sos + 14] + junk + b"\xff\xd9")
    _expect_error(p, "corrupt JPEG data")


def test_corrupt_png_data(tmp_path):
    data = _save(tmp_path, "src.png", _noise(60, 80)).read_bytes()
    i = data.index(b"IDAT")
    p = tmp_path / "bad.png"
    p.write_bytes(data[: i + 24] + b"\x00" * 50 + data[i + 74 :])
    _expect_error(p, "corrupt PNG data")


# ---------------------------------------------------------------------------
# Pixel modes and formats


def test_normal_jpeg_equals_pil_rgb_decode(tmp_path):
    p = _save(tmp_path, "a.jpg", _smooth(45, 70), quality=90)
    img = load_image(p)
    np.testing.assert_array_equal(_rgb(img), _pil_rgb(p))
    assert img.size == (70, 45)
    assert img.info == {"lazsl_original_size": (70, 45), "lazsl_scale": 1.0}


@pytest.mark.parametrize(
    "name,kw",
    [
        ("a.png", {}),
        ("a.webp", {"lossless": True}),
        ("a.tif", {}),
        ("a_lzw.tif", {"compression": "tiff_lzw"}),
        ("a_deflate.tif", {"compression": "tiff_adobe_deflate"}),
        ("a.bmp", {}),
    ],
)
def test_lossless_rgb_formats_are_exact(tmp_path, name, kw):
    a = _noise(33, 47)
    img = load_image(_save(tmp_path, name, a, **kw))
    np.testing.assert_array_equal(_rgb(img), a)


def test_rgba_png_drops_alpha_like_open_clip(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    a[:5, :, 3] = 0  # fully transparent rows keep their stored colour
    img = load_image(_save(tmp_path, "rgba.png", a))
    np.testing.assert_array_equal(_rgb(img), a[..., :3])


def test_la_png_drops_alpha(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (9, 11, 2), dtype=np.uint8)
    img = load_image(_save(tmp_path, "la.png", a))
    np.testing.assert_array_equal(_rgb(img), np.repeat(a[..., :1], 3, axis=2))


def test_palette_png_with_transparency(tmp_path, recwarn):
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 8, 7]], dtype=np.uint8)
    idx = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 3, 3]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.ravel().tolist())
    p = tmp_path / "pal.png"
    im.save(p, transparency=bytes([255, 0, 128, 255]))
    assert _pil(p, lambda im: im.info["transparency"]) == bytes([255, 0, 128, 255])  # premise
    img = load_image(p)
    np.testing.assert_array_equal(_rgb(img), palette[idx])
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


def test_palette_png_with_single_transparent_index(tmp_path):
    palette = np.array([[10, 20, 30], [200, 100, 50]], dtype=np.uint8)
    idx = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.ravel().tolist())
    p = tmp_path / "pal1.gif"
    im.save(p, transparency=0)
    np.testing.assert_array_equal(_rgb(load_image(p)), palette[idx])


def test_grayscale_and_bilevel(tmp_path):
    g = np.random.default_rng(4).integers(0, 256, (13, 17), dtype=np.uint8)
    img = load_image(_save(tmp_path, "g.png", g))
    np.testing.assert_array_equal(_rgb(img), np.repeat(g[..., None], 3, axis=2))
    bits = g > 127
    p = tmp_path / "b.png"
    Image.fromarray(bits).save(p)
    assert _pil(p, lambda im: im.mode) == "1"  # premise
    np.testing.assert_array_equal(_rgb(load_image(p)), np.repeat(bits[..., None] * 255, 3, axis=2))


@pytest.mark.parametrize("name", ["g16.png", "g16.tif"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, name):
    v = np.array([[0, 128, 129, 257, 32768], [40000, 65278, 65279, 65534, 65535]], dtype=np.uint16)
    p = tmp_path / name
    Image.fromarray(v).save(p)
    assert _pil(p, lambda im: im.mode).startswith("I;16")  # premise
    expected = np.array([[0, 0, 1, 1, 128], [156, 254, 254, 255, 255]], dtype=np.uint8)
    assert np.array_equal(expected, np.floor(v / 257 + 0.5).astype(np.uint8))  # round(v / 257)
    np.testing.assert_array_equal(_rgb(load_image(p)), np.repeat(expected[..., None], 3, axis=2))


def test_32bit_integer_and_float_tiffs(tmp_path):
    def load(values, name):
        p = tmp_path / name
        Image.fromarray(values).save(p)
        return _rgb(load_image(p))[..., 0]

    small = np.array([[0, 7, 255]], dtype=np.int32)
    np.testing.assert_array_equal(load(small, "i8.tif"), [[0, 7, 255]])
    wide = np.array([[0, 257, 65535]], dtype=np.int32)
    np.testing.assert_array_equal(load(wide, "i16.tif"), [[0, 1, 255]])
    signed = np.array([[-1000, 0, 1000]], dtype=np.int32)  # min..max stretched
    np.testing.assert_array_equal(load(signed, "i32.tif"), [[0, 128, 255]])
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(load(unit, "f.tif"), [[0, 128, 255]])


def test_cmyk_jpeg_colours(tmp_path):
    cols = [
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (255, 255, 255),
        (0, 0, 0),
        (40, 120, 200),
        (200, 90, 30),
    ]
    a = np.zeros((32, 32 * len(cols), 3), np.uint8)
    for i, c in enumerate(cols):
        a[:, i * 32 : (i + 1) * 32] = c
    a[24:] = _smooth(8, a.shape[1])
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(a).convert("CMYK").save(p, quality=95)
    assert _pil(p, lambda im: im.mode) == "CMYK"  # premise
    out = _rgb(load_image(p)).astype(int)
    for i, c in enumerate(cols):
        assert np.abs(out[12, i * 32 + 16] - c).max() <= 3, (c, out[12, i * 32 + 16])
    assert np.abs(out - a).mean() < 2.0


def test_animated_gif_and_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 6), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    for name, kw in [("anim.gif", {}), ("anim.webp", {"lossless": True})]:
        p = tmp_path / name
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)
        assert _pil(p, lambda im: im.n_frames) == 3  # premise
        out = _rgb(load_image(p))
        assert out.shape == (6, 10, 3)
        assert (out == [255, 0, 0]).all()


def test_multipage_tiff_first_page(tmp_path):
    a, b = _noise(8, 9, seed=1), _noise(8, 9, seed=2)
    p = tmp_path / "pages.tif"
    Image.fromarray(a).save(p, save_all=True, append_images=[Image.fromarray(b)])
    np.testing.assert_array_equal(_rgb(load_image(p)), a)


def test_mpo_camera_file_loads_first_picture(tmp_path):
    first, second = _smooth(30, 40), _noise(30, 40)
    p = tmp_path / "camera.jpg"
    Image.fromarray(first).save(
        p, "MPO", save_all=True, append_images=[Image.fromarray(second)], quality=95
    )
    assert _pil(p, lambda im: im.format) == "MPO"  # premise
    expected = _pil_rgb(p)
    np.testing.assert_array_equal(_rgb(load_image(p)), expected)


@pytest.mark.parametrize("w,h", [(1, 1), (8, 8), (4000, 20), (20, 4000)])
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_tiny_and_extreme_aspect(tmp_path, w, h, ext):
    a = _smooth(h, w)
    p = _save(tmp_path, f"x.{ext}", a)
    img = load_image(p)
    assert img.size == (w, h) and probe_image(p) == (w, h)
    if ext == "png":
        np.testing.assert_array_equal(_rgb(img), a)
    else:
        np.testing.assert_array_equal(_rgb(img), _pil_rgb(p))


# ---------------------------------------------------------------------------
# Orientation

_NUMPY_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise to display
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # rotate 90 degrees counter-clockwise
}


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(tmp_path, orientation):
    a = _smooth(30, 50)
    p = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(a).save(p, quality=95, exif=_exif(orientation))
    stored = _pil_rgb(p)  # pixels as stored, unrotated
    expected = _NUMPY_ORIENT[orientation](stored)
    img = load_image(p)
    np.testing.assert_array_equal(_rgb(img), expected)
    displayed = (30, 50) if orientation >= 5 else (50, 30)
    assert probe_image(p) == displayed == img.size
    assert img.info["lazsl_original_size"] == displayed


@pytest.mark.parametrize(
    "name,kw",
    [
        ("o.png", {}),
        ("o.webp", {"lossless": True}),
        ("o.tif", {}),
    ],
)
def test_exif_orientation_other_formats(tmp_path, name, kw):
    a = _noise(10, 16)
    p = tmp_path / name
    if name.endswith(".tif"):
        Image.fromarray(a).save(p, tiffinfo={0x0112: 6})
    else:
        Image.fromarray(a).save(p, exif=_exif(6), **kw)
    np.testing.assert_array_equal(_rgb(load_image(p)), np.rot90(a, -1))
    assert probe_image(p) == (10, 16)


def test_png_exif_chunk_after_pixel_data(tmp_path):
    a = _noise(10, 16)
    src = tmp_path / "src.png"
    Image.fromarray(a).save(src, exif=_exif(8))
    data = src.read_bytes()
    i = data.index(b"eXIf") - 4
    n = struct.unpack(">I", data[i : i + 4])[0]
    chunk, rest = data[i : i + 12 + n], data[:i] + data[i + 12 + n :]
    iend = rest.index(b"IEND") - 4
    p = tmp_path / "late_exif.png"
    p.write_bytes(rest[:iend] + chunk + rest[iend:])
    assert "exif" not in _pil(p, lambda im: im.info)  # premise: not seen before decoding
    img = load_image(p)
    np.testing.assert_array_equal(_rgb(img), np.rot90(a, 1))
    assert img.info["lazsl_original_size"] == (10, 16)


# ---------------------------------------------------------------------------
# Size limits and decompression bombs


def test_max_pixels_shrinks_by_smallest_integer_factor(tmp_path):
    a = _noise(80, 100)
    p = _save(tmp_path, "a.png", a)
    img = load_image(p, max_pixels=1000)
    # f=2 gives 50x40=2000 > 1000; f=3 gives 34x27=918
    assert img.size == (34, 27)
    assert img.info == {"lazsl_original_size": (100, 80), "lazsl_scale": 1 / 3}
    diff = np.abs(_rgb(img).astype(int) - _block_mean(a, 3))
    assert diff.max() <= 1
    assert load_image(p, max_pixels=8000).size == (100, 80)  # exactly fits: untouched


def test_max_pixels_with_rotation_reports_displayed_sizes(tmp_path):
    a = _noise(80, 100)
    p = tmp_path / "r.png"
    Image.fromarray(a).save(p, exif=_exif(6))
    img = load_image(p, max_pixels=2000)
    assert img.size == (40, 50)
    assert img.info["lazsl_original_size"] == (80, 100)
    assert img.info["lazsl_scale"] == 0.5
    diff = np.abs(_rgb(img).astype(int) - np.rot90(_block_mean(a, 2), -1))
    assert diff.max() <= 1


def test_invalid_max_pixels(tmp_path):
    p = _save(tmp_path, "a.png", _noise(4, 4))
    with pytest.raises(ValueError):
        load_image(p, max_pixels=0)
    with pytest.raises(TypeError):
        load_image(p, max_pixels="100")


def test_png_above_twice_pil_default_limit_is_downscaled(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    w = h = math.isqrt(2 * limit) + 10  # just above PIL's hard limit
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_bytes(w, h, 1, 0, (w + 7) // 8))  # 1-bit, all black: ~22 kB
    with pytest.raises(Image.DecompressionBombError):  # premise
        _pil(p, lambda im: None)
    assert probe_image(p) == (w, h)
    img = load_image(p)
    assert img.size == (math.ceil(w / 2), math.ceil(h / 2))
    assert img.size[0] * img.size[1] <= limit
    assert img.info == {"lazsl_original_size": (w, h), "lazsl_scale": 0.5}
    assert not _rgb(img).any()
    assert Image.MAX_IMAGE_PIXELS == limit  # global limit untouched


def test_no_bomb_warning_between_limit_and_twice_limit(tmp_path, monkeypatch, recwarn):
    a = _noise(120, 120)  # 14 400 px: PIL would warn above 10 000
    pj = _save(tmp_path, "mid.jpg", a, quality=90)
    pp = _save(tmp_path, "mid.png", a)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image(pj).size == (60, 60)
    assert load_image(pp).size == (60, 60)
    assert probe_image(pp) == (120, 120)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_palette_png_bomb_with_lowered_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    idx = np.random.default_rng(7).integers(0, 4, (150, 150), dtype=np.uint8)  # 22 500 px > 2x
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.ravel().tolist())
    p = tmp_path / "pal_bomb.png"
    im.save(p)
    with pytest.raises(Image.DecompressionBombError):  # premise
        _pil(p, lambda im: None)
    img = load_image(p)
    assert img.size == (75, 75)
    assert img.info["lazsl_scale"] == 0.5
    assert np.abs(_rgb(img).astype(int) - _block_mean(palette[idx], 2)).max() <= 1


def test_jpeg_bomb_decoded_at_reduced_dct_scale(tmp_path, monkeypatch):
    a = _smooth(300, 400)
    p = _save(tmp_path, "big.jpg", a, quality=95)
    full = _pil_rgb(p).astype(int)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 120 000 px > 2x
    with pytest.raises(Image.DecompressionBombError):  # premise
        _pil(p, lambda im: None)
    img = load_image(p)
    # f=4 is the smallest integer factor within 10 000 px: draft decodes at 1/4
    assert img.size == (100, 75)
    assert img.info == {"lazsl_original_size": (400, 300), "lazsl_scale": 0.25}
    assert np.abs(_rgb(img).astype(int) - _block_mean(full, 4)).mean() < 2.0
    # f=3 is not a DCT scale: decode at 1/2, then box-reduce by 2 more
    monkeypatch.undo()  # (the 1/2-scale decode exceeds the tiny limit's decode budget)
    img = load_image(p, max_pixels=13_400)
    assert img.size == (100, 75) and img.info["lazsl_scale"] == 0.25
    assert np.abs(_rgb(img).astype(int) - _block_mean(full, 4)).mean() < 2.0


def test_mpo_bomb_still_downscaled(tmp_path, monkeypatch):
    p = tmp_path / "camera.jpg"
    Image.fromarray(_smooth(300, 400)).save(
        p, "MPO", save_all=True, append_images=[Image.fromarray(_noise(300, 400))]
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    img = load_image(p)
    assert img.size == (100, 75) and img.info["lazsl_scale"] == 0.25


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_tiff_between_limit_and_twice_limit_is_downscaled(tmp_path, monkeypatch):
    a = _noise(120, 120)  # 14 400 px: above 10 000, below 20 000
    p = _save(tmp_path, "mid.tif", a)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    img = load_image(p)
    assert img.size == (60, 60) and img.info["lazsl_scale"] == 0.5
    assert np.abs(_rgb(img).astype(int) - _block_mean(a, 2)).max() <= 1


def test_tiff_above_twice_limit_is_an_error(tmp_path, monkeypatch):
    p = _save(tmp_path, "huge.tif", _noise(150, 150))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    _expect_error(p, "too large to decode safely")


def test_rgba_png_beyond_decode_budget_is_an_error(tmp_path, monkeypatch):
    a = np.random.default_rng(8).integers(0, 256, (150, 150, 4), dtype=np.uint8)
    p = _save(tmp_path, "rgba_bomb.png", a)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    # 22 500 px * 4 bytes > 8 * 10 000 bytes of budget
    _expect_error(p, "too large to decode safely")
    assert probe_image(p) == (150, 150)


# ---------------------------------------------------------------------------
# Tensors


def test_image_to_tensor(tmp_path):
    a = _noise(5, 7)
    img = Image.fromarray(a)
    t = image_to_tensor(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.uint8 and t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), a.transpose(2, 0, 1))
    t[0, 0, 0] = 255 - int(a[0, 0, 0])  # owns its memory
    assert np.asarray(img)[0, 0, 0] == a[0, 0, 0]
    with pytest.raises(ValueError):
        image_to_tensor(Image.new("L", (2, 2)))
    t1 = image_to_tensor(Image.new("RGB", (1, 1), (1, 2, 3)))
    assert t1.shape == (3, 1, 1) and t1.flatten().tolist() == [1, 2, 3]


def test_load_image_tensor(tmp_path):
    a = _noise(40, 60)
    p = tmp_path / "r.png"
    Image.fromarray(a).save(p, exif=_exif(8))
    t, info = load_image_tensor(p, max_pixels=600)
    assert info == {"original_size": (40, 60), "scale": 0.5}
    assert t.shape == (3, 30, 20) and t.dtype == torch.uint8 and t.is_contiguous()
    expected = np.rot90(_block_mean(a, 2), 1).transpose(2, 0, 1)
    assert np.abs(t.numpy().astype(int) - expected).max() <= 1
    with pytest.raises(ImageLoadError):
        load_image_tensor(tmp_path / "missing.png")


# ---------------------------------------------------------------------------
# Real photos


def _real_photos(shared_data):
    files = sorted(p for p in (shared_data / "images").rglob("*") if p.is_file())
    assert len(files) >= 200
    return files


def test_real_photos_load_like_pil(shared_data):
    gray = 0
    for p in _real_photos(shared_data):
        img = load_image(p)
        mode, orientation = _pil(p, lambda im: (im.mode, im.getexif().get(0x0112, 1)))
        if mode == "L":
            gray += 1
        expected = _pil_rgb(p)
        expected = _NUMPY_ORIENT.get(orientation, _NUMPY_ORIENT[1])(expected)
        assert img.mode == "RGB" and img.size == probe_image(p), p
        np.testing.assert_array_equal(np.asarray(img), expected, err_msg=str(p))
    assert gray >= 1  # the data README promises some grayscale JPEGs


def test_real_grayscale_jpegs_become_three_equal_channels(shared_data):
    grays = [p for p in _real_photos(shared_data) if _pil(p, lambda im: im.mode) == "L"]
    assert grays
    for p in grays:
        t, info = load_image_tensor(p)
        w, h = _pil(p, lambda im: im.size)
        assert t.shape == (3, h, w) and info == {"original_size": (w, h), "scale": 1.0}
        assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
        np.testing.assert_array_equal(t[0].numpy(), _pil(p, np.asarray))
