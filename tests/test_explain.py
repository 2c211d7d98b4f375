"""The explanation panel's contents, without a browser, against a real
database: per-sample tables (score contributions, crop counts, ordering), the "no LaZSL
result" case, ground truth differing from the prediction, the matched-attribute
view, and evidence heatmaps (hand-computed boxes, and a real tiny-model run)."""

import fiftyone as fo
import numpy as np
import pytest

from fiftyone_lazsl.fo.explain import (
    explain_sample,
    matched_attribute_view,
    panel_content,
)
from fiftyone_lazsl.fo.fields import ground_truth_fields
from fiftyone_lazsl.fo.heatmaps import evidence_heatmap, heatmap_field_name, write_heatmaps
from fiftyone_lazsl.fo.runs import run_key
from plugin_fixtures import lazsl_plugin  # noqa: F401

CLASSES = ["Cardinal", "Bobolink", "Blue Jay"]
ATTRS = [
    ["red plumage", "black face mask", "conical orange beak"],
    ["black underparts", "white back patch"],
    ["blue crest", "white belly", "black necklace", "blue wings"],
]


def _prediction(label, logits, scores, crops, confidence=0.8):
    c = fo.Classification(label=label, confidence=confidence, logits=logits)
    c["attribute_scores"] = scores
    c["attribute_crops"] = crops
    return c


def _det(label, box, mass, crop_index, attribute_index, confidence=0.5):
    return fo.Detection(
        label=label,
        bounding_box=box,
        confidence=confidence,
        similarity=0.3,
        mass=mass,
        crop_index=crop_index,
        attribute_index=attribute_index,
    )


@pytest.fixture
def dataset(request, tmp_path):
    """Four samples following the runs.py schema, plus the registered run:

    a: predicted Cardinal, gt Cardinal; b: predicted Cardinal, gt Bobolink;
    c: no result at all; d: failed (F_error only).
    """
    name = f"explain-{request.node.name}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    files = []
    for i in range(4):
        p = tmp_path / f"img{i}.jpg"
        p.write_bytes(b"")  # never decoded: the panel only reads stored fields
        files.append(str(p))
    a = fo.Sample(filepath=files[0], ground_truth=fo.Classification(label="Cardinal"))
    a["lazsl"] = _prediction(
        "Cardinal",
        [0.31, 0.22, 0.27],
        # Cardinal contributions have a tie (0.3/0.3) to pin the tie-break order.
        [[0.4, 0.3, 0.3], [0.6, 0.4], [0.1, 0.2, 0.3, 0.4]],
        [[4, 2, 3], [6, 3], [1, 2, 3, 3]],
        confidence=0.61,
    )
    a["lazsl_crops"] = fo.Detections(
        detections=[
            _det("red plumage", [0.0, 0.0, 0.5, 0.5], 0.2, 0, 0),
            _det("black face mask", [0.25, 0.25, 0.5, 0.5], 0.1, 1, 1),
        ]
    )
    a["lazsl_attributes"] = ["red plumage", "black face mask", "conical orange beak"]

    b = fo.Sample(filepath=files[1], ground_truth=fo.Classification(label="Bobolink"))
    b["lazsl"] = _prediction(
        "Cardinal",
        [0.30, 0.21, 0.25],
        [[0.2, 0.7, 0.1], [0.45, 0.55], [0.25, 0.25, 0.25, 0.25]],
        [[1, 6, 0], [3, 4], [2, 2, 2, 1]],
    )
    b["lazsl_crops"] = fo.Detections(
        detections=[_det("black face mask", [0.5, 0.5, 0.5, 0.5], 0.3, 0, 1)]
    )
    b["lazsl_attributes"] = ["black face mask", "red plumage"]

    c = fo.Sample(filepath=files[2], ground_truth=fo.Classification(label="Blue Jay"))
    d = fo.Sample(filepath=files[3], ground_truth=fo.Classification(label="Blue Jay"))
    d["lazsl_error"] = "cannot identify image file"
    ds.add_samples([a, b, c, d])
    cfg = ds.init_run(
        classes=CLASSES, attribute_labels=ATTRS, label_field="lazsl", method="lazsl", model="test"
    )
    ds.register_run(run_key("lazsl"), cfg)
    yield ds
    ds.delete()


def _sample(ds, i):
    return ds.skip(i).first()


def test_tables_contributions_counts_and_order(dataset):
    e = explain_sample(_sample(dataset, 0), "lazsl", "ground_truth")
    assert e["has_result"] is True
    assert e["predicted"] == {
        "label": "Cardinal",
        "index": 0,
        "score": pytest.approx(0.31),
        "confidence": pytest.approx(0.61),
    }
    # Runner-up: highest logit among the other classes (Blue Jay 0.27 > Bobolink 0.22).
    assert e["runner_up"] == {"label": "Blue Jay", "index": 2, "score": pytest.approx(0.27)}
    rows = e["predicted_rows"]
    assert [r["attribute"] for r in rows] == [
        "red plumage",
        "black face mask",
        "conical orange beak",
    ]
    assert [r["contribution"] for r in rows] == pytest.approx([0.4, 0.3, 0.3])
    assert [r["crops"] for r in rows] == [4, 2, 3]
    assert [r["attribute_index"] for r in rows] == [0, 1, 2]  # tie 0.3/0.3 kept in attribute order
    assert e["ground_truth"]["label"] == "Cardinal" and e["ground_truth"]["rank"] == 1
    assert e["gt_differs"] is False and e["gt_rows"] == []
    assert e["matched_attributes"] == ["red plumage", "black face mask", "conical orange beak"]

    content = panel_content(e)
    assert "**Predicted:** Cardinal (score 0.3100, confidence 0.610)" in content["summary"]
    assert "**Runner-up:** Blue Jay (score 0.2700)" in content["summary"]
    assert "agrees" in content["summary"]
    assert content["predicted_table"] == [
        {"attribute": "red plumage", "contribution": "0.4000", "crops": "4", "ranked": "yes"},
        {"attribute": "black face mask", "contribution": "0.3000", "crops": "2", "ranked": "yes"},
        {
            "attribute": "conical orange beak",
            "contribution": "0.3000",
            "crops": "3",
            "ranked": "yes",
        },
    ]
    assert content["gt_table"] == [] and content["gt_title"] == ""


def test_rows_sorted_by_contribution_not_attribute_order(dataset):
    e = explain_sample(_sample(dataset, 1), "lazsl")
    assert [r["attribute"] for r in e["predicted_rows"]] == [
        "black face mask",
        "red plumage",
        "conical orange beak",
    ]
    assert [r["crops"] for r in e["predicted_rows"]] == [6, 1, 0]
    assert e["ground_truth"] is None and e["gt_differs"] is False


def test_ground_truth_differs(dataset):
    e = explain_sample(_sample(dataset, 1), "lazsl", "ground_truth")
    assert e["predicted"]["label"] == "Cardinal"
    assert e["ground_truth"] == {
        "label": "Bobolink",
        "index": 1,
        "score": pytest.approx(0.21),
        "rank": 3,
    }
    assert e["gt_differs"] is True
    assert [(r["attribute"], r["contribution"], r["crops"]) for r in e["gt_rows"]] == [
        ("white back patch", pytest.approx(0.55), 4),
        ("black underparts", pytest.approx(0.45), 3),
    ]
    content = panel_content(e)
    assert (
        "**Ground truth:** Bobolink (score 0.2100, rank 3) differs from the prediction"
        in content["summary"]
    )
    assert content["gt_title"] == "Attributes of ground-truth class Bobolink"
    assert content["gt_table"] == [
        {"attribute": "white back patch", "contribution": "0.5500", "crops": "4", "ranked": ""},
        {"attribute": "black underparts", "contribution": "0.4500", "crops": "3", "ranked": ""},
    ]
    # Only the attributes in F_attributes are marked as ranked.
    assert [r["ranked"] for r in content["predicted_table"]] == ["yes", "yes", ""]


def test_ground_truth_outside_run_classes(dataset):
    s = _sample(dataset, 1)
    s["ground_truth"] = fo.Classification(label="Ostrich")
    s.save()
    e = explain_sample(s, "lazsl", "ground_truth")
    assert e["ground_truth"] == {"label": "Ostrich", "index": None, "score": None, "rank": None}
    assert e["gt_differs"] is True and e["gt_rows"] == []
    assert "not among this run's classes" in panel_content(e)["summary"]


def test_no_lazsl_result(dataset):
    e = explain_sample(_sample(dataset, 2), "lazsl", "ground_truth")
    assert e["has_result"] is False
    assert e["message"] == "This sample has no LaZSL result in field 'lazsl'."
    assert e["predicted"] is None and e["predicted_rows"] == [] and e["gt_rows"] == []
    content = panel_content(e)
    assert content["summary"].startswith("**No LaZSL result.**")
    assert content["predicted_table"] == [] and content["matched_attributes"] == []

    failed = explain_sample(_sample(dataset, 3), "lazsl")
    assert failed["has_result"] is False
    assert failed["error"] == "cannot identify image file"
    assert (
        "LaZSL failed on this sample: cannot identify image file"
        in panel_content(failed)["summary"]
    )

    # A field no run wrote: no result either (not an exception).
    other = explain_sample(_sample(dataset, 0), "other_field")
    assert other["has_result"] is False and "other_field" in other["message"]


def test_config_passed_explicitly_and_missing_run(dataset):
    cfg = {"classes": CLASSES, "attribute_labels": ATTRS}
    s = _sample(dataset, 0)
    assert (
        explain_sample(s, "lazsl", config=cfg)["predicted_rows"]
        == explain_sample(s, "lazsl")["predicted_rows"]
    )
    dataset.delete_run(run_key("lazsl"))
    with pytest.raises(ValueError, match="no LaZSL run wrote field 'lazsl'"):
        explain_sample(dataset.reload() or _sample(dataset, 0), "lazsl")


def test_matched_attribute_view(dataset):
    ids = dataset.values("id")
    view = matched_attribute_view(dataset, "lazsl", "black face mask")
    assert sorted(view.values("id")) == sorted(ids[:2])
    view = matched_attribute_view(dataset, "lazsl", "conical orange beak")
    assert view.values("id") == [ids[0]]
    assert matched_attribute_view(dataset, "lazsl", "blue crest").count() == 0
    # Works on a view too, and composes with it.
    assert matched_attribute_view(dataset.skip(1), "lazsl", "red plumage").values("id") == [ids[1]]


def test_ground_truth_fields(dataset):
    dataset.add_sample_field(
        "other_gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification
    )
    assert ground_truth_fields(dataset) == ["ground_truth", "other_gt"]


def test_evidence_heatmap_known_boxes():
    # Two overlapping quarter boxes on a 4x4 grid; masses 1 and 3.
    hm = evidence_heatmap([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]], [1.0, 3.0], size=(4, 4))
    expected = (
        np.array(
            [
                [1, 1, 0, 0],
                [1, 4, 3, 0],
                [0, 3, 3, 0],
                [0, 0, 0, 0],
            ],
            dtype=np.float32,
        )
        / 4
    )
    assert hm.dtype == np.float32 and hm.shape == (4, 4)
    np.testing.assert_allclose(hm, expected)

    # Non-square map: a box spanning the right half of a 2x6 map.
    hm = evidence_heatmap([[0.5, 0.0, 0.5, 1.0]], [0.2], size=(2, 6))
    np.testing.assert_allclose(hm, [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]])

    # A box smaller than a cell still covers one cell; zero/NaN mass is ignored.
    hm = evidence_heatmap(
        [[0.9, 0.9, 0.01, 0.01], [0, 0, 1, 1], [0, 0, 1, 1]], [0.5, 0.0, float("nan")], size=(3, 3)
    )
    np.testing.assert_allclose(hm, [[0, 0, 0], [0, 0, 0], [0, 0, 1]])

    assert not evidence_heatmap([], [], size=(2, 2)).any()
    with pytest.raises(ValueError):
        evidence_heatmap([[0, 0, 1, 1]], [1.0, 2.0], size=(2, 2))
    with pytest.raises(ValueError):
        evidence_heatmap([[0, 0, 1, 1]], [1.0], size=(0, 2))


def test_write_heatmaps(dataset):
    a = _sample(dataset, 0)
    a["metadata"] = fo.ImageMetadata(width=400, height=200)
    a.save()
    field = write_heatmaps(dataset, "lazsl", max_side=8)
    assert field == heatmap_field_name("lazsl") == "lazsl_heatmap"
    maps = dataset.values(field)
    # a: metadata 400x200 -> 4x8 map; same boxes/masses as evidence_heatmap.
    assert isinstance(maps[0], fo.Heatmap) and maps[0].range == [0.0, 1.0]
    np.testing.assert_allclose(
        maps[0].map,
        evidence_heatmap([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]], [0.2, 0.1], size=(4, 8)),
    )
    assert maps[0].map.max() == pytest.approx(1.0)
    # b: no metadata -> square map; its single box is the bottom-right quarter.
    assert maps[1].map.shape == (8, 8)
    assert maps[1].map[4:, 4:].min() == 1.0 and maps[1].map[:4].max() == 0.0
    # c and d have no crops.
    assert maps[2] is None and maps[3] is None

    write_heatmaps(dataset.limit(1), "lazsl", heatmap_field="hm")
    assert dataset.values("hm")[0].map.shape == (32, 64)
    with pytest.raises(ValueError, match="no field 'nope_crops'"):
        write_heatmaps(dataset, "nope")


def test_run_without_crop_counts(dataset):
    """DCLIP runs store ``attribute_scores`` but no ``attribute_crops``."""
    s = _sample(dataset, 0)
    s["lazsl"]["attribute_crops"] = None
    s.save()
    e = explain_sample(s, "lazsl")
    assert [r["crops"] for r in e["predicted_rows"]] == [None, None, None]
    assert [r["crops"] for r in panel_content(e)["predicted_table"]] == ["n/a", "n/a", "n/a"]


def test_explain_real_tiny_model_run(photo_data, tmp_path):
    """Contents for a real (random-weight tiny model) LaZSL run on real photos
    agree with what the run stored: contributions add up to the class logit
    (over the logit scale), crop counts of the predicted class match the crop
    detections' labels, ``F_attributes`` are the top rows, and the heatmap is
    the detections' mass accumulated over their boxes."""
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.testing import tiny_clip

    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    photos = tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=3)
    ds = fo.Dataset("explain-real-run")
    try:
        ds.add_samples(
            [fo.Sample(filepath=p, ground_truth=fo.Classification(label=c)) for p, c in photos]
        )
        classes = [c for _, c in photos]
        aset = {c: ATTRS[i] for i, c in enumerate(classes)}
        # gt_field: compact outputs then keep the ground-truth class's evidence too.
        run_lazsl(
            ds,
            aset,
            model=tiny_clip.TINY_MODEL,
            pretrained=ckpt,
            n_crops=8,
            seed=1,
            batch_size=3,
            device="cpu",
            top_attributes=2,
            heatmap=True,
            gt_field="ground_truth",
        )
        scale = ds.get_run_info(run_key("lazsl")).config.logit_scale
        assert ds.has_field("lazsl_heatmap")
        for sample in ds:
            e = explain_sample(sample, "lazsl", "ground_truth")
            assert e["has_result"]
            p = e["predicted"]["index"]
            rows = e["predicted_rows"]
            total = sum(r["contribution"] for r in rows)
            assert total * scale == pytest.approx(e["predicted"]["score"], abs=2e-3)
            labels = [d.label for d in sample["lazsl_crops"].detections]
            assert {r["attribute"]: r["crops"] for r in rows} == {
                a: labels.count(a) for a in ATTRS[p]
            }
            assert sum(r["crops"] for r in rows) == len(labels)
            contrib = {r["attribute"]: r["contribution"] for r in rows}
            assert sorted((contrib[a] for a in e["matched_attributes"]), reverse=True) == [
                r["contribution"] for r in rows[:2]
            ]
            assert e["runner_up"]["score"] <= e["predicted"]["score"]
            if e["gt_differs"]:
                gt_total = sum(r["contribution"] for r in e["gt_rows"])
                assert gt_total * scale == pytest.approx(e["ground_truth"]["score"], abs=2e-3)
            dets = sample["lazsl_crops"].detections
            hm = sample["lazsl_heatmap"].map
            assert hm.max() == pytest.approx(1.0)
            np.testing.assert_allclose(
                hm,
                evidence_heatmap(
                    [d.bounding_box for d in dets], [d["mass"] for d in dets], size=hm.shape
                ),
            )
    finally:
        ds.delete()


def _panel_call(dataset, method, sample_id=None, state=None, params=None):
    """Run one event of the lazsl_explanations panel the way the App does
    (``__method__`` + panel state) and return the operations it triggered as
    ``[(operator_uri, params)]``."""
    import fiftyone.operators as foo

    p = {
        "__method__": method,
        "panel_id": "panel-1",
        "state": dict(state or {}),
        "panel_state": dict(state or {}),
    }
    p.update(params or {})
    r = foo.execute_operator(
        "@fiftyone-lazsl/lazsl/lazsl_explanations",
        ctx={"dataset": dataset.name, "params": p, "current_sample": sample_id},
    )
    assert r.error is None, r.error
    return [(q.operator_uri, q.params) for q in r.executor._requests]


def _patched_state(ops):
    state = {}
    for uri, params in ops:
        if uri.endswith("patch_panel_state"):
            state.update(params["state"])
    return state


def test_panel_shell_uses_library(lazsl_plugin, dataset):
    """The panel's on_load puts explain_sample/panel_content into its state,
    renders the tables, says plainly when there is no result, and its
    matched-attribute button loads matched_attribute_view."""
    b = _sample(dataset, 1)
    ops = _panel_call(dataset, "on_load", b.id)
    state = _patched_state(ops)
    expected = panel_content(explain_sample(b, "lazsl", "ground_truth"))
    assert state["fields"] == ["lazsl"] and state["label_field"] == "lazsl"
    assert state["gt_field"] == "ground_truth" and "ground_truth" in state["gt_fields"]
    for key in ("summary", "predicted_table", "gt_table", "matched_attributes"):
        assert state[key] == expected[key], key
    rendered = [p for u, p in ops if u.endswith("show_panel_output")]
    assert rendered and "predicted_table" in str(rendered[-1]) and "gt_table" in str(rendered[-1])

    # Sample without a result.
    state = _patched_state(_panel_call(dataset, "on_load", _sample(dataset, 2).id))
    assert state["summary"].startswith("**No LaZSL result.**") and state["predicted_table"] == []

    # No sample open.
    assert _patched_state(_panel_call(dataset, "on_load", None))["summary"].startswith(
        "Open a sample"
    )

    # Matched-attribute button -> set_view with the library's view.
    ops = _panel_call(
        dataset,
        "show_matched",
        b.id,
        state={"label_field": "lazsl"},
        params={"attribute": "black face mask"},
    )
    views = [p for u, p in ops if u.endswith("set_view")]
    assert views, ops
    import fiftyone.core.view as fov

    view = fov.DatasetView._build(dataset, views[0]["view"])
    assert sorted(view.values("id")) == sorted(
        matched_attribute_view(dataset, "lazsl", "black face mask").values("id")
    )

    # Without panel state the button falls back to the dataset's LaZSL field.
    ops = _panel_call(dataset, "show_matched", b.id, params={"attribute": "conical orange beak"})
    view = fov.DatasetView._build(dataset, [p for u, p in ops if u.endswith("set_view")][0]["view"])
    assert view.values("id") == [_sample(dataset, 0).id]
