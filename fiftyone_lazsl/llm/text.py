"""Turning an LLM's answer into a clean list of visual attributes.

Two steps, both pure functions:

* :func:`parse_attribute_reply` finds the items in a reply: a JSON answer
  (``{"attributes": [...]}``, a bare list, or an object with one list), else a
  bullet or numbered list (prose around the list is ignored), else one item
  per line when there are several lines. A reply that is a refusal
  ("I'm sorry, ...") or a single sentence of prose gives no item.
* :func:`normalize_attributes` cleans the items the way DCLIP/LaZSL attribute
  files are written: bullets, numbering, markdown emphasis, surrounding quotes,
  a leading "It is" / "It has" / "which has" and trailing periods are stripped;
  empty items, the class name itself and exact or case-only duplicates are
  dropped; each item is capped at ``max_chars`` (cut at a word boundary) and
  the list at ``max_items``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable

#: Default cap on one attribute's length, in characters.
MAX_ATTRIBUTE_CHARS = 100

# A list item: "- x", "* x", "• x", "1. x", "1) x", "(1) x", "a) x", "Step 1: x"
# is not one. Numbers need a following space so "3D shape" or "1.5 m" survive.
_LIST_MARKER = re.compile(r"^\s*(?:[•·‣◦▪●○]\s*|[-*–—+]+\s+|\(?\d{1,3}[.)\]:]\s+|\(?[a-zA-Z]\)\s+)")
_ITEM_MARKER = re.compile(
    r"^\s*(?:(?:[•·‣◦▪●○]|[-*–—+]+(?=\s)|\(?\d{1,3}[.)\]:](?=\s)|\(?[a-zA-Z]\)(?=\s))\s*)+"
)
_LEADING_PHRASE = re.compile(
    r"^(?:(?:it|which|that|they)\s+(?:is|has|have|are)|it's|it’s)\s+", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"^\W*(?:(?:i'm sorry|i am sorry|i apologi[sz]e|i can(?:not|'t)|i'm unable|"
    r"i am unable|i won't|as an ai)\b|sorry[,.!])",
    re.IGNORECASE,
)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_QUOTES = "\"'“”‘’`«»"
_DOUBLE_QUOTES = '"“”`«»'
_TRAILING = ".,;:!。"


def _plain(text: str) -> str:
    return unicodedata.normalize("NFC", text).replace("’", "'")


def is_refusal(text: str | None) -> bool:
    """Whether a reply's first line reads as a refusal ("I'm sorry, ...",
    "I cannot ...", "As an AI ...")."""
    if not text or not text.strip():
        return False
    first = _plain(text).strip().splitlines()[0]
    return bool(_REFUSAL.match(first))


def _json_items(data) -> list[str] | None:
    """Strings of a decoded JSON reply, or None if it holds no list."""
    if isinstance(data, list):
        return [x for x in data if isinstance(x, str)]
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).strip().lower() in (
                "attributes",
                "attribute",
                "features",
                "descriptors",
            ) and isinstance(v, list):
                return [x for x in v if isinstance(x, str)]
        lists = [v for v in data.values() if isinstance(v, list)]
        if lists:
            return [x for v in lists for x in v if isinstance(x, str)]
        strings = [v for v in data.values() if isinstance(v, str)]
        return strings or None
    return None


def _decode_json(text: str):
    """The JSON value in ``text`` (whole text, or its first ``{...}``/``[...]``
    span), or None."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            try:
                return json.loads(text[i : j + 1])
            except (json.JSONDecodeError, ValueError):
                continue
    return None


def parse_attribute_reply(content: str | None) -> list[str]:
    """Raw attribute items of one LLM reply (not yet normalised).

    Args:
        content: the assistant message text (None or empty gives ``[]``).

    Returns:
        The items, in reply order: from JSON when the reply (or a fenced or
        embedded block of it) decodes to a list or an object holding one;
        otherwise the bullet/numbered lines (other lines are prose and are
        ignored); otherwise every line of a multi-line reply except lines that
        end with ":" (headings). A refusal or a one-line prose reply gives ``[]``.
    """
    if not content:
        return []
    text = _THINK.sub("", _plain(content)).strip()
    if not text or is_refusal(text):
        return []
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1).strip()
    if text[:1] in "[{" or "{" in text or "[" in text:
        data = _decode_json(text)
        if data is not None:
            items = _json_items(data)
            if items is not None:
                return items
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    marked = [ln for ln in lines if _LIST_MARKER.match(ln)]
    if marked:
        return [_ITEM_MARKER.sub("", ln) for ln in marked if not ln.strip().endswith(":")]
    if len(lines) < 2:
        return []
    return [ln for ln in lines if not ln.strip().endswith(":") and not is_refusal(ln)]


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > 0 else text[:max_chars]
    return cut.rstrip(_TRAILING + " ")


def normalize_attribute(text: str, *, max_chars: int = MAX_ATTRIBUTE_CHARS) -> str:
    """One attribute, cleaned.

    Strips list markers (bullets, ``1.``, ``1)``, ``a)``), markdown emphasis,
    surrounding quotes, a leading "It is" / "It has" / "It's" / "which has" /
    "which is" / "that has" / "they have", trailing periods, commas, colons and
    semicolons; collapses whitespace; caps the length at ``max_chars`` at a word
    boundary.

    Returns:
        The cleaned text ("" when nothing is left).
    """
    s = " ".join(_plain(str(text)).split())
    for _ in range(3):  # markers, quotes and phrases may nest: '- "It has a beak."'
        before = s
        s = _ITEM_MARKER.sub("", s)
        s = s.replace("**", "").replace("__", "").strip()
        if s[:1] in _QUOTES:
            s = s.lstrip(_QUOTES).rstrip(_QUOTES)
        elif s[-1:] in _DOUBLE_QUOTES:
            s = s.rstrip(_DOUBLE_QUOTES)
        s = s.strip().rstrip(_TRAILING).strip()
        s = _LEADING_PHRASE.sub("", s).strip()
        if s == before:
            break
    return _cap(s, max_chars)


def normalize_attributes(
    items: Iterable[str],
    *,
    class_name: str | None = None,
    max_items: int | None = None,
    max_chars: int = MAX_ATTRIBUTE_CHARS,
) -> list[str]:
    """Clean a list of attributes (see :func:`normalize_attribute`) and drop
    empties, the class name itself, and exact or case-only duplicates (the
    first spelling is kept).

    Raises:
        Nothing; non-string items are skipped.

    Args:
        items: raw attribute strings.
        class_name: the class they describe; an item equal to it (ignoring
            case, underscores and hyphens) is dropped.
        max_items: keep at most this many (None: all).
        max_chars: cap on one attribute's length.

    Returns:
        The cleaned list, in the original order.
    """

    def name_key(s: str) -> str:
        return " ".join(s.casefold().replace("_", " ").replace("-", " ").split())

    seen = set()
    own_name = name_key(class_name) if class_name else None
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        s = normalize_attribute(item, max_chars=max_chars)
        k = s.casefold()
        if not s or k in seen or name_key(s) == own_name:
            continue
        seen.add(k)
        out.append(s)
        if max_items is not None and len(out) >= max_items:
            break
    return out
