"""Evidence heatmaps of a LaZSL run: the predicted class's transport mass
accumulated over the crop boxes, written as ``fo.Heatmap`` labels
(``run_lazsl(..., heatmap=True)``, CLI ``--heatmap``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import fiftyone as fo
import numpy as np

from fiftyone_lazsl.fo.runs import output_fields

__all__ = ["HEATMAP_MAX_SIDE", "heatmap_field_name", "evidence_heatmap", "write_heatmaps"]

#: Default longest side, in cells, of the heatmaps written by :func:`write_heatmaps`.
HEATMAP_MAX_SIDE = 64


def heatmap_field_name(label_field: str) -> str:
    """The default field :func:`write_heatmaps` writes for ``label_field``."""
    return f"{label_field}_heatmap"


def evidence_heatmap(
    crop_boxes_rel: Sequence[Sequence[float]] | np.ndarray,
    crop_mass: Sequence[float] | np.ndarray,
    size: tuple[int, int] = (HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE),
) -> np.ndarray:
    """Accumulate transport mass over crop boxes into a ``[0, 1]`` map.

    Args:
        crop_boxes_rel: ``[N, 4]`` boxes ``[x, y, w, h]`` relative to the image
            (FiftyOne's ``bounding_box`` convention)
        crop_mass: ``[N]`` transport mass of the predicted class each crop carries
        size: ``(h, w)`` of the map

    Returns:
        a float32 ``[h, w]`` array: each cell is the summed mass of the boxes
        covering it, divided by the maximum (all zeros when there is no mass).
        A box covers the cells between its rounded edges, and at least one cell.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"heatmap size must be positive, got {size!r}")
    out = np.zeros((h, w), dtype=np.float64)
    boxes = np.asarray(crop_boxes_rel, dtype=np.float64).reshape(-1, 4)
    mass = np.asarray(crop_mass, dtype=np.float64).reshape(-1)
    if len(boxes) != len(mass):
        raise ValueError(f"{len(boxes)} boxes but {len(mass)} masses")
    for (x, y, bw, bh), m in zip(boxes, mass):
        if not np.isfinite(m) or m <= 0:
            continue
        x0 = min(max(int(round(x * w)), 0), w - 1)
        y0 = min(max(int(round(y * h)), 0), h - 1)
        x1 = min(max(int(round((x + bw) * w)), x0 + 1), w)
        y1 = min(max(int(round((y + bh) * h)), y0 + 1), h)
        out[y0:y1, x0:x1] += m
    peak = out.max()
    if peak > 0:
        out /= peak
    return out.astype(np.float32)


def _heatmap_size(width: int | None, height: int | None, max_side: int) -> tuple[int, int]:
    if not width or not height:
        return (max_side, max_side)
    scale = max_side / max(width, height)
    return (max(1, int(math.ceil(height * scale))), max(1, int(math.ceil(width * scale))))


def write_heatmaps(
    samples: fo.core.collections.SampleCollection,
    label_field: str,
    heatmap_field: str | None = None,
    max_side: int = HEATMAP_MAX_SIDE,
) -> str:
    """Write an ``fo.Heatmap`` of the predicted class's evidence per sample.

    Reads the crop detections ``F_crops`` (``bounding_box`` and the custom
    attribute ``mass``) and stores :func:`evidence_heatmap` of them, with the
    image's aspect ratio when ``metadata`` is set (longest side ``max_side``),
    in ``heatmap_field``; samples without crops get None. Values are written in
    one batch with ``set_values``.

    Args:
        samples: a dataset or view on which a LaZSL run wrote ``label_field``
        label_field: the run's label field ``F``
        heatmap_field (None): the field to write, default ``F_heatmap``
        max_side (64): the heatmap's longest side, in cells

    Returns:
        the name of the heatmap field
    """
    if heatmap_field is None:
        heatmap_field = heatmap_field_name(label_field)
    crops_field = output_fields(label_field)["crops"]
    if not samples.has_field(crops_field):
        raise ValueError(f"no field {crops_field!r}: was a LaZSL run written to {label_field!r}?")
    boxes, masses, widths, heights = samples.values(
        [
            f"{crops_field}.detections.bounding_box",
            f"{crops_field}.detections.mass",
            "metadata.width",
            "metadata.height",
        ]
    )
    maps = []
    for b, m, w, h in zip(boxes, masses, widths, heights):
        if not b:
            maps.append(None)
            continue
        m = [0.0 if v is None else float(v) for v in (m or [0.0] * len(b))]
        hm = evidence_heatmap(b, m, size=_heatmap_size(w, h, max_side))
        maps.append(fo.Heatmap(map=hm, range=[0.0, 1.0]))
    samples.set_values(heatmap_field, maps)
    return heatmap_field
