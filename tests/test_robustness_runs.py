"""Robustness of runs: ``run_lazsl`` on real photos against a real MongoDB. Empty
views write nothing; re-runs replace cleanly; ``skip_existing`` retries
errors and keeps what was written; label fields never touch each other;
attribute sets whose classes are empty, missing, differently spelled,
unicode, or a single class."""

import shutil
import unicodedata

import bson
import pytest

import badfiles as bf
from badfiles import assert_every_sample_accounted
from fiftyone_lazsl.fo.labels import evidence_entries
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()

N = 4  # crops


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture(scope="module")
def photos(photo_data):
    """[(path, class)]: 4 CUB classes x 1 real photo."""
    return tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=4)


@pytest.fixture
def aset(photos):
    return {c: [f"attribute {i} of {c}", f"another trait {i}"] for i, (_, c) in enumerate(photos)}


def _run(ds, aset, checkpoint, **kw):
    from fiftyone_lazsl import run_lazsl

    kw.setdefault("n_crops", N)
    kw.setdefault("num_workers", 0)
    return run_lazsl(
        ds, aset, model=tiny_clip.TINY_MODEL, pretrained=checkpoint, device="cpu", seed=2, **kw
    )


def _raw(ds, fields):
    """{sample id: BSON bytes of ``fields``} straight from the database."""
    coll = ds._sample_collection
    return {
        str(d["_id"]): bson.BSON.encode({f: d.get(f) for f in fields})
        for d in coll.find({}, {f: 1 for f in fields})
    }


def _fields(label_field):
    return [
        label_field,
        f"{label_field}_crops",
        f"{label_field}_attributes",
        f"{label_field}_error",
    ]


def test_empty_view_writes_nothing(photos, aset):
    from fiftyone import ViewField as F

    from fiftyone_lazsl import run_lazsl

    ds = bf.make_dataset("runs-empty", [p for p, _ in photos], gt=[c for _, c in photos])
    schema = set(ds.get_field_schema())
    empty = ds.match(F("ground_truth.label") == "no such class")
    # model arguments that cannot load: nothing is loaded for an empty view
    s = run_lazsl(empty, aset, model="no-such-model", pretrained="no-such-weights")
    assert (s.num_samples, s.num_predicted, s.failures, s.run_key) == (0, 0, [], None)
    ds.reload()
    assert set(ds.get_field_schema()) == schema
    assert ds.list_runs() == [] and "lazsl" not in ds.classes


def test_failures_recorded_then_retried_by_skip_existing(tmp_path, photos, aset, checkpoint):
    """A sample whose file is missing gets the reason and the run goes on;
    ``skip_existing`` retries only it (the others are not touched, byte for
    byte) and its error disappears once the file exists."""
    late = tmp_path / "late.jpg"
    files = [p for p, _ in photos] + [str(late)]
    ds = bf.make_dataset("runs-retry", files)
    s1 = _run(ds, aset, checkpoint, batch_size=2, write_every=1)
    assert s1.num_predicted == 4 and [f[1] for f in s1.failures] == [str(late)]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert "file not found" in out[str(late)]
    before = _raw(ds, _fields("lazsl"))

    # nothing changed: skip_existing retries the failed sample, which fails again
    s2 = _run(ds, aset, checkpoint, skip_existing=True)
    assert s2.num_samples == 1 and s2.num_failed == 1
    assert _raw(ds, _fields("lazsl")) == before

    shutil.copy(photos[0][0], late)
    s3 = _run(ds, aset, checkpoint, skip_existing=True)
    assert (s3.num_samples, s3.num_predicted, s3.failures) == (1, 1, [])
    out = assert_every_sample_accounted(ds, "lazsl")
    assert out[str(late)] in aset
    after = _raw(ds, _fields("lazsl"))
    late_id = ds.match({"filepath": str(late)}).first().id
    assert {k: v for k, v in after.items() if k != late_id} == {
        k: v for k, v in before.items() if k != late_id
    }
    assert ds.count("lazsl_error") == 0

    # everything predicted: a further resume has nothing to do and writes nothing
    s4 = _run(ds, aset, checkpoint, skip_existing=True)
    assert s4.num_samples == 0
    assert _raw(ds, _fields("lazsl")) == after


def test_rerun_on_same_field_replaces_cleanly(tmp_path, photos, aset, checkpoint):
    late = tmp_path / "late.jpg"
    files = [p for p, _ in photos] + [str(late)]
    ds = bf.make_dataset("runs-replace", files)
    _run(ds, aset, checkpoint, n_crops=12, top_k_crops=10)
    assert ds.count("lazsl_error") == 1
    assert max(len(s.lazsl_crops.detections) for s in ds.exists("lazsl")) > 5
    shutil.copy(photos[1][0], late)
    _run(ds, aset, checkpoint, n_crops=5)
    assert_every_sample_accounted(ds, "lazsl")
    assert ds.count("lazsl_error") == 0 and ds.count("lazsl") == len(files)
    for s in ds:
        assert 1 <= len(s.lazsl_crops.detections) <= 5
        assert all(0 <= d["crop_index"] < 5 for d in s.lazsl_crops.detections)
    cfg = ds.get_run_info("lazsl_lazsl").config
    assert cfg.n_crops == 5 and cfg.status == "completed" and cfg.num_failed == 0


def test_resume_with_other_parameters_is_refused(photos, aset, checkpoint):
    from fiftyone_lazsl.errors import UserError

    ds = bf.make_dataset("runs-resume-params", [p for p, _ in photos])
    _run(ds, aset, checkpoint, n_crops=6)
    ds.limit(2).set_values("lazsl", [None, None])  # as if interrupted
    before = _raw(ds, _fields("lazsl"))
    with pytest.raises(UserError, match="n_crops"):
        _run(ds, aset, checkpoint, n_crops=7, skip_existing=True)
    assert _raw(ds, _fields("lazsl")) == before
    assert ds.get_run_info("lazsl_lazsl").config.n_crops == 6
    s = _run(ds, aset, checkpoint, n_crops=6, skip_existing=True)
    assert s.num_samples == 2 and s.num_predicted == 2
    assert_every_sample_accounted(ds, "lazsl")


def test_two_label_fields_never_touch_each_other(photos, aset, checkpoint):
    from fiftyone_lazsl.errors import UserError

    ds = bf.make_dataset("runs-two-fields", [p for p, _ in photos], gt=[c for _, c in photos])
    _run(ds, aset, checkpoint, label_field="a", n_crops=6)
    a_before = _raw(ds, _fields("a") + ["ground_truth"])
    _run(ds, aset, checkpoint, label_field="b", n_crops=3, method="lazsl")
    _run(ds, aset, checkpoint, label_field="b", n_crops=5)  # re-run clears only b*
    _run(ds, aset, checkpoint, label_field="c", method="dclip")
    assert _raw(ds, _fields("a") + ["ground_truth"]) == a_before
    for f in ("a", "b", "c"):
        assert_every_sample_accounted(ds, f)
    assert ds.get_run_info("lazsl_a").config.n_crops == 6
    assert ds.get_run_info("lazsl_b").config.n_crops == 5

    # fields that would overwrite another run's outputs or user fields are refused
    runs = sorted(ds.list_runs())
    for bad in ("a_crops", "ground_truth", "filepath", "b_error"):
        with pytest.raises(UserError, match="choose another label field"):
            _run(ds, aset, checkpoint, label_field=bad)
    assert sorted(ds.list_runs()) == runs
    assert _raw(ds, _fields("a") + ["ground_truth"]) == a_before


def test_empty_attribute_list_uses_class_name_prompt(photos, checkpoint):
    from fiftyone_lazsl.core.attributes import AttributeSet

    classes = [c for _, c in photos]
    attrs = {classes[0]: [], classes[1]: ["a black head"], classes[2]: [], classes[3]: ["wings"]}
    aset = AttributeSet.from_dict(attrs, name="with-empty")
    assert any(classes[0] in w and classes[2] in w for w in aset.warnings)
    ds = bf.make_dataset("runs-empty-attrs", [p for p, _ in photos], gt=classes)
    s = _run(ds, aset, checkpoint, gt_field="ground_truth")
    assert s.num_predicted == len(photos)
    assert_every_sample_accounted(ds, "lazsl")
    cfg = ds.get_run_info("lazsl_lazsl").config
    assert cfg.attribute_set_warnings == aset.warnings
    assert [len(a) for a in cfg.attribute_labels] == [1, 1, 1, 1]  # class-name-only prompt
    for smp in ds:
        ev = evidence_entries(smp.lazsl)
        assert ev and all(len(e["scores"]) == 1 and len(e["attributes"]) == 1 for e in ev)


def test_classes_missing_from_set_error_or_restrict(photos, checkpoint):
    from fiftyone_lazsl.core.attributes import AttributeSetError

    classes = [c for _, c in photos]
    aset = {c: ["a trait"] for c in classes[:2]}
    ds = bf.make_dataset("runs-missing", [p for p, _ in photos], gt=classes)
    schema = set(ds.get_field_schema())
    with pytest.raises(AttributeSetError) as e:
        _run(ds, aset, checkpoint, gt_field="ground_truth")
    for c in classes[2:]:
        assert repr(c) in str(e.value)
    assert set(ds.get_field_schema()) == schema and ds.list_runs() == []

    s = _run(ds, aset, checkpoint, gt_field="ground_truth", restrict_to_set=True)
    assert s.num_samples == 2 and s.num_predicted == 2
    inside = ds.match({"ground_truth.label": {"$in": classes[:2]}})
    outside = ds.match({"ground_truth.label": {"$in": classes[2:]}})
    assert_every_sample_accounted(inside, "lazsl")
    assert outside.count("lazsl") == 0 and outside.count("lazsl_error") == 0


def test_padded_cased_duplicate_and_unicode_class_names(photos, checkpoint):
    """Ground-truth labels match set classes by ``class_key``: padding, inner
    spaces, unicode normal form and case do not matter (case differences are
    accepted on purpose: label files often differ only in case). Duplicate
    classes in the set are merged; predictions use the set's spelling."""
    from fiftyone_lazsl.core.attributes import AttributeSet

    creme = "Crème brûlée"
    attrs = {
        "Bobolink": ["black underparts"],
        " bobolink ": ["a buff nape"],
        creme: ["a caramelised top"],
        "日本の鳥": ["赤い頭"],
        "Ærø Ferry": [],
    }
    aset = AttributeSet.from_dict(attrs, name="odd-names")
    assert aset.classes == ["Bobolink", creme, "日本の鳥", "Ærø Ferry"]
    assert aset["Bobolink"] == ["black underparts", "a buff nape"]
    assert any("duplicate" in w for w in aset.warnings)
    gt = [" bobolink", "BOBOLINK  ", unicodedata.normalize("NFD", creme.upper()), "日本の鳥"]
    ds = bf.make_dataset("runs-names", [p for p, _ in photos], gt=gt)
    s = _run(ds, aset, checkpoint, gt_field="ground_truth")
    assert s.num_predicted == 4
    out = assert_every_sample_accounted(ds, "lazsl")
    assert set(out.values()) <= set(aset.classes)
    assert ds.classes["lazsl"] == aset.classes
    # restrict_to_set keeps every sample: all their labels resolve to set classes
    s = _run(
        ds,
        aset,
        checkpoint,
        gt_field="ground_truth",
        restrict_to_set=True,
        label_field="restricted",
    )
    assert s.num_samples == 4


def test_single_class_set(photos, checkpoint):
    ds = bf.make_dataset("runs-one-class", [p for p, _ in photos])
    _run(ds, {"Bobolink": ["black underparts", "a buff nape"]}, checkpoint)
    assert_every_sample_accounted(ds, "lazsl")
    for s in ds:
        assert s.lazsl.label == "Bobolink"
        assert len(s.lazsl.logits) == 1 and s.lazsl.confidence == pytest.approx(1.0)
        assert s.lazsl_crops.detections
