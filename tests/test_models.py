"""Model loading and text encoding with the tiny random-weight open_clip model
(offline: HF_HUB_OFFLINE=1 is set by conftest)."""

import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from fiftyone_lazsl.core.models import LoadedModel, load_model
from fiftyone_lazsl.errors import ModelNotFoundError, WeightsUnavailableError
from fiftyone_lazsl.testing import tiny_clip
from fiftyone_lazsl.testing.tiny_clip import TINY_MODEL, make_hub_cache, save_checkpoint

tiny_clip.register()

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3)


def _reference_model(state_dict_path):
    """The saved model rebuilt directly with open_clip (independent of load_model)."""
    import open_clip

    m = open_clip.create_model(TINY_MODEL, pretrained=None)
    m.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True))
    return m.eval(), open_clip.get_tokenizer(TINY_MODEL)


# ------------------------------------------------------------------ loading
def test_random_weights_are_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="fiftyone_lazsl.core.models"):
        m = load_model(TINY_MODEL, None, device="cpu")
    assert isinstance(m, LoadedModel)
    assert m.random_weights is True
    assert m.weights_id is None
    assert m.pretrained is None
    assert m.describe()["random_weights"] is True
    assert any(
        "RANDOM WEIGHTS" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records
    )
    assert m.image_size == 64
    assert m.device == torch.device("cpu")
    for p in m.model.parameters():
        assert not p.requires_grad
    assert not m.model.training


def test_checkpoint_file(checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="fiftyone_lazsl.core.models"):
        m = load_model(TINY_MODEL, str(checkpoint), device="cpu")
    assert not any("RANDOM WEIGHTS" in r.getMessage() for r in caplog.records)
    assert m.random_weights is False
    assert m.pretrained == str(checkpoint)
    assert m.weights_id is not None and str(checkpoint) in m.weights_id
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = m.model.state_dict()
    assert set(saved) == set(state)
    for k in ("visual.conv1.weight", "token_embedding.weight", "text_projection", "logit_scale"):
        assert torch.equal(state[k].cpu(), saved[k]), k
    # a random model of the same architecture differs (the comparison can fail)
    r = load_model(TINY_MODEL, None, device="cpu")
    assert not torch.equal(
        r.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"]
    )
    assert m.logit_scale == pytest.approx(100.0, rel=1e-3)

    ref, tok = _reference_model(checkpoint)
    texts = ["a photo of a bird", "Laysan Albatross, which has a white head", "x"]
    with torch.no_grad():
        want_t = F.normalize(ref.encode_text(tok(texts)), dim=-1)
        pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        want_i = F.normalize(ref.encode_image(pixels), dim=-1)
    got_t = m.encode_texts(texts, use_cache=False)
    got_i = m.encode_images(pixels)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_i, want_i, rtol=0, atol=1e-6)
    assert got_t.shape == (3, 32) and got_i.shape == (3, 32)
    torch.testing.assert_close(got_i.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)


def test_offline_hub_cache_via_cache_dir(tmp_path):
    hub = tmp_path / "hub"
    hub_id = make_hub_cache(hub, seed=5)
    m = load_model("ignored", hub_id, cache_dir=str(hub), device="cpu")
    assert m.random_weights is False
    snap = next((hub / "models--lazsl-test--tiny-clip" / "snapshots").iterdir())
    saved = torch.load(snap / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    assert torch.equal(m.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert m.encode_texts(["a bird"], use_cache=False).shape == (1, 32)


_HUB_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from fiftyone_lazsl.core.models import load_model
m = load_model("ignored", "hf-hub:lazsl-test/tiny-clip", device="cpu")
saved = torch.load({weights!r}, map_location="cpu", weights_only=True)
assert m.random_weights is False, m.random_weights
assert torch.equal(m.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
assert torch.equal(m.model.state_dict()["token_embedding.weight"], saved["token_embedding.weight"])
assert m.encode_texts(["a bird", "a cat"], use_cache=False).shape == (2, 32)
print("HUB-OK", m.weights_id)
"""


def test_offline_hub_cache_via_hf_hub_cache_env(tmp_path):
    """The hub cache given as HF_HUB_CACHE (read by huggingface_hub at import, so
    in a fresh interpreter) loads offline, with the cached weights."""
    hub = tmp_path / "hub"
    make_hub_cache(hub, seed=5)
    snap = next((hub / "models--lazsl-test--tiny-clip" / "snapshots").iterdir())
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "hf-home")
    )
    script = _HUB_SCRIPT.format(tests=str(TESTS), weights=str(snap / "open_clip_pytorch_model.bin"))
    p = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "HUB-OK hf-hub:lazsl-test/tiny-clip" in p.stdout


def _assert_how_to_supply(msg):
    assert "pretrained=" in msg and "local checkpoint" in msg
    assert "HF_HUB_OFFLINE" in msg or "offline" in msg


def test_offline_missing_tag_fails_fast():
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        load_model("ViT-B-32", "openai", device="cpu")
    assert time.perf_counter() - t < 10.0
    _assert_how_to_supply(str(e.value))
    assert "'openai'" in str(e.value)


def test_offline_unknown_hub_repo_fails_fast():
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        load_model("ignored", "hf-hub:lazsl-test/does-not-exist", device="cpu")
    assert time.perf_counter() - t < 10.0
    _assert_how_to_supply(str(e.value))


def test_unknown_model_name_suggests():
    with pytest.raises(ModelNotFoundError) as e:
        load_model("ViT-B-33", "openai", device="cpu")
    assert "did you mean" in str(e.value) and "ViT-B-32" in str(e.value)
    with pytest.raises(ModelNotFoundError):
        load_model("ViT-B-33", None, device="cpu")


def test_unknown_tag_lists_tags():
    import open_clip

    with pytest.raises(WeightsUnavailableError) as e:
        load_model("ViT-B-32", "no_such_tag", device="cpu")
    msg = str(e.value)
    assert "no_such_tag" in msg
    for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32"):
        assert tag in msg


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_model(TINY_MODEL, str(missing), device="cpu")
    with pytest.raises(WeightsUnavailableError):
        load_model(TINY_MODEL, "weights.safetensors", device="cpu")


# ------------------------------------------------------------------ text
PROMPTS = [f"class {i // 3}, which has attribute number {i}" for i in range(31)]


def test_encode_texts_chunking():
    m = load_model(TINY_MODEL, None, device="cpu")
    a = m.encode_texts(PROMPTS, batch_size=7)
    b = m.encode_texts(PROMPTS, batch_size=1000)
    c = m.encode_texts(PROMPTS, batch_size=1)
    assert a.shape == (31, 32) and a.dtype == torch.float32 and a.device.type == "cpu"
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(c, b, rtol=0, atol=1e-6)
    # each prompt is encoded on its own: the row of a prompt does not depend on its neighbours
    torch.testing.assert_close(m.encode_texts(PROMPTS[5:6])[0], b[5], rtol=0, atol=1e-6)
    assert not torch.allclose(b[0], b[1])


SHORT_MODEL = "lazsl-tiny-test-ctx16"


def _register_short_model(tmp_path):
    """The tiny architecture with a 16-token context (short prompts), so that
    10 000 prompts encode in seconds on a CPU."""
    import json

    import open_clip

    if open_clip.get_model_config(SHORT_MODEL) is None:
        cfg = json.loads(tiny_clip._CONFIG.read_text())
        cfg["text_cfg"]["context_length"] = 16
        p = tmp_path / f"{SHORT_MODEL}.json"
        p.write_text(json.dumps(cfg))
        open_clip.add_model_config(p)
    return SHORT_MODEL


def test_encode_many_prompts(tmp_path):
    m = load_model(_register_short_model(tmp_path), None, device="cpu")
    assert m.model.context_length == 16
    texts = [f"c{c}, which has a{a}" for c in range(1000) for a in range(10)]
    f = m.encode_texts(texts, batch_size=2500)
    assert f.shape == (10000, 32)
    assert torch.isfinite(f).all()


def test_text_cache_reused_for_checkpoint(checkpoint, tmp_cache, monkeypatch):
    m = load_model(TINY_MODEL, str(checkpoint), device="cpu")
    first = m.encode_texts(PROMPTS, batch_size=8)
    files = list((tmp_cache / "text").glob("*.pt"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("encode_text called although the result is cached")

    monkeypatch.setattr("fiftyone_lazsl.core.models.encode_text_tokens", boom)
    second = m.encode_texts(PROMPTS, batch_size=8)
    assert torch.equal(first, second)
    # a different text list is not served from the cache
    with pytest.raises(AssertionError, match="cached"):
        m.encode_texts(PROMPTS[:-1])
    # another model instance with the same weights reads the same file
    m2 = load_model(TINY_MODEL, str(checkpoint), device="cpu")
    assert torch.equal(m2.encode_texts(PROMPTS), first)


def test_random_weights_never_cached(tmp_cache):
    m = load_model(TINY_MODEL, None, device="cpu")
    m.encode_texts(PROMPTS)
    m.encode_texts(PROMPTS)
    assert not list(tmp_cache.rglob("*.pt"))


def test_trimmed_text_encoding_equals_full_context():
    """encode_text_tokens cuts the causal CLIP text tower after the last
    end-of-text token; the features must equal open_clip's full-context ones."""
    from fiftyone_lazsl.core.models import encode_text_tokens

    m = load_model(TINY_MODEL, None, device="cpu")
    texts = [
        "a",
        "Cardinal, which is a bright red bird with a crest",
        "Black-footed Albatross, which has a long, hooked bill " * 3,
    ]
    tokens = m.tokenizer(texts)
    with torch.no_grad():
        full = m.model.encode_text(tokens)
        trimmed = encode_text_tokens(m.model, tokens)
        alone = torch.cat([encode_text_tokens(m.model, tokens[i : i + 1]) for i in range(3)])
    assert torch.allclose(full, trimmed, atol=1e-5, rtol=0)
    assert torch.allclose(full, alone, atol=1e-5, rtol=0)
