"""Progress stage labels of ``run_lazsl``, and user errors of the
operators as one plain line (immediate: an error notification; delegated: a
failed operation whose error message is that line), through FiftyOne's
operator executor and delegated-operation service (the App itself is driven
in ``tests/test_app_operators.py``)."""

import json
import os
import uuid

import pytest

from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

CLASSES = ["Cardinal", "Indigo Bunting"]


@pytest.fixture
def birds(shared_data, tmp_path):
    """4 real CUB photos (2 classes) with ``ground_truth``, their attribute-set
    file, and the tiny model's checkpoint."""
    import fiftyone as fo

    texts = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    aset = tmp_path / "birds.json"
    aset.write_text(json.dumps({c: texts[c] for c in CLASSES}))
    ds = fo.Dataset(f"lazsl-errors-{uuid.uuid4().hex[:8]}")
    for c in CLASSES:
        folder = shared_data / "images" / "cub" / c
        for f in sorted(os.listdir(folder))[:2]:
            ds.add_sample(
                fo.Sample(filepath=str(folder / f), ground_truth=fo.Classification(label=c))
            )
    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    yield ds, str(aset), ckpt, sum(len(texts[c]) for c in CLASSES)
    ds.delete()


def test_progress_labels_name_each_stage(birds):
    from fiftyone_lazsl import run_lazsl

    ds, aset, ckpt, n_prompts = birds
    seen = []
    run_lazsl(
        ds,
        aset,
        model=tiny_clip.TINY_MODEL,
        pretrained=ckpt,
        n_crops=4,
        batch_size=2,
        num_workers=0,
        write_every=64,
        progress=lambda f, label: seen.append((f, label)),
    )
    labels = [x[1] for x in seen]
    assert labels == [
        f"loading the model {tiny_clip.TINY_MODEL} ({ckpt})",
        f"encoding {n_prompts} attribute prompts",
        "decoding images 1-2 of 4",
        "encoding and scoring images 1-2 of 4",
        "decoding images 3-4 of 4",
        "encoding and scoring images 3-4 of 4",
        "writing 4/4",
    ]
    assert [x[0] for x in seen] == [0, 0, 0, 0, 0.5, 0.5, 1.0]


def test_immediate_user_error_is_one_notification(lazsl_plugin, birds):
    ds, aset, ckpt, _ = birds
    # the form accepts it (the weights check only warns); the run fails offline
    params = dict(attribute_set=aset, model="ViT-B-32", pretrained="openai", label_field="x")
    res = run_operator("run_lazsl", ds, params)
    assert res.error is None
    notes = [
        r["params"] for r in res.executor.to_json()["requests"] if r["operator_uri"] == "notify"
    ]
    assert len(notes) == 1 and notes[0]["variant"] == "error"
    msg = notes[0]["message"]
    assert msg.startswith("pretrained weights 'openai' for 'ViT-B-32' are not on this machine")
    assert "\n" not in msg and "Traceback" not in msg
    assert "x" not in ds.get_field_schema()


def test_delegated_user_error_fails_with_its_message(lazsl_plugin, birds):
    from fiftyone.operators.delegated import DelegatedOperationService

    ds, aset, ckpt, _ = birds
    params = dict(attribute_set=aset, model="ViT-B-32", pretrained="openai", label_field="y")
    queued = run_operator("run_lazsl", ds, params, request_delegation=True)
    assert queued.error is None
    svc = DelegatedOperationService()
    svc.execute_queued_operations(dataset_name=ds.name)
    (op,) = svc.list_operations(dataset_name=ds.name)
    assert op.run_state == "failed"
    result = op._doc["result"]
    assert result["error_message"].startswith(
        "pretrained weights 'openai' for 'ViT-B-32' are not on this machine"
    )
    assert result["error"] == result["error_message"] and "Traceback" not in result["error"]


def test_delegated_run_returns_its_summary(lazsl_plugin, birds):
    from fiftyone.operators.delegated import DelegatedOperationService

    ds, aset, ckpt, _ = birds
    params = dict(
        attribute_set=aset,
        model=tiny_clip.TINY_MODEL,
        pretrained=ckpt,
        n_crops=4,
        label_field="z",
        gt_field="ground_truth",
    )
    assert run_operator("run_lazsl", ds, params, request_delegation=True).error is None
    svc = DelegatedOperationService()
    svc.execute_queued_operations(dataset_name=ds.name)
    (op,) = svc.list_operations(dataset_name=ds.name)
    assert op.run_state == "completed"
    result = op._doc["result"]["result"]
    ds.reload()
    n = len(ds.exists("z"))
    assert n == len(ds) == 4
    assert result["summary"] == f"{n}/4 samples classified into field 'z'"
    assert (result["num_samples"], result["num_predicted"], result["num_failed"]) == (4, n, 0)
    assert result["run_key"] == "lazsl_z" and result["random_weights"] is False
    # the label field now holds a run: the form refuses it without "overwrite"
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="holds an earlier LaZSL run"):
        run_operator("run_lazsl", ds, params)
    assert run_operator("run_lazsl", ds, dict(params, overwrite=True)).error is None
