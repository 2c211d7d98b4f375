"""The integer resampler of the ``"device"`` crop backend against Pillow itself.

Reference: ``PIL.Image.resize`` of the installed Pillow on random RGB images of
random sizes (down- and up-scaling, strips, 1-pixel sides) for every filter
Pillow's 8-bit resampler has (BOX, BILINEAR, HAMMING, BICUBIC, LANCZOS), and
with a crop box cut first, as the visual set does; equality is exact.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_lazsl.core.resample import PILLOW_FILTERS, ViewPlan, pillow_pass_order, resample_views


@pytest.mark.parametrize("resample", sorted(PILLOW_FILTERS))
def test_resize_equals_pillow(resample):
    rng = np.random.default_rng(resample)
    cases = [tuple(int(v) for v in rng.integers(1, 260, 4)) for _ in range(40)]
    cases += [(4000, 3, 224, 224), (1, 1, 7, 5), (300, 1, 1, 300), (2, 900, 224, 1)]
    for W, H, ow, oh in cases:
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((ow, oh), resample))
        plan = ViewPlan(
            resized=(ow, oh), resample=resample, offset=(0, 0), out_size=(ow, oh), fill=0
        )
        got = resample_views([torch.from_numpy(img)], [(0, 0, 0, W, H)], [plan])[0].numpy()
        assert np.array_equal(got, ref), (W, H, ow, oh, resample)


def test_batched_crops_equal_pillow_crop_then_resize():
    """Many crops of two images in one call: each equals ``image.crop(box).resize``."""
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (317, 451, 3), dtype=np.uint8),
        rng.integers(0, 256, (97, 63, 3), dtype=np.uint8),
    ]
    views, plans, refs = [], [], []
    for _ in range(60):
        b = int(rng.integers(0, 2))
        H, W = images[b].shape[:2]
        w, h = int(rng.integers(1, W + 1)), int(rng.integers(1, H + 1))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        crop = Image.fromarray(images[b]).crop((x, y, x + w, y + h))
        refs.append(np.asarray(crop.resize((40, 40), Image.Resampling.BICUBIC)))
        views.append((b, x, y, w, h))
        plans.append(
            ViewPlan(resized=(40, 40), resample=3, offset=(0, 0), out_size=(40, 40), fill=0)
        )
    got = resample_views([torch.from_numpy(i) for i in images], views, plans, max_elements=1 << 16)
    for v in range(len(views)):
        assert np.array_equal(got[v].numpy(), refs[v]), views[v]


def test_center_crop_and_pad_follow_the_plan():
    """Output pixel (i, j) is resized pixel (j + left, i + top); outside it, the fill."""
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    full = np.asarray(Image.fromarray(img).resize((60, 30), Image.Resampling.BILINEAR))
    plan = ViewPlan(resized=(60, 30), resample=2, offset=(5, -4), out_size=(40, 40), fill=77)
    got = resample_views([torch.from_numpy(img)], [(0, 0, 0, 80, 50)], [plan])[0].numpy()
    ref = np.full((40, 40, 3), 77, np.uint8)
    ref[4:34, :, :] = full[:, 5:45]
    assert np.array_equal(got, ref)


def test_pass_order_of_the_installed_pillow_is_recognised():
    assert pillow_pass_order() in ("pillow13", "horizontal")
