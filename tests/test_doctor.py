"""Attribute doctor. Its figures match those computed independently
from a fresh run's per-sample evidence (real photos, tiny model, float32
store); duplicates and degenerate classes are found; views and the pruned set
are saved; the CLI runs through its process."""

import os
import subprocess

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import badfiles as bf
from cli_helpers import ENV, EXE
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))


def test_doctor_figures_and_outputs(tmp_path, shared_data, checkpoint):
    from fiftyone_lazsl import attribute_doctor, run_lazsl
    from fiftyone_lazsl.fo.store import list_attribute_sets, load_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=4)
    c = sorted({k for _, k in photos})
    aset = {
        c[0]: ["red wings", "red wings", "a long beak", "a white belly"],
        c[1]: ["a single trait"],
        c[2]: ["a long beak", "grey feathers", "short legs"],
        c[3]: ["plain brown", "plain brown"],
    }
    ds = bf.make_dataset("doctor", [p for p, _ in photos], gt=[k for _, k in photos])
    run_lazsl(
        ds,
        aset,
        label_field="run",
        store_features=str(tmp_path / "s"),
        feature_dtype="float32",
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=6,
        seed=1,
        num_workers=0,
        evidence="full",
    )  # every class's arrays, to check the doctor against below
    rep = attribute_doctor(ds, from_field="run", gt_field="ground_truth", min_auc=0.0)
    assert rep.num_samples == len(photos) and rep.skipped == {}

    # independent figures from the run's own per-sample evidence
    preds = ds.values("run")
    gts = ds.values("ground_truth.label")
    by = {(d.class_name, d.index): d for d in rep.attributes}
    for ci, cls in enumerate(c):
        crops = np.sum([np.array(p.attribute_crops[ci]) for p in preds], axis=0)
        scores = np.array([p.attribute_scores[ci] for p in preds])
        y = np.array([g == cls for g in gts])
        for a in range(len(aset[cls])):
            d = by[(cls, a)]
            assert d.attribute == aset[cls][a]
            assert d.top_rate == pytest.approx(crops[a] / crops.sum(), abs=1e-9)
            assert d.auc == pytest.approx(roc_auc_score(y, scores[:, a]), abs=1e-6)
            assert d.num_class_samples == 2
    # near-duplicates: attribute-text cosines computed here
    from fiftyone_lazsl.core.models import load_model

    m = load_model(tiny_clip.TINY_MODEL, checkpoint, device="cpu")
    flat = [(k, a) for k in c for a in aset[k]]
    e = m.encode_texts([a for _, a in flat]).numpy()
    sim = e @ e.T
    for i, (k, _a) in enumerate(flat):
        ai = [j for j, (k2, _) in enumerate(flat) if k2 == k].index(i)
        want_within = sorted(
            flat[j][1] for j in range(len(flat)) if j != i and flat[j][0] == k and sim[i, j] >= 0.95
        )
        want_across = sorted(
            f"{flat[j][0]}: {flat[j][1]}"
            for j in range(len(flat))
            if flat[j][0] != k and sim[i, j] >= 0.95
        )
        assert sorted(by[(k, ai)].duplicates_within) == want_within
        assert sorted(by[(k, ai)].duplicates_across) == want_across
    assert "duplicate" in by[(c[0], 1)].flags and "duplicate" not in by[(c[0], 0)].flags
    assert "red wings" in by[(c[0], 0)].duplicates_within
    assert f"{c[2]}: a long beak" in by[(c[0], 2)].duplicates_across
    assert "shared-with-other-class" in by[(c[2], 0)].flags
    assert rep.degenerate == {
        c[1]: "a single attribute",
        c[3]: "all attributes are near-duplicates",
    }
    # a saved view per flagged attribute: its class's samples, by contribution
    flagged = rep.flagged
    assert flagged and all(d.saved_view in ds.list_saved_views() for d in flagged)
    v = ds.load_saved_view(by[(c[0], 1)].saved_view)
    assert set(v.values("ground_truth.label")) == {c[0]}
    # the pruned set: duplicates and shared attributes gone, no class emptied, parent recorded
    pruned = load_attribute_set(ds, rep.pruned_set)
    assert (
        pruned.attributes[c[0]][0] == "red wings" and "a long beak" not in pruned.attributes[c[0]]
    )
    assert pruned.attributes[c[0]].count("red wings") == 1
    assert pruned.attributes[c[3]] == ["plain brown"]
    assert pruned.attributes[c[1]] == ["a single trait"]
    assert pruned.metadata["parent_hash"] and pruned.metadata["edit"]["removed"]
    assert rep.pruned_set in [r["name"] for r in list_attribute_sets(ds)]
    assert "degenerate class" in rep.table()

    # the CLI, through its process
    ds.persistent = True
    try:
        r = subprocess.run(
            [
                EXE,
                "attributes",
                "doctor",
                "--dataset",
                ds.name,
                "--from-field",
                "run",
                "--gt-field",
                "ground_truth",
                "--pruned-name",
                "cli-pruned",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, **ENV),
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert "duplicate" in r.stdout and "saved as 'cli-pruned'" in r.stdout
        r = subprocess.run(
            [EXE, "attributes", "doctor", "--dataset", ds.name, "--from-field", "ground_truth"],
            capture_output=True,
            text=True,
            env=dict(os.environ, **ENV),
            timeout=300,
        )
        assert r.returncode == 2 and "no LaZSL run wrote field 'ground_truth'" in r.stderr
    finally:
        ds.delete()


def test_doctor_scoped_to_view_classes_and_view_names(tmp_path, shared_data, checkpoint):
    """By default the doctor reviews only the classes present in the samples
    (the rest of the set is copied unchanged into the pruned set); the whole
    set on request (Python and CLI). Views are saved only for flagged
    attributes with samples, one per class even when class names differ only
    in punctuation; progress reports each stage."""
    from fiftyone_lazsl import attribute_doctor, run_lazsl
    from fiftyone_lazsl.fo.store import load_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=2)
    first = photos[0][1]
    names = ["Crow/Raven" if c == first else "Crow Raven" for _, c in photos]
    aset = {
        "Crow/Raven": ["black wings", "black wings", "a hooked beak"],
        "Crow Raven": ["dark feathers", "dark feathers", "a heavy bill"],
        "Absent Gull": ["white wings", "white wings", "webbed feet"],
        "Absent Tern": ["a forked tail", "a forked tail"],
    }
    ds = bf.make_dataset("doctor-scope", [p for p, _ in photos], gt=names)
    run_lazsl(
        ds,
        aset,
        label_field="run",
        store_features=str(tmp_path / "s"),
        feature_dtype="float32",
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=6,
        seed=1,
        num_workers=0,
        gt_field="ground_truth",
    )
    stages = []
    rep = attribute_doctor(
        ds,
        from_field="run",
        gt_field="ground_truth",
        min_auc=0.0,
        progress=lambda f, text: stages.append((f, text)),
    )
    assert {d.class_name for d in rep.attributes} == {"Crow/Raven", "Crow Raven"}
    assert stages[0][1] == "encoding 6 attribute prompts of 2 classes"
    assert f"scoring samples {len(photos)}/{len(photos)}" in [t for _, t in stages]
    assert stages[-1] == (1.0, f"{len(rep.flagged)} of 6 attributes flagged")
    assert all(0.0 <= f <= 1.0 for f, _ in stages) and [f for f, _ in stages] == sorted(
        f for f, _ in stages
    )
    # duplicates flagged in both classes, each with its own view of its own samples
    dup = {d.class_name: d for d in rep.flagged if "duplicate" in d.flags}
    assert set(dup) == {"Crow/Raven", "Crow Raven"}
    assert dup["Crow/Raven"].saved_view != dup["Crow Raven"].saved_view
    for c, d in dup.items():
        assert d.saved_view.startswith("doctor-run-crow-raven-")
        assert set(ds.load_saved_view(d.saved_view).values("ground_truth.label")) == {c}
    doctor_views = [v for v in ds.list_saved_views() if v.startswith("doctor-")]
    assert sorted(doctor_views) == sorted(d.saved_view for d in rep.flagged if d.saved_view)
    assert all(len(ds.load_saved_view(v)) > 0 for v in doctor_views)
    # the pruned set changes only the classes reviewed
    pruned = load_attribute_set(ds, rep.pruned_set)
    assert pruned.attributes["Absent Gull"] == aset["Absent Gull"]
    assert pruned.attributes["Absent Tern"] == aset["Absent Tern"]
    assert pruned.attributes["Crow/Raven"].count("black wings") == 1

    full = attribute_doctor(
        ds,
        from_field="run",
        gt_field="ground_truth",
        min_auc=0.0,
        all_classes=True,
        save_views=False,
        save_pruned_as=None,
    )
    assert {d.class_name for d in full.attributes} == set(aset)
    assert "Absent Tern" in full.degenerate

    ds.persistent = True
    try:
        for extra, want in (([], 6), (["--all-classes"], 11)):
            r = subprocess.run(
                [
                    EXE,
                    "attributes",
                    "doctor",
                    "--dataset",
                    ds.name,
                    "--from-field",
                    "run",
                    "--gt-field",
                    "ground_truth",
                    "--no-views",
                    "--no-pruned",
                    *extra,
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, **ENV),
                timeout=300,
            )
            assert r.returncode == 0, r.stderr
            assert f" of {want} attributes flagged" in r.stdout, r.stdout
    finally:
        ds.delete()
