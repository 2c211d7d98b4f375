"""WCA (Li et al., ICML 2024) beside LaZSL, DCLIP and CLIP.

Expected values come from outside the library: the golden outputs of the
official WCA functions (``shared/data/golden/wca_*.npz``), a NumPy loop
written here from the method statement (one image, one class at a time), and
a fresh run of the method compared with a re-scoring of stored features.
Real photos (Oxford-IIIT Pet), the published CuPL sentences, real MongoDB,
the CLI as a process, a tiny random-weights model.
"""

import glob
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import badfiles as bf
from cli_helpers import ENV, EXE
from fiftyone_lazsl.core.scoring import wca_scores
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

tiny_clip.register()

N = 5


def T(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# --------------------------------------------------------------------------
# Independent reference (float64, one image and one class at a time)
# --------------------------------------------------------------------------
def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_wca(img, txt, mask, lab, image_scale_log=4.0, text_scale_log=2.0):
    """The WCA statement: crop weights from crop.global, sentence weights from
    sentence.label prompt; a class without sentences is its label prompt."""
    img, txt, lab = (np.asarray(a, dtype=np.float64) for a in (img, txt, lab))
    B, C = img.shape[0], txt.shape[0]
    out = np.zeros((B, C))
    for b in range(B):
        g, X = img[b, 0], img[b, 1:]
        w = _softmax(np.exp(image_scale_log) * (X @ g))
        z = w @ X
        z /= np.linalg.norm(z)
        for c in range(C):
            t = txt[c][mask[c]]
            if len(t) == 0:
                e = lab[c]
            else:
                v = _softmax(np.exp(text_scale_log) * (t @ lab[c]))
                e = v @ t
            out[b, c] = z @ (e / np.linalg.norm(e))
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_problem(seed, B=3, N1=8, C=5, A=6, D=16):
    rng = np.random.default_rng(seed)
    img = _unit(rng.normal(size=(B, N1, D))).astype(np.float32)
    txt = _unit(rng.normal(size=(C, A, D))).astype(np.float32)
    lab = _unit(rng.normal(size=(C, D))).astype(np.float32)
    mask = np.ones((C, A), bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    txt[~mask] = 0
    return img, txt, mask, lab


# --------------------------------------------------------------------------
# Golden files of the official implementation
# --------------------------------------------------------------------------
def _golden_files():
    from conftest import SHARED

    return sorted(glob.glob(str(SHARED / "golden" / "wca_*.npz")))


@pytest.fixture(
    params=_golden_files() or [None], ids=lambda p: os.path.basename(p) if p else "no-golden"
)
def golden(request, shared_data):
    if request.param is None:
        pytest.skip("no golden/wca_*.npz files in shared data")
    return dict(np.load(request.param))


def test_wca_golden_files_present(shared_data):
    assert len(glob.glob(str(shared_data / "golden" / "wca_*.npz"))) >= 2


def test_wca_golden(golden):
    d = golden
    out = wca_scores(
        T(d["image_features"]),
        T(d["text_features"]),
        T(d["text_mask"]),
        T(d["label_features"]),
        image_scale_log=float(d["image_scale_log"]),
        text_scale_log=float(d["text_scale_log"]),
        return_weights=True,
    )
    assert out.scores.dtype == torch.float32 and out.scores.shape == d["scores"].shape
    err = np.abs(out.scores.numpy() - d["scores"]).max()
    print(f"WCA golden max |score error| = {err:.3g}")
    assert err <= 1e-5
    assert np.array_equal(out.scores.numpy().argmax(1), d["scores"].argmax(1))
    np.testing.assert_allclose(out.class_weights.numpy(), d["class_weights"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.crop_weights.numpy(), d["crop_weights"], rtol=0, atol=1e-5)
    # the plain call, the defaults (the golden files use WCA's 4.0 / 2.0), and the reference
    s = wca_scores(
        T(d["image_features"]), T(d["text_features"]), T(d["text_mask"]), T(d["label_features"])
    )
    np.testing.assert_allclose(s.numpy(), d["scores"], rtol=0, atol=1e-5)
    ref = ref_wca(d["image_features"], d["text_features"], d["text_mask"], d["label_features"])
    np.testing.assert_allclose(ref, d["scores"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------
# Masks, empty classes, dtypes, temperatures, stored cosines, bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize("scales", [(4.0, 2.0), (0.0, -1.0), (6.0, 5.0)])
def test_wca_matches_reference_with_masks(scales):
    img, txt, mask, lab = _random_problem(1)
    s = wca_scores(
        T(img), T(txt), T(mask), T(lab), image_scale_log=scales[0], text_scale_log=scales[1]
    )
    np.testing.assert_allclose(s.numpy(), ref_wca(img, txt, mask, lab, *scales), atol=2e-6)
    # padded rows carry no weight: filling them with anything changes nothing
    txt2 = txt.copy()
    txt2[~mask] = _unit(np.ones(txt.shape[-1], np.float32))
    s2 = wca_scores(
        T(img), T(txt2), T(mask), T(lab), image_scale_log=scales[0], text_scale_log=scales[1]
    )
    np.testing.assert_allclose(s2.numpy(), s.numpy(), atol=1e-6)


def test_wca_class_without_sentences_uses_its_label_prompt():
    img, txt, mask, lab = _random_problem(2)
    mask[4] = False
    txt[4] = 0
    out = wca_scores(T(img), T(txt), T(mask), T(lab), return_weights=True)
    np.testing.assert_allclose(out.class_weights[4].numpy(), lab[4], atol=1e-6)
    assert float(out.text_weights[4].abs().sum()) == 0.0
    np.testing.assert_allclose(out.scores.numpy(), ref_wca(img, txt, mask, lab), atol=2e-6)
    # the rows of text weights sum to 1 where a class has sentences, 0 on padding
    v = out.text_weights.numpy()
    np.testing.assert_allclose(v[:4].sum(1), 1.0, atol=1e-6)
    assert np.all(v[~mask] == 0)


def test_wca_half_precision_and_stored_cosines():
    img, txt, mask, lab = _random_problem(3)
    ref = ref_wca(img, txt, mask, lab)
    s16 = wca_scores(T(img).half(), T(txt).half(), T(mask), T(lab).half())
    assert s16.dtype == torch.float32
    np.testing.assert_allclose(s16.numpy(), ref, atol=5e-3)
    # the float32 crop-to-global cosines a feature store keeps make the weights exact
    cg = np.einsum("bnd,bd->bn", img[:, 1:], img[:, 0]).astype(np.float32)
    o16 = wca_scores(T(img).half(), T(txt), T(mask), T(lab), crop_global=T(cg), return_weights=True)
    o32 = wca_scores(T(img), T(txt), T(mask), T(lab), return_weights=True)
    np.testing.assert_allclose(o16.crop_weights.numpy(), o32.crop_weights.numpy(), atol=1e-6)


def test_wca_refuses_bad_input():
    img, txt, mask, lab = _random_problem(4)
    with pytest.raises(ValueError, match="label_features"):
        wca_scores(T(img), T(txt), T(mask), T(lab[:2]))
    with pytest.raises(ValueError, match="image_features"):
        wca_scores(T(img[:, :1]), T(txt), T(mask), T(lab))
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        wca_scores(T(bad), T(txt), T(mask), T(lab))
    with pytest.raises(ValueError, match="crop_global"):
        wca_scores(T(img), T(txt), T(mask), T(lab), crop_global=torch.zeros(1, 2))


# --------------------------------------------------------------------------
# Config: method defaults and user-given visual sets
# --------------------------------------------------------------------------
def test_method_defaults_and_given_values():
    from fiftyone_lazsl import LaZSLConfig

    w = LaZSLConfig(method="wca")
    assert (w.n_crops, w.crop_scale) == (60, (0.5, 0.9))
    assert (w.image_scale_log, w.text_scale_log) == (4.0, 2.0)
    # not given: follows the method; given (or read from a run): kept
    assert LaZSLConfig().replace(method="wca").crop_scale == (0.5, 0.9)
    assert LaZSLConfig().replace(method="wca").replace(method="lazsl").n_crops == 90
    given = LaZSLConfig(n_crops=90, crop_scale=(0.6, 0.9)).replace(method="wca")
    assert (given.n_crops, given.crop_scale) == (90, (0.6, 0.9))
    run = LaZSLConfig.from_dict(LaZSLConfig().to_dict()).replace(method="wca")
    assert run.crop_scale == (0.6, 0.9)
    assert LaZSLConfig.default_of("crop_scale", "wca") == (0.5, 0.9)
    from fiftyone_lazsl.errors import ConfigError

    with pytest.raises(ConfigError, match="n_crops must be >= 1 for wca"):
        LaZSLConfig(method="wca", n_crops=0)
    with pytest.raises(ConfigError, match="image_scale_log"):
        LaZSLConfig(method="wca", image_scale_log="hot")


# --------------------------------------------------------------------------
# Classifier evidence on real photos with the published CuPL sentences
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=7))


@pytest.fixture(scope="module")
def pets(shared_data):
    photos = tiny_clip.some_images(shared_data, "pets", per_class=1, max_classes=5)
    full = json.loads((shared_data / "attribute_sets" / "cupl" / "pets.json").read_text())
    classes = sorted({c for _, c in photos})
    return photos, {c: full[c] for c in classes}


def _cupl_set(sentences):
    from fiftyone_lazsl.core.attribute_formats import detect_format
    from fiftyone_lazsl.core.attributes import AttributeSet

    assert detect_format(sentences) == "cupl"
    return AttributeSet.from_dict(sentences, name="pets-cupl", format="cupl")


def test_classifier_wca_scores_and_evidence(pets, checkpoint):
    from fiftyone_lazsl import LaZSLClassifier
    from fiftyone_lazsl.core.prompts import build_prompts, clip_prompt

    photos, sentences = pets
    aset = _cupl_set(sentences)
    clf = LaZSLClassifier(
        aset,
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        method="wca",
        device="cpu",
        n_crops=N,
        seed=2,
    )
    assert clf.crop_scale == (0.5, 0.9)
    # CuPL sentences are encoded verbatim; the label prompt is "a photo of a {c}."
    prompts, _ = build_prompts(aset)
    # (surrounding whitespace is dropped, as CLIP's tokenizer also does)
    assert prompts[0] == [t.strip() for t in sentences[aset.classes[0]]]
    paths = [p for p, _ in photos]
    preds = clf.predict(paths)
    keys = [os.path.abspath(p) for p in paths]
    from fiftyone_lazsl.core.imageio import load_image

    feats, _ = clf.encode([load_image(p) for p in paths], keys)
    m = clf.model
    txt = [m.encode_texts(s).numpy() for s in prompts]
    A = max(len(t) for t in txt)
    tf = np.zeros((len(txt), A, txt[0].shape[1]), np.float32)
    mask = np.zeros((len(txt), A), bool)
    for c, t in enumerate(txt):
        tf[c, : len(t)], mask[c, : len(t)] = t, True
    lab = m.encode_texts([clip_prompt(c) for c in aset.classes]).numpy()
    ref = ref_wca(feats.numpy(), tf, mask, lab)
    for b, p in enumerate(preds):
        np.testing.assert_allclose(p.scores, ref[b], atol=1e-5)
        assert p.label == aset.classes[int(ref[b].argmax())]
        # sentence contributions add up to the class score
        for c in range(len(aset.classes)):
            assert abs(float(p.attribute_scores[c].sum()) - float(p.scores[c])) < 1e-5
        cr = p.crops
        assert cr.kept.all() and abs(float(cr.mass.sum()) - 1.0) < 1e-5
        # each crop's sentence is the predicted class's sentence most similar to it
        X = feats[b, 1:].numpy()
        sims = X @ tf[p.label_index][mask[p.label_index]].T
        assert np.array_equal(cr.attribute, sims.argmax(1))
        np.testing.assert_allclose(cr.similarity, sims.max(1), atol=1e-5)


# --------------------------------------------------------------------------
# The CLI as a process: classify --method wca, then rescore every method
# --------------------------------------------------------------------------
def compare_runs(ds, fresh, rescored, *, logit_tol, score_tol):
    """Same labels, logits, sentence contributions and crop detections (the
    float32-storage tolerances of tests/test_rescore.py)."""
    from fiftyone_lazsl.fo.labels import class_evidence, evidence_entries

    for a, b, ca, cb in zip(
        ds.values(fresh),
        ds.values(rescored),
        ds.values(f"{fresh}_crops"),
        ds.values(f"{rescored}_crops"),
    ):
        assert a is not None and b is not None and a.label == b.label
        assert np.abs(np.array(a.logits) - np.array(b.logits)).max() <= logit_tol
        ea, eb = evidence_entries(a), evidence_entries(b)
        assert ea and [e["class"] for e in ea] == [e["class"] for e in eb]
        for e in ea:
            np.testing.assert_allclose(
                class_evidence(a, e["index"])[0], class_evidence(b, e["index"])[0], atol=score_tol
            )
        assert [d.label for d in ca.detections] == [d.label for d in cb.detections]
        assert [d.crop_index for d in ca.detections] == [d.crop_index for d in cb.detections]
        np.testing.assert_allclose(
            [d.bounding_box for d in ca.detections], [d.bounding_box for d in cb.detections], atol=0
        )
        np.testing.assert_allclose(
            [d.confidence for d in ca.detections],
            [d.confidence for d in cb.detections],
            atol=score_tol,
        )


def _cli(env, *args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_classify_wca_with_cupl_set(tmp_path, pets, checkpoint):
    from fiftyone_lazsl.fo.runs import get_run_config

    photos, sentences = pets
    path = tmp_path / "pets_cupl.json"
    path.write_text(json.dumps(sentences))
    from fiftyone_lazsl.fo.store import resolve_attribute_set

    assert resolve_attribute_set(str(path)).format == "cupl"  # read as sentences, used verbatim
    ds = bf.make_dataset("wca-cli", [p for p, _ in photos], gt=[c for _, c in photos])
    ds.persistent = True
    env = dict(os.environ, **ENV)
    try:
        r = _cli(
            env,
            "classify",
            "--dataset",
            ds.name,
            "--attributes",
            str(path),
            "--method",
            "wca",
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--n-crops",
            str(N),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--label-field",
            "wca",
            "--top-k-crops",
            "3",
        )
        assert r.returncode == 0, r.stderr
        assert f"{len(photos)}/{len(photos)} samples classified into field 'wca'" in r.stdout
        ds.reload()
        cfg = get_run_config(ds, "wca")
        assert cfg["method"] == "wca" and cfg["n_crops"] == N
        assert cfg["crop_scale"] == [0.5, 0.9]  # WCA's default
        assert (cfg["image_scale_log"], cfg["text_scale_log"]) == (4.0, 2.0)
        for pred, dets, attrs in zip(*ds.values(["wca", "wca_crops", "wca_attributes"])):
            own = {t.strip() for t in sentences[pred.label]}
            assert len(pred.logits) == len(sentences)
            assert len(dets.detections) == 3
            w = [d.confidence for d in dets.detections]
            assert w == sorted(w, reverse=True) and all(0 < x <= 1 for x in w)
            assert all(d.label in own for d in dets.detections)
            assert attrs and set(attrs) <= set(own)
        # bad parameter: one line, exit 2, nothing written
        r = _cli(
            env,
            "classify",
            "--dataset",
            ds.name,
            "--attributes",
            str(path),
            "--method",
            "wca",
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--image-scale-log",
            "inf",
            "--label-field",
            "bad",
        )
        assert r.returncode == 2 and "image_scale_log must be a finite number" in r.stderr
    finally:
        ds.delete()


def test_rescore_every_method_from_one_encoding(tmp_path, pets, checkpoint):
    """A LaZSL run stores its features; rescore --method wca (a process),
    dclip and clip each equal a fresh run of that method on the same crops,
    without encoding an image; evaluate_methods compares the four."""
    from fiftyone_lazsl import evaluate_methods, rescore, run_lazsl
    from fiftyone_lazsl.fo.runs import get_run_config

    photos, sentences = pets
    path = tmp_path / "pets_cupl.json"
    path.write_text(json.dumps(sentences))
    ds = bf.make_dataset("wca-rescore", [p for p, _ in photos], gt=[c for _, c in photos])
    ds.persistent = True
    kw = dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=N,
        seed=4,
        num_workers=0,
        batch_size=2,
    )
    store = tmp_path / "store"
    env = dict(os.environ, **ENV)
    try:
        first = run_lazsl(
            ds,
            str(path),
            label_field="lazsl",
            store_features=str(store),
            feature_dtype="float32",
            **kw,
        )
        assert first.feature_store["stored"] == len(photos)
        r = _cli(
            env,
            "rescore",
            "--dataset",
            ds.name,
            "--attributes",
            str(path),
            "--from-field",
            "lazsl",
            "--label-field",
            "wca",
            "--method",
            "wca",
        )
        assert r.returncode == 0, r.stderr
        assert f"{len(photos)} reused" in r.stdout
        ds.reload()
        cfg = get_run_config(ds, "wca")
        assert cfg["method"] == "wca" and cfg["rescored_from"] == "lazsl"
        # the stored visual set (LaZSL's crop scale), recorded in the new run's config
        assert cfg["crop_scale"] == [0.6, 0.9] and cfg["n_crops"] == N and cfg["seed"] == 4
        assert cfg["feature_store"]["reused"] == len(photos) and cfg["feature_store"]["stored"] == 0
        for m in ("dclip", "clip"):
            s = rescore(ds, str(path), from_field="lazsl", label_field=m, method=m)
            assert s.feature_store["reused"] == len(photos) and s.feature_store["stored"] == 0
        # fresh runs of each method on the same crops (same seed, N, crop scale)
        run_lazsl(ds, str(path), label_field="wca_fresh", method="wca", crop_scale=(0.6, 0.9), **kw)
        compare_runs(ds, "wca_fresh", "wca", logit_tol=1e-6 * 100, score_tol=1e-6)
        for m in ("dclip", "clip"):
            run_lazsl(ds, str(path), label_field=f"{m}_fresh", method=m, **kw)
            for a, b in zip(ds.values(m), ds.values(f"{m}_fresh")):
                assert a.label == b.label
                assert np.abs(np.array(a.logits) - np.array(b.logits)).max() <= 1e-4
        # a store of global views only cannot serve a crop method
        run_lazsl(
            ds, str(path), label_field="g", method="dclip", store_features=str(tmp_path / "g"), **kw
        )
        r = _cli(
            env,
            "rescore",
            "--dataset",
            ds.name,
            "--attributes",
            str(path),
            "--from-field",
            "g",
            "--label-field",
            "x",
            "--method",
            "wca",
        )
        assert r.returncode == 2 and "stored the global view only" in r.stderr
        # one table, four methods, one encoding
        res = evaluate_methods(ds, "ground_truth", ["lazsl", "wca", "dclip", "clip"])
        assert [m.method for m in res.methods] == ["lazsl", "wca", "dclip", "clip"]
        rows = [line.split() for line in res.table().splitlines()[1:5]]
        assert [(r[0], r[1]) for r in rows] == [(m, m) for m in ("lazsl", "wca", "dclip", "clip")]
        gt = ds.values("ground_truth.label")
        for m, r in zip(res.methods, rows):
            acc = np.mean([p.label == g for p, g in zip(ds.values(m.field), gt)])
            assert abs(m.accuracy - acc) < 1e-9 and r[2] == f"{acc:.3f}"
    finally:
        ds.delete()


def test_operators_run_and_rescore_wca(lazsl_plugin, pets, checkpoint):
    """The run_lazsl operator with method wca and the rescore_lazsl operator's
    method choice (executed as the App does) give what the Python functions give."""
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.runs import get_run_config
    from fiftyone_lazsl.fo.store import save_attribute_set

    photos, sentences = pets
    ds = bf.make_dataset("wca-ops", [p for p, _ in photos[:3]], gt=[c for _, c in photos[:3]])
    save_attribute_set(ds, AttributeSet.from_dict(sentences, format="cupl"), "cupl")
    kw = {"model": tiny_clip.TINY_MODEL, "pretrained": checkpoint, "device": "cpu", "n_crops": 4}
    res = run_operator(
        "run_lazsl",
        ds,
        {
            "attribute_set": "cupl",
            "method": "wca",
            "label_field": "op",
            "store_features": True,
            "image_scale_log": 3.0,
            **kw,
        },
    )
    assert res.error is None, res.error
    cfg = get_run_config(ds, "op")
    assert (cfg["method"], cfg["image_scale_log"], cfg["crop_scale"]) == ("wca", 3.0, [0.5, 0.9])
    run_lazsl(ds, "cupl", label_field="py", method="wca", image_scale_log=3.0, num_workers=0, **kw)
    for m in ("wca", "lazsl", "clip"):
        res = run_operator(
            "rescore_lazsl",
            ds,
            {
                "from_field": "op",
                "attribute_set": "cupl",
                "label_field": f"op_{m}",
                "method": m,
                "text_scale_log": 1.0,
            },
        )
        assert res.error is None, res.error
        rescore(ds, "cupl", from_field="op", label_field=f"py_{m}", method=m, text_scale_log=1.0)
    ds.reload()
    for a, b in zip(ds.values("op"), ds.values("py")):
        assert a.label == b.label and np.allclose(a.logits, b.logits, atol=1e-4)
    for m in ("wca", "lazsl", "clip"):
        assert get_run_config(ds, f"op_{m}")["method"] == m
        for a, b in zip(ds.values(f"op_{m}"), ds.values(f"py_{m}")):
            assert a.label == b.label and np.allclose(a.logits, b.logits, atol=0)
    assert get_run_config(ds, "op_wca")["text_scale_log"] == 1.0
    # the audit reads WCA's sentence evidence like LaZSL's
    from fiftyone_lazsl import audit_labels

    res = audit_labels(ds, "op", "ground_truth", min_suspicion=None, top_k=1)
    assert res.has_evidence and res.method == "wca"
    for pred, ev in zip(ds.values("op"), ds.values("op_evidence_pred")):
        own = {t.strip() for t in sentences[pred.label]}
        assert ev and set(ev) <= own
