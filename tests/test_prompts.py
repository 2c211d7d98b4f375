"""Prompts in the DCLIP / LaZSL format (fiftyone_lazsl.core.prompts).

Expected strings are written out by hand from the official rule
(DCLIP ``make_descriptor_sentence``, reused by LaZSL ``loading_helpers.py``)::

    if descriptor.startswith('a') or descriptor.startswith('an'):
        return f"which is {descriptor}"
    elif descriptor.startswith('has') or ... 'often' ... 'typically' ... 'may' ... 'can':
        return f"which {descriptor}"
    elif descriptor.startswith('used'):
        return f"which is {descriptor}"
    else:
        return f"which has {descriptor}"

    prompt = f"{wordify(class)}, {make_descriptor_sentence(descriptor)}"
"""

import pytest

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.prompts import (
    build_prompts,
    class_prompts,
    clip_prompt,
    descriptor_clause,
    wordify,
)


def official_clause(d):
    """The official function, verbatim (the reference for ``style="legacy"``)."""
    if d.startswith("a") or d.startswith("an"):
        return f"which is {d}"
    elif (
        d.startswith("has")
        or d.startswith("often")
        or d.startswith("typically")
        or d.startswith("may")
        or d.startswith("can")
    ):
        return f"which {d}"
    elif d.startswith("used"):
        return f"which is {d}"
    else:
        return f"which has {d}"


@pytest.mark.parametrize(
    "attribute,expected",
    [
        ("black plumage", "Laysan Albatross, which has black plumage"),
        ("a long hooked beak", "Laysan Albatross, which is a long hooked beak"),
        ("an orange bill", "Laysan Albatross, which is an orange bill"),
        ("used for fishing", "Laysan Albatross, which is used for fishing"),
        ("has webbed feet", "Laysan Albatross, which has webbed feet"),
        ("often seen at sea", "Laysan Albatross, which often seen at sea"),
        ("typically white", "Laysan Albatross, which typically white"),
        ("may be grey", "Laysan Albatross, which may be grey"),
        ("can glide for hours", "Laysan Albatross, which can glide for hours"),
        # the default style tests the first *word*: no misfire on "a..." words
        ("antennae", "Laysan Albatross, which has antennae"),
        ("angular body", "Laysan Albatross, which has angular body"),
        ("hasty flight", "Laysan Albatross, which has hasty flight"),
        ("usedness", "Laysan Albatross, which has usedness"),
        ("cannot fly", "Laysan Albatross, which has cannot fly"),
        ("A red crown", "Laysan Albatross, which is A red crown"),
    ],
)
def test_default_style(attribute, expected):
    prompts, labels = class_prompts("Laysan Albatross", [attribute])
    assert prompts == [expected]
    assert labels == [attribute]


@pytest.mark.parametrize(
    "attribute,expected",
    [
        ("antennae", "which is antennae"),
        ("angular body", "which is angular body"),
        ("a long beak", "which is a long beak"),
        ("an orange bill", "which is an orange bill"),
        ("hasty flight", "which hasty flight"),
        ("cannot fly", "which cannot fly"),
        ("usedness", "which is usedness"),
        ("black plumage", "which has black plumage"),
        ("Antennae", "which has Antennae"),
    ],
)
def test_legacy_style_is_official_rule(attribute, expected):
    assert official_clause(attribute) == expected  # the table is the official rule
    assert descriptor_clause(attribute, "legacy") == expected
    assert class_prompts("ant", [attribute], style="legacy")[0] == [f"ant, {expected}"]


def test_legacy_matches_official_on_real_attributes(shared_data):
    s = AttributeSet.from_json(shared_data / "attribute_sets" / "cub.json")
    n = 0
    for _c, attrs in list(s.attributes.items())[:60]:
        for a in attrs:
            assert descriptor_clause(a, "legacy") == official_clause(a)
            n += 1
    assert n > 100


def test_unknown_style():
    with pytest.raises(ValueError):
        descriptor_clause("black plumage", "fancy")


def test_wordify_and_underscores():
    assert wordify("airplane_cabin") == "airplane cabin"
    assert class_prompts("airplane_cabin", ["rows of seats"])[0] == [
        "airplane cabin, which has rows of seats"
    ]
    assert clip_prompt("corn_field") == "a photo of a corn field."


def test_empty_class():
    prompts, labels = class_prompts("corn_field", [])
    assert prompts == ["corn field"]
    assert labels == ["corn_field"]
    prompts, labels = class_prompts("corn_field", [], style="legacy")
    assert prompts == ["corn field, which has "]
    assert labels == ["corn_field"]


def test_suffix():
    assert class_prompts("tench", ["a fish"], suffix=".")[0] == ["tench, which is a fish."]


def test_cupl_verbatim():
    sentences = ["A photo of a tench, a freshwater fish.", "antennae are not present"]
    prompts, labels = class_prompts("tench", sentences, fmt="cupl")
    assert prompts == sentences
    assert labels == sentences
    s = AttributeSet.from_dict({"tench": sentences, "goldfish": ["It is orange."]}, format="cupl")
    p, lab = build_prompts(s)
    assert p == [sentences, ["It is orange."]]
    assert lab == p


def test_build_prompts_class_order_and_ragged():
    s = AttributeSet.from_dict(
        {"zebra_finch": ["a red beak", "grey body"], "albatross": ["long wings"], "corn_field": []}
    )
    prompts, labels = build_prompts(s)
    assert prompts == [
        ["zebra finch, which is a red beak", "zebra finch, which has grey body"],
        ["albatross, which has long wings"],
        ["corn field"],
    ]
    assert labels == [["a red beak", "grey body"], ["long wings"], ["corn_field"]]
    prompts, _ = build_prompts(s, style="legacy", suffix=".")
    assert prompts[2] == ["corn field, which has ."]


def test_prompt_names_from_metadata():
    """Sets keyed by dataset folder names carry readable names for the prompts."""
    from fiftyone_lazsl.core.prompts import build_prompts, prompt_names

    s = AttributeSet.from_dict(
        {"001.Black_footed_Albatross": ["a long, hooked bill"], "002.X": []},
        metadata={"prompt_names": {"001.Black_footed_Albatross": "Black-footed Albatross"}},
    )
    assert prompt_names(s) == {
        "001.Black_footed_Albatross": "Black-footed Albatross",
        "002.X": "002.X",
    }
    prompts, labels = build_prompts(s)
    assert prompts == [["Black-footed Albatross, which is a long, hooked bill"], ["002.X"]]
    assert labels == [["a long, hooked bill"], ["002.X"]]
