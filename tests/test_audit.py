"""Label audit (``audit_labels``, CLI ``audit``, ``audit_labels`` operator): injected
label errors rank first and the evidence names the right attributes.

* Controlled features (:mod:`controlled_encoder`): every method predicts each
  image's true class, so label flips injected into the ground truth must rank
  first, and the evidence must name the labelled class's weakest and the
  predicted class's strongest attributes, which are known by construction.
* Real photos with a tiny random-weight open_clip model: CLIP, DCLIP and LaZSL
  runs, then evaluate + audit in Python, through the CLI and the operators,
  checking every field and eval key against the real database.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import controlled_encoder as ce
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

tiny_clip.register()

A = 4
C = 6


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _dataset(name, items, labels):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_samples(
        [
            fo.Sample(
                filepath=p, ground_truth=None if lab is None else fo.Classification(label=lab)
            )
            for (p, _), lab in zip(items, labels)
        ]
    )
    return ds


def _run(ds, aset, method, field, run_kw=None, **kw):
    from fiftyone_lazsl import LaZSLClassifier, run_lazsl

    clf = LaZSLClassifier(
        aset, model=ce.ControlledModel(aset, **kw), method=method, n_crops=4, seed=1, batch_size=8
    )
    return run_lazsl(ds, aset, label_field=field, classifier=clf, num_workers=0, **(run_kw or {}))


@pytest.fixture
def flipped(tmp_path):
    """6 classes x 3 solid images; samples 1, 8 and 16 have a wrong label."""
    aset = ce.make_attribute_set(C, A)
    items = ce.write_images(tmp_path / "img", {c: 3 for c in range(C)})
    flips = {1: 4, 8: 0, 16: 2}  # sample index -> wrong class
    labels = [f"class_{flips.get(i, c)}" for i, (_, c) in enumerate(items)]
    assert all(flips[i] != items[i][1] for i in flips)
    ds = _dataset(f"audit-flip-{tmp_path.name}", items, labels)
    return ds, aset, items, flips


@pytest.mark.parametrize(
    "method,evidence", [("lazsl", "compact"), ("dclip", "compact"), ("lazsl", "full")]
)
def test_flipped_labels_rank_first_with_right_evidence(flipped, method, evidence):
    """Compact outputs keep the labelled class's evidence when the run is given
    the ground-truth field; full outputs keep every class's."""
    import fiftyone as fo

    from fiftyone_lazsl.fo.audit import audit_labels, suspects_view_name

    ds, aset, items, flips = flipped
    run_kw = dict(evidence=evidence)
    if evidence == "compact":
        run_kw["gt_field"] = "ground_truth"
    s = _run(ds, aset, method, method, run_kw)
    stored = ds.first()[method]
    assert ("attribute_scores" in stored.to_dict()) == (evidence == "full")
    assert s.num_predicted == len(items)
    res = audit_labels(ds, method, "ground_truth", top_k=5, tag="suspect")

    ids = ds.values("id")
    flipped_ids = {ids[i] for i in flips}
    # every method predicts the true class
    assert ds.values(f"{method}.label") == [f"class_{c}" for _, c in items]
    # flipped samples first, then the rest; only they contradict their label
    assert {r.sample_id for r in res.rows[: len(flips)]} == flipped_ids
    assert all(r.suspicion > 0 for r in res.rows[: len(flips)])
    assert all(r.suspicion < 0 for r in res.rows[len(flips) :])
    # top_k=5 but min_suspicion=0: exactly the 3 flips are tagged, and saved as a view
    assert set(res.tagged) == flipped_ids
    assert set(ds.match_tags("suspect").values("id")) == flipped_ids
    assert res.saved_view == suspects_view_name(method)
    sv = ds.load_saved_view(res.saved_view)
    assert set(sv.values("id")) == flipped_ids

    # stored suspicion equals max_{c != gt} p(c) - p(gt), recomputed here from the logits
    classes = ds.classes[method]
    susp_field = f"{method}_suspicion"
    assert isinstance(ds.get_field(susp_field), fo.FloatField)
    for smp in ds:
        p = _softmax(smp[method].logits)
        g = classes.index(smp.ground_truth.label)
        expect = np.delete(p, g).max() - p[g]
        assert smp[susp_field] == pytest.approx(expect, abs=1e-9)
    ranked = ds.sort_by(susp_field, reverse=True).values("id")
    assert set(ranked[: len(flips)]) == flipped_ids

    # evidence: labelled class's weakest attributes, predicted class's strongest
    attrs = aset.attributes
    model = ce.ControlledModel(aset)
    rows = {r.sample_id: r for r in res.rows}
    for i, (path, true_c) in enumerate(items):
        smp = ds[path]
        gt_c = flips.get(i, true_c)
        ev_gt, ev_pred = smp[f"{method}_evidence_gt"], smp[f"{method}_evidence_pred"]
        assert len(ev_gt) == 3 and len(ev_pred) == 3
        assert set(ev_gt) <= set(attrs[f"class_{gt_c}"])
        assert set(ev_pred) <= set(attrs[f"class_{true_c}"])
        assert ev_pred[0] == attrs[f"class_{true_c}"][ce.strongest_attribute(true_c, A)]
        # contribution = cos(image, attribute) / A for both methods (uniform
        # transport plan on solid images; DCLIP's mean), from the encoder's vectors
        a_star = ce.strongest_attribute(true_c, A)
        cos = float(model.image_vectors[true_c][model.offsets[true_c] + a_star])
        row = rows[smp.id]
        assert row.evidence_pred[0] == (ev_pred[0], pytest.approx(cos / A, abs=2e-6))
        assert f"{ev_pred[0]} ({row.evidence_pred[0][1]:.4g})" in smp[f"{method}_evidence"]
        if i in flips:
            assert ev_gt[0] == attrs[f"class_{gt_c}"][ce.weakest_attribute(gt_c, A)]
            a_min = ce.weakest_attribute(gt_c, A)
            cos = float(model.image_vectors[true_c][model.offsets[gt_c] + a_min])
            assert row.evidence_gt[0][1] == pytest.approx(cos / A, abs=2e-6)
        sentence = smp[f"{method}_evidence"]
        assert isinstance(sentence, str)
        assert ev_gt[0] in sentence and ev_pred[0] in sentence
        if i in flips:
            assert (
                f"labelled 'class_{gt_c}'" in sentence and f"predicted 'class_{true_c}'" in sentence
            )
    # the App can filter on evidence lists
    w = attrs["class_0"][ce.weakest_attribute(0, A)]
    from fiftyone import ViewField as F

    hits = ds.match(F(f"{method}_evidence_gt").contains(w)).values("id")
    assert ids[8] in hits


def test_rerun_moves_tag_and_top_k_limits(flipped):
    from fiftyone_lazsl.fo.audit import audit_labels

    ds, aset, items, flips = flipped
    _run(ds, aset, "dclip", "dclip")
    audit_labels(ds, "dclip", "ground_truth", top_k=5)
    assert len(ds.match_tags("suspect")) == 3
    res = audit_labels(ds, "dclip", "ground_truth", top_k=1)
    assert len(res.tagged) == 1 and len(ds.match_tags("suspect")) == 1
    assert res.tagged[0] == res.rows[0].sample_id
    # min_suspicion=None: top_k regardless of agreement
    res = audit_labels(ds, "dclip", "ground_truth", top_k=5, min_suspicion=None)
    assert len(ds.match_tags("suspect")) == 5
    assert res.tagged == [r.sample_id for r in res.rows[:5]]


def test_unknown_label_missing_prediction_no_label_and_clip(tmp_path):
    """Labels outside the run's classes, failed images, unlabelled samples, and
    CLIP runs (no attribute evidence)."""
    from fiftyone_lazsl.fo.audit import NO_EVIDENCE_CLIP, audit_labels

    aset = ce.make_attribute_set(3, A)
    items = ce.write_images(tmp_path / "img", {0: 1, 1: 1, 2: 1})
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"not an image at all")
    copy = tmp_path / "img" / "class_0" / "copy.png"
    shutil.copyfile(items[0][0], copy)
    items = items + [(str(bad), 0), (str(copy), 0)]
    labels = ["class_0", "Mystery_bird", "class_2", "class_0", None]
    ds = _dataset(f"audit-edge-{tmp_path.name}", items, labels)
    for method in ("lazsl", "clip"):
        s = _run(ds, aset, method, method)
        assert s.num_failed == 1
    ids = ds.values("id")

    res = audit_labels(ds, "lazsl", "ground_truth", top_k=10)
    by = {r.sample_id: r for r in res.rows}
    assert res.num_no_prediction == 1 and res.num_no_label == 1
    assert res.num_label_not_in_classes == 1
    # unknown label: p(gt) = 0, suspicion = p(predicted); it is the one suspect
    smp = ds[items[1][0]]
    assert smp.lazsl_suspicion == pytest.approx(_softmax(smp.lazsl.logits).max(), abs=1e-9)
    assert res.tagged == [ids[1]]
    assert "not one of the run's 3 classes" in smp.lazsl_evidence
    assert smp.lazsl_evidence_gt is None
    assert set(smp.lazsl_evidence_pred) <= set(aset.attributes["class_1"])
    # failed image: no score, the error in words, no tag
    smp = ds[str(bad)]
    assert smp.lazsl_suspicion is None and smp.lazsl_evidence_gt is None
    assert (
        smp.lazsl_evidence.startswith("no prediction: ") and smp.lazsl_error in smp.lazsl_evidence
    )
    assert by[ids[3]].suspicion is None and res.rows[-1].suspicion is None
    # no label: no score, but the prediction's evidence
    smp = ds[items[4][0]]
    assert smp.lazsl_suspicion is None and smp.lazsl_evidence.startswith("no label")
    assert smp.lazsl_evidence_pred[0] == aset.attributes["class_0"][ce.strongest_attribute(0, A)]

    res = audit_labels(ds, "clip", "ground_truth", top_k=10, tag="clip_suspect")
    assert res.method == "clip" and not res.has_evidence
    assert res.tagged == [ids[1]]
    for smp in ds.select(ids[:3]):
        assert smp.clip_evidence_gt is None and smp.clip_evidence_pred is None
        assert NO_EVIDENCE_CLIP in smp.clip_evidence
        assert isinstance(smp.clip_suspicion, float)
    assert NO_EVIDENCE_CLIP in res.table()


def test_audit_errors(flipped):
    from fiftyone_lazsl.errors import UserError
    from fiftyone_lazsl.fo.audit import audit_labels

    ds, aset, items, flips = flipped
    with pytest.raises(UserError, match="no field 'lazsl'"):
        audit_labels(ds, "lazsl", "ground_truth")
    ds.clone_sample_field("ground_truth", "other")
    with pytest.raises(UserError, match="no known class order"):
        audit_labels(ds, "other", "ground_truth")


# --------------------------------------------------------------------------------------------
# Real photos, tiny random-weight model: every method, evaluate and audit end to end.

N_CROPS = 4
METHODS = ("clip", "dclip", "lazsl")


@pytest.fixture(scope="module")
def real_dataset(photo_data, tmp_path_factory):
    """3 CUB classes x 2 real photos, persistent (CLI subprocesses read it), with
    clip / dclip / lazsl runs of a tiny model over an 8-class subset of the CUB set."""
    import fiftyone as fo

    from fiftyone_lazsl import LaZSLClassifier, run_lazsl
    from fiftyone_lazsl.core.attributes import AttributeSet

    ckpt = str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=2))
    full = AttributeSet.from_json(photo_data / "attribute_sets" / "cub.json")
    src = photo_data / "images" / "cub"
    img_classes = sorted(os.listdir(src))[:3]
    aset = full.with_classes(img_classes + [c for c in full.classes if c not in img_classes][:5])
    name = "audit-real"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(
        [
            fo.Sample(filepath=str(src / c / f), ground_truth=fo.Classification(label=c))
            for c in img_classes
            for f in sorted(os.listdir(src / c))[:2]
        ]
    )
    from fiftyone_lazsl.core.models import load_model

    model = load_model(tiny_clip.TINY_MODEL, ckpt, device="cpu")
    for m in METHODS:
        clf = LaZSLClassifier(aset, model=model, method=m, n_crops=N_CROPS, seed=0, batch_size=6)
        s = run_lazsl(
            ds, aset, label_field=m, classifier=clf, num_workers=0, gt_field="ground_truth"
        )
        assert s.num_predicted == len(ds)
    yield ds, aset
    ds.delete()


def _check_audit_fields(ds, field, method, aset):
    import fiftyone as fo

    assert isinstance(ds.get_field(f"{field}_suspicion"), fo.FloatField)
    assert isinstance(ds.get_field(f"{field}_evidence"), fo.StringField)
    for f in (f"{field}_evidence_gt", f"{field}_evidence_pred"):
        fd = ds.get_field(f)
        assert isinstance(fd, fo.ListField) and isinstance(fd.field, fo.StringField)
    for smp in ds:
        assert isinstance(smp[f"{field}_suspicion"], float)
        assert -1.0 <= smp[f"{field}_suspicion"] <= 1.0
        assert isinstance(smp[f"{field}_evidence"], str) and smp[f"{field}_evidence"]
        if method == "clip":
            assert smp[f"{field}_evidence_gt"] is None and smp[f"{field}_evidence_pred"] is None
        else:
            assert set(smp[f"{field}_evidence_gt"]) <= set(aset.attributes[smp.ground_truth.label])
            assert set(smp[f"{field}_evidence_pred"]) <= set(aset.attributes[smp[field].label])


def _check_eval_keys(ds, fields, k):
    import fiftyone as fo

    for f in fields:
        for key in (f"eval_{f}", f"eval_{f}_top{k}"):
            assert key in ds.list_evaluations()
            assert isinstance(ds.get_field(key), fo.BooleanField)
            assert all(isinstance(v, bool) for v in ds.values(key))
        assert ds.get_evaluation_info(f"eval_{f}").config.method == "simple"
        assert ds.get_evaluation_info(f"eval_{f}_top{k}").config.method == "top-k"


def test_real_photos_python(real_dataset):
    from fiftyone_lazsl.fo.audit import audit_labels
    from fiftyone_lazsl.fo.evaluate import evaluate_methods

    ds, aset = real_dataset
    rep = evaluate_methods(ds, "ground_truth", list(METHODS), k=5)
    _check_eval_keys(ds, METHODS, 5)
    labels = ds.values("ground_truth.label")
    for m in rep.methods:
        preds = ds.values(f"{m.field}.label")
        assert m.accuracy == pytest.approx(np.mean([p == g for p, g in zip(preds, labels)]))
        assert m.accuracy == pytest.approx(m.results.metrics()["accuracy"])
        top5 = [classes_index_in_topk(ds, m.field, s, 5) for s in ds]
        assert m.topk_accuracy == pytest.approx(np.mean(top5))
        assert m.method == m.field
    table = rep.table()
    for m in METHODS:
        assert m in table
    for m in METHODS:
        res = audit_labels(ds, m, "ground_truth", top_k=2, tag=f"suspect_{m}")
        assert res.method == m
        _check_audit_fields(ds, m, m, aset)
        assert len(ds.match_tags(f"suspect_{m}")) == len(res.tagged) <= 2


def classes_index_in_topk(ds, field, smp, k):
    classes = ds.classes[field]
    lg = np.asarray(smp[field].logits)
    top = np.argsort(-lg, kind="stable")[:k]
    return classes.index(smp.ground_truth.label) in top


def _cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )


def test_real_photos_cli(real_dataset):
    ds, aset = real_dataset
    r = _cli(
        "evaluate",
        "--dataset",
        ds.name,
        "--gt-field",
        "ground_truth",
        "--pred-fields",
        ",".join(METHODS),
        "--top-k",
        "3",
    )
    assert r.returncode == 0, r.stderr
    for m in METHODS:
        assert m in r.stdout
    ds.reload()
    gt = ds.values("ground_truth.label")
    n = sum(a == g != b for a, b, g in zip(ds.values("lazsl.label"), ds.values("clip.label"), gt))
    # the view is saved (and listed) only when it holds samples
    assert ("'lazsl right, clip wrong'" in r.stdout) == (n > 0), (n, r.stdout)
    r = _cli(
        "audit",
        "--dataset",
        ds.name,
        "--pred-field",
        "lazsl",
        "--gt-field",
        "ground_truth",
        "--top-k",
        "2",
        "--tag",
        "cli_suspect",
    )
    assert r.returncode == 0, r.stderr
    assert "audited 6 samples" in r.stdout
    ds.reload()
    _check_eval_keys(ds, METHODS, 3)
    _check_audit_fields(ds, "lazsl", "lazsl", aset)
    assert ("lazsl right, clip wrong" in ds.list_saved_views()) == (n > 0)
    # a user error is one line, exit 2
    r = _cli("audit", "--dataset", ds.name, "--pred-field", "nope", "--gt-field", "ground_truth")
    assert r.returncode == 2 and "no field 'nope'" in r.stderr


def test_real_photos_operators(lazsl_plugin, real_dataset):
    ds, aset = real_dataset
    r = run_operator(
        "evaluate_methods", ds, {"gt_field": "ground_truth", "pred_fields": list(METHODS), "k": 4}
    )
    assert r.error is None, r.error
    assert set(r.result["accuracy"]) == set(METHODS)
    assert "worst classes" in r.result["table"]
    ds.reload()
    _check_eval_keys(ds, METHODS, 4)
    r = run_operator(
        "audit_labels",
        ds,
        {"pred_field": "dclip", "gt_field": "ground_truth", "top_k": 3, "tag": "op_suspect"},
    )
    assert r.error is None, r.error
    ds.reload()
    _check_audit_fields(ds, "dclip", "dclip", aset)
    assert r.result["num_tagged"] == len(ds.match_tags("op_suspect")) <= 3
    assert r.result["num_samples"] == len(ds)
