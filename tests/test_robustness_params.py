"""Every bad parameter is refused with one line and
exit status 2 *before* anything is written, so a dataset holding an earlier
completed run keeps every byte of it (predictions, errors, run record,
``dataset.classes``). Domain checks of the library: missing or unknown torch
devices, label-field names MongoDB cannot hold, a ``gt_field`` that is not a
Classification field, dict-valued attribute lists, non-finite features, prompts
longer than the text context, LLM timeouts.

``cli.main`` in process (the same code path as the console script, minus the
interpreter start) against a real MongoDB and real photos."""

import json
import logging

import bson
import pytest
import torch

import badfiles as bf
from badfiles import assert_every_sample_accounted
from cli_helpers import main_in_process as _main
from cli_helpers import one_error_line as _one_error_line
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()

FIELDS = ["lazsl", "lazsl_crops", "lazsl_attributes", "lazsl_error"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture(scope="module")
def done(shared_data, checkpoint, tmp_path_factory):
    """A persistent dataset (3 CUB photos + 1 missing file) with a completed
    run on ``lazsl``; returns ``(dataset, attribute-set file)``."""
    from fiftyone_lazsl import run_lazsl

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)
    d = tmp_path_factory.mktemp("params")
    aset = {c: [f"trait {i} of {c}", "a beak"] for i, (_, c) in enumerate(photos)}
    path = d / "set.json"
    path.write_text(json.dumps(aset))
    ds = bf.make_dataset(
        "params-done",
        [p for p, _ in photos] + [str(d / "gone.jpg")],
        gt=[c for _, c in photos] + [photos[0][1]],
    )
    ds.persistent = True
    s = run_lazsl(
        ds,
        str(path),
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=3,
        num_workers=0,
    )
    assert (s.num_predicted, s.num_failed) == (3, 1)
    yield ds, str(path)
    ds.delete()


def _raw(ds):
    coll = ds._sample_collection
    return {
        str(d["_id"]): bson.BSON.encode({f: d.get(f) for f in FIELDS})
        for d in coll.find({}, {f: 1 for f in FIELDS})
    }


def _state(ds):
    ds.reload()
    runs = {k: ds.get_run_info(k).config.serialize() for k in ds.list_runs()}
    return _raw(ds), sorted(ds.get_field_schema()), runs, dict(ds.classes)


# (extra flags, text the one error line must hold). Each must fail before the
# completed run on ``lazsl`` is touched.
BAD_FLAGS = [
    (["--n-crops", "0"], "n_crops must be >= 1"),
    (["--n-crops", "-3"], "n_crops"),
    (["--crop-min", "0"], "crop_scale"),
    (["--crop-max", "1.5"], "crop_scale"),
    (["--crop-scale", "0.9", "0.5"], "crop_scale"),
    (["--theta", "1.5"], "theta must be in [0, 1]"),
    (["--theta", "-0.1"], "theta"),
    (["--theta", "nan"], "theta"),
    (["--eps", "0"], "eps must be > 0"),
    (["--eps", "-1"], "eps"),
    (["--eps", "inf"], "eps"),
    (["--max-iter", "0"], "max_iter"),
    (["--stop-tol", "-1"], "stop_tol"),
    (["--seed", "-1"], "seed"),
    (["--batch-size", "0"], "batch_size"),
    (["--workers", "-1"], "num_workers"),
    (["--write-every", "0"], "write_every"),
    (["--top-k-crops", "0"], "top_k_crops"),
    (["--top-k-crops", "-2"], "top_k_crops"),
    (["--device", "bogus"], "device 'bogus'"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--device", "cuda:3"], "device 'cuda:3'"),
    (["--device", "tpu"], "device 'tpu'"),
    (["--label-field", "a.b"], "contains '.'"),
    (["--label-field", "$x"], "must not start with '$'"),
    (["--label-field", "_private"], "must not start with"),
    (["--label-field", "a b"], "letters, digits"),
    (["--label-field", " "], "non-empty"),
    (["--label-field", "ground_truth"], "choose another label field"),
    (["--label-field", "lazsl_crops"], "choose another label field"),
    (["--gt-field", "filepath"], "not a Classification field"),
    (["--gt-field", "tags"], "not a Classification field"),
    (["--gt-field", "no_such_field"], "has no field 'no_such_field'"),
    (["--restrict-to-set"], "restrict_to_set needs gt_field"),
    (["--model", "ViT-Q-99"], "unknown open_clip model"),
    (["--pretrained", "/nonexistent/weights.pt"], "checkpoint file not found"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_parameter_refused_before_anything_is_written(capsys, done, checkpoint, flags, message):
    ds, aset = done
    if torch.cuda.is_available() and "cuda" in flags[-1]:
        pytest.skip("this machine has a GPU")
    before = _state(ds)
    base = [
        "classify",
        "--dataset",
        ds.name,
        "--attributes",
        aset,
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--n-crops",
        "3",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    rc, out, err = _main(capsys, *base, *flags)
    assert rc == 2, (out, err)
    assert message in _one_error_line(err)
    assert _state(ds) == before  # nothing cleared, no run record touched
    assert_every_sample_accounted(ds, "lazsl")


BAD_SETS = [
    ({"Cardinal": {"red": 1, "crest": 2}}, "must map to a list of strings, got dict"),
    ({"Cardinal": "a red bird"}, "must map to a list of strings, got str"),
    ({"Cardinal": [1, 2]}, "non-string attribute"),
    ({}, "has no classes"),
    ([["Cardinal", "red"]], "must be a JSON object"),
    ({"": ["red"]}, "empty class name"),
]


@pytest.mark.parametrize("content,message", BAD_SETS, ids=[m for _, m in BAD_SETS])
def test_bad_attribute_file_refused_before_anything_is_written(
    capsys, tmp_path, done, checkpoint, content, message
):
    ds, _ = done
    before = _state(ds)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    rc, _, err = _main(
        capsys,
        "classify",
        "--dataset",
        ds.name,
        "--attributes",
        str(bad),
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--device",
        "cpu",
    )
    assert rc == 2
    assert message in _one_error_line(err)
    assert _state(ds) == before


def test_library_refuses_devices_label_fields_and_gt_fields_before_writing(done, checkpoint):
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.errors import ConfigError

    ds, aset = done
    before = _state(ds)
    kw = dict(model=tiny_clip.TINY_MODEL, pretrained=checkpoint, n_crops=3, num_workers=0)
    for device in ("bogus", "cuda:7"):
        with pytest.raises(ConfigError, match="device"):
            run_lazsl(ds, aset, device=device, **kw)
    for field in ("a.b", "$x"):
        with pytest.raises(ConfigError, match="label_field"):
            run_lazsl(ds, aset, label_field=field, device="cpu", **kw)
    with pytest.raises(ConfigError, match="gt_field 'filepath'.*StringField"):
        run_lazsl(ds, aset, gt_field="filepath", device="cpu", **kw)
    assert _state(ds) == before
    assert not [k for k in ds.list_runs() if k != "lazsl_lazsl"]  # no orphan "running" record


def test_dict_of_attributes_is_not_taken_as_its_keys():
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.errors import AttributeSetError

    with pytest.raises(
        AttributeSetError, match="'Cardinal' must map to a list of strings, got dict"
    ):
        AttributeSet.from_dict({"Cardinal": {"a red crest": 0.9, "a black mask": 0.5}})


def test_non_finite_features_raise_instead_of_nan_scores():
    from fiftyone_lazsl.core.scoring import lazsl_scores

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)
    mask = torch.ones(3, 2, dtype=torch.bool)
    assert torch.isfinite(lazsl_scores(img, txt, mask)).all()
    for what, bad_img, bad_txt in (("image_features", True, False), ("text_features", False, True)):
        i, t = img.clone(), txt.clone()
        if bad_img:
            i[1, 2, 3] = float("nan")
        if bad_txt:
            t[0, 1, 0] = float("inf")
        with pytest.raises(ValueError, match=f"{what} has non-finite values"):
            lazsl_scores(i, t, mask)
    # finite values whose sum overflows float32 are not called non-finite (the
    # check sums first and only then looks at every element)
    from fiftyone_lazsl.core import scoring

    big = img.clone()
    big[0, 0, :] = 3e38
    assert not torch.isfinite(big.sum())
    scoring._check(big, txt, mask)


def test_prompts_longer_than_the_context_warn_once(caplog):
    from fiftyone_lazsl.core.models import load_model

    m = load_model(tiny_clip.TINY_MODEL, None, device="cpu")
    long = "a small bird with " + "very " * 90 + "long feathers"
    exactly = " ".join(["red"] * 75)  # start + 75 + end = 77 tokens: fits exactly
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiftyone_lazsl"):
        m.encode_texts(["a red bird", exactly], use_cache=False)
    assert not [r for r in caplog.records if "context" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="fiftyone_lazsl"):
        m.encode_texts(["a red bird", long, long + " too"], use_cache=False)
    msgs = [r.getMessage() for r in caplog.records if "context" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith(
        "2 prompt(s) are longer than the text encoder's context of 77 tokens"
    )


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--timeout", "-1"], "timeout must be a positive number"),
        (["--timeout", "0"], "timeout must be a positive number"),
        (["--timeout", "inf"], "timeout must be a positive number"),
        (["--max-retries", "-1"], "max_retries must be >= 0"),
        (["--concurrency", "0"], "concurrency must be at least 1"),
        (["--n", "0"], "between 1 and 50"),
    ],
)
def test_generate_bad_llm_options(capsys, tmp_path, tmp_cache, flags, message):
    classes = tmp_path / "classes.txt"
    classes.write_text("Cardinal\nBlue Jay\n")
    out = tmp_path / "set.json"
    rc, _, err = _main(
        capsys,
        "attributes",
        "generate",
        "--classes",
        str(classes),
        "--out",
        str(out),
        "--llm-model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        *flags,
    )
    assert rc == 2
    assert message in _one_error_line(err, "attributes")
    assert not out.exists()
