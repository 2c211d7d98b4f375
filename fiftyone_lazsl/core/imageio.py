"""Image decoding: the single place where the pipeline turns a file into pixels.

Everything here is a plain module-level function (picklable, usable inside
torch ``DataLoader`` workers) and touches no global library state: PIL's
``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are read,
never written, and no warning filters are installed (``warnings.catch_warnings``
is not thread-safe).

What :func:`load_image` returns
-------------------------------
An ``RGB`` image in the *displayed* orientation (the EXIF Orientation tag, or
an XMP ``tiff:Orientation``, applied exactly like
``PIL.ImageOps.exif_transpose``; this is what the FiftyOne App shows), with
at most ``max_pixels`` pixels. (Pillow's TIFF plugin rotates by itself while
loading and reports ``size`` already rotated; that is detected, so TIFFs are
not rotated twice.) Colour handling follows open_clip's
preprocessing, which calls ``.convert("RGB")``:

* alpha (``RGBA``, ``LA``, ``PA``) and palette/colour-key transparency are
  dropped, not composited: transparent pixels keep their stored colour;
* ``L``/``1``/``P``/``YCbCr``/``CMYK`` use PIL's conversion (CMYK JPEGs,
  including Adobe-inverted ones, decode to the colours they were made from;
  embedded ICC profiles are not applied, for CMYK or otherwise);
* 16-bit grayscale (``I;16``, ``I;16B``...) is scaled to 8 bits with
  ``round(v / 257)`` (65535 -> 255, 32768 -> 128) instead of being clipped;
  32-bit integer ``I`` images are used as they are when all values lie in
  0..255, scaled by 1/257 when they lie in 0..65535 (16-bit data that PIL
  widened), and otherwise stretched linearly from their min..max to 0..255;
  float ``F`` images map 0..1 to 0..255, keep 0..255 as they are, and are
  otherwise stretched from min..max; non-finite pixels (NaN, +-inf) take the
  low (NaN, -inf) or high (+inf) end of the finite pixels' range;
* only the first frame of animated GIF/WebP/APNG and multi-page TIFF is used.

Large images and decompression bombs
------------------------------------
PIL's ``Image.open`` warns above ``Image.MAX_IMAGE_PIXELS`` and raises
``DecompressionBombError`` above twice that. We instead open files with the
format plugins' own classes (the registry that ``Image.open`` itself walks,
``Image.ID``/``Image.OPEN``), which parse the header but skip that check, and
enforce our own limits before any pixel memory is allocated:

1. JPEGs larger than ``max_pixels`` are decoded at a reduced DCT scale
   (``Image.draft``: 1/2, 1/4 or 1/8 per side), so a huge photo never exists
   at full size in memory. JPEGs are always opened as plain JPEG, not as MPO
   (camera multi-picture files): the first picture is the same, and the MPO
   class repeats the bomb check when it opens.
2. Other formats have no reduced-scale decoder in PIL, so they are decoded at
   full size, but only if that fits the decode budget of
   ``8 * Image.MAX_IMAGE_PIXELS`` bytes (read at call time): the memory PIL
   itself accepts for a 4-byte-per-pixel image at its hard limit. A 1-bit,
   grayscale or palette PNG can therefore be up to 8x PIL's limit, an RGB or
   RGBA one (4 bytes per pixel in PIL) up to 2x. Larger files raise
   :class:`ImageLoadError`. If ``Image.MAX_IMAGE_PIXELS`` is ``None`` (the
   application disabled the limit) there is no budget and, unless
   ``max_pixels`` is given, no shrinking. Some plugins (TIFF, WebP,
   animated GIF frames) repeat PIL's check themselves when decoding; files
   they refuse are reported as :class:`ImageLoadError` too, and files between
   1x and 2x the limit may still make those plugins emit a
   ``DecompressionBombWarning`` (harmless; we cannot silence it thread-safely).
3. The decoded image is converted to RGB and shrunk in horizontal bands with
   ``Image.reduce`` (box average over ``f x f`` blocks, the smallest integer
   ``f`` that brings the size to at most ``max_pixels``), so the full-size RGB
   copy is never made either. Orientation is applied after shrinking.

The scale is recorded so boxes can be mapped back: with
``s = info["lazsl_scale"]`` (always ``1 / integer``), pixel ``x`` of the
loaded image covers original (displayed) pixels ``x / s`` to ``(x + 1) / s``;
blocks on the image border may be narrower than ``1 / s``. Relative
coordinates (FiftyOne's ``[0, 1]`` boxes) carry over up to that border
rounding.

Truncated and corrupt files
---------------------------
Every failure raises :class:`ImageLoadError` naming the file rather than
returning a partially decoded (grey) image. PIL only reports truncation while
``ImageFile.LOAD_TRUNCATED_IMAGES`` is False; in case some other code set it
to True process-wide, we also watch the file for a read that hits the end of
the file while pixel data is still being decoded, and report that as
truncation regardless of the flag. (With the flag set, PIL also stops
reporting decoder errors inside otherwise complete files; those cannot be
detected from outside.)

One case is not detectable with PIL: a JPEG whose compressed data stops
early but is still closed by an end-of-image marker (e.g. a repaired
download). libjpeg fills the missing part with grey and only emits a
warning, which PIL does not expose.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, TiffImagePlugin

from fiftyone_lazsl import env
from fiftyone_lazsl.errors import ImageLoadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageLoadError",
    "load_image",
    "image_to_tensor",
    "load_image_tensor",
    "probe_image",
]

#: Keys that :func:`load_image` sets in the returned image's ``info``.
ORIGINAL_SIZE_KEY = "lazsl_original_size"
SCALE_KEY = "lazsl_scale"

# Formats we never open: EPS needs a Ghostscript subprocess to rasterise.
_EXCLUDED_FORMATS = frozenset({"EPS"})
# Formats identified by a magic number (see _identify's error message).
_SIGNED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "TIFF", "BMP", "JPEG2000"})

# Band height for the convert-and-reduce pass is chosen so one band holds
# about this many source pixels.
_BAND_PIXELS = 1 << 22

# EXIF Orientation -> transposition, as in PIL.ImageOps.exif_transpose.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_EXIF_ORIENTATION_TAG = 0x0112


# --------------------------------------------------------------------------
# Opening


class _TrackedFile:
    """File wrapper that records whether a read hit end-of-file while armed."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.armed = False
        self.hit_eof = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if self.armed and not data and size != 0:
            self.hit_eof = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_file(path: str) -> IO[bytes]:
    """Open ``path`` for reading, only if it is a regular file.

    Opened with ``O_NONBLOCK`` first, so a FIFO, socket or device named
    ``x.jpg`` cannot block the open (a FIFO without a writer would block
    ``open`` forever); checked with ``fstat`` on the open descriptor (no race
    with a file swapped in between), then read normally.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # sockets cannot even be opened
            raise ImageLoadError(path, f"is {_file_kind(mode)}, not a regular file")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not a file") from None
    except OSError as e:
        raise ImageLoadError(path, e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageLoadError(path, f"is {_file_kind(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fp = os.fdopen(fd, "rb")
    except ImageLoadError:
        os.close(fd)
        raise
    except OSError as e:
        os.close(fd)
        raise ImageLoadError(path, e.strerror or str(e)) from None
    size = st.st_size
    if size == 0:
        fp.close()
        raise ImageLoadError(path, "empty file (0 bytes)")
    return fp


def _identify(fp: _TrackedFile, path: str) -> ImageFile.ImageFile:
    """Open ``fp`` with the first format plugin that accepts it.

    Walks PIL's plugin registry like ``Image.open`` does, but calls the
    plugin classes directly so PIL's decompression-bomb check (which
    ``Image.open`` runs after the plugin has parsed the header) is skipped;
    :func:`load_image` applies its own limits instead.
    """
    fp.seek(0)
    prefix = fp.read(16)
    tried: set[str] = set()
    failures: list[tuple[str, str]] = []
    for register in (Image.preinit, Image.init):
        register()
        for fmt in list(Image.ID):
            if fmt in tried:
                continue
            tried.add(fmt)
            if fmt in _EXCLUDED_FORMATS or fmt not in Image.OPEN:
                continue
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                verdict = accept(prefix)
                if not verdict or isinstance(verdict, str):
                    continue
            if fmt in ("JPEG", "MPO"):
                factory = JpegImagePlugin.JpegImageFile
            fp.seek(0)
            try:
                return factory(fp, "")
            except Image.DecompressionBombError as e:
                raise ImageLoadError(path, f"too large to decode safely ({e})") from None
            except Exception as e:  # SyntaxError, struct.error, OSError...: try the next format
                failures.append((fmt, str(e) or type(e).__name__))
    for fmt, message in failures:
        # Formats with a real signature: a failure there means a damaged
        # header. (Others, e.g. TGA, accept any bytes and then fail.)
        if fmt in _SIGNED_FORMATS:
            raise ImageLoadError(path, f"corrupt {fmt} header ({message})")
    raise ImageLoadError(path, "not a recognised image format")


def _orientation(im: Image.Image) -> int:
    """EXIF/XMP Orientation (1..8) of an opened image; 1 when absent or unreadable.

    Uses the base ``Image.getexif`` so that PNG's override, which decodes
    the whole image to look for an ``eXIf`` chunk after the pixel data, is
    not triggered. Call before ``load()``: TIFF reads its tags from the
    file, which ``load()`` lets go of.
    """
    try:
        value = Image.Image.getexif(im).get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF must not fail the image
        return 1
    return _orientation_value(value)


def _orientation_value(value: Any) -> int:
    """The transposition a tag value asks for, decided as
    ``PIL.ImageOps.exif_transpose`` decides it: a value *equal* to 2..8
    (``6``, ``6.0``, a rational 6/1) transposes; anything else (``"6"``,
    ``6.5``, a tuple, an unhashable value) means 1."""
    try:
        return int(value) if value in _ORIENTATION_TRANSPOSE else 1
    except (TypeError, ValueError):
        return 1


def _has_orientation_tag(im: Image.Image) -> bool:
    try:
        return _EXIF_ORIENTATION_TAG in Image.Image.getexif(im)
    except Exception:
        return False


def _stored_size(im: ImageFile.ImageFile) -> tuple[int, int]:
    """(W, H) of the pixel data as stored, before any orientation.

    Pillow's TIFF plugin reports ``size`` already in displayed orientation
    (it rotates while loading), so for TIFF the size is read from the tags.
    """
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        try:
            return int(im.tag_v2[256]), int(im.tag_v2[257])
        except (KeyError, TypeError, ValueError):
            pass
    return im.size


def _orientation_from_exif_bytes(data: bytes) -> int:
    try:
        exif = Image.Exif()
        exif.load(data)
        value = exif.get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF must not fail the image
        return 1
    return _orientation_value(value)


def _displayed(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


# --------------------------------------------------------------------------
# Size limits


def _resolve_max_pixels(max_pixels: int | None) -> int | None:
    if max_pixels is None:
        limit = Image.MAX_IMAGE_PIXELS
        return None if limit is None else int(limit)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(f"max_pixels must be an int or None, got {type(max_pixels).__name__}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return int(max_pixels)


def _decode_budget_bytes() -> int | None:
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 8 * int(limit)


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _reduction_factor(size: tuple[int, int], max_pixels: int | None) -> int:
    """Smallest integer f with ceil(W/f) * ceil(H/f) <= max_pixels."""
    w, h = size
    if max_pixels is None or w * h <= max_pixels:
        return 1
    f = max(1, math.isqrt((w * h) // max_pixels))
    while math.ceil(w / f) * math.ceil(h / f) > max_pixels:
        f += 1
    return f


# --------------------------------------------------------------------------
# Pixel conversion


def _rgb_converter(im: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function turning (bands of) ``im`` into RGB, consistently for the
    whole image (value ranges of ``I``/``F`` images are measured once)."""
    mode = im.mode
    if mode == "RGB":
        return lambda band: band
    if mode.startswith("I;16") and not mode.endswith("S"):
        return _scaled_gray(lambda a: (a.astype(np.uint32) * 255 + 32767) // 65535)
    if mode == "I" or mode.startswith("I;"):
        lo, hi = im.getextrema()
        if lo >= 0 and hi <= 255:
            return _scaled_gray(lambda a: a)
        if lo >= 0 and hi <= 65535:
            return _scaled_gray(lambda a: (a.astype(np.int64) * 255 + 32767) // 65535)
        return _scaled_gray(_stretch(lo, hi))
    if mode == "F":
        lo, hi = im.getextrema()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            # NaN / inf pixels: the range of the finite ones; NaN and -inf
            # become its low end, +inf its high end (then as below).
            a = np.asarray(im)
            finite = a[np.isfinite(a)]
            if finite.size == 0:
                raise ValueError("float image without a single finite pixel value")
            lo, hi = float(finite.min()), float(finite.max())
            fix = lambda a, lo=lo, hi=hi: np.nan_to_num(  # noqa: E731
                a.astype(np.float64), nan=lo, posinf=hi, neginf=lo
            )
        else:
            fix = lambda a: a.astype(np.float64)  # noqa: E731
        if lo >= 0 and hi <= 1:
            return _scaled_gray(lambda a: np.rint(fix(a) * 255))
        if lo >= 0 and hi <= 255:
            return _scaled_gray(lambda a: np.rint(fix(a)))
        stretch = _stretch(lo, hi)
        return _scaled_gray(lambda a: stretch(fix(a)))

    def convert(band: Image.Image) -> Image.Image:
        # Transparency is dropped by the RGB conversion anyway; removing it
        # first avoids PIL's warning for palette images with byte-string
        # transparency (identical pixels either way).
        band.info.pop("transparency", None)
        return band.convert("RGB")

    return convert


def _stretch(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    span = float(hi) - float(lo)
    if span <= 0:
        return lambda a: np.zeros(a.shape, dtype=np.uint8)
    return lambda a: np.rint((a.astype(np.float64) - float(lo)) * (255.0 / span))


def _scaled_gray(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Image.Image], Image.Image]:
    def convert(band: Image.Image) -> Image.Image:
        a = np.asarray(band)
        out = np.clip(fn(a), 0, 255).astype(np.uint8)
        return Image.fromarray(out).convert("RGB")  # 2-D uint8 -> mode L

    return convert


def _to_rgb_reduced(im: Image.Image, factor: int) -> Image.Image:
    """RGB version of ``im`` shrunk by ``factor`` (box average), in bands."""
    convert = _rgb_converter(im)
    if factor == 1:
        return convert(im)
    w, h = im.size
    out = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = max(1, _BAND_PIXELS // (w * factor)) * factor
    for y0 in range(0, h, rows):
        band = convert(im.crop((0, y0, w, min(h, y0 + rows))))
        out.paste(band.reduce(factor), (0, y0 // factor))
    return out


# --------------------------------------------------------------------------
# Public API


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file to RGB, in displayed orientation, size-limited.

    Args:
        path: image file.
        max_pixels: the returned image has at most this many pixels
            (width * height); larger images are shrunk by the smallest
            integer factor that fits (JPEGs are decoded at reduced scale).
            ``None`` means PIL's ``Image.MAX_IMAGE_PIXELS`` at call time (no
            limit if that is ``None``).

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"`` with the EXIF
        orientation applied. Its ``info`` holds only
        ``info["lazsl_original_size"]``: ``(W, H)`` ints, the full-resolution
        size in displayed orientation, and ``info["lazsl_scale"]``: float,
        ``1 / f`` for the integer shrink factor ``f`` (1.0 when not shrunk).

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated,
            corrupt, of an unsupported pixel mode, or too large to decode
            within the memory budget (see the module docstring).
        TypeError, ValueError: ``max_pixels`` is not a positive int.
    """
    path = os.fspath(path)
    limit = _resolve_max_pixels(max_pixels)
    raw = _open_file(path)
    with raw:
        fp = _TrackedFile(raw)
        im = _identify(fp, path)
        fmt = im.format or "image"
        result = None
        try:
            result = _decode(im, fp, path, fmt, limit)
            return result
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageLoadError(path, f"too large to decode safely ({e})") from None
        except MemoryError:
            raise ImageLoadError(
                path, f"out of memory decoding {im.size[0]}x{im.size[1]} {fmt}"
            ) from None
        except Exception as e:  # decoder errors come as OSError, ValueError, SyntaxError...
            text = str(e) or type(e).__name__
            if "truncated" in text.lower():
                raise ImageLoadError(path, f"truncated {fmt} file") from None
            raise ImageLoadError(path, f"corrupt {fmt} data ({text})") from None
        finally:
            if result is not im:  # the RGB fast path returns the opened image itself
                im.close()


def _decode(
    im: ImageFile.ImageFile, fp: _TrackedFile, path: str, fmt: str, limit: int | None
) -> Image.Image:
    full_size = im.size
    stored_size = _stored_size(im)
    declared = _orientation(im)  # before load: TIFF reads its EXIF from the file
    draft_factor = 1
    if isinstance(im, JpegImagePlugin.JpegImageFile):
        f0 = _reduction_factor(full_size, limit)
        if f0 > 1:
            target = (math.ceil(full_size[0] / f0), math.ceil(full_size[1] / f0))
            drafted = im.draft(im.mode, target)
            if drafted is not None:
                # box = (0, 0, W / s, H / s) for the DCT scale s in {1, 2, 4, 8}
                draft_factor = round(full_size[0] / drafted[1][2])

    budget = _decode_budget_bytes()
    w, h = im.size
    need = w * h * _bytes_per_pixel(im.mode)
    if isinstance(im, TiffImagePlugin.TiffImageFile) and declared != 1:
        need *= 2  # Pillow's TIFF plugin transposes a full-size copy itself
    if budget is not None and need > budget:
        raise ImageLoadError(
            path,
            f"too large to decode safely: {full_size[0]}x{full_size[1]} {fmt} in mode "
            f"{im.mode} needs {need / 2**20:.1f} MiB, more than the decode budget of "
            f"{budget / 2**20:.1f} MiB (8 bytes x PIL's MAX_IMAGE_PIXELS); "
            f"{fmt} cannot be decoded at reduced scale",
        )

    fp.armed = True
    im.load()
    fp.armed = False
    if fp.hit_eof and ImageFile.LOAD_TRUNCATED_IMAGES:
        # PIL was told (globally, by someone) to pad truncated files; we don't.
        raise ImageLoadError(path, f"truncated {fmt} file (end of file inside the pixel data)")

    if declared == 1 and "exif" in im.info:
        # PNG may carry its eXIf chunk after the pixel data: seen only now.
        declared = pending = _orientation_from_exif_bytes(im.info["exif"])
    else:
        # Some plugins (recent Pillow TIFF) apply the orientation while
        # loading and then delete the tag from the image's cached EXIF.
        pending = declared if _has_orientation_tag(im) else 1
    factor = _reduction_factor(im.size, limit)
    try:
        rgb = _to_rgb_reduced(im, factor)
    except ValueError as e:
        if "conversion" in str(e) or "mode" in str(e):
            raise ImageLoadError(path, f"unsupported pixel mode {im.mode!r} ({e})") from None
        raise
    method = _ORIENTATION_TRANSPOSE.get(pending)
    if method is not None:
        rgb = rgb.transpose(method)
    rgb.info = {
        ORIGINAL_SIZE_KEY: _displayed(stored_size, declared),
        SCALE_KEY: 1.0 / (draft_factor * factor),
    }
    return rgb


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert an RGB PIL image to a ``torch.uint8`` tensor.

    Args:
        img: ``PIL.Image.Image`` in mode ``"RGB"`` (e.g. from
            :func:`load_image`).

    Returns:
        Contiguous ``torch.Tensor`` of shape ``[3, H, W]``, dtype
        ``torch.uint8``, owning its memory (channel order R, G, B).

    Raises:
        ValueError: ``img`` is not in mode ``"RGB"``.
    """
    import torch

    if img.mode != "RGB":
        raise ValueError(f"image_to_tensor expects an RGB image, got mode {img.mode!r}")
    arr = np.array(img, dtype=np.uint8)  # [H, W, 3], writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


#: Seconds one image may take to read and decode (env ``FIFTYONE_LAZSL_DECODE_TIMEOUT``).
DECODE_TIMEOUT_S = 60.0


def decode_timeout() -> float:
    """The per-image read+decode deadline in seconds: ``$FIFTYONE_LAZSL_DECODE_TIMEOUT``
    or :data:`DECODE_TIMEOUT_S` (0 or a negative value disables it)."""
    return env.get("FIFTYONE_LAZSL_DECODE_TIMEOUT")


@contextlib.contextmanager
def read_deadline(path: str | os.PathLike, seconds: float | None = None) -> Iterator[None]:
    """Bound the time spent reading and decoding one image.

    A read that blocks (a hung network mount, a file that trickles in) or a
    decode that takes too long is interrupted after ``seconds`` with
    :class:`ImageLoadError` ``"reading/decoding took longer than N s"``, and the
    process can go on with the next image: decode workers unstick themselves
    instead of stalling the batch. Uses ``SIGALRM`` (``setitimer``), so it is
    active only in a process's main thread on POSIX, i.e. in ``DataLoader``
    workers and in-process decoding from the main thread; elsewhere it does
    nothing (the pipeline's ``DataLoader`` timeout is the backstop there).
    Waits the kernel does not interrupt (uninterruptible disk sleep) cannot
    be bounded from inside the process.

    Args:
        path: the image (for the message).
        seconds: the deadline; default :func:`decode_timeout`. ``<= 0``: none.
    """
    seconds = decode_timeout() if seconds is None else float(seconds)
    usable = (
        seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise ImageLoadError(
            os.fspath(path),
            f"reading/decoding took longer than {seconds:g} s (file stalled or too slow)",
        )

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_image_tensor(
    path: str | os.PathLike, max_pixels: int | None = None
) -> tuple[torch.Tensor, dict]:
    """:func:`load_image` followed by :func:`image_to_tensor`.

    Args:
        path: image file.
        max_pixels: as for :func:`load_image`.

    Returns:
        ``(tensor, info)``: ``tensor`` is ``[3, H, W]`` ``torch.uint8``
        (contiguous); ``info`` is a dict with ``"original_size"``: ``(W, H)``
        ints, full-resolution size in displayed orientation, and
        ``"scale"``: float, loaded size / original size (``1 / integer``).

    Raises:
        ImageLoadError, TypeError, ValueError: as for :func:`load_image`.
    """
    img = load_image(path, max_pixels=max_pixels)
    info = {"original_size": img.info[ORIGINAL_SIZE_KEY], "scale": img.info[SCALE_KEY]}
    return image_to_tensor(img), info


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """Width and height of an image as displayed, from its header only.

    The pixel data is not decoded (so truncated pixel data goes unnoticed
    here). EXIF orientations 5-8 swap width and height. For a PNG whose EXIF
    chunk comes after the pixel data, the orientation is not seen (the
    decoder would have to run); :func:`load_image` does see it.

    Args:
        path: image file.

    Returns:
        ``(width, height)`` ints, matching ``load_image(path).size`` when
        the image is not shrunk.

    Raises:
        ImageLoadError: the file is missing, empty, not a recognised image,
            or its header is corrupt.
    """
    path = os.fspath(path)
    raw = _open_file(path)
    with raw:
        im = _identify(_TrackedFile(raw), path)
        try:
            return _displayed(_stored_size(im), _orientation(im))
        finally:
            im.close()
