"""Synthetic stand-ins for the shared test data, so a fresh clone tests the
whole pipeline without ``../shared``.

:func:`make_standin` lays out a folder like ``shared/data``::

    images/cub/<class>/<image>.{jpg,png}   # generated photos of varied sizes
    attribute_sets/cub.json                # an attribute set for those classes

The images are smooth colour fields with a few shapes (so crops differ from
the global view), drawn from a seeded generator: the same call gives the same
bytes. They exercise decoding, crops, encoding, scoring and writing; they say
nothing about accuracy.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["STANDIN_CLASSES", "STANDIN_SIZES", "make_image", "make_standin"]

#: Classes of the stand-in, with a few attributes each (DCLIP format).
STANDIN_CLASSES: dict[str, list[str]] = {
    "Cardinal": ["a red crest", "a black face mask", "a thick orange beak"],
    "Indigo Bunting": ["deep blue plumage", "a small conical beak"],
    "Laysan Albatross": [
        "a white head",
        "long narrow wings",
        "a hooked yellow beak",
        "dark upper wings",
    ],
    "Bobolink": ["a black belly", "a buff nape"],
    "Gray Catbird": ["slate gray feathers", "a black cap", "a rusty patch under the tail"],
    "Least Auklet": ["a tiny round body", "a stubby red bill"],
    "Brandt Cormorant": ["black glossy feathers", "a blue throat pouch", "a long hooked bill"],
    "Yellow-headed Blackbird": [
        "a bright yellow head",
        "black body feathers",
        "white wing patches",
    ],
}
#: ``(width, height)`` of the generated images: landscape, portrait, odd sizes
#: (rounding), square, and a small one.
STANDIN_SIZES: tuple[tuple[int, int], ...] = (
    (320, 240),
    (200, 300),
    (257, 193),
    (128, 128),
    (500, 418),
    (90, 60),
)


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """One RGB test image: a smooth two-colour gradient, noise and three shapes.

    Args:
        width, height: size in pixels (>= 1).
        seed: generator seed.

    Returns:
        a ``PIL.Image.Image`` in mode ``"RGB"``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x / max(width - 1, 1) * 0.6 + y / max(height - 1, 1) * 0.4)[..., None]
    arr = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (height, width, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(2, max(3, min(width, height) // 3)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
        else:
            draw.rectangle([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
    return im


def make_standin(root: str | pathlib.Path, per_class: int = 6, seed: int = 0) -> pathlib.Path:
    """Write the stand-in data under ``root`` (see the module docstring).

    Args:
        root: folder to fill (created).
        per_class: images per class (JPEG, and PNG for every third).
        seed: base seed.

    Returns:
        ``root`` as a ``pathlib.Path``.
    """
    root = pathlib.Path(root)
    k = 0
    for c in STANDIN_CLASSES:
        d = root / "images" / "cub" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = STANDIN_SIZES[k % len(STANDIN_SIZES)]
            im = make_image(w, h, seed * 1000 + k)
            stem = f"{c.replace(' ', '_')}_{i:04d}"
            if k % 3 == 2:
                im.save(d / f"{stem}.png")
            else:
                im.save(d / f"{stem}.jpg", quality=90)
            k += 1
    sets = root / "attribute_sets"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "cub.json").write_text(json.dumps(STANDIN_CLASSES, indent=1), encoding="utf-8")
    return root
