"""The visual set: the global view plus N seeded random square crops.

Crop sampling follows LaZSL (paper Sec. 3.1; official ``random_crop`` with
``alpha_crop=0.6``): each crop is square with side ``U(alpha, beta) * min(H, W)``
(``(alpha, beta) = (0.6, 0.9)``) at a uniform integer position inside the
image. Boxes are drawn on the CPU from a generator seeded by the user seed and
a stable sample key, so a sample gets the same crops whatever the batch size,
order or device.

Cropping and resizing are tensor operations on the model's device
(``torchvision.ops.roi_align`` with adaptive sampling, an antialiased bilinear
resample), followed by the model's normalisation. The global view follows the
model's own preprocessing (open_clip ``resize_mode``: resize the shortest side
and centre-crop, resize the longest side and pad, or squash).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["crop_seed", "sample_crop_boxes", "relative_boxes", "make_views", "global_view"]


def crop_seed(seed: int, key: str) -> int:
    """64-bit generator seed from a user seed and a sample key (SHA-256 based,
    independent of Python's hash randomisation)."""
    h = hashlib.sha256(f"lazsl-crops:{int(seed)}:{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def sample_crop_boxes(width: int, height: int, n: int, *, scale: tuple[float, float] = (0.6, 0.9),
                      seed: int = 0, key: str = "") -> np.ndarray:
    """Draw ``n`` square crop boxes for an image of ``width x height`` pixels.

    Args:
        width, height: image size in pixels (>= 1).
        n: number of crops.
        scale: ``(alpha, beta)``; side = ``floor(U(alpha, beta) * min(H, W))``, at least 1.
        seed: user seed.
        key: stable sample key (e.g. the FiftyOne sample id or file path).

    Returns:
        ``[n, 4]`` int64 boxes ``(x, y, w, h)`` in pixels, ``w == h``, inside the image.

    Raises:
        ValueError: for a bad size or scale.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    a, b = float(scale[0]), float(scale[1])
    if not (0 < a <= b <= 1):
        raise ValueError(f"crop scale must satisfy 0 < alpha <= beta <= 1, got {scale}")
    rng = np.random.Generator(np.random.PCG64(crop_seed(seed, key)))
    short = min(width, height)
    u = rng.uniform(a, b, size=n)
    side = np.clip(np.floor(u * short).astype(np.int64), 1, short)
    x = rng.integers(0, width - side + 1)
    y = rng.integers(0, height - side + 1)
    return np.stack([x, y, side, side], axis=1).astype(np.int64)


def relative_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel ``(x, y, w, h)`` boxes -> relative ``[x, y, w, h]`` in ``[0, 1]``
    (FiftyOne's ``bounding_box`` convention). Returns float64 ``[n, 4]``."""
    scale = np.array([width, height, width, height], dtype=np.float64)
    return boxes.astype(np.float64) / scale


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def global_view(image: torch.Tensor, size: int, *, resize_mode: str = "shortest",
                interpolation: str = "bicubic", fill: float = 0.0) -> torch.Tensor:
    """The model's own preprocessing of the whole image, before normalisation.

    Args:
        image: ``[3, H, W]`` float (0..255) on any device.
        size: model input side.
        resize_mode: open_clip's ``"shortest"`` (resize shortest side, centre
            crop), ``"longest"`` (resize longest side, pad) or ``"squash"``.

    Returns:
        ``[3, size, size]`` float (0..255).
    """
    _, H, W = image.shape
    mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    kw = {"align_corners": False, "antialias": True} if mode != "nearest" else {}
    x = image.unsqueeze(0)
    if resize_mode == "squash":
        out = F.interpolate(x, size=(size, size), mode=mode, **kw)
    elif resize_mode == "longest":
        s = size / max(H, W)
        nh, nw = max(1, round(H * s)), max(1, round(W * s))
        y = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
        out = torch.full((1, 3, size, size), fill, dtype=x.dtype, device=x.device)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[:, :, top:top + nh, left:left + nw] = y
    else:
        s = size / min(H, W)
        nh, nw = max(size, round(H * s)), max(size, round(W * s))
        y = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        out = y[:, :, top:top + size, left:left + size]
    return out[0].clamp_(0, 255)


def make_views(image: torch.Tensor, boxes: np.ndarray, size: int, *, mean, std,
               resize_mode: str = "shortest", interpolation: str = "bicubic",
               device: torch.device | str | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Build the visual set of one image: global view then one view per crop box.

    Args:
        image: ``[3, H, W]`` uint8 (or float 0..255) RGB tensor.
        boxes: ``[N, 4]`` int pixel boxes ``(x, y, w, h)`` from :func:`sample_crop_boxes`.
        size: model input side ``S``.
        mean, std: model normalisation.
        device: where to compute (default: the image's device).
        out: optional ``[1 + N, 3, S, S]`` float32 tensor on ``device`` to write
            the views into (saves a copy when views of a batch are stacked).

    Returns:
        ``[1 + N, 3, S, S]`` float32 normalised views on ``device`` (``out`` if given).
    """
    device = torch.device(device) if device is not None else image.device
    img = image.to(device, non_blocking=True).float()
    n = len(boxes)
    if out is None:
        out = torch.empty(1 + n, 3, size, size, dtype=torch.float32, device=device)
    g = global_view(img, size, resize_mode=resize_mode, interpolation=interpolation)
    out[0] = _normalise(g.unsqueeze(0), mean, std)[0]
    if n:
        b = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=device)
        rois = torch.cat([torch.zeros(n, 1, device=device),
                          b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
        # The normalisation is affine and roi_align's bilinear weights sum to 1, so
        # it can be applied before cropping (to the smaller of image and crops).
        _, H, W = img.shape
        pre = H * W <= n * size * size
        src = _normalise(img.unsqueeze(0), mean, std) if pre else img.unsqueeze(0)
        # sampling_ratio=-1: ceil(box side / S) bilinear samples per output bin and
        # axis, averaged -- an antialiased resample of each box to S x S.
        crops = roi_align(src, rois, output_size=(size, size), spatial_scale=1.0,
                          sampling_ratio=-1, aligned=True)
        if not pre:
            crops = _normalise(crops, mean, std)
        out[1:] = crops
    return out
