"""Where attribute sets are stored, at scale and under concurrency, through
``fiftyone-lazsl attributes ...`` processes: sets larger than a MongoDB
document, eight imports at once, sets written by earlier versions (in
``dataset.info``), malformed sidecars and sets too big to store."""

import json
import os
import subprocess
import uuid

import fiftyone as fo
import pytest

from cli_helpers import EXE, one_error_line
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo import store


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-sets-{uuid.uuid4().hex[:8]}")
    ds.add_sample(fo.Sample(filepath="/nonexistent/a.jpg"))
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


def cli(*args, **kw):
    return subprocess.run(
        [EXE, *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
        **kw,
    )


def big_set_file(path, mb, seed):
    """A DCLIP JSON file of about ``mb`` MB: 200 classes, attributes of
    distinct text (so compression does not make the test trivial)."""
    import random

    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(5000)
    ]
    per_class = int(mb * 2**20 / 200)
    data = {}
    for c in range(200):
        attrs, size = [], 0
        while size < per_class:
            a = " ".join(rng.choice(words) for _ in range(12)) + f" {c}-{len(attrs)}"
            attrs.append(a)
            size += len(a) + 4
        data[f"class {c:03d}"] = attrs
    path.write_text(json.dumps(data))
    return data


def test_a_49_mb_set_is_stored_and_read_back(dataset, tmp_path):
    f = tmp_path / "huge.json"
    data = big_set_file(f, 49, seed=1)
    assert f.stat().st_size > 48 * 2**20
    p = cli("attributes", "import", f, "--dataset", dataset.name)
    assert p.returncode == 0, p.stderr
    p = cli("attributes", "show", "huge", "--dataset", dataset.name, "--class", "class 123")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1:] == [f"  - {a}" for a in data["class 123"]]
    got = store.load_attribute_set(dataset, "huge")
    assert got.to_dict() == data


def test_two_10_mb_sets_side_by_side(dataset, tmp_path):
    sets = {}
    for i in range(2):
        f = tmp_path / f"ten{i}.json"
        sets[f"ten{i}"] = big_set_file(f, 10, seed=10 + i)
        p = cli("attributes", "import", f, "--dataset", dataset.name)
        assert p.returncode == 0, p.stderr
    p = cli("attributes", "list", "--dataset", dataset.name)
    assert p.returncode == 0 and "ten0" in p.stdout and "ten1" in p.stdout, p.stdout
    for name, data in sets.items():
        assert store.load_attribute_set(dataset, name).to_dict() == data


def test_eight_imports_at_once_keep_all_eight_sets(dataset, tmp_path):
    files = []
    for i in range(8):
        f = tmp_path / f"set{i}.json"
        f.write_text(json.dumps({f"class {c}": [f"attribute {i}-{c}"] for c in range(50)}))
        files.append(f)
    procs = [
        subprocess.Popen(
            [EXE, "attributes", "import", str(f), "--dataset", dataset.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for f in files
    ]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    dataset.reload()  # this process's copy predates the imports
    names = [r["name"] for r in store.list_attribute_sets(dataset)]
    assert names == [f"set{i}" for i in range(8)]
    for i in range(8):
        assert store.load_attribute_set(dataset, f"set{i}")["class 7"] == [f"attribute {i}-7"]


def test_sets_of_an_earlier_version_are_read_and_moved(dataset):
    # what earlier versions wrote: every set inside dataset.info
    legacy_set = AttributeSet.from_dict(
        {"crow": ["black"], "heron": ["grey", "long neck"]}, source="old", warnings=["w1"]
    )
    record = {
        "version": 1,
        "name": "old",
        "classes": ["crow", "heron"],
        "attributes": [["black"], ["grey", "long neck"]],
        "source": "old",
        "format": "descriptors",
        "warnings": ["w1"],
        "metadata_json": "{}",
        "hash": legacy_set.content_hash,
        "saved_at": "2026-01-01T00:00:00+00:00",
    }
    dataset.info = {"classes": ["a"], store.INFO_KEY: {"old": record}}
    p = cli("attributes", "show", "old", "--dataset", dataset.name)
    assert p.returncode == 0, p.stderr
    assert "   1 heron: grey; long neck" in p.stdout
    dataset.reload()
    assert dataset.info == {"classes": ["a"]}  # moved out, other info kept
    got = store.load_attribute_set(dataset, "old")
    assert got.to_dict() == legacy_set.to_dict() and got.warnings == ["w1"]
    assert got.content_hash == legacy_set.content_hash


def test_too_big_is_one_clear_line(dataset, monkeypatch):
    monkeypatch.setattr(store, "MAX_SET_BYTES", 1000)
    aset = AttributeSet.from_dict({f"c{i}": ["x" * 50] for i in range(40)}, name="big")
    with pytest.raises(UserError, match=r"attribute set 'big' of dataset .* is too big to store"):
        store.save_attribute_set(dataset, aset)
    assert store.list_attribute_sets(dataset) == []


SIDECARS = {
    "list": [1, 2],
    "metadata string": {"metadata": "x"},
    "warnings number": {"warnings": 3},
}


@pytest.mark.parametrize("case", sorted(SIDECARS))
def test_a_malformed_sidecar_is_one_line_naming_it(case, dataset, tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"crow": ["black"]}))
    (tmp_path / "s.json.meta.json").write_text(json.dumps(SIDECARS[case]))
    p = cli("attributes", "import", f, "--dataset", dataset.name)
    line = one_error_line(p.stderr, "attributes")
    assert p.returncode == 2 and f"sidecar {f}.meta.json" in line, line
    assert store.list_attribute_sets(dataset) == []
