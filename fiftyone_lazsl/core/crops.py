"""The visual set: the global view plus N seeded random square crops.

Crop sampling follows LaZSL (paper Sec. 3.1; official ``random_crop`` with
``alpha_crop=0.6``): each crop is square with side ``U(alpha, beta) * min(H, W)``
(``(alpha, beta) = (0.6, 0.9)``) at a uniform integer position inside the
image. Boxes are drawn on the CPU from a generator seeded by the user seed and
a stable sample key, so a sample gets the same crops whatever the batch size,
order or device.

How the views are made (``crop_backend``):

* the **global view** is always the model's own evaluation preprocessing,
  ``open_clip.image_transform_v2(preprocess_cfg, is_train=False)`` (the
  ``preprocess`` of ``open_clip.create_model_and_transforms``: torchvision
  ``Resize`` of the PIL image with its size rule and PIL's antialiased
  bicubic/bilinear filter, ``CenterCrop`` / ``CenterCropOrPad`` for every
  open_clip ``resize_mode``, RGB conversion, ``ToTensor``, ``Normalize``);
* ``"pil"`` (default, the official construction): each square box is cut from
  the decoded PIL image (``image.crop(box)``) and sent through the same
  preprocessing. ``views[1 + i] == preprocess(image.crop(box_i))``, exactly
  (bit for bit on the CPU);
* ``"device"`` (default on CUDA): the decode workers only decode; the global
  view and every crop are cut and resampled on the model's device by
  :mod:`fiftyone_lazsl.core.resample`, which reproduces Pillow's integer
  resampling and the preprocessing's crop / pad: the same bytes as ``"pil"``
  (``views[1 + i] == preprocess(image.crop(box_i))``), for a batch at once;
* ``"tensor"`` (opt-in, approximate): the crops are resampled on the
  model's device with ``torchvision.ops.roi_align`` (averaged bilinear
  samples, an antialiased resample) followed by the normalisation. Measured
  against the official construction on real photos (ViT-B-32, 224 px): mean
  absolute difference about 0.017, maximum about 0.9 in normalised units.

The PIL part (resize, crop/pad, RGB) runs where the image is decoded (the
DataLoader workers of :mod:`fiftyone_lazsl.core.pipeline`), producing uint8
views; ``ToTensor`` + ``Normalize`` (two exact elementwise operations) are
applied to the whole batch on the model's device (:func:`normalize_views`),
which keeps inter-process and host-to-device traffic at 1 byte per value.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import Compose, Normalize, ToTensor

from fiftyone_lazsl.core.config import CROP_BACKENDS
from fiftyone_lazsl.core.resample import ViewPlan, resample_views, view_plan

if TYPE_CHECKING:
    from open_clip.transform import PreprocessCfg

__all__ = [
    "CROP_BACKENDS",
    "crop_seed",
    "sample_crop_boxes",
    "relative_boxes",
    "VisualSetSpec",
    "PreparedViews",
    "preprocess_stages",
    "pil_views",
    "normalize_views",
    "tensor_crops",
    "build_views",
    "make_views",
    "global_view",
    "to_pil",
    "device_plan",
    "SPEC_BACKENDS",
]

#: Backends a :class:`VisualSetSpec` takes (``"auto"`` is resolved by the classifier).
SPEC_BACKENDS = tuple(b for b in CROP_BACKENDS if b != "auto")


def crop_seed(seed: int, key: str) -> int:
    """64-bit generator seed from a user seed and a sample key (SHA-256 based,
    independent of Python's hash randomisation)."""
    h = hashlib.sha256(f"lazsl-crops:{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def sample_crop_boxes(
    width: int,
    height: int,
    n: int,
    *,
    scale: tuple[float, float] = (0.6, 0.9),
    seed: int = 0,
    key: str = "",
) -> np.ndarray:
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


# --------------------------------------------------------------------------
# The model's preprocessing, split into its PIL part and its tensor part


def _cfg_key(cfg: PreprocessCfg) -> tuple:
    return tuple(
        (k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(cfg).items()
    )


_STAGES: dict[tuple, tuple[Callable[[Image.Image], Image.Image], Callable | None]] = {}


def preprocess_stages(
    cfg: PreprocessCfg,
) -> tuple[Callable[[Image.Image], Image.Image], Callable | None]:
    """Split the model's evaluation transform into ``(pil_stage, full)``.

    ``open_clip.image_transform_v2(cfg, is_train=False)`` is
    ``Compose([<resize>, <crop or pad>, MaybeConvertMode(), MaybeToTensor(), Normalize(mean, std)])``
    (open_clip 3.x). ``pil_stage`` is the composition of the transforms before
    ``ToTensor`` (PIL image -> PIL image of the model's input size, mode RGB);
    the remaining ``ToTensor`` + ``Normalize(cfg.mean, cfg.std)`` is what
    :func:`normalize_views` computes, identically, for a whole batch.

    If a future open_clip builds a transform of another shape, ``full`` is the
    whole transform (not None) and callers apply it image by image instead.

    Args:
        cfg: ``open_clip.transform.PreprocessCfg``.

    Returns:
        ``(pil_stage, None)``, or ``(identity, full_transform)`` for an
        unrecognised transform.
    """
    key = _cfg_key(cfg)
    hit = _STAGES.get(key)
    if hit is not None:
        return hit
    from open_clip.transform import image_transform_v2

    full = image_transform_v2(cfg, is_train=False)
    ts = list(getattr(full, "transforms", []))
    idx = next((i for i, t in enumerate(ts) if isinstance(t, ToTensor)), None)
    ok = (
        idx is not None
        and idx == len(ts) - 2
        and isinstance(ts[-1], Normalize)
        and np.allclose(np.asarray(ts[-1].mean, np.float64), np.asarray(cfg.mean, np.float64), 0, 0)
        and np.allclose(np.asarray(ts[-1].std, np.float64), np.asarray(cfg.std, np.float64), 0, 0)
    )
    stages = (
        (Compose([_at_least_one_pixel(t) for t in ts[:idx]]), None)
        if ok
        else ((lambda im: im), full)
    )
    _STAGES[key] = stages
    return stages


_PLANS: dict[tuple, ViewPlan | None] = {}


def device_plan(cfg: PreprocessCfg, width: int, height: int) -> ViewPlan | None:
    """What the PIL part of the model's preprocessing does to a ``width x height``
    image (:func:`fiftyone_lazsl.core.resample.view_plan`), cached; None when
    the ``"device"`` backend cannot reproduce it (PIL is used instead)."""
    key = (_cfg_key(cfg), int(width), int(height))
    if key not in _PLANS:
        stage, full = preprocess_stages(cfg)
        plan = (
            None
            if full is not None
            else view_plan(getattr(stage, "transforms", [None]), int(width), int(height))
        )
        if len(_PLANS) > 100_000:
            _PLANS.clear()
        _PLANS[key] = plan
    return _PLANS[key]


def _at_least_one_pixel(t: Any) -> Any:
    """open_clip's ``ResizeKeepRatio`` (``resize_mode="longest"``) rounds each
    resized side and reaches 0 for extreme strips (4000 x 20 at 48 px: 20 * 48 /
    4000 = 0.24 -> 0), where PIL raises and the model's own ``preprocess``
    fails. The copy returned here clamps each side to at least 1 pixel; every
    size that open_clip can process is unchanged, so the result is identical
    wherever the reference is defined."""
    from open_clip.transform import ResizeKeepRatio

    if type(t) is not ResizeKeepRatio:
        return t
    c = _resize_keep_ratio_min1().__new__(_resize_keep_ratio_min1())
    c.__dict__.update(t.__dict__)
    return c


_MIN1_CLASS: list = []


def _resize_keep_ratio_min1() -> type:
    if not _MIN1_CLASS:
        from open_clip.transform import ResizeKeepRatio

        class ResizeKeepRatioMin1(ResizeKeepRatio):
            """``ResizeKeepRatio`` with each output side at least 1 pixel."""

            @staticmethod
            def get_params(*args: Any, **kwargs: Any) -> list[int]:
                return [max(1, int(v)) for v in ResizeKeepRatio.get_params(*args, **kwargs)]

        _MIN1_CLASS.append(ResizeKeepRatioMin1)
    return _MIN1_CLASS[0]


def to_pil(image: torch.Tensor | Image.Image) -> Image.Image:
    """A ``[3, H, W]`` uint8 RGB tensor (or a PIL image) -> an RGB PIL image.

    Lossless for uint8; float tensors (0..255) are rounded and clamped. PIL
    images of another mode are converted with ``.convert("RGB")`` (what the
    official loader, torchvision's ``pil_loader``, does before preprocessing).
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    t = image.detach().to("cpu")
    if t.dtype != torch.uint8:
        t = t.float().round().clamp(0, 255).to(torch.uint8)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] RGB tensor, got shape {tuple(t.shape)}")
    return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy())


def pil_views(
    image: Image.Image, boxes: np.ndarray, cfg: PreprocessCfg, *, crops: bool = True
) -> np.ndarray:
    """The PIL part of the model's preprocessing for the global view and each crop.

    View 0 is ``pil_stage(image)``, view ``1 + i`` is
    ``pil_stage(image.crop((x, y, x + w, y + h)))`` for box ``i`` (the
    official construction); with ``crops=False`` only the global view is made.

    Args:
        image: RGB PIL image (decoded, displayed orientation).
        boxes: ``[N, 4]`` int pixel boxes ``(x, y, w, h)`` inside the image.
        cfg: ``open_clip.transform.PreprocessCfg`` of the model.

    Returns:
        ``[V, S, S, 3]`` uint8 (``V = 1 + N``, or 1), channel order R, G, B;
        after :func:`normalize_views` equal to ``preprocess(view)``.
    """
    stage, full = preprocess_stages(cfg)
    if full is not None:
        raise RuntimeError(
            "unrecognised open_clip transform; use build_views (full transform path)"
        )
    image = to_pil(image)
    n = len(boxes) if crops else 0
    first = np.asarray(stage(image))
    out = np.empty((1 + n,) + first.shape, dtype=np.uint8)
    out[0] = first
    for i in range(n):
        x, y, w, h = (int(v) for v in boxes[i])
        out[1 + i] = np.asarray(stage(image.crop((x, y, x + w, y + h))))
    return out


def normalize_views(
    pixels: torch.Tensor,
    cfg: PreprocessCfg,
    *,
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ToTensor`` + ``Normalize`` of uint8 views, batched, on ``device``.

    Computes ``(x.float() / 255 - mean) / std`` with the same float32
    operations as torchvision's ``to_tensor`` (``.div(255)``) and
    ``normalize`` (``.sub_(mean).div_(std)``), so on the CPU the result equals
    ``preprocess(view)`` bit for bit.

    Args:
        pixels: ``[V, S, S, 3]`` uint8 (from :func:`pil_views`).
        cfg: ``PreprocessCfg`` (``mean``, ``std``).
        device: where to compute (default: ``pixels``' device).
        out: optional ``[V, 3, S, S]`` float32 tensor on ``device`` to write into.

    Returns:
        ``[V, 3, S, S]`` float32 (``out`` if given).
    """
    device = torch.device(device) if device is not None else pixels.device
    V, H, W, C = pixels.shape
    if out is None:
        out = torch.empty(V, C, H, W, dtype=torch.float32, device=device)
    m = torch.as_tensor(cfg.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(cfg.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # In place in ``out`` (uint8 -> float32 is exact): the same float32 operations
    # as to_tensor + normalize, without temporaries (about 3x faster on the CPU).
    out.copy_(pixels.to(device, non_blocking=True).permute(0, 3, 1, 2))
    out.div_(255).sub_(m).div_(s)
    return out


def tensor_crops(
    image: torch.Tensor,
    boxes: np.ndarray,
    size: int,
    cfg: PreprocessCfg,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Crops resampled with ``torchvision.ops.roi_align`` (the ``"tensor"`` backend).

    Each box is resampled to ``size x size`` by averaging
    ``ceil(box side / size)`` bilinear samples per output pixel and axis
    (``sampling_ratio=-1``, ``aligned=True``), then normalised. An
    approximation of ``preprocess(image.crop(box))``: it differs from PIL's
    antialiased bicubic filter by about 0.017 on average (max about 0.9) in
    normalised units on real photos.

    Args:
        image: ``[3, H, W]`` uint8 (or float 0..255) RGB tensor.
        boxes: ``[N, 4]`` int pixel boxes ``(x, y, w, h)``.
        size: output side ``S``.
        cfg: ``PreprocessCfg`` (``mean``, ``std``).
        device: where to compute (default: the image's device).

    Returns:
        ``[N, 3, S, S]`` float32 normalised crops on ``device``.
    """
    device = torch.device(device) if device is not None else image.device
    img = image.to(device, non_blocking=True).float()
    n = len(boxes)
    m = torch.as_tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.as_tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    if n == 0:
        return torch.empty(0, 3, size, size, dtype=torch.float32, device=device)
    b = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=device)
    rois = torch.cat([torch.zeros(n, 1, device=device), b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
    # The normalisation is affine and roi_align's bilinear weights sum to 1, so
    # it can be applied before cropping (to the smaller of image and crops).
    _, H, W = img.shape
    pre = H * W <= n * size * size
    src = ((img.unsqueeze(0) / 255.0 - m) / s) if pre else img.unsqueeze(0)
    crops = roi_align(
        src, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )
    return crops if pre else (crops / 255.0 - m) / s


# --------------------------------------------------------------------------
# One image's visual set, prepared on the CPU (decode workers)


@dataclass
class PreparedViews:
    """The CPU part of one image's visual set (picklable; made in decode workers).

    Attributes:
        pixels: ``[V, S, S, 3]`` uint8 views after the PIL part of the model's
            preprocessing (``V = 1 + N`` for ``"pil"``, 1 (the global view) for
            ``"tensor"``); ``None`` when the full-transform fallback was used.
        normalized: ``[1 + N, 3, S, S]`` float32, only for the full-transform
            fallback (an unrecognised open_clip transform).
        image: ``[3, H, W]`` uint8, only for the ``"tensor"`` backend (crops
            are resampled from it on the model's device).
        boxes: ``[N, 4]`` int64 pixel boxes ``(x, y, w, h)`` in this image's grid.
        width, height: this image's size in pixels.
        key: the sample key the boxes were drawn from.
        decoded: ``[H, W, 3]`` uint8 decoded image, only for the ``"device"``
            backend (every view is resampled from it on the model's device).
    """

    pixels: torch.Tensor | None
    boxes: np.ndarray
    width: int
    height: int
    key: str = ""
    image: torch.Tensor | None = None
    normalized: torch.Tensor | None = None
    decoded: torch.Tensor | None = None


@dataclass(frozen=True)
class VisualSetSpec:
    """Everything that determines an image's visual set (picklable, for workers).

    Attributes:
        preprocess_cfg: the model's ``open_clip.transform.PreprocessCfg``.
        n_crops: crops per image ``N`` (0: global view only).
        crop_scale: ``(alpha, beta)``.
        seed: user seed (combined with each image's key).
        backend: ``"pil"``, ``"device"`` or ``"tensor"`` (:data:`SPEC_BACKENDS`).
    """

    preprocess_cfg: PreprocessCfg
    n_crops: int
    crop_scale: tuple[float, float] = (0.6, 0.9)
    seed: int = 0
    backend: str = "pil"

    def __post_init__(self) -> None:
        if self.backend not in SPEC_BACKENDS:
            raise ValueError(
                f"unknown crop_backend {self.backend!r}; expected one of {SPEC_BACKENDS}"
            )

    @property
    def size(self) -> int:
        size = self.preprocess_cfg.size
        return int(size[0]) if isinstance(size, (tuple, list)) else int(size)

    def boxes(self, width: int, height: int, key: str) -> np.ndarray:
        """``[N, 4]`` int64 pixel boxes for an image of ``width x height`` (see
        :func:`sample_crop_boxes`); ``[0, 4]`` when ``n_crops == 0``."""
        if not self.n_crops:
            return np.zeros((0, 4), np.int64)
        return sample_crop_boxes(
            width, height, self.n_crops, scale=self.crop_scale, seed=self.seed, key=key
        )

    def prepare(
        self, image: Image.Image | torch.Tensor, key: str, boxes: np.ndarray | None = None
    ) -> PreparedViews:
        """The CPU part of the visual set of one decoded image.

        Args:
            image: RGB PIL image or ``[3, H, W]`` uint8 tensor (displayed orientation).
            key: stable sample key for the crop generator.
            boxes: ``[N, 4]`` pixel boxes to use instead of drawing them from ``key``.

        Returns:
            a :class:`PreparedViews`; :func:`build_views` finishes it.
        """
        pil = to_pil(image)
        W, H = pil.size
        boxes = (
            self.boxes(W, H, key) if boxes is None else np.asarray(boxes, np.int64).reshape(-1, 4)
        )
        stage, full = preprocess_stages(self.preprocess_cfg)
        if self.backend == "device" and device_plan(self.preprocess_cfg, W, H) is not None:
            # only the decoded pixels travel; every view is made on the model's device
            arr = (
                image.permute(1, 2, 0)
                if isinstance(image, torch.Tensor) and image.dtype == torch.uint8
                else torch.from_numpy(np.array(pil, dtype=np.uint8))
            )
            return PreparedViews(
                pixels=None, boxes=boxes, width=W, height=H, key=str(key), decoded=arr.contiguous()
            )
        tensor_image = None
        if self.backend == "tensor":
            tensor_image = (
                image
                if isinstance(image, torch.Tensor) and image.dtype == torch.uint8
                else torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
            )
            tensor_image = tensor_image.contiguous()
        if full is not None:  # unrecognised transform: apply it whole, view by view
            views = [full(pil)]
            if self.backend != "tensor":
                views += [
                    full(pil.crop((int(x), int(y), int(x + w), int(y + h)))) for x, y, w, h in boxes
                ]
            return PreparedViews(
                pixels=None,
                normalized=torch.stack(views),
                boxes=boxes,
                width=W,
                height=H,
                key=str(key),
                image=tensor_image,
            )
        px = pil_views(pil, boxes, self.preprocess_cfg, crops=self.backend != "tensor")
        return PreparedViews(
            pixels=torch.from_numpy(px),
            boxes=boxes,
            width=W,
            height=H,
            key=str(key),
            image=tensor_image,
        )


def build_views(
    prepared: Sequence[PreparedViews],
    spec: VisualSetSpec,
    *,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Finish the visual sets of a batch on ``device``: normalise the uint8
    views (one transfer for the batch) and, for ``"tensor"``, resample the crops.

    Args:
        prepared: ``B`` results of :meth:`VisualSetSpec.prepare`.
        spec: the same spec.
        device: the model's device.
        out: optional ``[B * (1 + N), 3, S, S]`` float32 tensor on ``device``.

    Returns:
        ``[B * (1 + N), 3, S, S]`` float32 normalised views, image by image
        (global view first), exactly what the encoder sees.
    """
    device = torch.device(device)
    V = 1 + spec.n_crops
    B = len(prepared)
    if out is None:
        H = W = spec.size
        if prepared and prepared[0].pixels is not None:
            H, W = (int(v) for v in prepared[0].pixels.shape[1:3])
        elif prepared and prepared[0].normalized is not None:
            H, W = (int(v) for v in prepared[0].normalized.shape[-2:])
        elif prepared and prepared[0].decoded is not None:
            W, H = device_plan(spec.preprocess_cfg, prepared[0].width, prepared[0].height).out_size
        out = torch.empty(B * V, 3, H, W, dtype=torch.float32, device=device)
    S = out.shape[-1]
    if spec.backend == "device" and any(p.decoded is not None for p in prepared):
        _device_views(prepared, spec, device, out)
        return out
    if all(p.pixels is not None for p in prepared) and spec.backend != "tensor":
        normalize_views(
            torch.cat([p.pixels for p in prepared]) if B > 1 else prepared[0].pixels,
            spec.preprocess_cfg,
            device=device,
            out=out,
        )
        return out
    for i, p in enumerate(prepared):
        dst = out[i * V : (i + 1) * V]
        if p.normalized is not None:
            dst[: len(p.normalized)] = p.normalized.to(device)
        else:
            normalize_views(p.pixels, spec.preprocess_cfg, device=device, out=dst[: len(p.pixels)])
        if spec.backend == "tensor" and spec.n_crops:
            dst[1:] = tensor_crops(p.image, p.boxes, S, spec.preprocess_cfg, device=device)
    return out


def _device_views(
    prepared: Sequence[PreparedViews], spec: VisualSetSpec, device: torch.device, out: torch.Tensor
) -> None:
    """The ``"device"`` backend: resample the views of every image that sent its
    decoded pixels, in one batched computation on ``device``, and normalise
    them into ``out``; images prepared by PIL (a transform the resampler does
    not recognise) are normalised as they are."""
    V = 1 + spec.n_crops
    cfg = spec.preprocess_cfg
    images, views, plans, where = [], [], [], []
    for i, p in enumerate(prepared):
        if p.decoded is None:
            continue
        b = len(images)
        images.append(p.decoded)
        views.append((b, 0, 0, p.width, p.height))
        plans.append(device_plan(cfg, p.width, p.height))
        for x, y, w, h in np.asarray(p.boxes, np.int64).tolist():
            views.append((b, x, y, w, h))
            plans.append(device_plan(cfg, w, h))
        where.append(i)
    if any(
        pl is None for pl in plans
    ):  # a crop size the resampler cannot follow: PIL for that image
        raise RuntimeError("crop_backend='device' met a view its resampler cannot reproduce")
    px = resample_views(images, views, plans, device=device)
    if len(where) == len(prepared):
        normalize_views(px, cfg, device=device, out=out)
        return
    for k, i in enumerate(where):
        normalize_views(px[k * V : (k + 1) * V], cfg, device=device, out=out[i * V : (i + 1) * V])
    for i, p in enumerate(prepared):
        if p.decoded is not None:
            continue
        dst = out[i * V : (i + 1) * V]
        if p.normalized is not None:
            dst[: len(p.normalized)] = p.normalized.to(device)
        else:
            normalize_views(p.pixels, cfg, device=device, out=dst[: len(p.pixels)])


# --------------------------------------------------------------------------
# Compatibility helpers (earlier public functions)


def _loose_cfg(
    size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    resize_mode: str | None,
    interpolation: str | None,
    fill: float = 0,
) -> PreprocessCfg:
    from open_clip.transform import PreprocessCfg

    kw = {"size": int(size), "fill_color": int(fill)}
    if mean is not None:
        kw["mean"] = tuple(mean)
    if std is not None:
        kw["std"] = tuple(std)
    if resize_mode:
        kw["resize_mode"] = resize_mode
    if interpolation:
        kw["interpolation"] = (
            interpolation if interpolation in ("bilinear", "bicubic") else "bicubic"
        )
    return PreprocessCfg(**kw)


def global_view(
    image: torch.Tensor,
    size: int,
    *,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    fill: float = 0.0,
) -> torch.Tensor:
    """The model's own preprocessing of the whole image, before normalisation.

    Deprecated: use :func:`pil_views` with the model's ``PreprocessCfg``.

    Args:
        image: ``[3, H, W]`` uint8 (or float 0..255, rounded) RGB tensor.
        size: model input side.
        resize_mode: open_clip's ``"shortest"``, ``"longest"`` or ``"squash"``.
        interpolation: ``"bicubic"`` or ``"bilinear"``.

    Returns:
        ``[3, size, size]`` float32 (0..255), on the image's device; equal to
        ``255 * ToTensor(pil_stage(image))``.
    """
    warnings.warn(
        "global_view is deprecated; use fiftyone_lazsl.core.crops.pil_views",
        DeprecationWarning,
        stacklevel=2,
    )
    cfg = _loose_cfg(size, None, None, resize_mode, interpolation, fill)
    px = pil_views(to_pil(image), np.zeros((0, 4), np.int64), cfg)
    return torch.from_numpy(px[0]).permute(2, 0, 1).float().to(image.device)


def make_views(
    image: torch.Tensor | Image.Image,
    boxes: np.ndarray,
    size: int | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize_mode: str | None = None,
    interpolation: str | None = None,
    preprocess_cfg: PreprocessCfg | None = None,
    backend: str = "pil",
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the visual set of one image: global view then one view per crop box.

    Args:
        image: ``[3, H, W]`` uint8 RGB tensor or an RGB PIL image.
        boxes: ``[N, 4]`` int pixel boxes ``(x, y, w, h)`` from :func:`sample_crop_boxes`.
        size, mean, std, resize_mode, interpolation: the model's preprocessing
            as loose values (used when ``preprocess_cfg`` is None).
        preprocess_cfg: ``open_clip.transform.PreprocessCfg`` of the model.
        backend: ``"pil"`` (exact: ``preprocess(image.crop(box))``) or
            ``"tensor"`` (``roi_align`` crops).
        device: where the result goes (default: the image's device, CPU for PIL).
        out: optional ``[1 + N, 3, S, S]`` float32 tensor on ``device``.

    Returns:
        ``[1 + N, 3, S, S]`` float32 normalised views on ``device`` (``out`` if given).
    """
    cfg = (
        preprocess_cfg
        if preprocess_cfg is not None
        else _loose_cfg(size, mean, std, resize_mode, interpolation)
    )
    if device is None:
        device = image.device if isinstance(image, torch.Tensor) else torch.device("cpu")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    spec = VisualSetSpec(cfg, len(boxes), backend=backend)
    return build_views([spec.prepare(image, "", boxes=boxes)], spec, device=device, out=out)
