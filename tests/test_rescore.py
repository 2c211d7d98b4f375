"""Re-scoring from stored features equals a fresh run with the same
parameters and the new attribute set (real photos, real MongoDB, tiny model):
float32 storage to 1e-6, float16 within the stated tolerance; missing and
changed files; the run record; the CLI through its process."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import badfiles as bf
from cli_helpers import ENV, EXE
from fiftyone_lazsl.fo.labels import class_evidence, evidence_entries
from fiftyone_lazsl.testing import tiny_clip

N = 6
#: float16 storage: |logit difference| bound, stated and derived in
#: tests/test_feature_precision.py (the crop selection is exact: the store keeps
#: the float32 crop-to-global cosines).
from test_feature_precision import F16_LOGIT_TOL  # noqa: E402

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


@pytest.fixture(scope="module")
def photos(shared_data):
    return tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=4)


def _asets(photos):
    classes = sorted({c for _, c in photos})
    a1 = {
        c: [f"a bird with trait {i}", f"{c} feathers", "a small beak"]
        for i, c in enumerate(classes)
    }
    # the edit: rewrite one class, prune another, add an attribute to a third
    a2 = {c: list(v) for c, v in a1.items()}
    a2[classes[0]] = ["a bright red crown", "black wings with white bars"]
    a2[classes[1]] = a2[classes[1]][:1]
    a2[classes[2]] = a2[classes[2]] + ["a long forked tail"]
    return a1, a2


def _kw(checkpoint):
    return dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=N,
        seed=5,
        num_workers=0,
        batch_size=3,
    )


def _values(ds, field):
    preds = ds.values(field)
    crops = ds.values(f"{field}_crops")
    return preds, crops


def _compare(ds, fresh, rescored, logit_tol, crop_tol):
    fp, fc = _values(ds, fresh)
    rp, rc = _values(ds, rescored)
    assert all(p is not None for p in fp + rp)
    worst = 0.0
    for a, b, ca, cb in zip(fp, rp, fc, rc):
        assert a.label == b.label
        d = np.abs(np.array(a.logits) - np.array(b.logits)).max()
        worst = max(worst, d)
        assert d <= logit_tol, d
        assert [e["class"] for e in evidence_entries(a)] == [
            e["class"] for e in evidence_entries(b)
        ]
        for e in evidence_entries(a):  # the compact evidence of each stored class
            np.testing.assert_allclose(
                class_evidence(a, e["index"])[0], class_evidence(b, e["index"])[0], atol=crop_tol
            )
        if crop_tol < 1e-5:
            assert [d.label for d in ca.detections] == [d.label for d in cb.detections]
            np.testing.assert_allclose(
                [d.bounding_box for d in ca.detections],
                [d.bounding_box for d in cb.detections],
                atol=0,
            )
    return worst


@pytest.mark.parametrize(
    "dtype,logit_tol,score_tol", [("float32", 1e-6 * 100, 1e-6), ("float16", F16_LOGIT_TOL, 2e-3)]
)
def test_rescore_equals_fresh_run(tmp_path, photos, checkpoint, dtype, logit_tol, score_tol):
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.fo.runs import get_run_config

    a1, a2 = _asets(photos)
    ds = bf.make_dataset(f"rescore-{dtype}", [p for p, _ in photos])
    store = tmp_path / "store"
    s = run_lazsl(
        ds,
        a1,
        label_field="first",
        store_features=str(store),
        feature_dtype=dtype,
        **_kw(checkpoint),
    )
    assert (
        s.feature_store["stored"] == len(photos)
        and s.feature_store["bytes_before"] < s.feature_store["bytes_after"]
    )
    rec = get_run_config(ds, "first")["feature_store"]
    assert rec["path"] == str(store) and rec["dtype"] == dtype and rec["stored"] == len(photos)

    for params in ({}, {"theta": 0.5, "eps": 0.2, "gamma": 0.3}):
        r = rescore(ds, a2, from_field="first", label_field="again", **params)
        assert r.num_predicted == len(photos) and r.feature_store["reused"] == len(photos)
        assert r.feature_store["stored"] == 0
        kw = _kw(checkpoint)
        run_lazsl(ds, a2, label_field="fresh", **params, **kw)
        _compare(ds, "fresh", "again", logit_tol, score_tol)
        cfg = get_run_config(ds, "again")
        assert (
            cfg["rescored_from"] == "first"
            and cfg["attribute_set_hash"] == get_run_config(ds, "fresh")["attribute_set_hash"]
        )
        for k in ("theta", "eps", "gamma"):
            if k in params:
                assert cfg[k] == params[k]
    # DCLIP from the stored global views
    rescore(ds, a2, from_field="first", label_field="dc", method="dclip")
    run_lazsl(ds, a2, label_field="dcfresh", method="dclip", **_kw(checkpoint))
    for a, b in zip(ds.values("dc"), ds.values("dcfresh")):
        assert a.label == b.label
        assert np.abs(np.array(a.logits) - np.array(b.logits)).max() <= logit_tol


def test_missing_and_changed_files(tmp_path, photos, checkpoint):
    from fiftyone_lazsl import rescore, run_lazsl

    a1, a2 = _asets(photos)
    files = []
    for i, (p, _) in enumerate(photos[:3]):
        dst = tmp_path / f"img{i}.jpg"
        shutil.copy(p, dst)
        files.append(str(dst))
    ds = bf.make_dataset("rescore-missing", files)
    store = tmp_path / "store"
    run_lazsl(ds, a1, label_field="first", store_features=str(store), **_kw(checkpoint))
    # a new sample and a changed file
    extra = tmp_path / "new.jpg"
    shutil.copy(photos[5][0], extra)
    ds.add_sample(__import__("fiftyone").Sample(filepath=str(extra)))
    shutil.copy(photos[6][0], files[1])  # same path, other content
    r = rescore(ds, a2, from_field="first", label_field="skip", missing="skip")
    errs = dict(zip(ds.values("filepath"), ds.values("skip_error")))
    assert r.num_predicted == 2 and r.num_failed == 2
    assert "changed" in errs[files[1]] and "no stored features" in errs[str(extra)]
    assert errs[files[0]] is None
    # encode on the way: predicted, stored, and equal to a fresh run
    r = rescore(ds, a2, from_field="first", label_field="enc", missing="encode")
    assert (
        r.num_predicted == 4 and r.feature_store["stored"] == 2 and r.feature_store["reused"] == 2
    )
    run_lazsl(ds, a2, label_field="fresh", **_kw(checkpoint))
    _compare(ds, "fresh", "enc", F16_LOGIT_TOL, 2e-3)
    r = rescore(ds, a2, from_field="first", label_field="enc2", missing="skip")
    assert r.num_predicted == 4


def test_refusals(tmp_path, photos, checkpoint):
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.errors import ConfigError

    a1, a2 = _asets(photos)
    ds = bf.make_dataset("rescore-refuse", [photos[0][0]])
    run_lazsl(ds, a1, label_field="plain", **_kw(checkpoint))
    with pytest.raises(ConfigError, match="did not store features"):
        rescore(ds, a2, from_field="plain", label_field="x")
    with pytest.raises(ConfigError, match="no LaZSL run"):
        rescore(ds, a2, from_field="nothing", label_field="x")
    run_lazsl(ds, a1, label_field="st", store_features=str(tmp_path / "s"), **_kw(checkpoint))
    with pytest.raises(ConfigError, match="n_crops"):
        rescore(ds, a2, from_field="st", label_field="x", n_crops=3)
    with pytest.raises(ConfigError, match="missing"):
        rescore(ds, a2, from_field="st", label_field="x", missing="maybe")
    assert "x" not in ds.get_field_schema()


def test_cli_classify_store_rescore_info_prune(tmp_path, photos, checkpoint):
    ds = bf.make_dataset("rescore-cli", [p for p, _ in photos[:3]])
    ds.persistent = True
    a1, a2 = _asets(photos)
    import json

    (tmp_path / "a1.json").write_text(json.dumps(a1))
    (tmp_path / "a2.json").write_text(json.dumps(a2))
    env = dict(os.environ, **ENV, FIFTYONE_LAZSL_FEATURES=str(tmp_path / "store"))

    def cli(*args):
        return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)

    try:
        r = cli(
            "classify",
            "--dataset",
            ds.name,
            "--attributes",
            str(tmp_path / "a1.json"),
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--n-crops",
            str(N),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--label-field",
            "first",
            "--store-features",
        )
        assert r.returncode == 0, r.stderr
        assert "feature store" in r.stdout and "3 stored" in r.stdout
        r = cli(
            "rescore",
            "--dataset",
            ds.name,
            "--attributes",
            str(tmp_path / "a2.json"),
            "--from-field",
            "first",
            "--label-field",
            "second",
            "--theta",
            "0.6",
        )
        assert r.returncode == 0, r.stderr
        assert "3/3 samples classified into field 'second'" in r.stdout and "3 reused" in r.stdout
        r = cli(
            "rescore",
            "--dataset",
            ds.name,
            "--attributes",
            str(tmp_path / "a2.json"),
            "--from-field",
            "nope",
            "--label-field",
            "third",
        )
        assert r.returncode == 2 and "error: no LaZSL run wrote field 'nope'" in r.stderr
        r = cli("features", "info", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["entries"] == 3 and info["fingerprints"][0]["spec"]["n_crops"] == N
        r = cli("features", "info")
        assert "3 samples" in r.stdout
        r = cli("features", "prune", "--all")
        assert r.returncode == 0 and "pruned 3 entries" in r.stdout
        from fiftyone_lazsl.core.features import FeatureStore

        with FeatureStore(tmp_path / "store") as st:
            assert st.count() == 0
    finally:
        ds.delete()
