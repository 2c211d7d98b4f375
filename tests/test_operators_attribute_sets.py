"""``import_attribute_set`` / ``delete_attribute_set`` operators, executed through
FiftyOne's operator machinery with this checkout loaded as a plugin."""

import uuid

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionError

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.fo import store
from plugin_fixtures import lazsl_plugin, operator_uri, run_operator  # noqa: F401


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-ops-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nonexistent/{i}.jpg", gt=fo.Classification(label=lab))
            for i, lab in enumerate(["Abyssinian", "beagle", "pug"])
        ]
    )
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


@pytest.fixture
def local_sets(shared_data, monkeypatch, tmp_cache):
    monkeypatch.setenv(published.DIRS_ENV, str(shared_data / "attribute_sets"))


def test_operators_are_registered(lazsl_plugin):
    for name in ("import_attribute_set", "delete_attribute_set"):
        assert foo.operator_exists(operator_uri(name)), name


def test_import_published_with_label_field_then_delete(lazsl_plugin, dataset, local_sets):
    res = run_operator(
        "import_attribute_set",
        dataset,
        {"source": "pets", "label_field": "gt", "format": "descriptors"},
    )
    assert res.result["name"] == "pets" and res.result["num_classes"] == 37
    assert res.result["hash"] == store.load_attribute_set(dataset, "pets").content_hash
    assert (
        store.load_attribute_set(fo.load_dataset(dataset.name), "pets").classes[1]
        == "american bulldog"
    )

    # the name exists: the form is invalid unless overwrite is ticked
    with pytest.raises(ExecutionError, match="Validation error.*overwrite"):
        run_operator("import_attribute_set", dataset, {"source": "pets"})
    res = run_operator("import_attribute_set", dataset, {"source": "pets", "overwrite": True})
    assert res.result["name"] == "pets"

    with pytest.raises(ExecutionError, match="Validation error.*confirm"):
        run_operator("delete_attribute_set", dataset, {"name": "pets"})
    res = run_operator("delete_attribute_set", dataset, {"name": "pets", "confirm": True})
    assert res.result == {"deleted": "pets"}
    assert store.list_attribute_sets(dataset) == []
    with pytest.raises(ExecutionError, match="Validation error"):
        run_operator("delete_attribute_set", dataset, {"name": "pets", "confirm": True})


def test_import_file_checked_against_label_field(lazsl_plugin, dataset, tmp_path):
    f = tmp_path / "breeds.json"
    AttributeSet.from_dict({"pug": ["a wrinkled face"], "beagle": []}).to_json(f, with_meta=False)
    with pytest.raises(ExecutionError, match="'Abyssinian'"):
        run_operator("import_attribute_set", dataset, {"source": str(f), "label_field": "gt"})
    assert store.list_attribute_sets(dataset) == []
    res = run_operator(
        "import_attribute_set", dataset, {"source": str(f), "name": "mine", "format": "cupl"}
    )
    assert res.result["name"] == "mine" and res.result["warnings"]
    aset = store.load_attribute_set(dataset, "mine")
    assert aset.classes == ["pug", "beagle"] and aset.format == "cupl"
    # format "auto" (the default) keeps the file's own, here from its .meta.json sidecar
    g = tmp_path / "cupl.json"
    AttributeSet.from_dict({"pug": ["A photo of a pug."]}, format="cupl").to_json(g)
    run_operator("import_attribute_set", dataset, {"source": str(g), "name": "auto"})
    assert store.load_attribute_set(dataset, "auto").format == "cupl"
    # and without a sidecar it detects the format from the texts
    h = tmp_path / "cupl_no_sidecar.json"
    AttributeSet.from_dict(
        {
            "pug": ["A photo of a pug, a small dog with a wrinkled face."],
            "beagle": ["A beagle is a hound with long ears."],
        }
    ).to_json(h, with_meta=False)
    run_operator("import_attribute_set", dataset, {"source": str(h), "name": "detected"})
    assert store.load_attribute_set(dataset, "detected").format == "cupl"
    d = tmp_path / "dclip_no_sidecar.json"
    AttributeSet.from_dict({"pug": ["a wrinkled face"], "beagle": ["long ears"]}).to_json(
        d, with_meta=False
    )
    run_operator("import_attribute_set", dataset, {"source": str(d), "name": "attrs"})
    assert store.load_attribute_set(dataset, "attrs").format == "descriptors"
    with pytest.raises(ExecutionError, match="invalid attribute-set name"):
        run_operator("import_attribute_set", dataset, {"source": str(f), "name": "bad name"})
