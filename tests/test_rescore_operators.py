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


def streamed(name, dataset, params) -> tuple[list, dict | None]:
    """Execute an operator immediately and read its streamed messages as the
    App does (``foo.execute_operator`` drops them): ``([(progress, label)],
    results shown by show_output or None)``."""
    import asyncio

    from fiftyone.operators.executor import execute_or_delegate_operator

    from plugin_fixtures import operator_uri

    res = asyncio.run(
        execute_or_delegate_operator(
            operator_uri(name),
            {"dataset_name": dataset.name, "params": dict(params)},
            exhaust=False,
        )
    )
    res.raise_exceptions()
    progress, shown = [], None
    for msg in res.result:
        body = getattr(msg, "body", None)
        uri = getattr(body, "operator_uri", "") or ""
        if uri.endswith("set_progress"):
            progress.append((body.params.get("progress"), body.params.get("label")))
        elif uri.endswith("show_output"):
            shown = body.params["results"]
    return progress, shown


def test_operators_store_rescore_doctor(lazsl_plugin, shared_data, checkpoint):
    from fiftyone_lazsl import rescore
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.runs import get_run_config
    from fiftyone_lazsl.fo.store import save_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)
    classes = [c for _, c in photos]
    ds = bf.make_dataset("rescore-ops", [p for p, _ in photos], gt=classes)
    save_attribute_set(
        ds,
        AttributeSet.from_dict({c: [f"trait {i}", "wings"] for i, c in enumerate(classes)}),
        "one",
    )
    save_attribute_set(
        ds,
        AttributeSet.from_dict(
            {c: [f"other {i}", "a beak", "wings"] for i, c in enumerate(classes)}
        ),
        "two",
    )
    run_operator(
        "run_lazsl",
        ds,
        {
            "attribute_set": "one",
            "method": "lazsl",
            "label_field": "op",
            "model": tiny_clip.TINY_MODEL,
            "pretrained": checkpoint,
            "device": "cpu",
            "n_crops": 4,
            "store_features": True,
        },
    )
    rec = get_run_config(ds, "op")["feature_store"]
    assert rec["stored"] == 3
    progress, _ = streamed(
        "rescore_lazsl",
        ds,
        {"from_field": "op", "attribute_set": "two", "label_field": "op2", "theta": 0.5},
    )
    assert progress and all(label for _, label in progress), progress
    assert progress[-1][0] == 1.0 and "3/3" in progress[-1][1], progress
    rescore(ds, "two", from_field="op", label_field="py2", theta=0.5)
    ds.reload()
    for a, b in zip(ds.values("op2"), ds.values("py2")):
        assert a.label == b.label and np.allclose(a.logits, b.logits, atol=0)
    progress, shown = streamed(
        "attribute_doctor", ds, {"from_field": "op", "gt_field": "ground_truth", "min_auc": 0.0}
    )
    # stage text for every step of the doctor (it can take a minute on a large set)
    labels = [label for _, label in progress]
    assert labels[0].startswith("encoding ") and "scoring samples 3/3" in labels, labels
    assert progress[-1][0] == 1.0 and "attributes flagged" in progress[-1][1]
    rows = shown["rows"]
    assert [(r["class"], r["attribute"]) for r in rows] == [
        (c, a) for i, c in enumerate(classes) for a in (f"trait {i}", "wings")
    ]
    assert all("shared-with-other-class" in r["flags"] for r in rows if r["attribute"] == "wings")
