"""End to end: CLI flow on real photos against a real MongoDB, and the
``run_lazsl`` operator executed immediately and delegated (through FiftyOne's
delegated-operation service) giving the same labels as the Python function."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

tiny_clip.register()

N_CROPS = 8
FIELDS = ("lazsl", "lazsl_crops", "lazsl_attributes")


@pytest.fixture
def checkpoint(tmp_path):
    return str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=1))


@pytest.fixture
def small_cub(photo_data, tmp_path):
    """3 classes x 2 real CUB photos as DIR/<class>/<image> symlinks."""
    src = photo_data / "images" / "cub"
    root = tmp_path / "cub"
    for cls in sorted(os.listdir(src))[:3]:
        (root / cls).mkdir(parents=True)
        for f in sorted(os.listdir(src / cls))[:2]:
            (root / cls / f).symlink_to(src / cls / f)
    return root


def _cli(*args, env=None):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    e = dict(os.environ, **(env or {}))
    return subprocess.run([exe, *args], capture_output=True, text=True, env=e, timeout=600)


def test_cli_import_classify_on_real_photos(small_cub, checkpoint, photo_data, tmp_path):
    import fiftyone as fo

    name = "cli-cub"
    r = _cli("import-folder", str(small_cub), "--dataset", name)
    assert r.returncode == 0, r.stderr
    r = _cli(
        "attributes",
        "import",
        str(photo_data / "attribute_sets" / "cub.json"),
        "--dataset",
        name,
        "--name",
        "cub",
    )
    assert r.returncode == 0, r.stderr
    env = {"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG)}
    r = _cli(
        "classify",
        "--dataset",
        name,
        "--attributes",
        "cub",
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--label-field",
        "lazsl",
        "--n-crops",
        str(N_CROPS),
        "--seed",
        "3",
        "--gt-field",
        "ground_truth",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "6/6 samples classified" in r.stdout

    ds = fo.load_dataset(name)
    assert ds.persistent
    aset = json.load(open(photo_data / "attribute_sets" / "cub.json"))
    classes = list(aset)
    for s in ds:
        assert isinstance(s.ground_truth, fo.Classification)
        assert isinstance(s.lazsl, fo.Classification)
        assert s.lazsl.label in aset
        assert len(s.lazsl.logits) == len(classes)
        assert int(np.argmax(s.lazsl.logits)) == classes.index(s.lazsl.label)
        assert isinstance(s.lazsl_crops, fo.Detections) and len(s.lazsl_crops.detections) >= 1
        for d in s.lazsl_crops.detections:
            x, y, w, h = d.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9 and w > 0
            assert d.label in aset[s.lazsl.label]
            assert 0 < d.confidence <= 1
        assert s.lazsl_attributes and set(s.lazsl_attributes) <= set(aset[s.lazsl.label])
    assert "lazsl_lazsl" in ds.list_runs()
    cfg = ds.get_run_info("lazsl_lazsl").config
    assert cfg.model == tiny_clip.TINY_MODEL and cfg.pretrained == checkpoint
    assert cfg.random_weights is False and cfg.n_crops == N_CROPS and cfg.seed == 3
    assert cfg.attribute_set == "cub" and len(cfg.attribute_set_hash) == 64
    assert cfg.classes == classes and cfg.status == "completed"
    assert ds.classes["lazsl"] == classes
    # top-k evaluation works from the stored logits and class order
    res = ds.evaluate_classifications(
        "lazsl",
        gt_field="ground_truth",
        method="top-k",
        classes=ds.classes["lazsl"],
        k=5,
        eval_key="top5",
    )
    assert 0.0 <= res.metrics()["accuracy"] <= 1.0


def _labels(ds, field="lazsl"):
    ds.reload()
    return {
        s.filepath: (
            s[field].label,
            [round(v, 4) for v in s[field].logits],
            [tuple(round(b, 6) for b in d.bounding_box) for d in s[field + "_crops"].detections],
        )
        for s in ds
    }


def test_operator_immediate_and_delegated_match_python(
    lazsl_plugin, small_cub, checkpoint, photo_data
):
    from fiftyone.operators.delegated import DelegatedOperationService

    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.cli.datasets import import_folder

    ds = import_folder(str(small_cub), "op-cub", overwrite=True)
    aset_path = str(photo_data / "attribute_sets" / "cub.json")
    common = dict(model=tiny_clip.TINY_MODEL, pretrained=checkpoint, n_crops=N_CROPS, seed=5)
    run_lazsl(ds, aset_path, label_field="py", **common)

    params = dict(
        attribute_set=aset_path,
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        n_crops=N_CROPS,
        seed=5,
        label_field="imm",
        view_target="DATASET",
    )
    result = run_operator("run_lazsl", ds, params)
    assert result.error is None, result.error
    assert _labels(ds, "imm") == _labels(ds, "py")

    params["label_field"] = "dlg"
    queued = run_operator("run_lazsl", ds, params, request_delegation=True)
    assert queued.error is None, queued.error
    assert "dlg" not in ds.get_field_schema()  # only queued so far
    svc = DelegatedOperationService()
    svc.execute_queued_operations(dataset_name=ds.name)
    ops = svc.list_operations(dataset_name=ds.name)
    assert ops and all(op.run_state == "completed" for op in ops), [op.run_state for op in ops]
    assert _labels(ds, "dlg") == _labels(ds, "py")
    assert {"lazsl_py", "lazsl_imm", "lazsl_dlg"} <= set(ds.list_runs())


def test_cli_device_backend_writes_the_pil_logits(small_cub, checkpoint, photo_data):
    """``classify --crop-backend device`` (views resampled on the model's device)
    writes the same logits as ``--crop-backend pil``, bit for bit; each run records
    its backend, and a ``pil`` run resumes with ``device`` (identical views)."""
    import fiftyone as fo

    name = "cli-cub-device"
    assert _cli("import-folder", str(small_cub), "--dataset", name).returncode == 0
    r = _cli(
        "attributes",
        "import",
        str(photo_data / "attribute_sets" / "cub.json"),
        "--dataset",
        name,
        "--name",
        "cub",
    )
    assert r.returncode == 0, r.stderr
    env = {"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG)}
    common = (
        "--dataset",
        name,
        "--attributes",
        "cub",
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--n-crops",
        str(N_CROPS),
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    for backend in ("pil", "device"):
        r = _cli(
            "classify",
            *common,
            "--label-field",
            f"by_{backend}",
            "--crop-backend",
            backend,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert "6/6 samples classified" in r.stdout
    ds = fo.load_dataset(name)
    for backend in ("pil", "device"):
        assert ds.get_run_info(f"lazsl_by_{backend}").config.crop_backend == backend
    for s in ds:
        assert (
            np.array_equal(s.by_pil.logits, s.by_device.logits)
            and s.by_pil.label == s.by_device.label
        )
    r = _cli(
        "classify",
        *common,
        "--label-field",
        "by_pil",
        "--crop-backend",
        "device",
        "--skip-existing",
        env=env,
    )
    assert r.returncode == 0, r.stderr
