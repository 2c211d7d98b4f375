"""What a non-editable install ships, and the FiftyOne version gate.

The wheel is built from a copy of this checkout with setuptools (no network:
``--no-build-isolation``), installed with ``pip install --target`` into an empty
folder, and imported in a fresh interpreter whose ``PYTHONPATH`` is that folder
only, from a working directory outside the checkout: the package must find its
own data files (published-set registry, tiny test model config) where pip put
them.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from fiftyone_lazsl.errors import DependencyError, UserError
from fiftyone_lazsl.fo import MIN_FIFTYONE, check_fiftyone_version

REPO = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, pathlib, sys
import fiftyone_lazsl
from fiftyone_lazsl.core import published
from fiftyone_lazsl.testing import tiny_clip
from fiftyone_lazsl.cli import demo
sets = published.list_published()
entry = published.get_published_entry(sets[0]["name"])
print(json.dumps({
    "file": fiftyone_lazsl.__file__,
    "registry": str(published.REGISTRY_PATH),
    "names": [s["name"] for s in sets],
    "entry_has_sha": len(entry["sha256"]) == 64,
    "tiny_config": str(tiny_clip._CONFIG),
    "tiny_config_exists": pathlib.Path(tiny_clip._CONFIG).is_file(),
    "demo_images": str(demo.DEFAULT_IMAGES),
    "demo_files": sorted(str(p.relative_to(demo.DEFAULT_IMAGES))
                         for p in demo.DEFAULT_IMAGES.rglob("*") if p.is_file()),
    "demo_set": str(published.find_local_copy(demo.DEFAULT_ATTRIBUTES,
                                              cache_dir=pathlib.Path.cwd() / "no-cache",
                                              local_dirs=[demo.DEMO_DATA])),
    "attribution": (demo.DEMO_DATA / "ATTRIBUTION.md").is_file(),
}))
"""


def _copy_checkout(dst: pathlib.Path) -> None:
    shutil.copytree(
        REPO,
        dst,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "__pycache__",
            "build",
            "*.egg-info",
            ".pytest_cache",
            "tests",
            "benchmarks",
            "artifacts",
        ),
    )


def test_wheel_install_ships_registry_and_tiny_config(tmp_path):
    src, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "target"
    _copy_checkout(src)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("fiftyone_lazsl-*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS")
    }
    env["PYTHONPATH"] = str(target)  # dependencies come from this interpreter's venv
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the installed copy was imported, not this checkout
    assert pathlib.Path(got["file"]).resolve().is_relative_to(target.resolve())
    assert pathlib.Path(got["registry"]).resolve().is_relative_to(target.resolve())
    expected = json.loads(
        (REPO / "fiftyone_lazsl" / "data" / "published_attribute_sets.json").read_text()
    )
    names = list(expected.get("sets", expected))
    assert got["names"] == names and "cub" in names and got["entry_has_sha"]
    assert got["tiny_config_exists"]
    assert pathlib.Path(got["tiny_config"]).resolve().is_relative_to(target.resolve())
    # the demo's packaged photos, attribute set (hash-verified) and attribution ship
    demo_src = REPO / "fiftyone_lazsl" / "data" / "demo" / "pets"
    expected_photos = sorted(str(p.relative_to(demo_src)) for p in demo_src.rglob("*.jpg"))
    assert len(expected_photos) >= 20 and got["demo_files"] == expected_photos
    assert pathlib.Path(got["demo_images"]).resolve().is_relative_to(target.resolve())
    assert pathlib.Path(got["demo_set"]).resolve().is_relative_to(target.resolve())
    assert got["attribution"]


def test_fiftyone_version_gate():
    import fiftyone

    assert check_fiftyone_version() == fiftyone.__version__
    assert check_fiftyone_version(MIN_FIFTYONE) == MIN_FIFTYONE
    with pytest.raises(
        DependencyError,
        match=rf"needs FiftyOne >={MIN_FIFTYONE},<2 but "
        r"FiftyOne 1\.0\.0 is installed",
    ):
        check_fiftyone_version("1.0.0")
    with pytest.raises(DependencyError):
        check_fiftyone_version("2.0.0")
    assert issubclass(DependencyError, UserError)


def test_declared_floors_match_the_gate_and_the_plugin_manifest():
    pyproject = (REPO / "pyproject.toml").read_text()
    manifest = (REPO / "fiftyone.yml").read_text()
    assert f'"fiftyone>={MIN_FIFTYONE},<2"' in pyproject
    assert f'version: ">={MIN_FIFTYONE},<2"' in manifest
    assert '"open_clip_torch>=3.3.0,<4"' in pyproject
