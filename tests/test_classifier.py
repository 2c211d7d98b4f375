"""End-to-end LaZSLClassifier on real CUB photos with the tiny open_clip model
(random weights, and the same architecture loaded from a checkpoint file)."""

import os

import numpy as np
import pytest
import torch

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.models import load_model
from fiftyone_lazsl.core.prompts import clip_prompt
from fiftyone_lazsl.core.scoring import lazsl_scores
from fiftyone_lazsl.testing import tiny_clip
from fiftyone_lazsl.testing.tiny_clip import TINY_MODEL, save_checkpoint, some_images

tiny_clip.register()

N_CLASSES = 4


@pytest.fixture(scope="module")
def photos(photo_data):
    items = some_images(photo_data, "cub", per_class=1, max_classes=N_CLASSES)
    assert len(items) == N_CLASSES
    return items


@pytest.fixture(scope="module")
def cub_set(photo_data, photos):
    full = AttributeSet.from_json(photo_data / "attribute_sets" / "cub.json")
    return full.with_classes([c for _, c in photos])


@pytest.fixture(scope="module")
def random_model():
    # seeded: otherwise the weights depend on which tests ran before
    torch.manual_seed(0)
    return load_model(TINY_MODEL, None, device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("clf-ckpt") / "tiny.pt", seed=11)


@pytest.fixture(scope="module")
def decoded(photos):
    from fiftyone_lazsl.core.imageio import load_image_tensor

    out = []
    for p, _ in photos:
        t, info = load_image_tensor(p)
        out.append((t, os.path.abspath(p), info))
    return out


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _check_lazsl(clf, preds, images, keys, *, n_crops):
    """Every field of the LaZSL predictions against values computed here from the
    encoded features."""
    classes = clf.classes
    C = len(classes)
    feats, boxes = clf.encode(images, keys)
    assert tuple(feats.shape) == (len(images), 1 + n_crops, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(feats.shape[:2]), rtol=0, atol=1e-5)
    F64 = feats.double().numpy()
    tf = clf.text_features.double().cpu().numpy()
    mask = clf.text_mask.cpu().numpy()
    lens = [len(a) for a in clf.attribute_labels]
    assert [int(m.sum()) for m in mask] == lens
    out = lazsl_scores(
        feats,
        clf.text_features,
        clf.text_mask,
        theta=clf.theta,
        eps=clf.eps,
        max_iter=clf.max_iter,
        stop_tol=clf.stop_tol,
        gamma=clf.gamma,
        return_plan=True,
    )
    scale = clf.model.logit_scale
    for b, p in enumerate(preds):
        assert p.method == "lazsl"
        assert p.label in classes
        assert p.scores.shape == (C,)
        assert p.label_index == int(np.argmax(p.scores))
        assert classes[p.label_index] == p.label
        np.testing.assert_allclose(p.scores, out.scores[b].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(p.logits, scale * p.scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            p.probs, _softmax(scale * p.scores.astype(np.float64)), rtol=0, atol=1e-6
        )
        assert abs(float(p.probs.sum()) - 1.0) < 1e-5
        H, W = images[b].shape[-2:]
        assert p.image_size == (int(W), int(H))

        cr = p.crops
        for name in ("kept", "mass", "attribute", "share", "similarity"):
            assert getattr(cr, name).shape == (n_crops,), name
        assert cr.boxes.shape == (n_crops, 4) and cr.boxes_rel.shape == (n_crops, 4)
        assert np.array_equal(cr.boxes, boxes[b])
        assert np.array_equal(cr.boxes, clf.crop_boxes(int(W), int(H), keys[b]))
        assert np.all(cr.boxes_rel >= 0) and np.all(cr.boxes_rel <= 1)

        # vision selection, from the features: keep crop n when x_n.g >= mean + gamma
        r = F64[b, 1:] @ F64[b, 0]
        thr = r.mean() + clf.gamma
        clear = np.abs(r - thr) > 1e-5  # float32 ties with the mean are ambiguous
        if np.ptp(r) < 1e-6 and clf.gamma == 0:
            assert cr.kept.all()  # all crops equally similar: r == mean, all kept
        else:
            assert clear.sum() >= n_crops // 2
        if (r < thr - 1e-5).all():
            # no crop reaches mean + gamma (possible when gamma > 0 and the crops
            # are nearly alike): the selection keeps every crop rather than none
            assert cr.kept.all()
        else:
            assert np.array_equal(cr.kept[clear], (r >= thr)[clear])
        assert cr.kept.any() and cr.kept.dtype == bool

        # the plan of the predicted class: mass, argmax attribute, share, similarity
        c = p.label_index
        a_c = lens[c]
        plan = out.plans[b, c, :, :a_c].double().numpy()
        assert np.all(plan[~cr.kept] == 0)
        np.testing.assert_allclose(cr.mass, plan.sum(1), rtol=0, atol=1e-6)
        assert abs(float(cr.mass.sum()) - 1.0) < 1e-5  # the plan carries mass 1
        assert np.all(cr.mass[~cr.kept] == 0)
        kept = cr.kept
        assert np.array_equal(cr.attribute[kept], plan[kept].argmax(1))
        assert np.all((cr.attribute >= 0) & (cr.attribute < a_c))
        np.testing.assert_allclose(
            cr.share[kept], plan[kept].max(1) / plan[kept].sum(1), rtol=0, atol=1e-5
        )
        assert np.all(cr.share[~kept] == 0)
        S = (1 - clf.theta) * (tf[c, :a_c] @ F64[b, 0])[None, :] + clf.theta * F64[b, 1:] @ tf[
            c, :a_c
        ].T
        np.testing.assert_allclose(
            cr.similarity, S[np.arange(n_crops), cr.attribute], rtol=0, atol=1e-5
        )

        # attribute contributions and crop counts, per class
        assert len(p.attribute_scores) == C and len(p.attribute_crops) == C
        for k in range(C):
            assert p.attribute_scores[k].shape == (lens[k],)
            assert abs(float(p.attribute_scores[k].sum()) - float(p.scores[k])) < 1e-5
            assert p.attribute_crops[k].shape == (lens[k],)
            assert int(p.attribute_crops[k].sum()) == int(cr.kept.sum())
        assert np.array_equal(
            p.attribute_crops[c], np.bincount(plan[kept].argmax(1), minlength=a_c)
        )


@pytest.mark.parametrize("weights", ["random", "checkpoint"])
def test_lazsl_end_to_end(weights, cub_set, random_model, checkpoint, decoded):
    if weights == "random":
        clf = LaZSLClassifier(cub_set, random_model, n_crops=12, seed=1, batch_size=3)
        assert clf.config()["random_weights"] is True
    else:
        clf = LaZSLClassifier(
            cub_set,
            TINY_MODEL,
            pretrained=str(checkpoint),
            device="cpu",
            n_crops=12,
            seed=1,
            batch_size=3,
        )
        cfg = clf.config()
        assert cfg["random_weights"] is False and cfg["pretrained"] == str(checkpoint)
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert torch.equal(
            clf.model.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"]
        )
        assert clf.model.logit_scale == pytest.approx(100.0, rel=1e-3)
    assert clf.classes == cub_set.classes
    images = [t for t, _, _ in decoded]
    keys = [k for _, k, _ in decoded]
    preds = clf.predict_tensors(images, keys)
    assert len(preds) == len(images)
    _check_lazsl(clf, preds, images, keys, n_crops=12)


def test_gamma_and_theta(cub_set, random_model, decoded):
    images = [t for t, _, _ in decoded[:2]]
    keys = [k for _, k, _ in decoded[:2]]
    clf = LaZSLClassifier(
        cub_set, random_model, n_crops=12, seed=2, gamma=0.0005, theta=0.5, eps=0.05
    )
    _check_lazsl(clf, clf.predict_tensors(images, keys), images, keys, n_crops=12)


def test_default_90_crops(cub_set, random_model, decoded):
    clf = LaZSLClassifier(cub_set, random_model, seed=0)
    assert clf.n_crops == 90
    images = [t for t, _, _ in decoded[:2]]
    keys = [k for _, k, _ in decoded[:2]]
    preds = clf.predict_tensors(images, keys)
    _check_lazsl(clf, preds, images, keys, n_crops=90)


def test_dclip_and_clip_methods(cub_set, random_model, decoded):
    images = [t for t, _, _ in decoded]
    keys = [k for _, k, _ in decoded]
    scale = random_model.logit_scale

    d = LaZSLClassifier(cub_set, random_model, method="dclip")
    assert d.n_crops == 0
    feats, _ = d.encode(images, keys)
    assert tuple(feats.shape) == (len(images), 1, 32)
    g = feats[:, 0].double().numpy()
    # attribute prompts encoded independently, one class at a time
    for b, p in enumerate(d.predict_tensors(images, keys)):
        assert p.method == "dclip" and p.crops is None
        expected = []
        for k, _c in enumerate(d.classes):
            t = random_model.encode_texts(d.prompts[k]).double().numpy()
            sims = t @ g[b]
            np.testing.assert_allclose(p.attribute_scores[k], sims, rtol=0, atol=1e-5)
            expected.append(sims.mean())
        np.testing.assert_allclose(p.scores, expected, rtol=0, atol=1e-5)
        assert p.label_index == int(np.argmax(p.scores)) and p.label == d.classes[p.label_index]
        np.testing.assert_allclose(
            p.probs, _softmax(scale * p.scores.astype(np.float64)), rtol=0, atol=1e-6
        )

    c = LaZSLClassifier(cub_set, random_model, method="clip")
    feats, _ = c.encode(images, keys)
    g = feats[:, 0].double().numpy()
    cls = random_model.encode_texts([clip_prompt(k) for k in c.classes]).double().numpy()
    assert cls.shape == (N_CLASSES, 32)
    for b, p in enumerate(c.predict_tensors(images, keys)):
        assert p.method == "clip" and p.crops is None
        np.testing.assert_allclose(p.scores, cls @ g[b], rtol=0, atol=1e-5)
        assert p.label_index == int(np.argmax(p.scores))
        assert abs(float(p.probs.sum()) - 1) < 1e-5

    with pytest.raises(ValueError):
        LaZSLClassifier(cub_set, random_model, method="nope")


def test_predict_paths_equals_predict_tensors(cub_set, random_model, photos, decoded):
    clf = LaZSLClassifier(cub_set, random_model, n_crops=12, seed=3, batch_size=2)
    paths = [p for p, _ in photos]
    from_paths = clf.predict(paths)
    tensors = clf.predict_tensors([t for t, _, _ in decoded], [k for _, k, _ in decoded])
    assert len(from_paths) == len(paths)
    for a, b, (_t, _, info) in zip(from_paths, tensors, decoded):
        assert a.label == b.label
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
        assert np.array_equal(a.crops.boxes, b.crops.boxes)
        assert np.array_equal(a.crops.kept, b.crops.kept)
        assert a.image_size == tuple(info["original_size"])
    # explicit keys are used as the crop keys
    ks = ["k0", "k1", "k2", "k3"]
    ex = clf.predict(paths, keys=ks)
    for p, (t, _, _), k in zip(ex, decoded, ks):
        H, W = t.shape[-2:]
        assert np.array_equal(p.crops.boxes, clf.crop_boxes(int(W), int(H), k))


def test_food101_with_empty_classes(shared_data, random_model):
    full = AttributeSet.from_json(shared_data / "attribute_sets" / "food101.json")
    empty = full.empty_classes
    assert len(empty) == 5
    others = [c for c in full.classes if c not in empty][:5]
    s = full.with_classes(others[:2] + empty + others[2:])
    assert len(s) == 10 and s.empty_classes == empty
    clf = LaZSLClassifier(s, random_model, n_crops=8, seed=0)
    for c in empty:
        k = clf.classes.index(c)
        assert clf.attribute_labels[k] == [c]
        assert clf.prompts[k] == [c]
        assert int(clf.text_mask[k].sum()) == 1
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 90, 120), dtype=np.uint8))
    img2 = torch.full((3, 60, 60), 128, dtype=torch.uint8)
    preds = clf.predict_tensors([img, img2], ["food-a", "food-b"])
    _check_lazsl(clf, preds, [img, img2], ["food-a", "food-b"], n_crops=8)
    for p in preds:
        assert np.all(np.isfinite(p.scores))
        for c in empty:
            assert p.attribute_scores[clf.classes.index(c)].shape == (1,)
    dc = LaZSLClassifier(s, random_model, method="dclip")
    assert all(np.all(np.isfinite(p.scores)) for p in dc.predict_tensors([img], ["x"]))
