"""``fiftyone-lazsl attributes ...`` through the CLI entry point and a real subprocess."""

import json
import os
import pathlib
import subprocess
import sys
import uuid

import fiftyone as fo
import pytest

from fiftyone_lazsl.cli import main
from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.fo import store

CONSOLE_SCRIPT = pathlib.Path(sys.executable).parent / "fiftyone-lazsl"


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-cli-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nonexistent/{i}.jpg", gt=fo.Classification(label=lab))
            for i, lab in enumerate(["apple pie", "donuts", "waffles"])
        ]
    )
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


@pytest.fixture
def local_sets(shared_data, monkeypatch, tmp_cache):
    monkeypatch.setenv(published.DIRS_ENV, str(shared_data / "attribute_sets"))
    return shared_data / "attribute_sets"


def test_import_published_prints_one_line_with_warnings(dataset, local_sets, capsys):
    rc = main(["attributes", "import", "food101", "--dataset", dataset.name, "--label-field", "gt"])
    out = capsys.readouterr().out
    assert rc == 0
    assert len(out.strip().splitlines()) == 1
    assert f"imported attribute set 'food101' on dataset '{dataset.name}': 101 classes" in out
    assert "1 warning(s)" in out and "donuts, french fries, fried calamari, mussels, oysters" in out
    assert store.load_attribute_set(dataset, "food101").classes[0] == "apple pie"
    rc = main(["attributes", "import", "food101", "--dataset", dataset.name])
    assert rc == 0 and capsys.readouterr().out.startswith("replaced attribute set 'food101'")


def test_import_file_with_name_and_format(dataset, tmp_path, capsys):
    f = tmp_path / "my sets.json"
    AttributeSet.from_dict(
        {
            "waffles": ["A photo of waffles, a grid-patterned breakfast food."],
            "apple pie": ["A photo of apple pie."],
        }
    ).to_json(f, with_meta=False)
    assert (
        main(["attributes", "import", str(f), "--dataset", dataset.name, "--format", "cupl"]) == 0
    )
    assert "'my_sets'" in capsys.readouterr().out  # default name: the file stem, made valid
    aset = store.load_attribute_set(dataset, "my_sets")
    assert aset.format == "cupl" and aset.classes == ["waffles", "apple pie"]
    assert aset.source == str(f)
    assert (
        main(
            [
                "attributes",
                "import",
                str(f),
                "--dataset",
                dataset.name,
                "--name",
                "v2",
                "--format",
                "descriptors",
            ]
        )
        == 0
    )
    assert store.load_attribute_set(dataset, "v2").format == "descriptors"
    # the label field has 'donuts', which the file lacks: nothing is stored
    rc = main(
        [
            "attributes",
            "import",
            str(f),
            "--dataset",
            dataset.name,
            "--name",
            "v3",
            "--label-field",
            "gt",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "'donuts'" in err and len(err.strip().splitlines()) == 1
    assert not store.has_attribute_set(dataset, "v3")
    rc = main(
        [
            "attributes",
            "import",
            str(f),
            "--dataset",
            dataset.name,
            "--name",
            "v2",
            "--no-overwrite",
        ]
    )
    assert rc == 2 and "already has an attribute set named 'v2'" in capsys.readouterr().err


def test_list_show_delete(dataset, local_sets, capsys):
    assert main(["attributes", "list", "--dataset", dataset.name]) == 0
    assert "has no attribute sets" in capsys.readouterr().out
    main(["attributes", "import", "pets", "--dataset", dataset.name])
    main(["attributes", "import", "eurosat", "--dataset", dataset.name, "--name", "sat"])
    capsys.readouterr()
    assert main(["attributes", "list", "--dataset", dataset.name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "classes", "attributes", "warnings"]
    assert lines[1].split()[:2] == ["pets", "37"] and lines[2].split()[:2] == ["sat", "10"]

    assert main(["attributes", "show", "sat", "--dataset", dataset.name]) == 0
    out = capsys.readouterr().out
    assert "attribute set 'sat'" in out and "classes: 10" in out
    assert "   0 annual crop land: large, open fields; straight rows" in out

    assert main(["attributes", "show", "pets", "--dataset", dataset.name, "--class", "BEAGLE"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "beagle (4):" and out[1] == "  - short-haired dog"
    assert main(["attributes", "show", "pets", "--dataset", dataset.name, "--class", "beagel"]) == 2
    assert "no class 'beagel' (did you mean 'beagle'" in capsys.readouterr().err

    assert main(["attributes", "delete", "sat", "--dataset", dataset.name]) == 0
    assert "deleted attribute set 'sat'" in capsys.readouterr().out
    assert main(["attributes", "show", "sat", "--dataset", dataset.name]) == 2
    assert "available: pets" in capsys.readouterr().err


def test_unknown_dataset_and_source(dataset, local_sets, capsys):
    assert main(["attributes", "list", "--dataset", "no-such-dataset"]) == 2
    assert "no FiftyOne dataset named 'no-such-dataset'" in capsys.readouterr().err
    assert main(["attributes", "import", "birds.json", "--dataset", dataset.name]) == 2
    assert "cannot find attribute set 'birds.json'" in capsys.readouterr().err


def test_published_lists_registry_and_local_copies(local_sets, capsys):
    assert main(["attributes", "published"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "classes", "empty"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(rows) == {"cub", "imagenet", "pets", "food101", "places365", "dtd", "eurosat"}
    assert rows["food101"].split()[1:3] == ["101", "5"]
    assert str(local_sets / "cub.json") in rows["cub"]


@pytest.mark.skipif(
    not CONSOLE_SCRIPT.exists(), reason=f"console script {CONSOLE_SCRIPT} not installed"
)
def test_console_script_subprocess(dataset, local_sets):
    env = dict(os.environ)
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "attributes", "import", "eurosat", "--dataset", dataset.name],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported attribute set 'eurosat'" in proc.stdout
    dataset.reload()
    assert store.load_attribute_set(dataset, "eurosat").classes[0] == "annual crop land"
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "attributes", "delete", "nope", "--dataset", dataset.name],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("fiftyone-lazsl attributes: error:")


def test_console_script_detects_cupl_and_descriptor_files(dataset, tmp_path):
    """``attributes import`` without ``--format`` (``auto``) reads a CuPL file as CuPL
    sentences (prompts used verbatim) and a DCLIP file as attributes, in a real process."""
    cupl = tmp_path / "cupl_birds.json"
    cupl.write_text(
        json.dumps(
            {
                "Cardinal": [
                    "A photo of a Cardinal, a red songbird with a crest.",
                    "A Cardinal has a short, thick orange beak.",
                ],
                "Blue Jay": [
                    "A Blue Jay is a blue and white bird with a crest.",
                    "A photo of a Blue Jay perched on a branch.",
                ],
            }
        )
    )
    dclip = tmp_path / "dclip_birds.json"
    dclip.write_text(
        json.dumps(
            {"Cardinal": ["red plumage", "a crest"], "Blue Jay": ["blue wings", "a white belly"]}
        )
    )
    for f, want in ((cupl, "cupl"), (dclip, "descriptors")):
        proc = subprocess.run(
            [str(CONSOLE_SCRIPT), "attributes", "import", str(f), "--dataset", dataset.name],
            capture_output=True,
            text=True,
            timeout=240,
            env=dict(os.environ),
        )
        assert proc.returncode == 0, proc.stderr
        assert f"format {want}," in proc.stdout
        dataset.reload()
        aset = store.load_attribute_set(dataset, f.stem)
        assert aset.format == want
    # a CuPL sentence is a prompt as is, not 'Cardinal, which has A photo of a Cardinal...'
    from fiftyone_lazsl.core.prompts import build_prompts

    prompts, _ = build_prompts(store.load_attribute_set(dataset, "cupl_birds"))
    assert prompts[0] == [
        "A photo of a Cardinal, a red songbird with a crest.",
        "A Cardinal has a short, thick orange beak.",
    ]
    # --format descriptors still forces descriptors
    proc = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "attributes",
            "import",
            str(cupl),
            "--dataset",
            dataset.name,
            "--name",
            "forced",
            "--format",
            "descriptors",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    dataset.reload()
    assert store.load_attribute_set(dataset, "forced").format == "descriptors"
