"""The repository as a FiftyOne remote zoo model source.

The source is registered with FiftyOne's own ``register_zoo_model_source``
from an archive of the repository served over HTTP on the loopback interface
(no outside network), into a temporary ``fo.config.model_zoo_dir``. Then
``foz.list_zoo_models`` / ``load_zoo_model`` / ``apply_model`` /
``compute_embeddings`` run on real CUB photos, and the labels are checked
against ``run_lazsl`` with the same parameters and seed.
"""

import functools
import http.server
import json
import os
import threading
import zipfile

import numpy as np
import pytest
import torch

from fiftyone_lazsl.fo.labels import evidence_entries
from fiftyone_lazsl.testing.tiny_clip import some_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "lazsl-vit-b-32"
N_CROPS = 4
SEED = 7
N_PHOTOS = 5
TAGS = {"classification", "zero-shot", "logits", "embeddings", "torch", "interpretable"}


#: Local folders a GitHub archive of the repository does not have.
_NOT_IN_REPO = {"__pycache__", "build", "artifacts", "results"}


@pytest.fixture(scope="module")
def zoo_source(tmp_path_factory):
    """Register the repository's zoo source with ``foz.register_zoo_model_source``
    from a zip of the repository (as GitHub would serve it), served by a local
    HTTP server; ``model_zoo_dir`` is a temporary folder. Yields the source URL."""
    import fiftyone as fo
    import fiftyone.zoo as foz

    tmp = tmp_path_factory.mktemp("zoo")
    serve = tmp / "serve"
    serve.mkdir()
    archive = serve / "fiftyone-lazsl.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for d, dirs, files in os.walk(ROOT):
            dirs[:] = [
                x
                for x in dirs
                if not x.startswith(".") and x not in _NOT_IN_REPO and not x.endswith(".egg-info")
            ]
            for f in files:
                if not f.endswith((".pyc", ".safetensors")):
                    path = os.path.join(d, f)
                    z.write(path, os.path.join("fiftyone-lazsl", os.path.relpath(path, ROOT)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    old_dir, old_proxy = fo.config.model_zoo_dir, os.environ.get("NO_PROXY")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    fo.config.model_zoo_dir = str(tmp / "models")
    url = f"http://127.0.0.1:{httpd.server_address[1]}/fiftyone-lazsl.zip"
    try:
        foz.register_zoo_model_source(url)
        yield url
    finally:
        httpd.shutdown()
        fo.config.model_zoo_dir = old_dir
        if old_proxy is None:
            os.environ.pop("NO_PROXY", None)
        else:
            os.environ["NO_PROXY"] = old_proxy


@pytest.fixture(scope="module")
def photos(shared_data):
    """``N_PHOTOS`` real CUB photos of different classes: ``[(path, class)]``."""
    return some_images(shared_data, "cub", per_class=1, max_classes=N_PHOTOS)


@pytest.fixture(scope="module")
def cub_subset(shared_data, photos, tmp_path_factory):
    """The published CUB attribute set restricted to the photos' classes, in
    its published format (``{class: [attributes]}``)."""
    full = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    keep = {c for _, c in photos}
    sub = {c: a for c, a in full.items() if c in keep}
    assert len(sub) == len(keep), "photo classes missing from cub.json"
    path = tmp_path_factory.mktemp("aset") / "cub-subset.json"
    path.write_text(json.dumps(sub))
    return str(path)


@pytest.fixture(scope="module")
def dataset(photos):
    import fiftyone as fo

    ds = fo.Dataset("zoo-cub", overwrite=True)
    ds.add_samples(
        [fo.Sample(filepath=p, ground_truth=fo.Classification(label=c)) for p, c in photos]
    )
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def zoo_model(zoo_source, cub_subset):
    import fiftyone.zoo as foz

    torch.manual_seed(0)  # random weights, drawn as run_lazsl's below
    return foz.load_zoo_model(
        NAME, pretrained=None, attribute_set=cub_subset, n_crops=N_CROPS, seed=SEED
    )


def test_source_lists_lazsl_models(zoo_source):
    import fiftyone as fo
    import fiftyone.zoo as foz
    import fiftyone.zoo.models as fozm

    from fiftyone_lazsl.fo.zoo_model import ZOO_MODELS

    assert zoo_source in foz.list_zoo_model_sources()
    names = foz.list_zoo_models(source=zoo_source)
    assert sorted(names) == sorted(ZOO_MODELS)
    assert set(ZOO_MODELS) <= set(foz.list_zoo_models(tags="interpretable"))
    # The copy holds the zoo folder only (the plugin's root __init__.py stays
    # the plugin's), under <model_zoo_dir>/<manifest name>.
    src_dir = os.path.join(fo.config.model_zoo_dir, "fiftyone-lazsl")
    assert sorted(os.listdir(src_dir)) == ["__init__.py", "manifest.json"]
    for name, spec in ZOO_MODELS.items():
        zm = foz.get_zoo_model(name)
        assert isinstance(zm, fozm.RemoteZooModel)
        assert TAGS <= set(zm.tags)
        assert zm.license and zm.description and zm.requirements is not None
        assert spec.model in zm.description
        assert zm.get_path_in_dir(fo.config.model_zoo_dir) == os.path.join(src_dir, spec.filename)
        assert not foz.is_zoo_model_downloaded(name)


def test_offline_default_weights_fail_at_once_saying_how_to_supply(zoo_source, cub_subset):
    import fiftyone as fo
    import fiftyone.zoo as foz

    from fiftyone_lazsl.errors import WeightsUnavailableError

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(WeightsUnavailableError) as ei:
        foz.load_zoo_model(NAME, attribute_set=cub_subset, cache=False)
    msg = str(ei.value)
    path = foz.get_zoo_model(NAME).get_path_in_dir(fo.config.model_zoo_dir)
    assert "cannot be downloaded" in msg and path in msg
    assert f"foz.download_zoo_model('{NAME}')" in msg and "pretrained=" in msg
    assert not os.path.exists(path) and not foz.is_zoo_model_downloaded(NAME)
    # Without an attribute set the weights are still the first thing reported.
    with pytest.raises(WeightsUnavailableError):
        foz.load_zoo_model(NAME, cache=False)


def test_bad_parameters_are_named(zoo_source, cub_subset):
    import fiftyone.zoo as foz

    from fiftyone_lazsl.errors import ConfigError

    with pytest.raises(ConfigError, match="n_crops"):
        foz.load_zoo_model(NAME, pretrained=None, attribute_set=cub_subset, n_crops=0, cache=False)
    with pytest.raises(ConfigError, match="n_crop"):
        foz.load_zoo_model(NAME, pretrained=None, attribute_set=cub_subset, n_crop=4, cache=False)
    with pytest.raises(ConfigError, match="attribute_set"):
        foz.load_zoo_model(NAME, pretrained=None, cache=False)
    with pytest.raises(ConfigError, match="load 'lazsl-vit-b-16' instead"):
        foz.load_zoo_model(
            NAME, model="ViT-B-16", pretrained=None, attribute_set=cub_subset, cache=False
        )


def test_apply_model_matches_run_lazsl(zoo_model, dataset, cub_subset):
    import fiftyone as fo
    from fiftyone import ViewField as F

    from fiftyone_lazsl.fo.apply import run_lazsl
    from fiftyone_lazsl.fo.labels import class_evidence

    assert isinstance(zoo_model, fo.core.models.Model)
    assert zoo_model.classifier.model.random_weights
    assert (zoo_model.classifier.n_crops, zoo_model.classifier.seed) == (N_CROPS, SEED)
    # FiftyOne's DataLoader path (2 decoding workers), batches of 2.
    dataset.apply_model(zoo_model, label_field="zoo", batch_size=2, num_workers=2)
    # run_lazsl: its own classifier (the same random weights: same torch seed),
    # batches of 4, decoding in process.
    torch.manual_seed(0)
    summary = run_lazsl(
        dataset,
        cub_subset,
        label_field="lazsl",
        model="ViT-B-32",
        pretrained=None,
        n_crops=N_CROPS,
        seed=SEED,
        num_workers=0,
    )
    assert summary.num_predicted == len(dataset) == N_PHOTOS

    for s in dataset.iter_samples():
        ref, got = s["lazsl"], s["zoo_prediction"]
        assert got.label == ref.label
        assert got.confidence == pytest.approx(ref.confidence, abs=1e-5)
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4)
        # the compact evidence run_lazsl stores, class by class
        assert [e["class"] for e in evidence_entries(got)] == [
            e["class"] for e in evidence_entries(ref)
        ]
        for e in evidence_entries(ref):
            gs, gc = class_evidence(got, e["index"])
            rs, rc = class_evidence(ref, e["index"])
            np.testing.assert_allclose(gs, rs, atol=1e-5)
            assert gc == rc
        assert got["keywords"] == ref["keywords"]

        rd, gd = s["lazsl_crops"].detections, s["zoo_crops"].detections
        assert len(gd) == len(rd) > 0
        for g, r in zip(gd, rd):
            assert (g.label, g["crop_index"], g["attribute_index"]) == (
                r.label,
                r["crop_index"],
                r["attribute_index"],
            )
            np.testing.assert_allclose(g.bounding_box, r.bounding_box, atol=1e-9)
            assert g.confidence == pytest.approx(r.confidence, abs=1e-5)
            assert g["mass"] == pytest.approx(r["mass"], abs=1e-6)

        attrs = s["zoo_attributes"].classifications
        assert [a.label for a in attrs] == s["lazsl_attributes"]
        c = zoo_model.classes.index(got.label)
        scores, _ = class_evidence(got, c)
        for a in attrs:  # confidence = the attribute's score contribution
            assert a.confidence == pytest.approx(
                scores[a["attribute_index"]], abs=1e-6
            )  # stored rounded to 6 digits

    # The attributes are labels FiftyOne filters on.
    first = dataset.first()["zoo_attributes"].classifications[0].label
    view = dataset.filter_labels("zoo_attributes", F("label") == first)
    assert 1 <= len(view) <= len(dataset)
    assert all(a.label == first for s in view for a in s["zoo_attributes"].classifications)


def test_compute_embeddings_are_the_global_view(zoo_model, dataset, photos):
    from fiftyone_lazsl.core.imageio import load_image_tensor

    emb = dataset.compute_embeddings(zoo_model, batch_size=3, num_workers=0)
    paths = dataset.values("filepath")
    clf = zoo_model.classifier
    images = [load_image_tensor(p)[0] for p in paths]
    feats, _ = clf.encode(images, paths)  # [B, 1 + N, D]; view 0 = global
    assert emb.shape == (len(paths), feats.shape[-1])
    np.testing.assert_allclose(emb, feats[:, 0].cpu().numpy(), atol=1e-5)

    # Prompt embeddings live in the classifier's text space.
    prompts = clf.prompts[0]
    pe = zoo_model.embed_prompts(prompts)
    np.testing.assert_allclose(pe, clf.text_features[0, : len(prompts)].cpu().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pe, axis=1), 1.0, atol=1e-5)
    assert zoo_model.embed_prompt(prompts[0]).shape == (feats.shape[-1],)


def test_download_weights_from_hub_cache_and_load(tmp_path, monkeypatch, photos, caplog):
    """download_model's path: weights from the (offline) Hugging Face cache into
    the zoo folder, converted to safetensors, then loaded by default."""
    from huggingface_hub import constants

    from fiftyone_lazsl.fo import zoo_model as zm
    from fiftyone_lazsl.testing import tiny_clip

    tiny_clip.register()
    repo = "lazsl-test/zoo-tiny"
    tiny_clip.make_hub_cache(constants.HF_HUB_CACHE, repo_id=repo, seed=5)
    spec = zm.ZooModelSpec(
        "lazsl-tiny-test", tiny_clip.TINY_MODEL, "test", "tiny.safetensors", hf_hub=f"{repo}/"
    )
    monkeypatch.setitem(zm.ZOO_MODELS, spec.name, spec)
    dest = tmp_path / "source" / spec.filename
    zm.download_model(spec.name, str(dest))
    assert dest.is_file() and not [f for f in os.listdir(dest.parent) if f.startswith(".")]
    model = zm.load_model(
        spec.name, str(dest), attribute_set={"a": ["x"], "b": ["y", "z"]}, n_crops=2
    )
    assert model.classifier.model.weights_id.startswith(f"file:{dest}")
    torch.manual_seed(5)
    import open_clip

    ref = open_clip.create_model(tiny_clip.TINY_MODEL, pretrained=None).state_dict()
    got = model.classifier.model.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # predict_all on what FiftyOne may pass outside the DataLoader: file paths,
    # HWC uint8 arrays (video frames); an unreadable file gets no labels and
    # does not cost the others theirs.
    from PIL import Image

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    arr = np.asarray(Image.open(photos[1][0]).convert("RGB"))
    out = model.predict_all([photos[0][0], str(bad), arr])
    assert out[1] is None
    assert any(
        str(bad) in r.getMessage() and "no labels written" in r.getMessage() for r in caplog.records
    )
    assert out[0]["prediction"].label in ("a", "b") and len(out[0]["crops"].detections) >= 1
    # Arrays are keyed by their pixels, so the batch position does not matter.
    again = model.predict(arr)
    np.testing.assert_allclose(again["prediction"].logits, out[2]["prediction"].logits, atol=1e-5)
    assert [d.bounding_box for d in again["crops"].detections] == [
        d.bounding_box for d in out[2]["crops"].detections
    ]


def test_operator_form_and_parameters(zoo_source, dataset, cub_subset):
    import fiftyone.zoo as foz
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.core.config import LaZSLConfig
    from fiftyone_lazsl.fo.store import save_attribute_set

    zm = foz.get_zoo_model(NAME)
    prop = zm.resolve_input(ExecutionContext(request_params={"dataset_name": dataset.name}))
    props = prop.type.properties
    assert props["attribute_set"].required
    for name in ("method", "n_crops", "seed"):
        assert props[name].default == getattr(LaZSLConfig(), name)

    aset = AttributeSet.from_json(cub_subset)
    save_attribute_set(dataset, aset, name="cub-sub")

    # The context the "Apply zoo model" operator passes, on this dataset.
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    params = {"attribute_set": "cub-sub", "pretrained": "", "device": None, "n_crops": 3}
    zm.parse_parameters(ctx, params)
    assert set(params) == {"attribute_set", "n_crops"}
    assert params["attribute_set"].classes == aset.classes


def test_zoo_model_wca_matches_run_lazsl(zoo_source, dataset, cub_subset):
    """``method="wca"`` through the zoo model: the same labels, logits and
    crop detections as run_lazsl's WCA run; the form offers WCA's defaults."""
    import fiftyone.zoo as foz
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_lazsl.fo.apply import run_lazsl

    zm = foz.get_zoo_model(NAME)
    ctx = ExecutionContext(
        request_params={"dataset_name": dataset.name, "params": {"method": "wca"}}
    )
    props = zm.resolve_input(ctx).type.properties
    assert props["n_crops"].default == 60 and "wca" in props["method"].type.values
    torch.manual_seed(0)
    model = foz.load_zoo_model(
        NAME, pretrained=None, attribute_set=cub_subset, method="wca", n_crops=N_CROPS, seed=SEED
    )
    assert model.classifier.method == "wca" and model.classifier.crop_scale == (0.5, 0.9)
    dataset.apply_model(model, label_field="zoo_wca", batch_size=2, num_workers=0)
    torch.manual_seed(0)
    run_lazsl(
        dataset,
        cub_subset,
        label_field="wca",
        model="ViT-B-32",
        pretrained=None,
        method="wca",
        n_crops=N_CROPS,
        seed=SEED,
        num_workers=0,
    )
    for s in dataset.iter_samples():
        ref, got = s["wca"], s["zoo_wca_prediction"]
        assert got.label == ref.label
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4)
        rd, gd = s["wca_crops"].detections, s["zoo_wca_crops"].detections
        assert [(d.label, d["crop_index"]) for d in gd] == [(d.label, d["crop_index"]) for d in rd]
        np.testing.assert_allclose(
            [d.confidence for d in gd], [d.confidence for d in rd], atol=1e-5
        )
