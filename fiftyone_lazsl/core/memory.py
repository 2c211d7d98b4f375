"""Will one batch of visual sets fit in memory? Refuse an ``n_crops`` that cannot.

A LaZSL batch holds ``batch_size * (1 + N)`` views of ``S x S`` pixels at once
(:func:`fiftyone_lazsl.core.crops.build_views`, then one
``encode_image`` call): the uint8 views from the decoder (3 bytes per pixel),
the float32 normalised views (12 bytes per pixel) and at least as much again in
the encoder's first activations. A typo such as ``--n-crops 20000`` (for 20)
would make every sample fail with ``MemoryError`` after minutes of work;
:func:`check_visual_set_fits` refuses it before the run starts.

The memory available is the least of: the system's available memory
(``psutil.virtual_memory().available``), the cgroup limit minus usage (v2
``memory.max`` / ``memory.current``, v1 ``memory.limit_in_bytes`` /
``memory.usage_in_bytes``) and the address-space limit (``RLIMIT_AS``) minus
this process's virtual size.
"""

from __future__ import annotations

from typing import Any

from fiftyone_lazsl.core.config import CROP_METHODS
from fiftyone_lazsl.errors import ConfigError

__all__ = ["visual_set_bytes", "available_bytes", "check_visual_set_fits"]

#: Bytes per view pixel a batch needs at least: uint8 views (3), float32
#: normalised views (12) and the encoder's input activations (12).
BYTES_PER_VIEW_PIXEL = 27


def visual_set_bytes(n_views: int, image_size: int, batch_size: int) -> int:
    """Lower bound of the memory one batch of visual sets takes.

    Args:
        n_views: views per image, ``1 + N`` for LaZSL (1 for CLIP / DCLIP).
        image_size: the model's input side ``S`` in pixels.
        batch_size: images per forward pass.

    Returns:
        bytes: ``batch_size * n_views * S * S * 27``.
    """
    return int(batch_size) * int(n_views) * int(image_size) ** 2 * BYTES_PER_VIEW_PIXEL


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory this process may still allocate (see the module docstring), or
    None when nothing can be read."""
    import resource

    limits = []
    try:
        import psutil

        limits.append(int(psutil.virtual_memory().available))
        vms = int(psutil.Process().memory_info().vms)
    except Exception:  # noqa: BLE001 -- psutil missing or /proc unreadable
        vms = None
    for lim, use in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        lo, u = _read_int(lim), _read_int(use)
        if lo is not None and u is not None and lo < (1 << 60):
            limits.append(max(0, lo - u))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and vms is not None:
        limits.append(max(0, soft - vms))
    return min(limits) if limits else None


def check_visual_set_fits(classifier: Any, available: int | None = None) -> None:
    """Refuse a visual set whose batch cannot fit in the memory available.

    Args:
        classifier: a :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier`
            (its ``n_crops``, ``batch_size``, ``method`` and model input side).
        available: bytes available (default :func:`available_bytes`).

    Raises:
        ConfigError: one line naming ``n_crops`` (``--n-crops``), the estimate
            and what is available.
    """
    n_views = 1 + int(classifier.n_crops) if classifier.method in CROP_METHODS else 1
    size = int(classifier.model.image_size)
    batch = int(classifier.batch_size)
    need = visual_set_bytes(n_views, size, batch)
    if available is None:
        available = available_bytes()
    if available is None or need <= available:
        return
    raise ConfigError(
        f"n_crops (--n-crops) = {classifier.n_crops} cannot fit in memory: one batch of "
        f"{batch} image(s) x {n_views} views of {size}x{size} px needs at least "
        f"{need / 1e9:.1f} GB, about {available / 1e9:.1f} GB is available; use a smaller "
        "--n-crops (paper: 90) or --batch-size"
    )
