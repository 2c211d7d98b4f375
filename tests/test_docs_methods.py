"""docs/methods.md's workflow "classify once, re-score with every method, compare"
runs as written: the shell block through bash and the Python block in-process,
on real Oxford-IIIT Pet photos (the demo's packaged ones) with the published
CuPL sentence set. The only substitution is the model (no weights offline: the
tiny test model and a saved random-weight checkpoint, fewer crops)."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from doc_blocks import block
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()

DEMO = pathlib.Path(__file__).resolve().parents[1] / "fiftyone_lazsl" / "data" / "demo" / "pets"
CLASSES = ["Abyssinian", "Bengal", "Birman"]


@pytest.fixture
def pets(tmp_path, shared_data, monkeypatch):
    """``pets/<class>/<image>.jpg`` and ``pets_cupl.json`` in the working folder,
    as the page assumes."""
    for c in CLASSES:
        shutil.copytree(DEMO / c, tmp_path / "pets" / c)
    cupl = json.loads((shared_data / "attribute_sets" / "cupl" / "pets.json").read_text())
    (tmp_path / "pets_cupl.json").write_text(json.dumps({c: cupl[c] for c in CLASSES}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FIFTYONE_LAZSL_FEATURES", str(tmp_path / "features"))
    monkeypatch.setenv("FIFTYONE_LAZSL_MODEL_CONFIGS", str(tiny_clip._CONFIG))
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=3))
    n = sum(len(list((tmp_path / "pets" / c).iterdir())) for c in CLASSES)
    return dict(ckpt=ckpt, n=n)


def _delete(name):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_methods_cli_workflow_runs_as_written(pets):
    import fiftyone as fo

    text = block("methods-cli")
    model = "--model ViT-B-32 --pretrained openai"
    assert model in text
    text = text.replace(
        model,
        f"--model {tiny_clip.TINY_MODEL} --pretrained "
        f"{shlex.quote(pets['ckpt'])} --n-crops 12 --workers 0",
    )
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    try:
        r = subprocess.run(
            ["bash", "-e", "-c", text], capture_output=True, text=True, env=env, timeout=900
        )
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        assert "Traceback" not in r.stderr
        ds = fo.load_dataset("pets")
        for m in ("lazsl", "wca", "dclip", "clip"):
            assert ds.count(m) == pets["n"], m
        # the evaluate table lists every method (one row per field)
        rows = [ln.split()[0] for ln in r.stdout.splitlines() if ln.split()]
        assert {"lazsl", "wca", "dclip", "clip"} <= set(rows)
    finally:
        _delete("pets")


def test_methods_python_workflow_runs_as_written(pets, capsys):
    import fiftyone as fo

    code = block("methods-python")
    assert 'model="ViT-B-32", pretrained="openai"' in code
    code = code.replace(
        'model="ViT-B-32", pretrained="openai"',
        f"model={tiny_clip.TINY_MODEL!r}, pretrained={pets['ckpt']!r}, n_crops=12",
    )
    try:
        exec(compile(code, "docs/methods.md", "exec"), {})
        ds = fo.load_dataset("pets-py")
        assert all(ds.count(m) == pets["n"] for m in ("lazsl", "wca", "dclip", "clip"))
        out = capsys.readouterr().out
        assert all(m in out for m in ("lazsl", "wca", "dclip", "clip"))
    finally:
        _delete("pets-py")
