"""The explanations panel's attribute workbench and grid mode,
driven through FiftyOne's operator executor the way the App sends panel
events (the browser test drives the same panel in the real App)."""

import pytest

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin  # noqa: F401

tiny_clip.register()
CANDIDATES = [
    "a tiny green frog",
    "rusty metal pipes",
    "a red sports car",
    "snowy mountains",
    "blue ocean waves",
    "a wooden chair",
    "bright yellow flowers",
    "a city at night",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


def _panel_call(dataset, method, sample_id=None, state=None, params=None, view=None):
    import fiftyone.operators as foo

    p = {
        "__method__": method,
        "panel_id": "panel-1",
        "state": dict(state or {}),
        "panel_state": dict(state or {}),
    }
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
    kw = dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=6,
        seed=1,
        num_workers=0,
        feature_dtype="float32",
    )
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
    st["wb_text"] = "; ".join(attrs)  # the App keeps typed text in the panel state
    st = _state(_panel_call(ds, "wb_rescore_sample", sample.id, state=st), st)
    fresh = LaZSLClassifier(
        edit_attribute_set(run, pred, attrs),
        tiny_clip.TINY_MODEL,
        checkpoint,
        device="cpu",
        n_crops=6,
        seed=1,
    ).predict([sample.filepath])[0]
    assert fresh.label == expected["label"] != pred
    assert f"**With the edit of {pred}:** predicted {fresh.label}" in st["wb_result"]
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
        firsts = [
            a[0]
            for a, lb in zip(ds.values("lazsl_attributes"), ds.values("lazsl.label"))
            if lb == r["class"]
        ]
        assert r["attributes"].split("; ")[0] in firsts
    ops = _panel_call(
        ds, "filter_class", None, state=st, params={"class_name": st["grid_rows"][0]["class"]}
    )
    import fiftyone.core.view as fov

    v = fov.DatasetView._build(ds, [p for u, p in ops if u.endswith("set_view")][0]["view"])
    assert set(v.values("lazsl.label")) == {st["grid_rows"][0]["class"]}


def _two_runs(shared_data, checkpoint, name):
    """A dataset with a ``dclip`` run, then a ``lazsl`` run that stored features."""
    from fiftyone_lazsl import run_lazsl

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=4)
    classes = [c for _, c in photos]
    aset = {c: [f"trait {i}", f"{c} colouring", "a beak"] for i, c in enumerate(classes)}
    ds = bf.make_dataset(name, [p for p, _ in photos], gt=classes)
    kw = dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=6,
        seed=1,
        num_workers=0,
        feature_dtype="float32",
    )
    run_lazsl(ds, aset, label_field="dclip", method="dclip", **kw)
    run_lazsl(ds, aset, label_field="lazsl", store_features=True, **kw)
    return ds, aset


def _rendered_input(ops, name):
    """The rendered schema property of input ``name`` (last render)."""
    out = [p for u, p in ops if u.endswith("show_panel_output")][-1]["output"]
    return out["type"]["properties"][name]


def test_panel_opens_on_latest_run_and_remembers_choice(lazsl_plugin, shared_data, checkpoint):
    """The panel opens on the most recent run (not the alphabetically first),
    keeps the user's choice for other samples and a newly opened panel, and
    an event repeating the shown field changes nothing (no state echo that two
    panel instances could bounce between)."""
    ds, _ = _two_runs(shared_data, checkpoint, "panel-choice")
    a, b = ds.first(), ds.last()
    st = _state(_panel_call(ds, "on_load", a.id))
    assert st["fields"] == ["dclip", "lazsl"] and st["label_field"] == "lazsl"
    # the user picks dclip: the App has already put it in the state
    st["label_field"] = "dclip"
    ops = _panel_call(ds, "on_change_label_field", a.id, state=st, params={"value": "dclip"})
    st = _state(ops, st)
    assert st["shown_field"] == "dclip"
    assert not any("label_field" in p["state"] for u, p in ops if u.endswith("patch_panel_state"))
    # the same value again (e.g. a dropdown re-mounted after a split): nothing patched
    ops = _panel_call(ds, "on_change_label_field", a.id, state=st, params={"value": "dclip"})
    assert not [u for u, _ in ops if u.endswith("patch_panel_state")]
    # the field dropdown has no default that could override the state
    assert _rendered_input(ops, "label_field").get("default") is None
    # next sample, and a new panel (empty state): still dclip
    assert (
        _state(_panel_call(ds, "on_change_current_sample", b.id, state=st), st)["shown_field"]
        == "dclip"
    )
    assert _state(_panel_call(ds, "on_load", b.id))["label_field"] == "dclip"


def test_workbench_keeps_typing_and_saves_the_right_class(lazsl_plugin, shared_data, checkpoint):
    """Events while the user types never write the text field; switching the
    class keeps the typed text as that class's edit; the saved set holds each
    class's own attributes; the result names the edited class's new score and
    rank, and says "No edit" when nothing was edited."""
    from fiftyone_lazsl.fo.store import load_attribute_set
    from fiftyone_lazsl.fo.workbench import edit_attribute_set, rescore_sample, run_attribute_set

    ds, aset = _two_runs(shared_data, checkpoint, "panel-typing")
    sample = ds.first()
    st = _state(_panel_call(ds, "on_load", sample.id))
    assert st["label_field"] == "lazsl" and st["wb_available"] and len(st["wb_classes"]) >= 1
    first = st["wb_class"]
    assert st["wb_text"] == "; ".join(aset[first])
    # nothing edited: the result says so
    st = _state(_panel_call(ds, "wb_rescore_sample", sample.id, state=st), st)
    assert "With the edit" not in st["wb_result"] and "No edit yet" in st["wb_result"]

    typed = st["wb_text"] + "; black legs"
    st["wb_text"] = typed  # what the App holds after the keystrokes
    for event in ("on_change_view", "on_change_current_sample", "on_load"):
        ops = _panel_call(ds, event, sample.id, state=st)
        patched = [p["state"] for u, p in ops if u.endswith("patch_panel_state")]
        assert not any("wb_text" in p or "wb_class" in p for p in patched), (event, patched)
        assert _rendered_input(ops, "wb_text").get("default") is None

    # another class: its own attributes load, the typed text is kept as the first class's edit
    other = next(c for c in aset if c != first)
    st["wb_class"] = other
    st = _state(
        _panel_call(ds, "on_change_wb_class", sample.id, state=st, params={"value": other}), st
    )
    if other in st["wb_classes"]:
        assert st["wb_text"] == "; ".join(aset[other])
    assert st["wb_edits"] == {first: aset[first] + ["black legs"]}

    # the result reports the edited class's new score and rank, computed independently
    st["wb_class"] = first
    st = _state(
        _panel_call(ds, "on_change_wb_class", sample.id, state=st, params={"value": first}), st
    )
    assert st["wb_text"] == typed.replace(";  ", "; ")
    st = _state(_panel_call(ds, "wb_rescore_sample", sample.id, state=st), st)
    run = run_attribute_set(ds, "lazsl")
    r = rescore_sample(
        sample,
        "lazsl",
        edit_attribute_set(run, first, aset[first] + ["black legs"]),
        class_name=first,
    )
    c = r["class"]
    assert f"**With the edit of {first}:** predicted {r['label']}" in st["wb_result"]
    assert f"**{first}:** score {c['score']:.4f}, rank {c['rank']} of 4" in st["wb_result"]
    assert c["previous_rank"] is not None and f"rank {c['previous_rank']})" in st["wb_result"]

    st["wb_name"] = "crow-edit"
    st = _state(_panel_call(ds, "wb_save", sample.id, state=st), st)
    saved = load_attribute_set(ds, "crow-edit")
    assert saved.attributes[first] == aset[first] + ["black legs"]
    assert all(saved.attributes[c] == aset[c] for c in aset if c != first)
