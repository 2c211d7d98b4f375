"""Text prompts for the semantic set, in the DCLIP / LaZSL format.

Each attribute ``a`` of class ``y`` becomes ``"{y}, which has {a}"`` (DCLIP,
Menon & Vondrick 2023, ``make_descriptor_sentence``; reused unchanged by LaZSL's
``loading_helpers.py``), with two variants chosen from the attribute's first word:

* ``"{y}, which is {a}"`` when ``a`` starts with an article ("a long beak") or
  with "used";
* ``"{y}, which {a}"`` when ``a`` starts with "has", "often", "typically",
  "may" or "can".

``style="legacy"`` reproduces the official code exactly, including its article
test ``a.startswith('a')``, which also fires on "antennae" or "angular body"
("which is antennae"). The default ``style="dclip"`` tests the first *word*.
CuPL attribute sets are full sentences and are used verbatim.

Per method (the attribute set's ``format`` decides, see
:mod:`fiftyone_lazsl.core.attribute_formats`):

* LaZSL, WCA, DCLIP: a descriptor set gives the ``"{y}, which ..."`` prompts
  above, a CuPL set its sentences as written (``prompt_suffix`` appended to
  either);
* WCA also encodes each class's label prompt :func:`clip_prompt`
  (``"a photo of a {y}."``, official WCA ``zeroshot_classifier``) and weights
  the class's prompts by their similarity to it;
* CLIP: :func:`clip_prompt` only; the attributes are not used.

A class without attributes gets one class-name prompt in every format.
"""

from __future__ import annotations

from fiftyone_lazsl.core.attributes import AttributeSet

STYLES = ("dclip", "legacy")

_WHICH_VERB = ("has", "often", "typically", "may", "can")


def wordify(name: str) -> str:
    """Class name as text: underscores become spaces (official ``wordify``)."""
    return name.replace("_", " ")


def descriptor_clause(attribute: str, style: str = "dclip") -> str:
    """The ``"which ..."`` clause for one attribute.

    Args:
        attribute: the attribute text, e.g. ``"a red crown"``.
        style: ``"dclip"`` (first-word tests) or ``"legacy"`` (the official
            code's ``startswith`` tests, character for character).

    Returns:
        ``"which is ..."``, ``"which ..."`` or ``"which has ..."``.
    """
    if style == "legacy":
        d = attribute
        if d.startswith("a") or d.startswith("an"):
            return f"which is {d}"
        if d.startswith(_WHICH_VERB):
            return f"which {d}"
        if d.startswith("used"):
            return f"which is {d}"
        return f"which has {d}"
    if style != "dclip":
        raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
    first = attribute.split(maxsplit=1)[0].lower() if attribute.strip() else ""
    if first in ("a", "an", "used"):
        return f"which is {attribute}"
    if first in _WHICH_VERB:
        return f"which {attribute}"
    return f"which has {attribute}"


def class_prompts(
    class_name: str,
    attributes: list[str],
    *,
    style: str = "dclip",
    fmt: str = "descriptors",
    suffix: str = "",
) -> tuple[list[str], list[str]]:
    """Prompts and their display labels for one class.

    Args:
        class_name: the class as stored in the attribute set.
        attributes: its attribute list (may be empty).
        style: see :func:`descriptor_clause`.
        fmt: ``"descriptors"`` or ``"cupl"`` (sentences used verbatim).
        suffix: text appended to every prompt (the official ImageNet run uses ``"."``).

    Returns:
        ``(prompts, labels)`` of equal length >= 1. An empty attribute list gives
        one class-name-only prompt (``legacy``: the official ``"{y}, which has "``)
        whose label is the class name.
    """
    name = wordify(class_name)
    if not attributes:
        if style == "legacy":
            return [f"{name}, {descriptor_clause('', 'legacy')}{suffix}"], [class_name]
        return [f"{name}{suffix}"], [class_name]
    if fmt == "cupl":
        return [f"{a}{suffix}" for a in attributes], list(attributes)
    return [f"{name}, {descriptor_clause(a, style)}{suffix}" for a in attributes], list(attributes)


def build_prompts(
    attribute_set: AttributeSet, *, style: str = "dclip", suffix: str = ""
) -> tuple[list[list[str]], list[list[str]]]:
    """Prompts for every class of ``attribute_set``, in class order.

    Returns:
        ``(prompts, labels)``: two lists of ``C`` lists; ``prompts[c][a]`` is the
        text encoded for attribute ``a`` of class ``c`` and ``labels[c][a]`` the
        attribute as shown to users.
    """
    prompts, labels = [], []
    names = prompt_names(attribute_set)
    for c, attrs in attribute_set.attributes.items():
        p, lab = class_prompts(
            names[c], attrs, style=style, fmt=attribute_set.format, suffix=suffix
        )
        lab = [c] if not attrs else lab
        prompts.append(p)
        labels.append(lab)
    return prompts, labels


def prompt_names(attribute_set: AttributeSet) -> dict[str, str]:
    """Class -> name used in its prompts: the class itself, or the readable name
    recorded in ``metadata["prompt_names"]`` (e.g. ``"001.Black_footed_Albatross"``
    -> ``"Black-footed Albatross"`` for sets keyed by dataset folder names)."""
    mapping = attribute_set.metadata.get("prompt_names") or {}
    return {c: str(mapping.get(c) or c) for c in attribute_set.classes}


def clip_prompt(class_name: str) -> str:
    """Plain CLIP class-name prompt: ``"a photo of a {class}."`` (Radford et al. 2021)."""
    return f"a photo of a {wordify(class_name)}."
