"""Class names to describe: from a file or a list, and their readable forms.

(Class names from a FiftyOne label field: :func:`fiftyone_lazsl.fo.fields.classes_from_field`.)

Dataset labels are often folder names: CUB-200-2011 uses
``001.Black_footed_Albatross``, while the published attribute file (and any
LLM) knows the bird as ``Black-footed Albatross``. :func:`readable_name`
derives the readable form with the rule the CUB/DCLIP class list follows:

* a leading numeric index (``001.``, ``12_``, ``3-``) is dropped;
* with underscores as separators, the last word is the head noun and the words
  before it are joined by hyphens (``Black_footed_Albatross`` -> ``Black-footed
  Albatross``, ``Gray_crowned_Rosy_Finch`` -> ``Gray-crowned-Rosy Finch``,
  ``Brewer_Blackbird`` -> ``Brewer Blackbird``);
* ``style="spaces"`` turns every underscore into a space instead
  (``golden_retriever`` -> ``golden retriever``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterable

from fiftyone_lazsl.core.attributes import class_key
from fiftyone_lazsl.errors import UserError

STYLES = ("cub", "spaces")

_INDEX_PREFIX = re.compile(r"^\s*\d+\s*[._\-]\s*(?=\S)")
_NUMBERED_LINE = re.compile(r"^\s*(\d+)\s+(\S.*)$")


def readable_name(label: str, style: str = "cub") -> str:
    """A readable class name for a folder-style label.

    Args:
        label: e.g. ``"001.Black_footed_Albatross"``.
        style: ``"cub"`` (words before the last joined by hyphens, the CUB/DCLIP
            convention) or ``"spaces"`` (underscores become spaces).

    Returns:
        e.g. ``"Black-footed Albatross"``; a label without underscores is only
        stripped of its index and extra spaces.

    Raises:
        ValueError: unknown ``style``.
    """
    if style not in STYLES:
        raise ValueError(f"unknown readable-name style {style!r}; expected one of {STYLES}")
    s = _INDEX_PREFIX.sub("", str(label).strip())
    words = [w for w in s.split("_") if w.strip()]
    if len(words) <= 1:
        return " ".join(s.replace("_", " ").split())
    words = [" ".join(w.split()) for w in words]
    if style == "spaces":
        return " ".join(words)
    return "-".join(words[:-1]) + " " + words[-1]


def readable_names(labels: Iterable[str], style: str = "cub") -> OrderedDict[str, str]:
    """``{label: readable name}`` for every label, in order.

    Raises:
        UserError: two labels give the same readable name (compared with
            :func:`~fiftyone_lazsl.core.attributes.class_key`).
    """
    out: OrderedDict[str, str] = OrderedDict()
    seen: dict[str, str] = {}
    for label in labels:
        r = readable_name(label, style)
        k = class_key(r)
        if k in seen and seen[k] != label:
            raise UserError(f"labels {seen[k]!r} and {label!r} both read as {r!r}")
        seen[k] = label
        out[label] = r
    return out


def _dedupe(names: Iterable[str], where: str) -> list[str]:
    out, seen = [], set()
    for n in names:
        if n is None:
            continue
        n = " ".join(str(n).split())
        if not n or n in seen:
            continue
        seen.add(n)
        out.append(n)
    if not out:
        raise UserError(f"no class names in {where}")
    return out


def classes_from_list(names: Iterable[str]) -> list[str]:
    """Class names from a list: whitespace collapsed, blanks and repeats dropped,
    order kept.

    Raises:
        UserError: nothing left.
    """
    return _dedupe(names, "the list")


def classes_from_file(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (blank lines and ``#``
    comments skipped). When every line is ``<integer> <name>`` with the integers
    counting up by one (the CUB ``classes.txt`` layout), the integers are
    dropped.

    Raises:
        UserError: the file cannot be read or holds no name.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [ln.strip() for ln in f]
    except OSError as e:
        raise UserError(f"cannot read class list {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"class list {path} is not UTF-8 text: {e}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    matches = [_NUMBERED_LINE.match(ln) for ln in lines]
    if lines and all(matches):
        ids = [int(m.group(1)) for m in matches]
        if ids == list(range(ids[0], ids[0] + len(ids))):
            lines = [m.group(2) for m in matches]
    return _dedupe(lines, path)
