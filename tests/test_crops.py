"""Seeded crop boxes and the visual set (fiftyone_lazsl.core.crops)."""

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.crops import make_views, relative_boxes, sample_crop_boxes
from fiftyone_lazsl.core.models import load_model
from fiftyone_lazsl.testing import tiny_clip
from fiftyone_lazsl.testing.tiny_clip import TINY_MODEL, some_images

tiny_clip.register()

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = [(1, 1), (8, 8), (4000, 20), (20, 4000), (2, 3), (640, 480), (333, 500), (64, 64)]


def check_boxes(boxes, W, H, n, scale=(0.6, 0.9)):
    a, b = scale
    short = min(W, H)
    assert boxes.shape == (n, 4)
    assert boxes.dtype == np.int64
    x, y, w, h = boxes.T
    assert np.all(w == h)
    assert np.all(x >= 0) and np.all(y >= 0)
    assert np.all(x + w <= W) and np.all(y + h <= H)
    assert np.all(w >= 1)
    assert np.all(w >= a * short - 1) and np.all(w <= b * short + 1)
    rel = relative_boxes(boxes, W, H)
    assert rel.shape == (n, 4)
    assert np.all(rel >= 0) and np.all(rel <= 1)
    assert np.all(rel[:, 0] + rel[:, 2] <= 1 + 1e-12) and np.all(rel[:, 1] + rel[:, 3] <= 1 + 1e-12)
    np.testing.assert_allclose(rel * [W, H, W, H], boxes, rtol=0, atol=1e-9)


@pytest.mark.parametrize("W,H", SIZES)
def test_boxes_valid(W, H):
    for seed, key in [(0, ""), (1, "a"), (7, "/data/img.jpg")]:
        boxes = sample_crop_boxes(W, H, 90, seed=seed, key=key)
        check_boxes(boxes, W, H, 90)
    boxes = sample_crop_boxes(W, H, 50, scale=(0.3, 0.5), seed=2, key="k")
    check_boxes(boxes, W, H, 50, scale=(0.3, 0.5))
    boxes = sample_crop_boxes(W, H, 20, scale=(1.0, 1.0), seed=2, key="k")
    check_boxes(boxes, W, H, 20, scale=(1.0, 1.0))
    assert np.all(boxes[:, 2] == min(W, H))


def test_deterministic_and_key_dependent():
    a = sample_crop_boxes(640, 480, 90, seed=0, key="sample-1")
    assert np.array_equal(a, sample_crop_boxes(640, 480, 90, seed=0, key="sample-1"))
    assert not np.array_equal(a, sample_crop_boxes(640, 480, 90, seed=0, key="sample-2"))
    assert not np.array_equal(a, sample_crop_boxes(640, 480, 90, seed=1, key="sample-1"))
    # boxes do not depend on global RNG state or on earlier calls with other keys
    np.random.seed(123)
    torch.manual_seed(123)
    sample_crop_boxes(640, 480, 10, seed=5, key="other")
    assert np.array_equal(a, sample_crop_boxes(640, 480, 90, seed=0, key="sample-1"))


def test_distribution_covers_range():
    """Sides are U(alpha, beta) * min(H, W) and positions uniform over the valid range."""
    W, H, n = 1000, 700, 4000
    boxes = sample_crop_boxes(W, H, n, seed=3, key="dist")
    side = boxes[:, 2]
    lo, hi = 0.6 * 700, 0.9 * 700
    assert side.min() < lo + 5 and side.max() > hi - 5
    frac = (side - lo) / (hi - lo)
    # uniform: mean 1/2, quartiles near 1/4 and 3/4 (4000 draws: s.e. ~ 0.005)
    assert abs(frac.mean() - 0.5) < 0.03
    assert abs(np.quantile(frac, 0.25) - 0.25) < 0.04 and abs(np.quantile(frac, 0.75) - 0.75) < 0.04
    # x uniform in [0, W - side]: normalised position has mean 1/2
    u = boxes[:, 0] / np.maximum(W - side, 1)
    v = boxes[:, 1] / np.maximum(H - side, 1)
    assert abs(u.mean() - 0.5) < 0.03 and abs(v.mean() - 0.5) < 0.03
    assert u.min() < 0.02 and u.max() > 0.98


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_crop_boxes(0, 10, 5)
    with pytest.raises(ValueError):
        sample_crop_boxes(10, 10, 5, scale=(0.9, 0.6))
    with pytest.raises(ValueError):
        sample_crop_boxes(10, 10, 5, scale=(0.0, 0.5))
    with pytest.raises(ValueError):
        sample_crop_boxes(10, 10, 5, scale=(0.5, 1.5))


# -------------------------------------------------------------- make_views
def test_make_views_shape_and_dtype():
    img = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8)
    boxes = sample_crop_boxes(80, 50, 6, seed=0, key="x")
    v = make_views(img, boxes, 32, mean=MEAN, std=STD)
    assert v.shape == (7, 3, 32, 32) and v.dtype == torch.float32
    assert torch.isfinite(v).all()
    v0 = make_views(img, np.zeros((0, 4), np.int64), 32, mean=MEAN, std=STD)
    assert v0.shape == (1, 3, 32, 32)
    torch.testing.assert_close(v0[0], v[0])


def _smooth_square(side):
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    return torch.stack(
        [
            127 + 100 * torch.sin(xx / 15) * torch.cos(yy / 20),
            255 * xx / side,
            255 - 200 * yy / side,
        ]
    ).clamp(0, 255)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_full_box_crop_equals_global_view(interpolation):
    side = 128
    img = _smooth_square(side).round().to(torch.uint8)
    full = np.array([[0, 0, side, side]])
    # "pil" (default): the crop of the whole square image goes through the same
    # preprocessing as the image itself -> identical views, at any output size.
    for out in (side, 64, 50):
        v = make_views(img, full, out, mean=MEAN, std=STD, interpolation=interpolation)
        assert torch.equal(v[1], v[0])
    # "tensor": same size -> both sample the pixel centres exactly -> identical.
    v = make_views(
        img, full, side, mean=MEAN, std=STD, interpolation=interpolation, backend="tensor"
    )
    torch.testing.assert_close(v[1], v[0], rtol=0, atol=1e-4)
    # 2:1 downsampling: the global view uses PIL's antialiased bicubic/bilinear kernel, the
    # roi_align crop an average of 2x2 bilinear samples. On a smooth image (period >= 90 px)
    # the kernels agree to a fraction of a grey level: 0.03 in normalised units is
    # 0.03*0.27*255 ~ 2 grey levels at most (uint8 rounding of the PIL result included).
    v = make_views(img, full, 64, mean=MEAN, std=STD, interpolation=interpolation, backend="tensor")
    d = (v[1] - v[0]).abs()
    assert d.max() < 0.03
    assert d.mean() < 0.004
    # ...and the comparison can fail: a half-image crop is very different
    for backend in ("pil", "tensor"):
        half = make_views(img, np.array([[0, 0, 64, 64]]), 64, mean=MEAN, std=STD, backend=backend)
        assert (half[1] - half[0]).abs().mean() > 0.1


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_crop_view_content(backend):
    """A crop view shows the box: an image split in a left and right colour, with a
    box fully in the left half, gives the left colour everywhere."""
    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    img[:, :, :100] = torch.tensor([250, 10, 10], dtype=torch.uint8).view(3, 1, 1)
    img[:, :, 100:] = torch.tensor([10, 10, 250], dtype=torch.uint8).view(3, 1, 1)
    v = make_views(
        img, np.array([[10, 10, 80, 80], [110, 5, 90, 90]]), 32, mean=MEAN, std=STD, backend=backend
    )
    left = (torch.tensor([250, 10, 10.0]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    right = (torch.tensor([10, 10, 250.0]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(v[1], left.view(3, 1, 1).expand(3, 32, 32), rtol=0, atol=1e-5)
    torch.testing.assert_close(v[2], right.view(3, 1, 1).expand(3, 32, 32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["pil", "tensor"])
@pytest.mark.parametrize("W,H", [(70, 40), (40, 70), (1, 1), (4000, 20), (64, 64)])
def test_constant_image(W, H, backend):
    colour = torch.tensor([200, 13, 90], dtype=torch.uint8)
    img = colour.view(3, 1, 1).expand(3, H, W).contiguous()
    expected = (colour.double() / 255 - torch.tensor(MEAN, dtype=torch.float64)) / torch.tensor(
        STD, dtype=torch.float64
    )
    boxes = sample_crop_boxes(W, H, 5, seed=1, key="c")
    for mode in ("shortest", "squash"):
        v = make_views(img, boxes, 48, mean=MEAN, std=STD, resize_mode=mode, backend=backend)
        assert v.shape == (6, 3, 48, 48)
        want = expected.float().view(1, 3, 1, 1).expand_as(v)
        torch.testing.assert_close(v, want, rtol=0, atol=1e-5)
    # "longest": pads the global view with black; the image part and the crops are the colour
    v = make_views(img, boxes, 48, mean=MEAN, std=STD, resize_mode="longest", backend=backend)
    torch.testing.assert_close(
        v[1:], expected.float().view(1, 3, 1, 1).expand(5, 3, 48, 48), rtol=0, atol=1e-5
    )
    # global view: every pixel is the colour or the black padding, and the colour fills the
    # image resized to fit (longest side 48, the other side rounded, at least one pixel:
    # open_clip's own transform fails on 4000 x 20 at 48 px, where it rounds to 0)
    black = (-torch.tensor(MEAN)) / torch.tensor(STD)
    g = v[0].permute(1, 2, 0)  # [48, 48, 3]
    is_col = (g - expected.float()).abs().max(-1).values < 1e-4
    is_black = (g - black).abs().max(-1).values < 1e-4
    assert bool((is_col | is_black).all())
    nh, nw = max(1, round(H * 48 / max(H, W))), max(1, round(W * 48 / max(H, W)))
    assert int(is_col.sum()) == nh * nw


# ------------------------------------------------ boxes through the classifier
SET = {
    "Black-footed Albatross": ["dark plumage", "a long hooked beak"],
    "Laysan Albatross": ["white head", "dark wings", "pink bill"],
    "Groove-billed Ani": ["black body"],
}


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(TINY_MODEL, None, device="cpu")


def _decode(path):
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def test_classifier_crop_boxes(tiny_model):
    clf = LaZSLClassifier(SET, tiny_model, n_crops=12, seed=4)
    a = clf.crop_boxes(500, 375, "img-1")
    assert np.array_equal(a, clf.crop_boxes(500, 375, "img-1"))
    assert np.array_equal(a, sample_crop_boxes(500, 375, 12, scale=(0.6, 0.9), seed=4, key="img-1"))
    check_boxes(a, 500, 375, 12)
    assert not np.array_equal(a, clf.crop_boxes(500, 375, "img-2"))
    other_seed = LaZSLClassifier(SET, tiny_model, n_crops=12, seed=5)
    assert not np.array_equal(a, other_seed.crop_boxes(500, 375, "img-1"))
    scaled = LaZSLClassifier(SET, tiny_model, n_crops=12, seed=4, crop_scale=(0.3, 0.4))
    check_boxes(scaled.crop_boxes(500, 375, "img-1"), 500, 375, 12, scale=(0.3, 0.4))


def test_boxes_do_not_depend_on_batch(tiny_model, photo_data):
    files = [p for p, _ in some_images(photo_data, "cub", per_class=1, max_classes=7)]
    assert len(files) == 7
    images = [_decode(p) for p in files]
    keys = [f"key-{i}" for i in range(7)]
    clf = LaZSLClassifier(SET, tiny_model, n_crops=12, seed=0, batch_size=7)
    batch = clf.predict_tensors(images, keys)
    for i in (0, 3, 6):
        alone = clf.predict_tensors([images[i]], [keys[i]])[0]
        assert np.array_equal(alone.crops.boxes, batch[i].crops.boxes)
        np.testing.assert_allclose(alone.scores, batch[i].scores, rtol=0, atol=1e-5)
        H, W = images[i].shape[-2:]
        assert np.array_equal(batch[i].crops.boxes, clf.crop_boxes(int(W), int(H), keys[i]))
        check_boxes(batch[i].crops.boxes, int(W), int(H), 12)
        np.testing.assert_allclose(
            batch[i].crops.boxes_rel, relative_boxes(batch[i].crops.boxes, int(W), int(H))
        )
    # in a different order and batch, same boxes and scores
    rev = clf.predict_tensors(images[::-1], keys[::-1])
    for i in range(7):
        assert np.array_equal(rev[6 - i].crops.boxes, batch[i].crops.boxes)
        np.testing.assert_allclose(rev[6 - i].scores, batch[i].scores, rtol=0, atol=1e-5)
    # the same image under two keys gets different crops
    two = clf.predict_tensors([images[0], images[0]], ["a", "b"])
    assert not np.array_equal(two[0].crops.boxes, two[1].crops.boxes)
