"""Parsing and cleaning of LLM replies (pure functions)."""

from fiftyone_lazsl.llm.text import (
    is_refusal,
    normalize_attribute,
    normalize_attributes,
    parse_attribute_reply,
)


def test_json_object_list_and_fenced_block():
    assert parse_attribute_reply('{"attributes": ["black plumage", 3, "red crown"]}') == [
        "black plumage",
        "red crown",
    ]
    assert parse_attribute_reply('["a", "b"]') == ["a", "b"]
    assert parse_attribute_reply('```json\n{"Cardinal": ["red crest", "black mask"]}\n```') == [
        "red crest",
        "black mask",
    ]
    assert parse_attribute_reply('Sure: {"features": ["webbed feet"]} Enjoy!') == ["webbed feet"]


def test_bullets_numbers_and_prose():
    reply = (
        "Here are useful features of a cardinal:\n\n1. Bright red plumage.\n"
        "2) a black mask\n(3) crest:\n- **Conical** bill\n• short wings\n"
        "These should help you."
    )
    assert parse_attribute_reply(reply) == [
        "Bright red plumage.",
        "a black mask",
        "**Conical** bill",
        "short wings",
    ]


def test_unmarked_lines_headings_and_single_sentence():
    assert parse_attribute_reply("Features:\nred crest\nblack mask\n") == [
        "red crest",
        "black mask",
    ]
    assert parse_attribute_reply("The cardinal is a red songbird with a crest.") == []
    assert parse_attribute_reply("<think>hmm</think>\n- red crest") == ["red crest"]
    assert parse_attribute_reply("") == [] and parse_attribute_reply(None) == []


def test_refusals():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I can’t do that")
    assert is_refusal("Sorry, no.")
    assert not is_refusal("- sorry-looking face")
    assert parse_attribute_reply("I cannot help with this request.\n- but here: x") == []


def test_normalize_one():
    assert normalize_attribute('- "It has a long, hooked beak."') == "a long, hooked beak"
    assert normalize_attribute("3. which has   white cheeks;") == "white cheeks"
    assert normalize_attribute("It is a small bird!") == "a small bird"
    assert normalize_attribute("It’s brown") == "brown"
    assert normalize_attribute("“they have webbed feet”") == "webbed feet"
    assert normalize_attribute("1.5 m wingspan") == "1.5 m wingspan"
    assert normalize_attribute("3D-looking shell") == "3D-looking shell"
    assert normalize_attribute("bird's red bill") == "bird's red bill"
    assert normalize_attribute("a very long attribute text here", max_chars=16) == "a very long"
    assert normalize_attribute("   ") == ""


def test_normalize_list_dedupes_and_caps():
    items = [
        "black plumage",
        "Black Plumage.",
        "",
        "  ",
        "- black plumage",
        "Northern Cardinal",
        "red crown",
        "RED CROWN",
        "crest",
        "mask",
    ]
    assert normalize_attributes(items, class_name="northern_cardinal") == [
        "black plumage",
        "red crown",
        "crest",
        "mask",
    ]
    assert normalize_attributes(items, class_name="Northern Cardinal", max_items=2) == [
        "black plumage",
        "red crown",
    ]
    assert normalize_attributes(["black-and-white", "black and white", 7]) == [
        "black-and-white",
        "black and white",
    ]
