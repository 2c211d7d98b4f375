"""``fiftyone-lazsl attributes generate`` and the ``build_attribute_sets``
operator, against a real local OpenAI-compatible server."""

import json
import uuid

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext, ExecutionError

from fiftyone_lazsl.cli import main
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.llm.secrets import KEY_NAMES
from openai_stub_server import StubOpenAI, attributes_json, content, refusal
from plugin_fixtures import lazsl_plugin, operator_uri, run_operator  # noqa: F401

KEY = "sk-test-OPERATOR-KEY-9876543210zyx"
SCRIPT = {
    "Black-footed Albatross": [attributes_json(["Dark brown plumage.", "a white face ring"])],
    "Laysan Albatross": [content("1. white head\n2. dark back\n3. White head")],
    "Sooty Albatross": [refusal("No.")],
}
LABELS = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
EXPECTED = {
    "001.Black_footed_Albatross": ["Dark brown plumage", "a white face ring"],
    "002.Laysan_Albatross": ["white head", "dark back"],
    "003.Sooty_Albatross": [],
}


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-llm-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nonexistent/{i}.jpg", gt=fo.Classification(label=lab))
            for i, lab in enumerate(LABELS + LABELS[:1])
        ]
    )
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("FIFTYONE_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_cli_generate_from_field_with_readable_names(dataset, tmp_cache, key_env, tmp_path, capsys):
    out = tmp_path / "sets" / "cub3.json"
    with StubOpenAI(SCRIPT) as server:
        argv = [
            "attributes",
            "generate",
            "--dataset",
            dataset.name,
            "--field",
            "gt",
            "--out",
            str(out),
            "--llm-model",
            "stub",
            "--base-url",
            server.base_url,
            "--n",
            "4",
            "--hint",
            "bird species",
            "--readable-names",
            "--timeout",
            "2",
            "--max-retries",
            "0",
        ]
        assert main(argv) == 0
        assert server.total == 4  # the refused class is asked twice
        assert set(server.auth_headers) == {f"Bearer {KEY}"}
        assert main(argv) == 0  # cached: the refused class only is asked again
        assert server.total == 6
    captured = capsys.readouterr()
    assert json.loads(out.read_text()) == EXPECTED
    meta = json.loads((tmp_path / "sets" / "cub3.json.meta.json").read_text())
    assert meta["name"] == "cub3" and meta["source"] == "llm:stub"
    assert meta["metadata"]["prompt_names"]["003.Sooty_Albatross"] == "Sooty Albatross"
    assert meta["metadata"]["classes_from"] == f"{dataset.name}:gt"
    assert meta["warnings"][-1] == (
        "class(es) with no attribute, scored with a class-name-only prompt: 003.Sooty_Albatross"
    )
    stored = store.load_attribute_set(dataset, "cub3")
    assert stored.to_dict() == EXPECTED and stored.warnings == meta["warnings"]
    assert captured.out.splitlines()[-1] == (
        f"wrote attribute set 'cub3' to {out}: 3 classes, 4 attributes (2 classes cached, "
        f"2 requests); stored as 'cub3' on dataset {dataset.name!r}"
    )
    assert "[3/3]" in captured.err and "warning: class '003.Sooty_Albatross'" in captured.err
    everything = captured.out + captured.err + out.read_text() + json.dumps(dataset.info)
    assert KEY not in everything


def test_cli_generate_from_class_file(tmp_cache, key_env, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    out = tmp_path / "two.json"
    with StubOpenAI(
        {
            "001.Black_footed_Albatross": SCRIPT["Black-footed Albatross"],
            "002.Laysan_Albatross": SCRIPT["Laysan Albatross"],
        }
    ) as server:
        rc = main(
            [
                "attributes",
                "generate",
                "--classes",
                str(classes),
                "--out",
                str(out),
                "--name",
                "two",
                "--llm-model",
                "stub",
                "--base-url",
                server.base_url,
            ]
        )
    assert rc == 0
    assert json.loads(out.read_text()) == {k: EXPECTED[k] for k in LABELS[:2]}
    assert not (tmp_path / "two.json.meta.json").read_text().count(KEY)


def test_cli_argument_errors(tmp_path, key_env, capsys):
    out = str(tmp_path / "x.json")
    assert main(["attributes", "generate", "--out", out, "--llm-model", "m"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fiftyone-lazsl attributes: error: give the classes: --dataset NAME --field F, or "
        "--classes FILE"
    )
    assert (
        main(
            [
                "attributes",
                "generate",
                "--classes",
                out,
                "--field",
                "gt",
                "--dataset",
                "d",
                "--out",
                out,
                "--llm-model",
                "m",
            ]
        )
        == 2
    )
    assert "not both" in capsys.readouterr().err
    assert (
        main(
            [
                "attributes",
                "generate",
                "--dataset",
                "no-such-dataset-xyz",
                "--field",
                "gt",
                "--out",
                out,
                "--llm-model",
                "m",
            ]
        )
        == 2
    )
    assert "no FiftyOne dataset named 'no-such-dataset-xyz'" in capsys.readouterr().err


def test_operator_builds_and_stores_the_set(lazsl_plugin, dataset, tmp_cache, key_env):
    assert foo.operator_exists(operator_uri("build_attribute_sets"))
    with StubOpenAI(SCRIPT) as server:
        params = {
            "label_field": "gt",
            "llm_model": "stub",
            "base_url": server.base_url,
            "n": 4,
            "hint": "bird species",
            "readable_names": True,
            "set_name": "llm_gt",
        }
        # immediate ("Execute"): a generator operator, exhausted here
        res = run_operator("build_attribute_sets", dataset, params)
        assert server.total == 4
        assert res.error is None
        assert (
            store.load_attribute_set(fo.load_dataset(dataset.name), "llm_gt").to_dict() == EXPECTED
        )
        # the name is taken now: the form refuses until "overwrite" is ticked
        with pytest.raises(ExecutionError, match="Validation error.*overwrite"):
            run_operator("build_attribute_sets", dataset, params)
        # as a delegated worker runs it: the result is the summary dict (from the cache)
        res = run_operator(
            "build_attribute_sets", dataset, dict(params, overwrite=True), delegated=True
        )
        again = server.total - 4  # requests of the second run (the cache answers the rest)
    assert res.error is None
    assert res.result == {
        "set_name": "llm_gt",
        "num_classes": 3,
        "num_attributes": 4,
        "empty_classes": ["003.Sooty_Albatross"],
        "warnings": res.result["warnings"],
        "requests": again,
        "cached_classes": res.result["cached_classes"],
    }
    assert res.result["cached_classes"] >= 1
    assert len(res.result["warnings"]) == 2
    stored = store.load_attribute_set(fo.load_dataset(dataset.name), "llm_gt")
    assert stored.to_dict() == EXPECTED
    assert stored.metadata["hint"] == "bird species"
    assert KEY not in json.dumps(fo.load_dataset(dataset.name).info)


def test_operator_progress_and_secrets(lazsl_plugin, dataset, tmp_cache, key_env):
    op = foo.get_operator(operator_uri("build_attribute_sets"))
    updates = []
    ctx = ExecutionContext(
        request_params={
            "dataset_name": dataset.name,
            "delegated": True,
            "params": {
                "label_field": "gt",
                "llm_model": "stub",
                "n": 4,
                "readable_names": True,
                "set_name": "with_progress",
            },
        },
        set_progress=lambda op_id, p: updates.append((p.progress, p.label)),
        operator_uri=operator_uri("build_attribute_sets"),
        required_secrets=list(KEY_NAMES),
    )
    with StubOpenAI(SCRIPT) as server:
        ctx.params["base_url"] = server.base_url
        result = op.execute(ctx)
        assert set(server.auth_headers) == {f"Bearer {KEY}"}  # read through ctx.secrets
    assert result["set_name"] == "with_progress"
    assert [u[0] for u in updates] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert updates[0][1] == "asking stub about 3 classes"
    assert sorted(u[1] for u in updates[1:])[-1].startswith("3/3 classes (")
