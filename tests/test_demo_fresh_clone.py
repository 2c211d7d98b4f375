"""Acceptance: the demo, as a new user meets it, from a fresh clone.

The committed repository (``git clone`` of this checkout's HEAD) is placed in
an empty temporary folder, so there is no ``../shared`` beside it; ``HOME`` and
every cache point at empty folders; model hubs are offline. The demo runs as a
process with this venv's interpreter and the clone on ``PYTHONPATH`` (the
clone's code and packaged data, not this checkout's), with its defaults:
ViT-B-32, N = 90 crops, the packaged pet photos and attribute set. The only
shared thing is the suite's private database (so the test can read what the
demo wrote). Uncommitted changes are not in the clone: commit first.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASET = "lazsl-demo"


def _clone(dest: pathlib.Path) -> pathlib.Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (or no git): nothing to clone")
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = dest / "fiftyone-lazsl"
    subprocess.run(
        ["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    subprocess.run(
        ["git", "-C", str(clone), "checkout", "-q", head],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return clone


def _fresh_env(clone: pathlib.Path, home: pathlib.Path) -> dict:
    keep = (
        "PATH",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "FIFTYONE_DATABASE_URI",
        "FIFTYONE_DATABASE_VALIDATION",
    )
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHONPATH=str(clone),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FIFTYONE_DO_NOT_TRACK="true",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def test_demo_from_a_fresh_clone_offline(tmp_path):
    import fiftyone as fo

    from fiftyone_lazsl.fo.runs import get_run_config

    empty = tmp_path / "empty"
    home = tmp_path / "home"
    empty.mkdir()
    home.mkdir()
    clone = _clone(empty)
    assert not (clone.parent / "shared").exists()
    env = _fresh_env(clone, home)
    # the clone's code is what runs
    r = subprocess.run(
        [sys.executable, "-c", "import fiftyone_lazsl; print(fiftyone_lazsl.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pathlib.Path(r.stdout.strip()).resolve().is_relative_to(clone.resolve()), r

    photos = sorted((clone / "fiftyone_lazsl" / "data" / "demo" / "pets").glob("*/*.jpg"))
    assert len(photos) >= 20
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "fiftyone_lazsl.cli", "demo"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        out = r.stdout

        ds = fo.load_dataset(DATASET)
        # every packaged photo is a sample, from the clone's files
        assert sorted(ds.values("filepath")) == sorted(str(p.resolve()) for p in photos)
        assert sorted(ds.values("ground_truth.label")) == sorted(p.parent.name for p in photos)
        # ...and has a prediction or a recorded error
        preds, errs = ds.values("lazsl.label"), ds.values("lazsl_error")
        assert all(p is not None or e for p, e in zip(preds, errs))
        assert all(p is None or len(a) > 0 for p, a in zip(preds, ds.values("lazsl_attributes")))
        # offline: random weights, banner on stderr and recorded in the run
        assert "RANDOM WEIGHTS" in r.stderr
        assert get_run_config(ds, "lazsl")["random_weights"] is True

        # the printed accuracy is the database's
        gts = ds.values("ground_truth.label")
        n = sum(p is not None for p in preds)
        ok = sum(g == p for g, p in zip(gts, preds) if p is not None)
        assert f"top-1 accuracy vs ground truth: {ok / n:.1%} ({ok}/{n})" in out, out

        # the App command, runnable as printed
        lines = out.splitlines()
        i = lines.index("open the App on the result:")
        cmd = shlex.split(lines[i + 1])
        assert cmd[-3:] == ["app", "--dataset", DATASET], lines[i + 1]
        exe = cmd[0]
        assert os.path.isfile(exe) or shutil.which(exe, path=env["PATH"]), exe
        # and how to run it on one's own folder
        assert re.search(r"demo --images \S+ --attributes \S+", out), out
    finally:
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
