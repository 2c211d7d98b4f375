"""What a curator meets in the App, checked without a browser against a real
database (the browser tests in test_app_workbench.py drive the same in
Chromium): the rescore_lazsl form refuses the label fields run_lazsl's form
refuses, label attributes are all kinds FiftyOne's tooltip can render (or
leaves out), crop detections start hidden, matched attributes are findable by
any of their words, and a field-name error advises deleting only leftovers."""

import pytest

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

tiny_clip.register()


@pytest.fixture(scope="module")
def run_ds(shared_data, tmp_path_factory):
    from fiftyone_lazsl import run_lazsl

    ckpt = str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))
    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)
    classes = [c for _, c in photos]
    aset = {
        c: [f"a small, brown bird {i}", f"{c} colouring", "a short beak"]
        for i, c in enumerate(classes)
    }
    ds = bf.make_dataset("app-defaults", [p for p, _ in photos], gt=classes)
    run_lazsl(
        ds,
        aset,
        label_field="lazsl",
        model=tiny_clip.TINY_MODEL,
        pretrained=ckpt,
        device="cpu",
        n_crops=12,
        seed=1,
        num_workers=0,
        store_features=True,
        feature_dtype="float32",
        gt_field="ground_truth",
    )
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.store import save_attribute_set

    save_attribute_set(ds, AttributeSet.from_dict(aset), "mine")
    yield ds
    ds.delete()


@pytest.mark.parametrize("field", ["a.b", "ground_truth", "lazsl_attributes", "filepath"])
def test_rescore_form_refuses_what_run_form_refuses(lazsl_plugin, run_ds, field):
    """The same label fields are invalid in both forms, with the same message,
    and executing anyway gives that one line (FiftyOne validates the params
    against the form) instead of a traceback from inside the re-scoring."""
    from fiftyone.operators.executor import ExecutionError

    msgs = {}
    for op, params in (
        ("run_lazsl", {"attribute_set": "cub", "label_field": field}),
        ("rescore_lazsl", {"from_field": "lazsl", "attribute_set": "mine", "label_field": field}),
    ):
        with pytest.raises(ExecutionError) as e:
            run_operator(op, run_ds, params)
        msgs[op] = str(e.value)
        assert "Traceback" not in msgs[op]
    from fiftyone_lazsl.errors import UserError
    from fiftyone_lazsl.fo.apply import check_label_field

    with pytest.raises(UserError) as want:
        check_label_field(run_ds, field)
    line = str(want.value).splitlines()[0]
    assert line in msgs["rescore_lazsl"] and line in msgs["run_lazsl"], msgs


def test_field_errors_advise_deleting_only_leftovers(run_ds):
    from fiftyone_lazsl.errors import UserError
    from fiftyone_lazsl.fo.apply import check_label_field

    for field in ("filepath", "ground_truth"):
        with pytest.raises(UserError) as e:
            check_label_field(run_ds, field)
        assert "delete" not in str(e.value), str(e.value)
    run_ds.add_sample_field("old_crops", __import__("fiftyone").StringField)
    try:
        with pytest.raises(UserError) as e:
            check_label_field(run_ds, "old")
        assert "delete those fields" in str(e.value)
    finally:
        run_ds.delete_sample_field("old_crops")


def _tooltip_text(value):
    """What FiftyOne's label tooltip shows for an attribute value (App
    ``TooltipInfo.ContentItem``): numbers, strings, booleans as such; an
    object without ``length`` (a dict) is left out; an array is joined
    (``joinStringArray``), so a dict inside it shows as ``[object Object]``."""
    if isinstance(value, dict):
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join("[object Object]" if isinstance(v, dict) else str(v) for v in value)
    return str(value)


def test_prediction_attributes_render_in_the_tooltip(run_ds):
    """Every custom attribute of the prediction renders as text in the App's
    tooltip (no list of dicts); the per-class evidence is still readable by
    the library, and the summary names the classes and attributes it holds."""
    from fiftyone_lazsl.fo.explain import explain_sample
    from fiftyone_lazsl.fo.labels import class_evidence, evidence_entries

    for s in run_ds:
        label = s["lazsl"].to_dict()
        texts = {
            k: _tooltip_text(v)
            for k, v in label.items()
            if not k.startswith("_") and k not in ("tags", "logits")
        }
        assert not any("[object Object]" in (t or "") for t in texts.values()), texts
        entries = evidence_entries(s["lazsl"])
        assert entries and entries[0]["role"] == "predicted"
        assert entries[0]["class"] == s["lazsl"].label
        summary = texts["evidence_summary"]
        for e in entries:
            assert e["class"] in summary
            best = max(range(len(e["scores"])), key=lambda i: e["scores"][i])
            assert f"{e['scores'][best]:.4f}" in summary
        assert class_evidence(s["lazsl"], entries[0]["index"])[0] == entries[0]["scores"]
        assert explain_sample(s, "lazsl", "ground_truth")["has_result"]


def test_crops_start_hidden_few_and_attributes_found_by_any_word(run_ds):
    """Crop detections are left out of the App's default active fields (the
    grid shows photos and pills), a run keeps 5 crops per sample by default,
    and the App sidebar's search (values starting with the typed text) finds
    an attribute by a word from its middle."""
    from fiftyone import ViewField as F

    active = run_ds.app_config.active_fields
    # FiftyOne's default (label fields only, no primitive pills) minus the crops
    assert active is not None and not active.exclude
    assert {"lazsl", "ground_truth"} <= set(active.paths)
    assert not {"lazsl_crops", "filepath", "id", "metadata"} & set(active.paths)
    assert max(len(s["lazsl_crops"].detections) for s in run_ds) == 5
    assert run_ds.has_field("lazsl.words")
    # "brown" is in the middle of "a small, brown bird ..."
    hits = run_ds.filter_labels("lazsl", F("words").filter(F().starts_with("brown")).length() > 0)
    has_brown = [s.id for s in run_ds if any("brown" in a for a in s["lazsl_attributes"])]
    assert has_brown and sorted(hits.values("id")) == sorted(has_brown)


def test_wca_crops_start_hidden_too(run_ds):
    """A WCA run writes crop detections like LaZSL's: they start hidden in the
    grid as well (the rule follows the methods that write crops)."""
    from fiftyone_lazsl import rescore

    rescore(run_ds, "mine", from_field="lazsl", label_field="wca_run", method="wca")
    active = run_ds.app_config.active_fields
    assert run_ds.count("wca_run_crops.detections") > 0
    assert active is not None and not active.exclude
    assert {"lazsl", "wca_run"} <= set(active.paths)
    assert not {"lazsl_crops", "wca_run_crops"} & set(active.paths)


def test_hiding_crops_respects_an_exclusion_list(run_ds):
    """A dataset whose App config lists hidden fields (``exclude=True``) keeps
    that form: the crops are added to it, the run's prediction is not hidden."""
    import fiftyone as fo

    from fiftyone_lazsl.fo.appconfig import hide_until_shown

    ds = run_ds.clone()
    try:
        ds.app_config.active_fields = fo.core.odm.dataset.ActiveFields(
            exclude=True, paths=["filepath", "new_run"]
        )
        ds.save()
        assert hide_until_shown(ds, ["new_run_crops"], show=["new_run"])
        active = ds.app_config.active_fields
        assert active.exclude and active.paths == ["filepath", "new_run_crops"]
        assert not hide_until_shown(ds, ["new_run_crops"], show=["new_run"])
    finally:
        ds.delete()
