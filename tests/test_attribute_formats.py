"""DCLIP/LaZSL and CuPL import/export, merging and editing of attribute sets."""

import json
from collections import OrderedDict

import pytest

from fiftyone_lazsl.core.attribute_formats import (
    detect_format,
    dumps,
    edit_class,
    from_cupl,
    load_attribute_file,
    merge_sets,
    save_attribute_file,
    to_cupl,
)
from fiftyone_lazsl.core.attributes import AttributeSet, AttributeSetError

CUPL = OrderedDict(
    [
        (
            "Cardinal",
            [
                "A Cardinal is a red songbird with a crest.",
                "The cardinal has a black mask around its bill.",
            ],
        ),
        (
            "Blue Jay",
            [
                "A blue jay has blue, white and black plumage.",
                "Blue jays are loud birds of the forest edge.",
            ],
        ),
    ]
)


def test_food101_reports_its_five_empty_classes(shared_data):
    aset = load_attribute_file(shared_data / "attribute_sets" / "food101.json")
    assert aset.format == "descriptors"
    assert len(aset) == 101
    assert aset.empty_classes == ["donuts", "french fries", "fried calamari", "mussels", "oysters"]
    assert aset.warnings == [
        "class(es) with no attribute, scored with a class-name-only prompt: "
        "donuts, french fries, fried calamari, mussels, oysters"
    ]


def test_detect_format(shared_data):
    assert detect_format(CUPL) == "cupl"
    cub = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    assert detect_format(cub) == "descriptors"
    assert detect_format({"a": []}) == "descriptors"
    # sentences that do not name their class are not CuPL
    assert detect_format({"x": ["It is red.", "It is small."]}) == "descriptors"


def test_cupl_roundtrip_auto_and_explicit(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(CUPL))
    aset = load_attribute_file(path)
    assert aset.format == "cupl" and aset.to_dict() == CUPL and aset.name == "cupl"
    forced = load_attribute_file(path, format="descriptors", name="forced")
    assert forced.format == "descriptors" and forced.name == "forced"
    out = tmp_path / "out" / "again.json"
    save_attribute_file(aset, out)
    assert json.loads(out.read_text()) == CUPL
    # the sidecar keeps the format, so "auto" does not have to guess
    assert json.loads((tmp_path / "out" / "again.json.meta.json").read_text())["format"] == "cupl"
    assert load_attribute_file(out).format == "cupl"
    with pytest.raises(AttributeSetError, match="cannot be written as DCLIP"):
        save_attribute_file(aset, tmp_path / "bad.json", format="descriptors")
    with pytest.raises(AttributeSetError, match="unknown attribute-set format"):
        load_attribute_file(path, format="clip")


def test_descriptors_export_as_cupl_sentences(tmp_path):
    aset = AttributeSet.from_dict(
        {"Cardinal": ["a red crest", "black mask", "has a thick bill"], "Blue Jay": []},
        name="birds",
    )
    assert to_cupl(aset) == OrderedDict(
        [
            (
                "Cardinal",
                [
                    "Cardinal, which is a red crest.",
                    "Cardinal, which has black mask.",
                    "Cardinal, which has a thick bill.",
                ],
            ),
            ("Blue Jay", []),
        ]
    )
    out = tmp_path / "birds_cupl.json"
    save_attribute_file(aset, out, format="cupl")
    back = load_attribute_file(out)
    assert back.format == "cupl"
    assert back.to_dict() == to_cupl(aset)
    assert back.metadata["converted_from"] == "descriptors"
    assert dumps(aset, "cupl") == json.dumps(to_cupl(aset), indent=4, ensure_ascii=False) + "\n"
    assert from_cupl(CUPL, name="c").format == "cupl"


def test_merge_and_formats():
    a = AttributeSet.from_dict(
        {"Cardinal": ["red crest"], "Blue Jay": ["blue crest"]}, name="a", source="a.json"
    )
    b = AttributeSet.from_dict(
        {"cardinal": ["black mask", "red crest"], "Robin": ["red breast"]},
        name="b",
        source="b.json",
    )
    m = merge_sets(a, b, name="ab")
    assert m.to_dict() == OrderedDict(
        [
            ("Cardinal", ["red crest", "black mask"]),
            ("Blue Jay", ["blue crest"]),
            ("Robin", ["red breast"]),
        ]
    )
    assert m.name == "ab" and m.metadata["merged_from"] == ["a.json", "b.json"]
    with pytest.raises(AttributeSetError, match="different formats"):
        merge_sets(a, from_cupl(CUPL, name="c"))
    with pytest.raises(AttributeSetError, match="no attribute set"):
        merge_sets()


def test_edit_one_class_cleans_and_records():
    aset = AttributeSet.from_dict({"donuts": [], "apple pie": ["golden crust"]}, name="food")
    assert aset.empty_classes == ["donuts"]
    edited = edit_class(aset, "Donuts", ["- a ring shape.", "A ring shape", "sugar glaze"])
    assert edited.to_dict() == OrderedDict(
        [("donuts", ["a ring shape", "sugar glaze"]), ("apple pie", ["golden crust"])]
    )
    assert edited.empty_classes == [] and edited.warnings == []
    assert edited.metadata["edited_classes"] == ["donuts"]
    assert aset.to_dict()["donuts"] == []  # the original is unchanged
    with pytest.raises(AttributeSetError, match="no class 'waffles'"):
        edit_class(aset, "waffles", ["grid pattern"])
    added = edit_class(aset, "waffles", ["grid pattern"], add=True)
    assert added.classes == ["donuts", "apple pie", "waffles"]
    raw = edit_class(aset, "donuts", ["- kept as typed."], clean=False)
    assert raw["donuts"] == ["- kept as typed."]
