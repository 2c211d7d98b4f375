"""Robustness to bad images: ``run_lazsl`` on a real dataset whose files are bad or
odd (generated with PIL into tmp_path) mixed with real photos. Good images get
a prediction, bad ones get ``<field>_error`` naming the cause, the run goes on
and lists its failures; EXIF orientation, huge images and numerics behave."""

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import badfiles as bf
from badfiles import assert_every_sample_accounted
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()

N_CROPS = 4
ATTRS = {
    "Black-footed Albatross": ["a long hooked bill", "dark brown plumage", "long narrow wings"],
    "Bobolink": ["black underparts", "a buff nape"],
    "Brewer Blackbird": ["glossy black plumage", "a pale yellow eye", "a pointed bill"],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture(scope="module")
def classifier(checkpoint):
    from fiftyone_lazsl import LaZSLClassifier
    from fiftyone_lazsl.core.attributes import AttributeSet

    return LaZSLClassifier(
        AttributeSet.from_dict(ATTRS, name="three"),
        tiny_clip.TINY_MODEL,
        checkpoint,
        device="cpu",
        n_crops=N_CROPS,
        seed=3,
        batch_size=3,
    )


def _run(ds, classifier, **kw):
    from fiftyone_lazsl import run_lazsl

    kw.setdefault("num_workers", 0)
    return run_lazsl(ds, classifier.attribute_set, classifier=classifier, **kw)


def _expected_logits(classifier, rgb: np.ndarray, key: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    return classifier.predict_tensors([t], [key])[0].logits


def _check_boxes(sample, field, size, px_tol=1e-6):
    """Crop detections lie inside the image and are squares in displayed pixels
    (up to ``px_tol`` pixels)."""
    W, H = size
    dets = sample[field + "_crops"].detections
    assert 1 <= len(dets) <= N_CROPS
    for d in dets:
        x, y, w, h = d.bounding_box
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
        assert w * W == pytest.approx(h * H, abs=px_tol)
    return dets


def test_bad_and_odd_files_with_real_photos(tmp_path, shared_data, classifier):
    real = [p for p, _ in tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)]
    # real unusual JPEGs: grayscale ImageNet photos, CUB photos with EXIF Orientation 0
    real += [
        str(shared_data / "images/imagenet/washing machine/n04554684_washer.JPEG"),
        str(
            shared_data
            / "images/cub/Bobolink"
            / sorted(os.listdir(shared_data / "images/cub/Bobolink"))[0]
        ),
        str(shared_data / "images/cub/Red-winged Blackbird/Red_Winged_Blackbird_0010_6386.jpg"),
    ]
    d = tmp_path
    bad = {
        bf.missing(d): "file not found",
        bf.zero_byte(d): "empty file (0 bytes)",
        bf.truncated_jpeg(d): "truncated JPEG file",
        bf.corrupt_jpeg(d): "corrupt JPEG header",
        bf.text_as_jpeg(d): "not a recognised image format",
    }
    (d / "folder.jpg").mkdir()
    bad[d / "folder.jpg"] = "is a directory"
    # expected decoded pixels, computed with plain PIL / numpy (not our decoder)
    odd = {
        bf.png_alpha(d): lambda p: np.asarray(Image.open(p).convert("RGB")),
        bf.png_palette(d): lambda p: np.asarray(Image.open(p).convert("RGBA"))[..., :3],
        bf.grayscale_jpeg(d): lambda p: np.asarray(Image.open(p).convert("RGB")),
        bf.gray16_png(d): lambda p: np.repeat(
            ((np.asarray(Image.open(p)).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)[
                ..., None
            ],
            3,
            axis=2,
        ),
        bf.cmyk_jpeg(d): lambda p: np.asarray(Image.open(p).convert("RGB")),
        bf.animated_gif(d): lambda p: np.asarray(Image.open(p).convert("RGB")),  # first frame
        bf.webp(d): lambda p: np.asarray(Image.open(p).convert("RGB")),
        bf.tiff(d): lambda p: np.asarray(Image.open(p).convert("RGB")),
        bf.sized(d, 1, 1): None,
        bf.sized(d, 8, 8): None,
        bf.sized(d, 40, 30): None,  # smaller than the model input (64 px)
        bf.sized(d, 4000, 20): None,
        bf.sized(d, 20, 4000, "jpg"): None,
    }
    files = [str(p) for p in real] + [str(p) for p in bad] + [str(p) for p in odd]
    files = files[::2] + files[1::2]  # mix good and bad files within batches
    ds = bf.make_dataset("robust-images", files)

    summary = _run(ds, classifier, label_field="lazsl", batch_size=3, write_every=4)

    n_bad = len(bad)
    assert summary.num_samples == len(files)
    assert summary.num_predicted == len(files) - n_bad
    assert summary.num_failed == n_bad
    assert "failed" in str(summary)
    failed = {path: reason for _, path, reason in summary.failures}
    assert set(failed) == {str(p) for p in bad}
    for p, cause in bad.items():
        assert cause in failed[str(p)], failed[str(p)]
        assert str(p) in failed[str(p)]  # the reason names the file

    outcome = assert_every_sample_accounted(ds, "lazsl")
    by_path = {s.filepath: s for s in ds}
    for p, cause in bad.items():
        s = by_path[str(p)]
        assert cause in s.lazsl_error and outcome[str(p)] == s.lazsl_error
        assert s.lazsl is None and s.lazsl_crops is None and s.lazsl_attributes is None
    for p in list(real) + list(odd):
        s = by_path[str(p)]
        assert s.lazsl_error is None
        assert s.lazsl.label in ATTRS
        assert s.lazsl_attributes and set(s.lazsl_attributes) <= set(ATTRS[s.lazsl.label])
        size = ImageOps.exif_transpose(Image.open(p)).size
        _check_boxes(s, "lazsl", size)
    # odd formats were classified from the right pixels
    for p, pixels in odd.items():
        if pixels is None:
            continue
        expected = _expected_logits(classifier, pixels(p), str(p))
        np.testing.assert_allclose(by_path[str(p)].lazsl.logits, expected, rtol=1e-5, atol=1e-5)
    # a 1x1 image has exactly one possible crop: the whole image
    one = by_path[str(tmp_path / "size_1x1.png")]
    assert [d.bounding_box for d in one.lazsl_crops.detections] == [[0.0, 0.0, 1.0, 1.0]] * len(
        one.lazsl_crops.detections
    )
    # the run is recorded as completed, with the failure count
    cfg = ds.get_run_info("lazsl_lazsl").config
    assert cfg.status == "completed" and cfg.num_failed == n_bad


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_equals_prerotated_image(tmp_path, classifier, orientation):
    """Crops are placed on the displayed image (what the App shows): an EXIF
    rotated JPEG and the same picture stored already rotated get the same
    crop boxes and the same prediction. The sample path (the crop seed) is a
    symlink pointed first at one file, then at the other."""
    stored = bf.smooth(60, 100)  # 100 wide, 60 high as stored
    jpg = bf.exif_rotated_jpeg(tmp_path / "exif.jpg", stored, orientation)
    displayed = ImageOps.exif_transpose(Image.open(jpg)).convert("RGB")
    png = bf.save(tmp_path / "rotated.png", displayed)
    W, H = displayed.size
    assert (W, H) == ((60, 100) if orientation in (6, 8) else (100, 60))
    link = tmp_path / "photo.jpg"
    link.symlink_to(jpg)
    ds = bf.make_dataset(f"robust-exif-{orientation}", [link])
    _run(ds, classifier, label_field="exif")
    link.unlink()
    link.symlink_to(png)
    _run(ds, classifier, label_field="plain")

    assert_every_sample_accounted(ds, "exif")
    assert_every_sample_accounted(ds, "plain")
    s = ds.first()
    a = _check_boxes(s, "exif", (W, H))
    b = _check_boxes(s, "plain", (W, H))
    assert [d.bounding_box for d in a] == [d.bounding_box for d in b]
    assert [d.label for d in a] == [d.label for d in b]
    assert s.exif.label == s.plain.label
    np.testing.assert_allclose(s.exif.logits, s.plain.logits, rtol=1e-6, atol=1e-6)
    # and the boxes are the classifier's boxes for the displayed size
    boxes = classifier.crop_boxes(W, H, str(link))
    kept = [d["crop_index"] for d in a]
    np.testing.assert_allclose(
        [d.bounding_box for d in a], boxes[kept] / np.array([W, H, W, H], dtype=np.float64)
    )


def test_image_above_decompression_bomb_limit(tmp_path, classifier):
    """A 1-bit PNG above twice PIL's default MAX_IMAGE_PIXELS (which PIL
    refuses outright) is decoded downscaled and classified; its boxes are
    relative to the full image."""
    path, (W, H) = bf.png_bomb(tmp_path)
    with pytest.raises(Image.DecompressionBombError):  # premise
        Image.open(path)
    ds = bf.make_dataset("robust-bomb", [path])
    summary = _run(ds, classifier, label_field="lazsl")
    assert summary.num_predicted == 1, summary.failures
    assert_every_sample_accounted(ds, "lazsl")
    s = ds.first()
    # (H is odd: the last row of 2x2 blocks covers one original row, so relative
    # coordinates carry over up to that one pixel of border rounding)
    assert H % 2 == 1
    dets = _check_boxes(s, "lazsl", (W, H), px_tol=1.0)
    # decoded at half size: the half-size image's crop boxes, mapped back to
    # full-image pixels (x 2, rounded), relative to the full image
    w2, h2 = math.ceil(W / 2), math.ceil(H / 2)
    boxes = classifier.crop_boxes(w2, h2, str(path))
    kept = [d["crop_index"] for d in dets]
    full_px = np.round(boxes[kept] * 2.0)
    np.testing.assert_allclose(
        [d.bounding_box for d in dets],
        np.clip(full_px / np.array([W, H, W, H], dtype=np.float64), 0, 1),
    )
    # in full-image pixels each crop is a square of 0.6..0.9 of the short side
    for d in dets:
        x, y, w, h = d.bounding_box
        side = w * W
        assert side == pytest.approx(h * H, abs=1.0)
        assert 0.6 * H - 2 <= side <= 0.9 * H + 2
        assert x * W + side <= W + 1e-6 and y * H + side <= H + 1e-6
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the global limit was not touched


def test_constant_image_keeps_every_crop(tmp_path, classifier):
    """All crops of a constant-colour image are identical to the global view:
    vision selection keeps them all, so there is one detection per crop, each
    with mass 1/N."""
    p = bf.constant(tmp_path)
    ds = bf.make_dataset("robust-constant", [p])
    _run(ds, classifier, label_field="lazsl")
    assert_every_sample_accounted(ds, "lazsl")
    dets = ds.first().lazsl_crops.detections
    assert sorted(d["crop_index"] for d in dets) == list(range(N_CROPS))
    assert [d["mass"] for d in dets] == pytest.approx([1 / N_CROPS] * N_CROPS, rel=1e-4)


def test_underflowing_kernel_falls_back_and_stays_finite(tmp_path, photo_data, checkpoint):
    """With a tiny eps, exp(-(1 - S) / eps) underflows to 0 (as fp16 kernels
    do): the scorer solves those problems in the log domain and every value
    written is finite; each plan is still a transport plan (crop masses of
    the kept crops sum to 1)."""
    from fiftyone_lazsl import LaZSLClassifier, run_lazsl
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.core.imageio import load_image_tensor
    from fiftyone_lazsl.core.scoring import hybrid_similarity

    eps = 1e-3
    clf = LaZSLClassifier(
        AttributeSet.from_dict(ATTRS),
        tiny_clip.TINY_MODEL,
        checkpoint,
        device="cpu",
        n_crops=N_CROPS,
        seed=3,
        eps=eps,
    )
    files = [p for p, _ in tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=3)]
    # premise: the plain kernel underflows completely for these images
    t, _ = load_image_tensor(files[0])
    feats, _ = clf.encode([t], [files[0]])
    S = hybrid_similarity(feats, clf.text_features, clf.theta)
    K = torch.exp(-(1.0 - S) / eps)
    assert float(K.max()) == 0.0
    ds = bf.make_dataset("robust-underflow", files)
    # full evidence: every class's scores and every kept crop (their mass sums to 1)
    summary = run_lazsl(ds, clf.attribute_set, classifier=clf, num_workers=0, evidence="full")
    assert summary.num_predicted == len(files)
    assert_every_sample_accounted(ds, "lazsl")
    for s in ds:
        vals = [v for row in s.lazsl["attribute_scores"] for v in row]
        assert all(math.isfinite(v) for v in vals)
        dets = s.lazsl_crops.detections
        assert sum(d["mass"] for d in dets) == pytest.approx(1.0, abs=1e-4)
        assert all(math.isfinite(d["similarity"]) and math.isfinite(d.confidence) for d in dets)


def test_non_finite_scores_become_errors_not_nan(tmp_path, photo_data):
    """A model producing NaN (a corrupted checkpoint) never writes NaN into the
    dataset: every sample gets an error naming the cause instead."""
    from fiftyone_lazsl import run_lazsl

    ckpt = tiny_clip.save_checkpoint(tmp_path / "nan.pt", seed=1)
    state = torch.load(ckpt)
    state["visual.proj"][:] = float("nan")
    torch.save(state, ckpt)
    files = [p for p, _ in tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=2)]
    ds = bf.make_dataset("robust-nan", files)
    summary = run_lazsl(
        ds,
        ATTRS,
        model=tiny_clip.TINY_MODEL,
        pretrained=str(ckpt),
        device="cpu",
        n_crops=N_CROPS,
        num_workers=0,
    )
    assert summary.num_predicted == 0 and summary.num_failed == len(files)
    errs = assert_every_sample_accounted(ds, "lazsl")
    # the NaN is caught at the features (lazsl_scores refuses them) or the scores
    assert all("non-finite" in e for e in errs.values()), errs


def test_prediction_failure_is_isolated_to_its_sample(tmp_path, photo_data, classifier):
    """An image that decodes but whose prediction raises gets the reason in the
    error field; the other images of its batch are still predicted."""
    files = [p for p, _ in tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=3)]
    poisoned = files[1]
    original = classifier.predict_prepared  # what the pipeline calls with the workers' views

    def predict_prepared(prepared, *a, **kw):
        if poisoned in [p.key for p in prepared]:
            raise RuntimeError(f"simulated device failure on {os.path.basename(poisoned)}")
        return original(prepared, *a, **kw)

    classifier.predict_prepared = predict_prepared
    try:
        ds = bf.make_dataset("robust-isolated", files)
        summary = _run(ds, classifier, batch_size=3)
    finally:
        del classifier.predict_prepared
    assert summary.num_predicted == 2
    assert [f[1] for f in summary.failures] == [poisoned]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert out[poisoned].startswith("RuntimeError: simulated device failure")
    assert all(out[f] in ATTRS for f in files if f != poisoned)
