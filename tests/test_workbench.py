"""The explanations panel's attribute workbench and grid mode,
driven through FiftyOne's operator executor the way the App sends panel
events (the browser test drives the same panel in the real App)."""

import pytest

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin  # noqa: F401

tiny_clip.register()
CANDIDATES = ["a tiny green frog", "rusty metal pipes", "a red sports car", "snowy mountains",
              "blue ocean waves", "a wooden chair", "bright yellow flowers", "a city at night"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


def _panel_call(dataset, method, sample_id=None, state=None, params=None, view=None):
    import fiftyone.operators as foo

    p = {"__method__": method, "panel_id": "panel-1", "state": dict(state or {}),
         "panel_state": dict(state or {})}
    p.update(params or {})
    ctx = {"dataset": dataset.name, "params": p, "current_sample": sample_id}
    if view is not None:
        ctx["view"] = view
    r = foo.execute_operator("@fiftyone-lazsl/lazsl/lazsl_explanations", ctx=ctx)
    assert r.error is None, r.error
    return [(q.operator_uri, q.params) for q in r.executor._requests]


def _state(ops, state=None):
    out = dict(state or {})
    for uri, params in ops:
        if uri.endswith("patch_panel_state"):
            out.update(params["state"])
        elif uri.endswith("set_panel_state"):
            out.update(params["state"])
    return out


def label_changing_edit(sample, field, aset):
    """An edit of the predicted class's attributes that changes this sample's
    label (computed with the library's one-sample re-scoring)."""
    from fiftyone_lazsl.fo.workbench import classifier_for, edit_attribute_set, rescore_sample

    pred = sample[field].label
    for k in range(len(CANDIDATES)):
        attrs = [CANDIDATES[k], CANDIDATES[(k + 3) % len(CANDIDATES)]]
        new = edit_attribute_set(aset, pred, attrs)
        r = rescore_sample(sample, field, new, classifier_for(sample._dataset, field, new))
        if r["label"] != pred:
            return pred, attrs, r
    pytest.skip("no candidate edit changes the label of this sample")


def test_workbench_events_and_grid(lazsl_plugin, shared_data, checkpoint):
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.fo.store import load_attribute_set
    from fiftyone_lazsl.fo.workbench import edit_attribute_set, run_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=4)
    classes = [c for _, c in photos]
    aset = {c: [f"trait {i}", f"{c} colouring", "a beak"] for i, c in enumerate(classes)}
    ds = bf.make_dataset("workbench", [p for p, _ in photos], gt=classes)
    kw = dict(model=tiny_clip.TINY_MODEL, pretrained=checkpoint, device="cpu", n_crops=6, seed=1,
              num_workers=0, feature_dtype="float32")
    run_lazsl(ds, aset, label_field="lazsl", store_features=True, **kw)
    run = run_attribute_set(ds, "lazsl")
    sample = ds.first()
    pred, attrs, expected = label_changing_edit(sample, "lazsl", run)

    # on_load in the modal: workbench offered for the predicted and gt classes
    st = _state(_panel_call(ds, "on_load", sample.id))
    assert st["wb_available"] and st["wb_classes"][0] == pred
    assert st["wb_text"] == "; ".join(aset[pred])

    # edit -> re-score this sample: equals a fresh classifier on the image
    st["wb_class"] = pred
    st = _state(_panel_call(ds, "wb_rescore_sample", sample.id, state=st,
                            params={"wb_text": "; ".join(attrs)}), st)
    fresh = LaZSLClassifier(edit_attribute_set(run, pred, attrs), tiny_clip.TINY_MODEL, checkpoint,
                            device="cpu", n_crops=6, seed=1).predict([sample.filepath])[0]
    assert fresh.label == expected["label"] != pred
    assert f"**With the edit:** {fresh.label}" in st["wb_result"]
    assert st["wb_edits"] == {pred: attrs}

    # re-score the view into lazsl_edited: labels equal rescore() with the edited set
    ops = _panel_call(ds, "wb_rescore_view", sample.id, state=st, view=ds.view())
    st = _state(ops, st)
    assert any(u.endswith("reload_dataset") for u, _ in ops)
    edited = edit_attribute_set(run, pred, attrs)
    rescore(ds, edited, from_field="lazsl", label_field="check")
    ds.reload()
    assert ds.values("lazsl_edited.label") == ds.values("check.label")
    assert ds.values("lazsl_edited.label") != ds.values("lazsl.label")

    # save: a new set recording parent and edit
    st["wb_name"] = "my-edit"
    st = _state(_panel_call(ds, "wb_save", sample.id, state=st), st)
    saved = load_attribute_set(ds, "my-edit")
    assert saved.attributes[pred] == attrs
    assert saved.metadata["edit"] == {"class": pred, "before": aset[pred], "after": attrs}
    assert saved.metadata["parent_hash"] == run.content_hash

    # grid mode: run parameters and per-class rows of the current view
    st = _state(_panel_call(ds, "on_load", None, state={"label_field": "lazsl"}, view=ds.view()))
    assert "**theta**" in st["grid_params"] and "feature_store" in st["grid_params"]
    counts = ds.count_values("lazsl.label")
    assert {r["class"]: r["count"] for r in st["grid_rows"]} == counts
    for r in st["grid_rows"]:
        firsts = [a[0] for a, lb in zip(ds.values("lazsl_attributes"), ds.values("lazsl.label"))
                  if lb == r["class"]]
        assert r["attributes"].split("; ")[0] in firsts
    ops = _panel_call(ds, "filter_class", None, state=st, params={"class_name": st["grid_rows"][0]["class"]})
    import fiftyone.core.view as fov
    v = fov.DatasetView._build(ds, [p for u, p in ops if u.endswith("set_view")][0]["view"])
    assert set(v.values("lazsl.label")) == {st["grid_rows"][0]["class"]}
