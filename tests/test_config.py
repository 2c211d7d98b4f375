"""LaZSLConfig: one declaration of every LaZSL parameter, shared by Python,
the CLI and the operator; validation happens before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fiftyone_lazsl.core.config import LaZSLConfig, normalize_pretrained
from fiftyone_lazsl.errors import ConfigError, UserError
from fiftyone_lazsl.testing import tiny_clip


def test_defaults_are_the_papers():
    c = LaZSLConfig()
    assert (c.method, c.n_crops, c.crop_scale, c.theta, c.eps) == (
        "lazsl",
        90,
        (0.6, 0.9),
        0.8,
        0.1,
    )
    assert (c.gamma, c.max_iter, c.stop_tol, c.seed) == (0.0, 100, 0.01, 0)


def test_round_trip_and_replace():
    c = LaZSLConfig(theta=0.5, crop_scale=[0.5, 0.7], pretrained="none", n_crops="12")
    assert c.pretrained is None and c.n_crops == 12 and c.crop_scale == (0.5, 0.7)
    d = c.to_dict()
    assert set(d) == set(LaZSLConfig.field_names())
    assert LaZSLConfig.from_dict(d) == c
    assert c.replace(eps=0.2).eps == 0.2 and c.replace(eps=0.2).theta == 0.5


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(theta=1.5), "theta"),
        (dict(theta=-0.1), "theta"),
        (dict(eps=0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(crop_scale=(0, 0.5)), "crop_scale"),
        (dict(crop_scale=(0.9, 0.6)), "crop_scale"),
        (dict(crop_scale=0.5), "crop_scale"),
        (dict(n_crops=0), "n_crops"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_iter=0), "max_iter"),
        (dict(method="bogus"), "method"),
        (dict(crop_backend="bogus"), "crop_backend"),
        (dict(prompt_style="x"), "prompt_style"),
        (dict(seed=-1), "seed"),
        (dict(n_crops="many"), "n_crops"),
        (dict(stop_tol=-1), "stop_tol"),
    ],
)
def test_invalid_values_name_the_parameter(kw, name):
    with pytest.raises(ConfigError, match=name) as e:
        LaZSLConfig(**kw)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="thetaa"):
        LaZSLConfig.from_dict({"thetaa": 0.5})
    assert LaZSLConfig.from_dict({"thetaa": 0.5}, strict=False) == LaZSLConfig()


def test_dclip_needs_no_crops():
    assert LaZSLConfig(method="dclip", n_crops=0).n_crops == 0


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", None),
        ("none", None),
        ("None", None),
        (" random ", None),
        ("openai", "openai"),
        ("/x/ckpt.pt", "/x/ckpt.pt"),
    ],
)
def test_random_weight_spellings(value, expected):
    assert normalize_pretrained(value) == expected


def test_output_diff_ignores_device_and_batch_size():
    a = LaZSLConfig()
    assert a.output_diff(a.replace(device="cpu", batch_size=16)) == []
    assert sorted(a.output_diff(a.replace(theta=0.5, seed=3))) == ["seed", "theta"]


# ------------------------------------------------- one parameter set everywhere
def _classify_parser():
    from fiftyone_lazsl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse has no public accessor
    return sub.choices["classify"]


def test_cli_flags_are_the_config_fields():
    p = _classify_parser()
    dests = {a.dest for a in p._actions}
    assert set(LaZSLConfig.field_names()) <= dests
    flags = {s for a in p._actions for s in a.option_strings}
    for name in LaZSLConfig.field_names():
        assert LaZSLConfig.cli_flag(name) in flags
    assert {"--crop-min", "--crop-max"} <= flags  # older flags stay accepted


def test_cli_args_give_the_same_config():
    p = _classify_parser()
    args = p.parse_args(
        [
            "--dataset",
            "d",
            "--attributes",
            "a",
            "--theta",
            "0.3",
            "--eps",
            "0.2",
            "--gamma",
            "0.01",
            "--max-iter",
            "7",
            "--stop-tol",
            "0.001",
            "--crop-scale",
            "0.5",
            "0.8",
            "--pretrained",
            "none",
            "--prompt-suffix",
            ".",
            "--n-crops",
            "5",
        ]
    )
    c = LaZSLConfig.from_cli_args(args)
    assert c == LaZSLConfig(
        theta=0.3,
        eps=0.2,
        gamma=0.01,
        max_iter=7,
        stop_tol=0.001,
        crop_scale=(0.5, 0.8),
        pretrained=None,
        prompt_suffix=".",
        n_crops=5,
    )
    args = p.parse_args(["--dataset", "d", "--attributes", "a", "--crop-min", "0.7"])
    assert LaZSLConfig.from_cli_args(args).crop_scale == (0.7, 0.9)


def _operator_module():
    """``operators/run_lazsl.py`` imported as FiftyOne imports it: a module of
    the ``operators`` package of the plugin package (it imports its siblings
    relatively)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, path, pkg in (
        ("lazsl_plugin_pkg", os.path.join(root, "__init__.py"), True),
        ("lazsl_plugin_pkg.operators", os.path.join(root, "operators", "__init__.py"), True),
        (
            "lazsl_plugin_pkg.operators.run_lazsl",
            os.path.join(root, "operators", "run_lazsl.py"),
            False,
        ),
    ):
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(
            name, path, submodule_search_locations=[os.path.dirname(path)] if pkg else None
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["lazsl_plugin_pkg.operators.run_lazsl"]


def test_operator_form_and_params_cover_the_config():
    import fiftyone.operators.types as types

    op = _operator_module()
    inputs = types.Object()
    op._config_inputs(inputs, "lazsl")
    names = set(inputs.properties)
    expected = (
        set(LaZSLConfig.field_names())
        - {"method", "crop_scale", "image_scale_log", "text_scale_log"}
    ) | {"crop_min", "crop_max"}
    assert names == expected
    # the WCA form: its temperatures, the crop options with WCA's defaults, no transport
    inputs = types.Object()
    op._config_inputs(inputs, "wca")
    assert {"image_scale_log", "text_scale_log", "n_crops", "crop_min", "crop_max"} <= set(
        inputs.properties
    )
    assert "theta" not in inputs.properties and "eps" not in inputs.properties
    assert (
        inputs.properties["crop_min"].default == 0.5 and inputs.properties["n_crops"].default == 60
    )
    assert op.params_to_config({"method": "wca", "crop_max": 0.8}).crop_scale == (0.5, 0.8)
    # dclip / clip forms show only the parameters those methods use
    inputs = types.Object()
    op._config_inputs(inputs, "clip")
    assert "theta" not in inputs.properties and "n_crops" not in inputs.properties
    # a form filled with non-default values gives exactly that config
    c = LaZSLConfig(
        model="ViT-B-16",
        pretrained=None,
        n_crops=7,
        crop_scale=(0.5, 0.8),
        seed=3,
        theta=0.4,
        eps=0.05,
        gamma=0.02,
        max_iter=50,
        stop_tol=0.001,
        prompt_style="legacy",
        prompt_suffix=".",
        batch_size=2,
        device="cpu",
    )
    params = {k: v for k, v in c.to_dict().items() if k != "crop_scale"}
    params.update(crop_min=0.5, crop_max=0.8, pretrained="none")
    assert op.params_to_config(params) == c
    with pytest.raises(ConfigError, match="theta"):
        op.params_to_config({"theta": 3})


def test_classifier_takes_every_field():
    tiny_clip.register()
    from fiftyone_lazsl import LaZSLClassifier

    c = LaZSLConfig(
        model=tiny_clip.TINY_MODEL,
        pretrained=None,
        n_crops=3,
        crop_scale=(0.5, 0.8),
        seed=4,
        theta=0.3,
        eps=0.2,
        gamma=0.01,
        max_iter=9,
        stop_tol=0.001,
        prompt_suffix=".",
        batch_size=2,
        device="cpu",
        crop_backend="pil",
    )
    aset = {"cat": ["whiskers"], "dog": ["a tail"]}
    a = LaZSLClassifier(aset, config=c)
    assert a.lazsl_config == c
    # the default "auto" is resolved on the model's device ("pil" on the CPU)
    assert LaZSLClassifier(aset, config=c.replace(crop_backend="auto")).lazsl_config == c
    b = LaZSLClassifier(aset, **{k: v for k, v in c.to_dict().items()})
    assert b.lazsl_config == c
    cfg = a.config()
    assert LaZSLConfig.from_dict(cfg, strict=False) == c
    assert (a.theta, a.eps, a.n_crops, a.max_iter) == (0.3, 0.2, 3, 9)
    with pytest.raises(ConfigError, match="theta"):
        LaZSLClassifier(aset, config=c, theta=2)


def test_invalid_parameter_writes_nothing(tmp_path):
    """A bad parameter is refused before the dataset is touched."""
    import fiftyone as fo

    from fiftyone_lazsl import run_lazsl

    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "x.jpg"), lazsl=fo.Classification(label="cat")))
    for kw in (
        dict(theta=2.0),
        dict(crop_scale=(0, 1)),
        dict(top_k_crops=-1),
        dict(write_every=0),
        dict(num_workers=-1),
        dict(batch_size=0),
    ):
        with pytest.raises(ConfigError):
            run_lazsl(ds, {"cat": ["whiskers"]}, **kw)
        assert ds.first().lazsl.label == "cat"
    assert ds.list_runs() == []


def test_cli_invalid_flag_value_is_one_line_exit_2():
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    r = subprocess.run(
        [exe, "classify", "--dataset", "nope", "--attributes", "x", "--theta", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("fiftyone-lazsl classify: error: theta must be in [0, 1]")
    assert "Traceback" not in r.stderr
