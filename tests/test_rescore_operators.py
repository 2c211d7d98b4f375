"""The operators (run_lazsl with store_features, rescore_lazsl,
attribute_doctor) executed through FiftyOne's operator executor, as the App
does, give what the Python functions give."""

import numpy as np
import pytest

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


def test_operators_store_rescore_doctor(lazsl_plugin, shared_data, checkpoint):
    from fiftyone_lazsl import rescore
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.runs import get_run_config
    from fiftyone_lazsl.fo.store import save_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)
    classes = [c for _, c in photos]
    ds = bf.make_dataset("rescore-ops", [p for p, _ in photos], gt=classes)
    save_attribute_set(ds, AttributeSet.from_dict({c: [f"trait {i}", "wings"] for i, c in enumerate(classes)}), "one")
    save_attribute_set(ds, AttributeSet.from_dict({c: [f"other {i}", "a beak", "wings"]
                                                   for i, c in enumerate(classes)}), "two")
    run_operator("run_lazsl", ds, {"attribute_set": "one", "method": "lazsl", "label_field": "op",
                                   "model": tiny_clip.TINY_MODEL, "pretrained": checkpoint,
                                   "device": "cpu", "n_crops": 4, "store_features": True})
    rec = get_run_config(ds, "op")["feature_store"]
    assert rec["stored"] == 3
    res = run_operator("rescore_lazsl", ds, {"from_field": "op", "attribute_set": "two",
                                             "label_field": "op2", "theta": 0.5})
    assert res.error is None, res.error
    assert res.result["num_predicted"] == 3
    rescore(ds, "two", from_field="op", label_field="py2", theta=0.5)
    ds.reload()
    for a, b in zip(ds.values("op2"), ds.values("py2")):
        assert a.label == b.label and np.allclose(a.logits, b.logits, atol=0)
    res = run_operator("attribute_doctor", ds, {"from_field": "op", "gt_field": "ground_truth",
                                                "min_auc": 0.0})
    assert res.error is None, res.error
    rows = res.result["rows"]
    assert [(r["class"], r["attribute"]) for r in rows] == [
        (c, a) for i, c in enumerate(classes) for a in (f"trait {i}", "wings")]
    assert all("shared-with-other-class" in r["flags"] for r in rows if r["attribute"] == "wings")
