"""AttributeSet: loading the published attribute files, round trips, quirks."""

import json
from collections import OrderedDict

import pytest

from fiftyone_lazsl.core.attributes import AttributeSet, AttributeSetError

EXPECTED_CLASSES = {
    "cub": 200,
    "imagenet": 1000,
    "pets": 37,
    "food101": 101,
    "places365": 365,
    "dtd": 47,
    "eurosat": 10,
}
FOOD101_EMPTY = ["donuts", "french fries", "fried calamari", "mussels", "oysters"]


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_load_published_sets(shared_data, name):
    path = shared_data / "attribute_sets" / f"{name}.json"
    with open(path, encoding="utf-8") as f:
        raw = json.load(f, object_pairs_hook=OrderedDict)
    s = AttributeSet.from_json(path)
    assert len(raw) == EXPECTED_CLASSES[name]
    assert len(s) == EXPECTED_CLASSES[name]
    assert s.name == name
    assert s.classes == [k.strip() for k in raw.keys()]
    assert s.classes == list(raw.keys())  # published names have no padding
    for k, v in raw.items():
        # attributes: whitespace-normalised, empty ones dropped, repeats kept
        # (the official code encodes every listed attribute)
        expected = [" ".join(a.split()) for a in v if a.strip()]
        assert s[k] == expected
    assert s.empty_classes == [k for k, v in raw.items() if not v]
    if not s.empty_classes:
        assert not any("no attribute" in w for w in s.warnings)


def test_food101_empty_classes(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "food101.json")
    assert s.empty_classes == FOOD101_EMPTY
    notes = [w for w in s.warnings if "no attribute" in w]
    assert len(notes) == 1
    for c in FOOD101_EMPTY:
        assert c in notes[0]
    assert s.max_attributes() >= 1


def test_cub_order_matches_official_class_list(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "cub.json")
    lines = (shared_data / "cub_classes.txt").read_text().split("\n")
    official = [ln.split(".", 1)[1] for ln in lines if ln.strip()]
    assert len(official) == 200

    def folder(name):  # CUB folder spelling: spaces and hyphens become "_"
        return name.replace(" ", "_").replace("-", "_").casefold()

    assert [folder(c) for c in s.classes] == [o.casefold() for o in official]


def test_round_trip_keeps_order_and_hash(shared_data, tmp_path):
    for name in ("food101", "places365", "cub"):
        s = AttributeSet.from_json(shared_data / "attribute_sets" / f"{name}.json")
        out = tmp_path / f"{name}.json"
        s.to_json(out)
        t = AttributeSet.from_json(out)
        assert t.classes == s.classes
        assert t.to_dict() == s.to_dict()
        assert t.content_hash == s.content_hash
        assert t.name == s.name
        assert t.empty_classes == s.empty_classes
        # the file itself is plain DCLIP JSON, same order
        with open(out, encoding="utf-8") as f:
            assert list(json.load(f, object_pairs_hook=OrderedDict)) == s.classes


def test_content_hash_depends_on_order_and_content():
    a = AttributeSet.from_dict({"x": ["red"], "y": ["blue"]})
    b = AttributeSet.from_dict({"y": ["blue"], "x": ["red"]})
    c = AttributeSet.from_dict({"x": ["red"], "y": ["green"]})
    d = AttributeSet.from_dict({"x": ["red"], "y": ["blue"]}, name="other", source="elsewhere")
    assert a.content_hash != b.content_hash
    assert a.content_hash != c.content_hash
    assert a.content_hash == d.content_hash
    assert len(a.content_hash) == 64


def test_malformed_json_names_file_line_column(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{\n  "a": ["x"],\n  "b": ["y",]\n}\n')
    with pytest.raises(AttributeSetError) as e:
        AttributeSet.from_json(p)
    msg = str(e.value)
    assert str(p) in msg
    try:
        json.loads(p.read_text())
    except json.JSONDecodeError as je:
        assert f"line {je.lineno}" in msg and f"column {je.colno}" in msg
        assert je.lineno == 3


def test_missing_file_and_wrong_shapes(tmp_path):
    with pytest.raises(AttributeSetError, match="nope.json"):
        AttributeSet.from_json(tmp_path / "nope.json")
    p = tmp_path / "list.json"
    p.write_text('["a", "b"]')
    with pytest.raises(AttributeSetError, match="list.json"):
        AttributeSet.from_json(p)
    p = tmp_path / "str.json"
    p.write_text('{"a": "red"}')
    with pytest.raises(AttributeSetError, match="str.json"):
        AttributeSet.from_json(p)
    p = tmp_path / "empty.json"
    p.write_text("{}")
    with pytest.raises(AttributeSetError):
        AttributeSet.from_json(p)
    with pytest.raises(AttributeSetError):
        AttributeSet.from_dict({"a": ["red", 3]})
    with pytest.raises(AttributeSetError):
        AttributeSet.from_dict({"a": ["x"]}, format="poetry")


def test_duplicate_padded_cased_names_merge(tmp_path):
    p = tmp_path / "dups.json"
    # padding, case and inner whitespace
    p.write_text(
        '{"Black-footed Albatross": ["dark plumage", "long wings"],\n'
        ' "Laysan Albatross": ["white head"],\n'
        ' " black-footed  albatross ": ["long wings", "pale beak"],\n'
        ' "LAYSAN ALBATROSS": ["dark back"]}'
    )
    s = AttributeSet.from_json(p)
    assert s.classes == ["Black-footed Albatross", "Laysan Albatross"]
    assert s["Black-footed Albatross"] == ["dark plumage", "long wings", "pale beak"]
    assert s["Laysan Albatross"] == ["white head", "dark back"]
    dup = [w for w in s.warnings if "duplicate" in w]
    assert len(dup) == 2
    assert "black-footed  albatross" in dup[0] and "LAYSAN ALBATROSS" in dup[1]
    # the same through from_dict
    t = AttributeSet.from_dict({"Cat": ["fur"], "cat ": ["whiskers"]})
    assert t.classes == ["Cat"] and t["Cat"] == ["fur", "whiskers"]
    assert any("duplicate" in w for w in t.warnings)


def test_exact_duplicate_json_keys_merge(tmp_path):
    p = tmp_path / "dups.json"
    p.write_text(
        '{"Laysan Albatross": ["white head"],\n'
        ' "Sooty Albatross": ["dark body"],\n'
        ' "Laysan Albatross": ["dark back"]}'
    )
    s = AttributeSet.from_json(p)
    assert s.classes == ["Laysan Albatross", "Sooty Albatross"]
    assert s["Laysan Albatross"] == ["white head", "dark back"]
    assert any("duplicate" in w for w in s.warnings)


def test_attribute_whitespace_and_duplicates():
    s = AttributeSet.from_dict(
        {"  cat ": ["  pointy   ears ", "pointy ears", "", "  ", "whiskers"]}
    )
    assert s.classes == ["cat"]
    assert s["cat"] == ["pointy ears", "pointy ears", "whiskers"]
    assert any("repeated attribute" in w and "cat: pointy ears" in w for w in s.warnings)


def test_places365_repeats_kept_with_warning(shared_data):
    with open(shared_data / "attribute_sets" / "places365.json", encoding="utf-8") as f:
        raw = json.load(f)
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "places365.json")
    assert len(s["bazaar-indoor"]) == len(raw["bazaar-indoor"]) == 7
    assert any("bazaar-indoor" in w for w in s.warnings if "repeated attribute" in w)


def test_unicode_names(tmp_path):
    d = OrderedDict(
        [
            ("crème brûlée", ["caramelised sugar top"]),
            ("Königspinguin", ["orange ear patches"]),
            ("寿司", ["raw fish on rice"]),
        ]
    )
    s = AttributeSet.from_dict(d)
    assert s.classes == list(d)
    s.to_json(tmp_path / "u.json")
    t = AttributeSet.from_json(tmp_path / "u.json")
    assert t.classes == list(d) and t.content_hash == s.content_hash
    assert "寿司" in (tmp_path / "u.json").read_text(encoding="utf-8")
    # NFD spelling is the same class as NFC
    import unicodedata

    nfd = unicodedata.normalize("NFD", "crème brûlée")
    assert nfd != "crème brûlée"
    assert s.resolve(nfd) == "crème brûlée"
    assert s.with_classes([nfd]).classes == ["crème brûlée"]


def test_one_class_set(tmp_path):
    s = AttributeSet.from_dict({"only": ["one attribute"]})
    assert len(s) == 1 and s.classes == ["only"] and s.max_attributes() == 1
    s.to_json(tmp_path / "one.json")
    assert AttributeSet.from_json(tmp_path / "one.json").to_dict() == s.to_dict()
    e = AttributeSet.from_dict({"only": []})
    assert e.empty_classes == ["only"] and e.max_attributes() == 1


def test_validate_classes(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "pets.json")
    s.validate_classes(["Abyssinian", "american bulldog", "ABYSSINIAN", None])
    with pytest.raises(AttributeSetError) as e:
        s.validate_classes(["Abyssinian", "unicorn", "dragon", "unicorn"])
    msg = str(e.value)
    assert "'unicorn'" in msg and "'dragon'" in msg and "2 class" in msg
    assert "'Abyssinian'" not in msg


def test_with_classes_restricts_and_orders(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "cub.json")
    want = ["Laysan Albatross", " black-footed  albatross", "GROOVE-BILLED ANI"]
    r = s.with_classes(want)
    assert r.classes == ["Laysan Albatross", "Black-footed Albatross", "Groove-billed Ani"]
    for c in r.classes:
        assert r[c] == s[c]
    assert len(r) == 3
    with pytest.raises(AttributeSetError, match="Not A Bird"):
        s.with_classes(["Laysan Albatross", "Not A Bird"])


def test_with_classes_keeps_empty_note(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "food101.json")
    r = s.with_classes(["apple pie", "donuts", "oysters"])
    assert r.empty_classes == ["donuts", "oysters"]


def test_replace_copies_with_one_change():
    from fiftyone_lazsl.core.attributes import AttributeSet

    a = AttributeSet.from_dict(
        {"Cardinal": ["red crest"], "Wren": []}, name="birds", source="x.json", metadata={"k": 1}
    )
    assert any(w.startswith("class(es) with no attribute") for w in a.warnings)
    b = a.replace(name="other")
    assert (b.name, b.source, b.format, b.metadata) == ("other", "x.json", "descriptors", {"k": 1})
    assert b.to_dict() == a.to_dict() and b.warnings == a.warnings
    b.metadata["k"] = 2
    b.warnings.append("new")
    assert a.metadata == {"k": 1} and "new" not in a.warnings  # copies, not shared
    c = a.replace(attributes={"Cardinal": ["red crest"], "Wren": ["brown"]})
    assert not any(w.startswith("class(es) with no attribute") for w in c.warnings)
    assert c.content_hash != a.content_hash and c.name == "birds"
    assert a.replace(format="cupl").format == "cupl"
    with pytest.raises(TypeError, match="colour"):
        a.replace(colour="red")
