"""The CLI's environment, as a user meets it in a shell: malformed environment
variables, a reader that closes the pipe early, a terminal that cannot show
every character."""

import os
import subprocess
import uuid

import fiftyone as fo
import pytest

from cli_helpers import ENV, EXE, one_error_line
from fiftyone_lazsl import env
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.errors import ConfigError
from fiftyone_lazsl.fo import store


def cli(*args, env_extra=None, **kw):
    e = dict(os.environ, **ENV)
    e.update(env_extra or {})
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=e, timeout=300, **kw)


@pytest.fixture
def dataset_with_set():
    ds = fo.Dataset(f"lazsl-env-{uuid.uuid4().hex[:8]}")
    ds.add_sample(fo.Sample(filepath="/nonexistent/a.jpg"))
    classes = {
        f"鳥類 {i} 白腹鶇": [f"特徵 {i}", f"attribute number {i} with a long tail"]
        for i in range(3000)
    }
    store.save_attribute_set(ds, AttributeSet.from_dict(classes, name="big"), "big")
    yield ds
    fo.delete_dataset(ds.name)


BAD = {
    "FIFTYONE_LAZSL_HEARTBEAT_S": "10s",
    "FIFTYONE_LAZSL_STALE_S": "-5",
    "FIFTYONE_LAZSL_DECODE_TIMEOUT": "fast",
    "DEMO_PER_CLASS": "two",
    "OPENAI_BASE_URL": "localhost:11434/v1",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_malformed_environment_variable_is_one_line_naming_it(name, dataset_with_set):
    # a command that takes the dataset's write lock, so the knob is really used
    p = cli(
        "classify",
        "--dataset",
        dataset_with_set.name,
        "--attributes",
        "big",
        "--label-field",
        "pred",
        "--model",
        "lazsl-tiny-test",
        "--pretrained",
        "none",
        env_extra={name: BAD[name]},
    )
    line = one_error_line(p.stderr, "classify")
    assert p.returncode == 2
    assert f"environment variable {name}={BAD[name]!r} is invalid" in line


def test_every_knob_is_validated_in_one_place():
    # every variable the package reads is a knob of fiftyone_lazsl.env
    import pathlib
    import re

    root = pathlib.Path(env.__file__).parent
    read = set()
    for path in root.rglob("*.py"):
        if path.name == "env.py" or "testing" in path.parts:
            continue
        read |= set(re.findall(r"os\.environ(?:\.get)?[\[(]\"([A-Z_]+)\"", path.read_text()))
    # the API keys are secrets (llm.secrets); FiftyOne's own variables are set, not read
    assert read <= {"FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "HF_HUB_OFFLINE"}, read
    assert env.get("FIFTYONE_LAZSL_HEARTBEAT_S", {}) == 10.0
    assert env.get("FIFTYONE_LAZSL_HEARTBEAT_S", {"FIFTYONE_LAZSL_HEARTBEAT_S": " 2.5 "}) == 2.5
    with pytest.raises(ConfigError, match="FIFTYONE_LAZSL_HEARTBEAT_S"):
        env.get("FIFTYONE_LAZSL_HEARTBEAT_S", {"FIFTYONE_LAZSL_HEARTBEAT_S": "inf"})


def test_a_closed_pipe_ends_quietly(dataset_with_set):
    p = subprocess.run(
        f"'{EXE}' attributes show big --dataset '{dataset_with_set.name}' | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert p.stdout == f"attribute set 'big' on dataset {dataset_with_set.name!r}\n"
    assert p.stderr == "", p.stderr


@pytest.mark.parametrize(
    "setting",
    [
        {"PYTHONIOENCODING": "latin-1"},
        {
            "LANG": "C",
            "LC_ALL": "C",
            "PYTHONUTF8": "0",
            "PYTHONCOERCECLOCALE": "0",
            "PYTHONIOENCODING": "",
        },
    ],
)
def test_a_terminal_that_cannot_show_chinese_gets_replacements(setting, dataset_with_set):
    p = subprocess.run(
        [EXE, "attributes", "show", "big", "--dataset", dataset_with_set.name],
        capture_output=True,
        timeout=300,
        env=dict(os.environ, **setting),
    )
    assert p.returncode == 0, p.stderr.decode("latin-1")
    assert b"Traceback" not in p.stderr
    out = p.stdout.decode("latin-1").splitlines()
    assert "   7 ?? 7 ???: ?? 7; attribute number 7 with a long tail" in out
    assert len(out) == 5 + 3000
