"""Evaluation of methods side by side comparison of methods with
FiftyOne's own evaluation, on controlled features whose right answers are known.

LaZSL and DCLIP predict every image's true class; CLIP is built to swap classes
0 and 1. One label is flipped, one image is broken (no prediction), one label is
not among the classes and one sample has no label, so every accuracy, per-class
accuracy and saved view below is known in advance.
"""

import numpy as np
import pytest

import controlled_encoder as ce

A = 4
C = 6
K = 2


@pytest.fixture
def compared(tmp_path):
    import fiftyone as fo

    from fiftyone_lazsl import LaZSLClassifier, run_lazsl

    aset = ce.make_attribute_set(C, A)
    items = ce.write_images(tmp_path / "img", {c: 2 for c in range(C)})
    true = [c for _, c in items]
    labels = [f"class_{c}" for c in true]
    labels[4] = "class_5"  # a true class_2 image, mislabelled
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    extra = ce.write_images(tmp_path / "more", {4: 2})
    paths = [p for p, _ in items] + [str(bad), extra[0][0], extra[1][0]]
    labels += ["class_3", "Mystery_bird", None]
    true += [None, 4, 4]
    name = f"eval-{tmp_path.name}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_samples(
        [
            fo.Sample(
                filepath=p, ground_truth=None if lab is None else fo.Classification(label=lab)
            )
            for p, lab in zip(paths, labels)
        ]
    )
    model = ce.ControlledModel(aset, clip_map={0: 1, 1: 0})
    for method in ("clip", "dclip", "lazsl"):
        clf = LaZSLClassifier(aset, model=model, method=method, n_crops=3, seed=0, batch_size=8)
        s = run_lazsl(ds, aset, label_field=method, classifier=clf, num_workers=0)
        assert s.num_failed == 1
    swap = {0: 1, 1: 0}
    expected_pred = {
        "lazsl": [None if t is None else f"class_{t}" for t in true],
        "dclip": [None if t is None else f"class_{t}" for t in true],
        "clip": [None if t is None else f"class_{swap.get(t, t)}" for t in true],
    }
    return ds, labels, expected_pred


def test_side_by_side_accuracy_views_and_eval_keys(compared):
    import fiftyone as fo

    from fiftyone_lazsl.fo.evaluate import (
        ALL_WRONG_VIEW,
        eval_keys,
        evaluate_methods,
        pair_view_name,
    )

    ds, labels, expected_pred = compared
    for m, preds in expected_pred.items():
        assert ds.values(f"{m}.label") == preds  # the controlled model does what it should
    rep = evaluate_methods(ds, "ground_truth", "clip,dclip,lazsl", k=K, worst=5)
    labelled = [i for i, g in enumerate(labels) if g is not None]
    n = len(labelled)
    assert n == 14
    ids = ds.values("id")
    correct = {
        m: {ids[i] for i in labelled if expected_pred[m][i] == labels[i]} for m in expected_pred
    }
    assert len(correct["lazsl"]) == 11 and len(correct["clip"]) == 7

    by = {m.field: m for m in rep.methods}
    assert [m.field for m in rep.methods] == ["clip", "dclip", "lazsl"]
    for f, m in by.items():
        assert m.method == f
        assert m.num_samples == n and m.num_no_prediction == 1 and m.num_label_not_in_classes == 1
        assert m.accuracy == pytest.approx(len(correct[f]) / n)
        # FiftyOne's own metrics over the same samples agree
        assert m.results.metrics()["accuracy"] == pytest.approx(m.accuracy)
        key1, keyk = eval_keys(f, K)
        assert (m.eval_key, m.topk_eval_key) == (key1, keyk) == (f"eval_{f}", f"eval_{f}_top{K}")
        assert ds.get_evaluation_info(key1).config.method == "simple"
        assert ds.get_evaluation_info(keyk).config.method == "top-k"
        assert ds.get_evaluation_info(keyk).config.k == K
        assert set(ds.match(fo.ViewField(key1) == True).values("id")) == correct[f]  # noqa: E712
        # top-k recomputed from the stored logits and class order
        classes = ds.classes[f]
        hits = 0
        for smp in ds.select([ids[i] for i in labelled]):
            g = smp.ground_truth.label
            if smp[f] is None or g not in classes:
                continue
            top = np.argsort(-np.asarray(smp[f].logits), kind="stable")[:K]
            hits += classes.index(g) in top
        assert m.num_topk_correct == hits
        assert m.topk_accuracy == pytest.approx(hits / n)
    assert by["lazsl"].num_topk_correct >= by["lazsl"].num_correct

    # per-class top-1 accuracy, by label: class_0/1 are CLIP's swap victims,
    # class_5 holds the mislabelled image, class_3 the broken one
    acc = rep.class_accuracy
    assert acc["class_0"] == (2, [0.0, 1.0, 1.0])
    assert acc["class_1"] == (2, [0.0, 1.0, 1.0])
    assert acc["class_2"] == (1, [1.0, 1.0, 1.0])
    assert acc["class_4"] == (2, [1.0, 1.0, 1.0])
    assert acc["Mystery_bird"] == (1, [0.0, 0.0, 0.0])
    for c in ("class_3", "class_5"):
        assert acc[c][0] == 3 and acc[c][1] == pytest.approx([2 / 3] * 3)
    # lowest mean accuracy first (all of these but Mystery_bird tie at 2/3), then
    # the larger class, then the name
    assert rep.worst_classes == ["Mystery_bird", "class_3", "class_5", "class_0", "class_1"]

    # saved views for browsing
    v = ds.load_saved_view(pair_view_name("lazsl", "clip"))
    assert set(v.values("id")) == correct["lazsl"] - correct["clip"]
    assert len(v) == 4
    # no sample that clip got right and lazsl wrong: no (empty) saved view
    assert pair_view_name("clip", "lazsl") not in ds.list_saved_views()
    assert pair_view_name("clip", "lazsl") not in rep.saved_views
    allwrong = {ids[i] for i in labelled} - correct["clip"] - correct["dclip"] - correct["lazsl"]
    assert set(ds.load_saved_view(ALL_WRONG_VIEW).values("id")) == allwrong
    assert rep.saved_views[pair_view_name("lazsl", "clip")] == 4

    table = rep.table()
    lines = table.splitlines()
    row = next(line for line in lines if line.startswith("lazsl"))
    assert f"{11 / 14:.3f}" in row
    assert "worst classes" in table and "class_0" in table
    assert f"'{pair_view_name('lazsl', 'clip')}' (4)" in table

    # re-running replaces the evaluations
    rep2 = evaluate_methods(ds, "ground_truth", ["lazsl"], k=K, save_views=False)
    assert rep2.methods[0].accuracy == by["lazsl"].accuracy
    assert sorted(k for k in ds.list_evaluations() if k.startswith("eval_lazsl")) == [
        "eval_lazsl",
        f"eval_lazsl_top{K}",
    ]


def test_k_capped_and_errors(compared):
    from fiftyone_lazsl.errors import UserError
    from fiftyone_lazsl.fo.evaluate import evaluate_methods

    ds, labels, _ = compared
    rep = evaluate_methods(ds, "ground_truth", ["dclip"], k=50, save_views=False)
    m = rep.methods[0]
    assert m.k == C and m.topk_eval_key == "eval_dclip_top50"
    # k >= number of classes: every labelled sample with a prediction and a known label is a hit
    assert m.num_topk_correct == m.num_samples - 2
    with pytest.raises(UserError, match="no field 'nope'"):
        evaluate_methods(ds, "ground_truth", ["nope"])
    with pytest.raises(UserError, match="no prediction field"):
        evaluate_methods(ds, "ground_truth", " , ")
    with pytest.raises(UserError, match="no sample"):
        evaluate_methods(ds.match_tags("nothing-has-this"), "ground_truth", ["dclip"])
