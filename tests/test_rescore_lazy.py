"""Nothing loaded that is not used: re-scoring with every text feature cached
builds no model, a text-cache miss loads the text tower only, the whole model
is loaded at the first sample that needs encoding, and a sharded run records
its provenance without loading anything (core.models.LazyModel,
core.classifier.RunProvenance). Real photos, real MongoDB, the tiny model."""

import os

import numpy as np
import pytest
import torch

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin  # noqa: F401

tiny_clip.register()
from test_feature_precision import F16_LOGIT_TOL  # noqa: E402

N = 4
PROMPTS = ["a photo of a bird", "a bird with a red crown", "black wings with white bars"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=4))


@pytest.fixture(scope="module")
def photos(shared_data):
    return tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=5)


def _kw(checkpoint):
    return dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=N,
        seed=2,
        num_workers=0,
        batch_size=2,
    )


def _asets(photos):
    classes = sorted({c for _, c in photos})
    a1 = {c: [f"{c} feathers", "a small beak", f"trait {i}"] for i, c in enumerate(classes)}
    a2 = {c: list(v) for c, v in a1.items()}
    a2[classes[0]] = ["a bright red crown", "black wings with white bars"]
    a2[classes[1]] = a2[classes[1]] + ["a long forked tail"]
    return a1, a2


class Spy:
    """Counts what loads weights or encodes text: ``open_clip.create_model``
    with a real device (``device="meta"`` builds are counted apart: no
    memory, no weights), ``load_model``, the text tower's forward pass, and
    the models ``open_clip.load_checkpoint`` filled."""

    def __init__(self, monkeypatch):
        import open_clip

        from fiftyone_lazsl.core import models

        self.built, self.meta, self.loads, self.text_calls, self.checkpointed = [], 0, 0, 0, []
        create, load, encode, ckpt = (
            open_clip.create_model,
            models.load_model,
            models.encode_text_tokens,
            open_clip.load_checkpoint,
        )

        def spy_create(*a, **k):
            if str(k.get("device")) == "meta":
                self.meta += 1
            else:
                self.built.append(a[0] if a else k.get("model_name"))
            return create(*a, **k)

        def spy_load(*a, **k):
            self.loads += 1
            return load(*a, **k)

        def spy_encode(*a, **k):
            self.text_calls += 1
            return encode(*a, **k)

        def spy_ckpt(model, *a, **k):
            self.checkpointed.append(model)
            return ckpt(model, *a, **k)

        monkeypatch.setattr(open_clip, "create_model", spy_create)
        monkeypatch.setattr(open_clip, "load_checkpoint", spy_ckpt)
        monkeypatch.setattr(models, "load_model", spy_load)
        monkeypatch.setattr(models, "encode_text_tokens", spy_encode)


def _logits(ds, field):
    return np.array([p.logits for p in ds.values(field)])


def test_rescore_with_cached_text_loads_no_model(
    tmp_path, tmp_cache, photos, checkpoint, monkeypatch
):
    """A first re-scoring with a set fills the text cache; the second (as in a
    new process: nothing kept in memory) builds no model and encodes no
    prompt, and its logits are those of a re-scoring with the whole model
    loaded (today's path) exactly, and a fresh run's within float16
    storage, for every method."""
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core.models import load_model
    from fiftyone_lazsl.fo.runs import get_run_config

    a1, a2 = _asets(photos)
    ds = bf.make_dataset("lazy-cached", [p for p, _ in photos])
    run_lazsl(
        ds, a1, label_field="first", store_features=str(tmp_path / "store"), **_kw(checkpoint)
    )
    full = load_model(tiny_clip.TINY_MODEL, checkpoint, device="cpu")
    for method in ("lazsl", "wca", "dclip", "clip"):
        rescore(ds, a2, from_field="first", label_field=f"warm_{method}", method=method)
        with monkeypatch.context() as m:
            spy = Spy(m)
            r = rescore(ds, a2, from_field="first", label_field=f"again_{method}", method=method)
            assert (spy.built, spy.meta, spy.loads, spy.text_calls) == ([], 0, 0, 0), method
        assert r.num_predicted == len(photos) and r.feature_store["reused"] == len(photos)
        # today's path: the whole model loaded (given as model=), encoding the
        # prompts itself (an empty text cache of its own)
        with monkeypatch.context() as m:
            m.setenv("FIFTYONE_LAZSL_CACHE", str(tmp_path / f"cache-{method}"))
            rescore(
                ds, a2, from_field="first", label_field=f"full_{method}", method=method, model=full
            )
        assert list((tmp_path / f"cache-{method}").rglob("*.pt"))
        np.testing.assert_array_equal(_logits(ds, f"again_{method}"), _logits(ds, f"full_{method}"))
        np.testing.assert_array_equal(_logits(ds, f"warm_{method}"), _logits(ds, f"full_{method}"))
        # a fresh run of the stored visual set (WCA's own default crop_scale differs)
        run_lazsl(
            ds,
            a2,
            label_field=f"fresh_{method}",
            method=method,
            crop_scale=tuple(get_run_config(ds, "first")["crop_scale"]),
            **_kw(checkpoint),
        )
        assert ds.values(f"again_{method}.label") == ds.values(f"fresh_{method}.label")
        assert (
            np.abs(_logits(ds, f"again_{method}") - _logits(ds, f"fresh_{method}")).max()
            <= F16_LOGIT_TOL
        )
    again, fresh = get_run_config(ds, "again_lazsl"), get_run_config(ds, "fresh_lazsl")
    for k in (
        "model",
        "pretrained",
        "weights_id",
        "random_weights",
        "image_size",
        "preprocess",
        "logit_scale",
        "device",
        "crop_backend",
        "attribute_labels",
    ):
        assert again[k] == fresh[k], k


def test_text_cache_miss_loads_the_text_tower_only(
    tmp_path, tmp_cache, photos, checkpoint, monkeypatch
):
    """With the set's text features not cached, re-scoring loads the text
    tower alone: open_clip builds the model on the meta device only, the
    image tower is never allocated, no whole model is loaded; the logits
    equal a re-scoring with the whole model exactly."""
    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core.models import load_model

    a1, a2 = _asets(photos)
    ds = bf.make_dataset("lazy-miss", [p for p, _ in photos])
    run_lazsl(
        ds, a1, label_field="first", store_features=str(tmp_path / "store"), **_kw(checkpoint)
    )
    with monkeypatch.context() as m:
        spy = Spy(m)
        rescore(ds, a2, from_field="first", label_field="text", method="wca")
        assert spy.built == [] and spy.loads == 0
        assert spy.text_calls == 2  # the sentences, then the label prompts (WCA)
        assert len(spy.checkpointed) == 1
        tower = spy.checkpointed[0]
        assert all(p.is_meta for p in tower.visual.parameters())
        assert not any(
            t.is_meta
            for n, t in list(tower.named_parameters()) + list(tower.named_buffers())
            if not n.startswith("visual.")
        )
    full = load_model(tiny_clip.TINY_MODEL, checkpoint, device="cpu")
    monkeypatch.setenv("FIFTYONE_LAZSL_CACHE", str(tmp_path / "cache-full"))  # encodes again
    with monkeypatch.context() as m:
        spy = Spy(m)
        rescore(ds, a2, from_field="first", label_field="full", method="wca", model=full)
        assert spy.text_calls == 2
    np.testing.assert_array_equal(_logits(ds, "text"), _logits(ds, "full"))


def test_missing_sample_loads_the_whole_model_once(
    tmp_path, tmp_cache, photos, checkpoint, monkeypatch
):
    """``missing="encode"``: the whole model is loaded at the first sample
    without stored features (once), and only then."""
    import fiftyone as fo

    from fiftyone_lazsl import rescore, run_lazsl

    a1, a2 = _asets(photos)
    ds = bf.make_dataset("lazy-encode", [p for p, _ in photos[:3]])
    run_lazsl(
        ds, a1, label_field="first", store_features=str(tmp_path / "store"), **_kw(checkpoint)
    )
    rescore(ds, a2, from_field="first", label_field="warm")  # text cache filled
    ds.add_samples([fo.Sample(filepath=p) for p, _ in photos[3:]])
    with monkeypatch.context() as m:
        spy = Spy(m)
        r = rescore(ds, a2, from_field="first", label_field="enc", missing="encode")
        assert spy.loads == 1 and spy.built == [tiny_clip.TINY_MODEL] and spy.text_calls == 0
    assert r.feature_store["stored"] == len(photos) - 3 and r.feature_store["reused"] == 3
    run_lazsl(ds, a2, label_field="fresh", **_kw(checkpoint))
    assert ds.values("enc.label") == ds.values("fresh.label")
    assert np.abs(_logits(ds, "enc") - _logits(ds, "fresh")).max() <= F16_LOGIT_TOL


def test_replaced_weights_are_still_refused(tmp_path, tmp_cache, photos, checkpoint):
    """The store's fingerprint check needs no model: a weights file replaced
    since the run is refused as before; random weights loaded again too."""
    import shutil

    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.errors import ConfigError

    a1, a2 = _asets(photos)
    ckpt = tmp_path / "w.pt"
    shutil.copy(checkpoint, ckpt)
    ds = bf.make_dataset("lazy-replaced", [photos[0][0]])
    kw = dict(_kw(checkpoint), pretrained=str(ckpt))
    run_lazsl(ds, a1, label_field="first", store_features=str(tmp_path / "store"), **kw)
    tiny_clip.save_checkpoint(ckpt, seed=9)
    st = os.stat(ckpt)
    os.utime(ckpt, (st.st_atime, st.st_mtime + 5))
    with pytest.raises(ConfigError, match="made with another model"):
        rescore(ds, a2, from_field="first", label_field="x")
    run_lazsl(
        ds,
        a1,
        label_field="rnd",
        store_features=str(tmp_path / "store"),
        **dict(kw, pretrained=None),
    )
    with pytest.raises(ConfigError, match="random weights loaded again"):
        rescore(ds, a2, from_field="rnd", label_field="y")


# ---------------------------------------------------------------- core objects
def _weights(tmp_path_factory_dir, checkpoint):
    """The ways to give weights: .pt file, .safetensors file, hf-hub cache, local-dir."""
    from safetensors.torch import save_file

    st = tmp_path_factory_dir / "tiny.safetensors"
    save_file(torch.load(checkpoint, weights_only=True), str(st))
    hub = tiny_clip.make_hub_cache(tmp_path_factory_dir / "hub", seed=1)
    local = tiny_clip.make_local_dir(
        tmp_path_factory_dir / "local", {"resize_mode": "squash"}, seed=2
    )
    return [
        (checkpoint, {}),
        (str(st), {}),
        (hub, {"cache_dir": str(tmp_path_factory_dir / "hub")}),
        (str(local), {}),
        (None, {}),
    ]


def test_lazy_model_knows_its_provenance_without_weights(
    tmp_path, tmp_cache, checkpoint, monkeypatch
):
    """For every way of giving weights: describe() and logit_scale equal the
    loaded model's, with open_clip building on the meta device only; text
    features equal the whole model's bit for bit; images load it once."""
    from fiftyone_lazsl.core.models import LazyModel, load_model

    for pretrained, kw in _weights(tmp_path, checkpoint):
        full = load_model(tiny_clip.TINY_MODEL, pretrained, device="cpu", **kw)
        with monkeypatch.context() as m:
            spy = Spy(m)
            lazy = LazyModel(tiny_clip.TINY_MODEL, pretrained, device="cpu", **kw)
            assert spy.built == [] and spy.loads == 0 and lazy.loaded == "nothing"
            assert lazy.describe() == full.describe() and lazy.preprocess_cfg == full.preprocess_cfg
            # random weights: open_clip's initial temperature, 1 / 0.07
            assert lazy.logit_scale == full.logit_scale
            assert lazy.loaded == "nothing"
        if pretrained is None:
            continue
        feats = lazy.encode_texts(PROMPTS, use_cache=False)
        assert lazy.loaded == "text"
        assert torch.equal(feats, full.encode_texts(PROMPTS, use_cache=False))
        pixels = torch.rand(2, 3, 64, 64)
        assert torch.equal(lazy.encode_images(pixels), full.encode_images(pixels))
        assert lazy.loaded == "full"
        assert torch.equal(lazy.encode_texts(PROMPTS, use_cache=False), feats)


def test_lazy_model_refuses_weights_that_differ_from_the_record(tmp_cache, checkpoint):
    """A record whose logit_scale or preprocessing the weights do not have:
    refused when the weights are loaded (text tower or whole model)."""
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.core.models import LazyModel
    from fiftyone_lazsl.errors import ConfigError

    rec = LaZSLClassifier(
        {"a": ["x"], "b": ["y"]}, model=tiny_clip.TINY_MODEL, pretrained=checkpoint, device="cpu"
    ).config()
    ok = LazyModel.from_provenance(rec, device="cpu")
    assert (
        ok.describe() == {k: rec[k] for k in ok.describe()} and ok.logit_scale == rec["logit_scale"]
    )
    ok.encode_images(torch.rand(1, 3, 64, 64))
    bad = LazyModel.from_provenance(dict(rec, logit_scale=rec["logit_scale"] / 2), device="cpu")
    with pytest.raises(ConfigError, match="logit_scale differ"):
        bad.encode_texts(PROMPTS, use_cache=False)
    bad = LazyModel.from_provenance(
        dict(rec, preprocess=dict(rec["preprocess"], resize_mode="squash")), device="cpu"
    )
    with pytest.raises(ConfigError, match="preprocessing differ"):
        bad.encode_images(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("method", ["lazsl", "wca", "dclip", "clip"])
@pytest.mark.parametrize("random", [False, True])
def test_run_provenance_equals_the_classifier_config(
    tmp_cache, checkpoint, monkeypatch, method, random
):
    """RunProvenance(...).config() == LaZSLClassifier(...).config(), key for
    key, with nothing built or encoded."""
    from fiftyone_lazsl.core.classifier import LaZSLClassifier, RunProvenance
    from fiftyone_lazsl.core.config import LaZSLConfig

    aset = {"a": ["red wings", "a short beak"], "b": ["blue tail"], "c": ["x", "y", "z"]}
    cfg = LaZSLConfig(
        model=tiny_clip.TINY_MODEL,
        pretrained=None if random else checkpoint,
        device="cpu",
        method=method,
        n_crops=5,
        theta=0.4,
        prompt_suffix=" ok",
    )
    want = LaZSLClassifier(aset, config=cfg).config()
    with monkeypatch.context() as m:
        spy = Spy(m)
        got = RunProvenance(aset, config=cfg).config()
        assert spy.built == [] and spy.loads == 0 and spy.text_calls == 0
    assert got == want


def test_queue_shards_loads_nothing_and_records_the_same_run(
    lazsl_plugin, shared_data, tmp_path, tmp_cache, checkpoint, monkeypatch
):
    """queue_shards' run record: no model built, no prompt encoded, and the
    same keys and values as the record written with a loaded classifier
    (LaZSLClassifier in place of RunProvenance), for real and random weights."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    from fiftyone_lazsl.core import classifier
    from fiftyone_lazsl.fo import shards
    from fiftyone_lazsl.fo.runs import get_run_config

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=4)
    ds = bf.make_dataset("lazy-shards", [p for p, _ in photos])
    aset = str(shared_data / "attribute_sets" / "cub.json")
    svc = DelegatedOperationService()
    volatile = {"label_field", "fields", "owner", "shard_operations"}
    try:
        for pretrained in (checkpoint, None):
            kw = dict(
                model=tiny_clip.TINY_MODEL,
                pretrained=pretrained,
                n_crops=3,
                method="wca",
                theta=0.3,
                gt_field=None,
            )
            with monkeypatch.context() as m:
                spy = Spy(m)
                run = shards.queue_shards(ds, aset, 2, label_field="new", **kw)
                assert spy.built == [] and spy.loads == 0 and spy.text_calls == 0
            with monkeypatch.context() as m:  # as before: the classifier built for its record
                m.setattr(classifier, "RunProvenance", classifier.LaZSLClassifier)
                before = shards.queue_shards(ds, aset, 2, label_field="old", **kw)
            new, old = get_run_config(ds, "new"), get_run_config(ds, "old")
            assert set(new) == set(old)
            diff = {k for k in new if new[k] != old[k]} - volatile
            assert not diff, {k: (new[k], old[k]) for k in diff}
            assert new["random_weights"] is (pretrained is None)
            assert new["crop_backend"] == "pil" and new["attribute_labels"]
            for op in run.operation_ids + before.operation_ids:
                svc.delete_operation(ObjectId(op))
    finally:
        ds.delete()
