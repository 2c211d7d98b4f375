"""Attribute sets stored with a dataset, in a real (temporary) FiftyOne database."""

import json
import os
import subprocess
import sys
import uuid
from collections import OrderedDict

import fiftyone as fo
import pytest

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import AttributeSet, AttributeSetError
from fiftyone_lazsl.errors import DatasetNotFoundError, UserError
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.datasets import load_dataset
from fiftyone_lazsl.fo.fields import validate_for_field


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-store-{uuid.uuid4().hex[:8]}", persistent=True)
    labels = ["Zebra", "apple pie", "St. Bernard", "Zebra", None]
    ds.add_samples(
        [
            fo.Sample(
                filepath=f"/nonexistent/{i}.jpg",
                gt=fo.Classification(label=lab) if lab else None,
                multi=fo.Classifications(classifications=[fo.Classification(label="apple pie")]),
                note="x",
            )
            for i, lab in enumerate(labels)
        ]
    )
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


def _small(name="small", **kw):
    return AttributeSet.from_dict(
        OrderedDict(
            [
                ("Zebra", ["black and white stripes", "a horse-like body"]),
                ("apple pie", []),
                ("St. Bernard", ["a large dog", "a barrel on the collar"]),
            ]
        ),
        name=name,
        source="/tmp/small.json",
        **kw,
    )


def test_save_load_round_trip_keeps_order_hash_and_provenance(dataset):
    aset = _small(metadata={"llm.model": "gpt-4o", "$hint": "birds", "n": 3})
    assert store.save_attribute_set(dataset, aset) == "small"
    back = store.load_attribute_set(dataset, "small")
    assert back.classes == ["Zebra", "apple pie", "St. Bernard"]
    assert back.to_dict() == aset.to_dict()
    assert back.content_hash == aset.content_hash
    assert back.source == "/tmp/small.json" and back.format == "descriptors"
    assert back.warnings == aset.warnings and any("apple pie" in w for w in back.warnings)
    assert back.metadata == {"llm.model": "gpt-4o", "$hint": "birds", "n": 3}
    assert back.name == "small"
    cupl = AttributeSet.from_dict({"b": ["A photo of b."], "a": ["A photo of a."]}, format="cupl")
    store.save_attribute_set(dataset, cupl, name="cupl-set")
    assert store.load_attribute_set(dataset, "cupl-set").format == "cupl"
    assert store.load_attribute_set(dataset, "cupl-set").classes == ["b", "a"]


def test_published_set_round_trip(dataset, shared_data):
    cub = published.load_published("cub", local_dirs=[shared_data / "attribute_sets"])
    store.save_attribute_set(dataset, cub)
    back = store.load_attribute_set(dataset.view(), "cub")  # views read their dataset
    assert back.classes == cub.classes and back.content_hash == cub.content_hash
    assert back.source == cub.source and back.metadata == cub.metadata


def test_list_attribute_sets(dataset):
    assert store.list_attribute_sets(dataset) == []
    store.save_attribute_set(dataset, _small(), name="b-set")
    store.save_attribute_set(dataset, _small(), name="a_set")
    rows = store.list_attribute_sets(dataset)
    assert [r["name"] for r in rows] == ["a_set", "b-set"]
    r = rows[0]
    assert r["num_classes"] == 3 and r["num_attributes"] == 4 and r["num_warnings"] == 1
    assert r["source"] == "/tmp/small.json" and r["hash"] == _small().content_hash
    assert r["format"] == "descriptors" and r["saved_at"]


def test_overwrite_rules_and_names(dataset):
    store.save_attribute_set(dataset, _small())
    other = AttributeSet.from_dict({"x": ["y"]}, name="small")
    with pytest.raises(UserError, match="already has an attribute set named 'small'"):
        store.save_attribute_set(dataset, other, overwrite=False)
    assert store.load_attribute_set(dataset, "small").classes == [
        "Zebra",
        "apple pie",
        "St. Bernard",
    ]
    store.save_attribute_set(dataset, other)  # overwrite=True by default
    assert store.load_attribute_set(dataset, "small").classes == ["x"]
    for bad in ["", "a.b", "$x", "has space", "-lead", "x" * 65]:
        with pytest.raises(UserError, match="invalid attribute-set name"):
            store.save_attribute_set(dataset, other, name=bad)
    # the default name is made valid
    odd = AttributeSet.from_dict({"x": ["y"]}, name="descriptors cub.v2")
    assert store.save_attribute_set(dataset, odd) == "descriptors_cub_v2"
    with pytest.raises(TypeError):
        store.save_attribute_set(dataset, {"x": ["y"]})


def test_delete_and_unknown_names(dataset):
    with pytest.raises(
        UserError, match="has no attribute set named 'nope'; it has no attribute sets"
    ):
        store.load_attribute_set(dataset, "nope")
    store.save_attribute_set(dataset, _small(), name="one")
    store.save_attribute_set(dataset, _small(), name="two")
    store.delete_attribute_set(dataset, "one")
    assert [r["name"] for r in store.list_attribute_sets(dataset)] == ["two"]
    with pytest.raises(UserError, match="no attribute set named 'one'; available: two"):
        store.load_attribute_set(dataset, "one")
    with pytest.raises(UserError, match="available: two"):
        store.delete_attribute_set(dataset, "one")
    store.delete_attribute_set(dataset, "two")
    assert store.INFO_KEY not in dataset.info


def test_other_info_is_kept(dataset):
    dataset.info = {"classes": ["a", "b"]}
    store.save_attribute_set(dataset, _small())
    store.delete_attribute_set(dataset, "small")
    assert dataset.info == {"classes": ["a", "b"]}


_CHILD = r"""
import json, sys
import fiftyone as fo
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.datasets import load_dataset
from fiftyone_lazsl.fo.fields import validate_for_field
from fiftyone_lazsl.core.attributes import AttributeSet
ds = fo.load_dataset(sys.argv[1])
a = store.load_attribute_set(ds, "small")
store.save_attribute_set(ds, AttributeSet.from_dict({"q": ["r"]}, source="child"), name="from-child")
print(json.dumps({"classes": a.classes, "hash": a.content_hash, "warnings": a.warnings}))
"""


def test_persisted_across_processes(dataset):
    aset = _small()
    store.save_attribute_set(dataset, aset)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, dataset.name],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"classes": aset.classes, "hash": aset.content_hash, "warnings": aset.warnings}
    # this process's dataset object is stale; saving must keep the child's set
    store.save_attribute_set(dataset, _small(), name="after")
    dataset.reload()
    assert {r["name"] for r in store.list_attribute_sets(fo.load_dataset(dataset.name))} == {
        "small",
        "from-child",
        "after",
    }
    assert store.load_attribute_set(dataset, "from-child").source == "child"


def test_corrupt_record_is_detected(dataset):
    import zlib

    import fiftyone.core.odm.database as fod

    store.save_attribute_set(dataset, _small())
    coll = fod.get_db_conn()[store.COLLECTION]
    header = coll.find_one({"kind": "header", "dataset_name": dataset.name, "name": "small"})
    chunk = coll.find_one({"kind": "chunk", "set": header["_id"]})
    record = json.loads(zlib.decompress(chunk["data"]))
    record["attributes"][0] = ["tampered"]
    coll.update_one(
        {"_id": chunk["_id"]}, {"$set": {"data": zlib.compress(json.dumps(record).encode())}}
    )
    with pytest.raises(AttributeSetError, match="corrupt: content hash"):
        store.load_attribute_set(dataset, "small")


def test_validate_for_field(dataset):
    full = _small()
    assert validate_for_field(dataset, full, "gt") == ["St. Bernard", "Zebra", "apple pie"]
    assert validate_for_field(dataset, full, "multi") == ["apple pie"]
    partial = AttributeSet.from_dict({"zebra ": ["stripes"]}, name="partial")  # class_key matching
    with pytest.raises(AttributeSetError) as e:
        validate_for_field(dataset.view(), partial, "gt")
    assert "'St. Bernard'" in str(e.value) and "'apple pie'" in str(e.value)
    assert "Zebra" not in str(e.value).split("class(es) of the label field")[1]
    with pytest.raises(UserError, match="'nope' does not exist.*classification fields: gt, multi"):
        validate_for_field(dataset, full, "nope")
    with pytest.raises(UserError, match="'note' is not a Classification field"):
        validate_for_field(dataset, full, "note")


def test_resolve_order(dataset, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(published.DIRS_ENV, str(shared_data / "attribute_sets"))
    # a published name
    cub = store.resolve_attribute_set("cub")
    assert cub.name == "cub" and len(cub) == 200
    # a set stored on the dataset under the same name wins
    store.save_attribute_set(dataset, _small(), name="cub")
    assert store.resolve_attribute_set("cub", dataset).classes == _small().classes
    assert len(store.resolve_attribute_set("cub")) == 200  # no dataset: published
    # a file path (here one that is also a published name) comes before published names
    monkeypatch.chdir(tmp_path)
    AttributeSet.from_dict({"only": ["one"]}).to_json(tmp_path / "pets", with_meta=False)
    assert store.resolve_attribute_set("pets", dataset).classes == ["only"]
    assert store.resolve_attribute_set(tmp_path / "pets", format="cupl").format == "cupl"
    # an AttributeSet is passed through
    assert store.resolve_attribute_set(cub) is cub
    with pytest.raises(UserError) as e:
        store.resolve_attribute_set("birds", dataset)
    msg = str(e.value)
    assert f"no set of that name on dataset {dataset.name!r} (cub)" in msg
    assert "no file" in msg and "not a published set (cub, imagenet" in msg


def test_moved_helpers_stay_importable_from_store():
    import fiftyone_lazsl.fo.datasets as datasets
    import fiftyone_lazsl.fo.fields as fields

    assert store.load_dataset is datasets.load_dataset
    assert store.validate_for_field is fields.validate_for_field


def test_load_dataset(dataset):
    assert load_dataset(dataset.name).name == dataset.name
    with pytest.raises(DatasetNotFoundError, match="no FiftyOne dataset named 'no-such-ds'"):
        load_dataset("no-such-ds")


def test_resolve_detects_the_format_of_a_file(tmp_path):
    """A file without a sidecar: format None/"auto" detects CuPL sentences vs DCLIP
    attributes; an explicit format wins."""
    cupl = tmp_path / "c.json"
    cupl.write_text(
        json.dumps(
            {
                "Zebra": [
                    "A photo of a Zebra, a striped horse.",
                    "A Zebra has black and white stripes.",
                ]
            }
        )
    )
    dclip = tmp_path / "d.json"
    dclip.write_text(json.dumps({"Zebra": ["black and white stripes", "a short mane"]}))
    for fmt in (None, "auto"):
        assert store.resolve_attribute_set(str(cupl), format=fmt).format == "cupl"
        assert store.resolve_attribute_set(str(dclip), format=fmt).format == "descriptors"
    assert store.resolve_attribute_set(str(cupl), format="descriptors").format == "descriptors"
    assert store.resolve_attribute_set(str(dclip), format="cupl").format == "cupl"
    with pytest.raises(UserError, match="unknown attribute-set format 'xml'"):
        store.resolve_attribute_set(str(dclip), format="xml")
