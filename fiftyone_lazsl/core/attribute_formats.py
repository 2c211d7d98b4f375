"""Import, export and editing of attribute sets in the DCLIP/LaZSL and CuPL formats.

Both formats are JSON objects ``{class: [text, ...]}``:

* **DCLIP / LaZSL** (``format="descriptors"``): short attributes ("black
  plumage") that become ``"{class}, which has {attribute}"`` prompts.
* **CuPL** (Pratt et al., ICCV 2023, ``format="cupl"``): whole sentences
  generated per class ("A Black-footed Albatross is a large seabird with ...")
  that are used verbatim as prompts.

:func:`detect_format` tells them apart (CuPL sentences end with punctuation
and mostly name their class; DCLIP attributes do neither). Exporting a
descriptor set to CuPL writes the very sentences LaZSL would encode
(:func:`fiftyone_lazsl.core.prompts.class_prompts`), so a CuPL consumer sees the
same prompts. A CuPL set cannot be turned back into attributes.

Editing helpers: :func:`merge_sets` (formats must agree), :func:`edit_class`
(attributes cleaned like LLM output).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from fiftyone_lazsl.core.attributes import FORMATS, AttributeSet, AttributeSetError
from fiftyone_lazsl.core.prompts import class_prompts

#: Share of entries that must look like sentences for a set to be read as CuPL.
CUPL_SENTENCE_SHARE = 0.8
#: Share of entries that must name their class for a set to be read as CuPL.
CUPL_NAMED_SHARE = 0.5

_SENTENCE_END = re.compile(r"[.!?][\"'”’)]?\s*$")


def _name_words(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name).casefold().split())


def detect_format(mapping: Mapping[str, Sequence[str]]) -> str:
    """``"cupl"`` or ``"descriptors"`` for a ``{class: [text, ...]}`` mapping.

    Rule: it is CuPL when at least 80% of the non-empty texts end like a
    sentence (``.``, ``!``, ``?``) and at least half of them contain their class
    name (case, ``_`` and ``-`` ignored); otherwise DCLIP/LaZSL descriptors.
    """
    texts = [
        (c, t)
        for c, ts in mapping.items()
        if not isinstance(ts, str)
        for t in (ts or [])
        if isinstance(t, str) and t.strip()
    ]
    if not texts:
        return "descriptors"
    sentences = sum(bool(_SENTENCE_END.search(t)) for _, t in texts)
    named = sum(_name_words(c) in _name_words(t) for c, t in texts)
    if sentences >= CUPL_SENTENCE_SHARE * len(texts) and named >= CUPL_NAMED_SHARE * len(texts):
        return "cupl"
    return "descriptors"


def load_attribute_file(
    path: str | os.PathLike, *, format: str = "auto", name: str | None = None
) -> AttributeSet:
    """Read a DCLIP/LaZSL or CuPL JSON file.

    Args:
        path: the ``{class: [text, ...]}`` file.
        format: ``"descriptors"``, ``"cupl"``, or ``"auto"`` (the sidecar's
            format if there is a ``<file>.meta.json``, else :func:`detect_format`).
        name: the set's name (default: sidecar's, else the file stem).

    Returns:
        The :class:`AttributeSet` (classes with an empty list are reported in
        ``warnings`` / ``empty_classes``).

    Raises:
        AttributeSetError: unreadable or malformed file, unknown format.
    """
    path = os.fspath(path)
    if format not in FORMATS + ("auto",):
        raise AttributeSetError(
            f"unknown attribute-set format {format!r}; expected one of {FORMATS + ('auto',)}"
        )
    aset = AttributeSet.from_json(
        path, name=name, format="descriptors" if format == "auto" else format
    )
    if format == "auto":
        if os.path.exists(path + ".meta.json"):
            return aset
        fmt = detect_format(aset.attributes)
    else:
        fmt = format
    if fmt != aset.format:
        aset = aset.replace(format=fmt)
    return aset


def to_cupl(attribute_set: AttributeSet, *, style: str = "dclip") -> OrderedDict[str, list[str]]:
    """The CuPL mapping ``{class: [sentence, ...]}`` of a set.

    A CuPL set is returned as is; a descriptor set gives, per attribute, the
    prompt LaZSL encodes (``"Cardinal, which has a red crest."``). Classes with
    no attribute keep an empty list.
    """
    if attribute_set.format == "cupl":
        return attribute_set.to_dict()
    out: OrderedDict[str, list[str]] = OrderedDict()
    for c, attrs in attribute_set.attributes.items():
        if not attrs:
            out[c] = []
            continue
        prompts, _ = class_prompts(c, attrs, style=style, fmt="descriptors", suffix=".")
        out[c] = prompts
    return out


def from_cupl(mapping: Mapping[str, Sequence[str]], **kwargs) -> AttributeSet:
    """An :class:`AttributeSet` of format ``"cupl"`` from ``{class: [sentence, ...]}``
    (keyword arguments go to :class:`AttributeSet`)."""
    return AttributeSet(OrderedDict(mapping), format="cupl", **kwargs)


def save_attribute_file(
    attribute_set: AttributeSet,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    with_meta: bool = True,
) -> None:
    """Write a set as a DCLIP/LaZSL or CuPL JSON file.

    Args:
        attribute_set: the set.
        path: the output file (folders are created); a ``<file>.meta.json``
            sidecar keeps name, source, format, warnings and metadata.
        format: ``"descriptors"`` or ``"cupl"`` (default: the set's own).

    Raises:
        AttributeSetError: a CuPL set asked for as descriptors (sentences are
            not attributes), or an unknown format.
    """
    fmt = format or attribute_set.format
    if fmt not in FORMATS:
        raise AttributeSetError(f"unknown attribute-set format {fmt!r}; expected one of {FORMATS}")
    if fmt == attribute_set.format:
        attribute_set.to_json(path, with_meta=with_meta)
        return
    if fmt == "descriptors":
        raise AttributeSetError(
            f"attribute set {attribute_set.name or ''} holds CuPL sentences; they cannot be "
            "written as DCLIP/LaZSL attributes (export it as cupl)"
        )
    converted = attribute_set.replace(
        attributes=to_cupl(attribute_set),
        format="cupl",
        warnings=list(attribute_set.warnings),
        metadata=dict(attribute_set.metadata, converted_from="descriptors"),
    )
    converted.to_json(path, with_meta=with_meta)


def merge_sets(*sets: AttributeSet, name: str | None = None) -> AttributeSet:
    """Merge sets in order (see :meth:`AttributeSet.merge`): classes of all,
    shared classes get the union of their attributes, the first set's first.

    Raises:
        AttributeSetError: no set given, or the sets' formats differ (CuPL
            sentences and DCLIP attributes do not mix).
    """
    if not sets:
        raise AttributeSetError("no attribute set to merge")
    formats = sorted({s.format for s in sets})
    if len(formats) > 1:
        raise AttributeSetError(
            "cannot merge attribute sets of different formats: "
            + ", ".join(f"{s.name or '?'} ({s.format})" for s in sets)
        )
    out = sets[0]
    for s in sets[1:]:
        out = out.merge(s)
    if len(sets) > 1:
        sources = [s.source or s.name for s in sets]
        out = out.replace(name=name or out.name, metadata=dict(out.metadata, merged_from=sources))
    elif name:
        out = out.replace(name=name)
    return out


def edit_class(
    attribute_set: AttributeSet,
    class_name: str,
    attributes: Sequence[str],
    *,
    add: bool = False,
    clean: bool = True,
) -> AttributeSet:
    """A new set with one class's attributes replaced.

    Args:
        attribute_set: the set to edit (unchanged).
        class_name: the class, matched with
            :func:`~fiftyone_lazsl.core.attributes.class_key`.
        attributes: its new attributes (an empty list makes it fall back to a
            class-name-only prompt).
        add: allow a class the set does not have (appended at the end).
        clean: clean them like LLM output
            (:func:`fiftyone_lazsl.llm.text.normalize_attributes`); CuPL
            sentences are never cleaned.

    Raises:
        AttributeSetError: the class is not in the set and ``add`` is False.
    """
    from fiftyone_lazsl.llm.text import normalize_attributes

    if attribute_set.resolve(class_name) is None and not add:
        raise AttributeSetError(
            f"attribute set {attribute_set.name or ''} has no class {class_name!r}"
        )
    attrs = list(attributes)
    if clean and attribute_set.format == "descriptors":
        attrs = normalize_attributes(attrs, class_name=class_name)
    out = attribute_set.set_class(class_name, attrs)
    edited = list(out.metadata.get("edited_classes", []))
    resolved = out.resolve(class_name)
    if resolved not in edited:
        edited.append(resolved)
    out.metadata = dict(out.metadata, edited_classes=edited)
    return out


def dumps(attribute_set: AttributeSet, format: str | None = None) -> str:
    """The JSON text of a set in ``format`` (default its own), as
    :func:`save_attribute_file` writes it, without the sidecar."""
    fmt = format or attribute_set.format
    if fmt == attribute_set.format:
        mapping = attribute_set.to_dict()
    elif fmt == "cupl":
        mapping = to_cupl(attribute_set)
    else:
        raise AttributeSetError("CuPL sentences cannot be written as DCLIP/LaZSL attributes")
    return json.dumps(mapping, indent=4, ensure_ascii=False) + "\n"
