"""Attribute sets: ``{class: [attribute, ...]}`` in the DCLIP / LaZSL JSON format.

An *attribute set* maps each class name to a list of short visual attribute
descriptions ("black plumage", "a long hooked beak", ...). It is the semantic
side of LaZSL: every attribute becomes one text prompt, and the optimal
transport aligns image crops to those prompts.

The file format is the one published with DCLIP (Menon & Vondrick, ICLR 2023)
and reused by LaZSL: a JSON object whose keys are class names, in class order,
and whose values are lists of strings. CuPL files (``{class: [sentence, ...]}``)
have the same shape; their sentences are used as prompts verbatim.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fiftyone_lazsl.errors import AttributeSetError

FORMATS = ("descriptors", "cupl")

# Start of the warning kept for classes with an empty attribute list.
_EMPTY_NOTE = "class(es) with no attribute"


def _clean_name(name: str) -> str:
    """Normalise a class name for storage: NFC unicode, surrounding space stripped."""
    return unicodedata.normalize("NFC", str(name)).strip()


def class_key(name: str) -> str:
    """Key under which class names are compared: NFC, stripped, case-folded,
    inner whitespace collapsed. ``" Black-footed  albatross "`` and
    ``"Black-footed Albatross"`` share a key."""
    return " ".join(_clean_name(name).casefold().split())


#: Fields of a ``<file>.meta.json`` sidecar and the JSON types they must have.
_SIDECAR_TYPES = {
    "name": (str, "a string"),
    "source": (str, "a string"),
    "format": (str, "a string"),
    "warnings": (list, "a list of strings"),
    "metadata": (dict, "an object"),
}


def _read_sidecar(meta_path: str) -> dict:
    """The ``<file>.meta.json`` sidecar of an attribute-set file ({} if absent).

    Raises:
        AttributeSetError: unreadable, not JSON, not an object, or a field of the
            wrong type (``warnings`` a number, ``metadata`` a string...); the
            message names the file and the field.
    """
    if not os.path.exists(meta_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as e:
        raise AttributeSetError(f"cannot read sidecar {meta_path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise AttributeSetError(f"sidecar {meta_path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise AttributeSetError(
            f"sidecar {meta_path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    if not isinstance(meta, dict):
        raise AttributeSetError(
            f"sidecar {meta_path} must hold a JSON object (name, source, "
            f"format, warnings, metadata), not a {type(meta).__name__}"
        )
    for key, (typ, what) in _SIDECAR_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, typ) or (
            key == "warnings" and not all(isinstance(w, str) for w in value)
        ):
            raise AttributeSetError(
                f"sidecar {meta_path}: {key!r} must be {what}, not {json.dumps(value)[:60]}"
            )
    if meta.get("format") is not None and meta["format"] not in FORMATS:
        raise AttributeSetError(
            f"sidecar {meta_path}: 'format' must be one of {FORMATS}, not {meta['format']!r}"
        )
    return meta


@dataclass
class AttributeSet:
    """An ordered mapping ``class -> [attribute, ...]`` plus provenance.

    Attributes:
        attributes: ``{class: [attribute, ...]}``; insertion order is class order
            (it fixes the order of logits and of ``text_features``).
        name: a short name (e.g. ``"cub"``) under which the set is stored.
        source: where it came from (a file path, a URL, ``"llm:<model>"``...).
        format: ``"descriptors"`` (DCLIP/LaZSL attributes, turned into
            ``"{class}, which has {attribute}"`` prompts) or ``"cupl"`` (full
            sentences used verbatim).
        warnings: human-readable notes kept with the set (e.g. classes whose
            attribute list is empty and fall back to a class-name-only prompt).
        metadata: free-form JSON-serialisable extras (LLM model, hint, ...).
    """

    attributes: OrderedDict[str, list[str]]
    name: str | None = None
    source: str | None = None
    format: str = "descriptors"
    warnings: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise AttributeSetError(
                f"unknown attribute-set format {self.format!r}; expected one of {FORMATS}"
            )
        self.attributes = self._normalise(self.attributes)
        empty = [c for c, a in self.attributes.items() if not a]
        note = _EMPTY_NOTE + ", scored with a class-name-only prompt: "
        if empty and not any(w.startswith(note) for w in self.warnings):
            self.warnings.append(note + ", ".join(empty))

    # ------------------------------------------------------------------ build
    def _normalise(self, mapping: Mapping[str, Sequence[str]]) -> OrderedDict[str, list[str]]:
        if not isinstance(mapping, Mapping):
            raise AttributeSetError(
                f"attribute set {self.source or self.name or ''} must be a JSON object "
                f"{{class: [attribute, ...]}}, got {type(mapping).__name__}"
            )
        out: OrderedDict[str, list[str]] = OrderedDict()
        keys: dict[str, str] = {}
        repeats: list[str] = []
        for raw_name, attrs in mapping.items():
            name = _clean_name(raw_name)
            if not name:
                raise AttributeSetError(
                    f"attribute set {self.source or self.name or ''}: empty class name"
                )
            # A dict would iterate over its keys only (values silently lost).
            if isinstance(attrs, (str, Mapping)) or not isinstance(attrs, Iterable):
                raise AttributeSetError(
                    f"attribute set {self.source or self.name or ''}: class {name!r} must map "
                    f"to a list of strings, got "
                    f"{'dict' if isinstance(attrs, Mapping) else type(attrs).__name__}"
                )
            cleaned = []
            for a in attrs:
                if not isinstance(a, str):
                    raise AttributeSetError(
                        f"attribute set {self.source or self.name or ''}: class {name!r} has a "
                        f"non-string attribute {a!r}"
                    )
                a = " ".join(unicodedata.normalize("NFC", a).split())
                if a:
                    # Repeats are kept: the official code encodes every listed
                    # attribute, so a repeat weighs more in the uniform marginal.
                    if a in cleaned:
                        repeats.append(f"{name}: {a}")
                    cleaned.append(a)
            key = class_key(name)
            if key in keys:
                first = keys[key]
                self.warnings.append(f"duplicate class {raw_name!r} merged into {first!r}")
                for a in cleaned:
                    if a not in out[first]:
                        out[first].append(a)
                continue
            keys[key] = name
            out[name] = cleaned
        note = "repeated attribute(s), kept as listed (each occurrence is a prompt, as in the official code): "
        if repeats and not any(w.startswith(note) for w in self.warnings):
            self.warnings.append(note + "; ".join(repeats))
        if not out:
            raise AttributeSetError(
                f"attribute set {self.source or self.name or ''} has no classes"
            )
        return out

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Sequence[str]], **kwargs) -> AttributeSet:
        """Build from ``{class: [attribute, ...]}``; class order is kept."""
        return cls(OrderedDict(mapping), **kwargs)

    @classmethod
    def from_json(
        cls, path: str | os.PathLike, *, name: str | None = None, format: str = "descriptors"
    ) -> AttributeSet:
        """Read a DCLIP/LaZSL (or CuPL, with ``format="cupl"``) JSON file.

        If a sidecar ``<file>.meta.json`` exists (written by :meth:`to_json`),
        its warnings and metadata are restored.

        Raises:
            AttributeSetError: the file is missing, unreadable or malformed; the
                message names the file and, for JSON syntax errors, line and column.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise AttributeSetError(
                f"cannot read attribute set file {path}: {e.strerror or e}"
            ) from e
        except UnicodeDecodeError as e:
            raise AttributeSetError(f"attribute set file {path} is not UTF-8 text: {e}") from e
        duplicates: list[str] = []

        def pairs_hook(pairs: list[tuple[str, Any]]) -> OrderedDict:
            # A class key repeated verbatim in the file: merge its lists (json
            # would silently keep the last one) and say so.
            out = OrderedDict()
            for k, v in pairs:
                if k in out and isinstance(out[k], list) and isinstance(v, list):
                    duplicates.append(k)
                    out[k] = out[k] + [a for a in v if a not in out[k]]
                else:
                    out[k] = v
            return out

        try:
            data = json.loads(text, object_pairs_hook=pairs_hook)
        except json.JSONDecodeError as e:
            raise AttributeSetError(
                f"attribute set file {path} is not valid JSON: {e.msg} at line {e.lineno}, "
                f"column {e.colno}"
            ) from e
        meta = _read_sidecar(path + ".meta.json")
        if name is None:
            name = meta.get("name") or os.path.splitext(os.path.basename(path))[0]
        try:
            return cls(
                data,
                name=name,
                source=meta.get("source") or os.path.abspath(path),
                format=meta.get("format") or format,
                warnings=list(meta.get("warnings") or [])
                + [f"duplicate class {k!r} in {path} merged" for k in dict.fromkeys(duplicates)],
                metadata=dict(meta.get("metadata") or {}),
            )
        except AttributeSetError as e:
            msg = str(e)
            if path not in msg:
                msg = f"{path}: {msg}"
            raise AttributeSetError(msg) from None

    # ------------------------------------------------------------------ save
    def to_dict(self) -> OrderedDict[str, list[str]]:
        """The plain ``{class: [attribute, ...]}`` mapping (a copy)."""
        return OrderedDict((c, list(a)) for c, a in self.attributes.items())

    def to_json(self, path: str | os.PathLike, *, with_meta: bool = True) -> None:
        """Write the DCLIP/LaZSL JSON file (and, if there is anything to say, a
        ``<file>.meta.json`` sidecar with name, source, format, warnings, metadata)."""
        path = os.fspath(path)
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=4, ensure_ascii=False)
            f.write("\n")
        if with_meta and (self.warnings or self.metadata or self.format != "descriptors"):
            with open(path + ".meta.json", "w", encoding="utf-8") as f:
                json.dump(self.meta_dict(), f, indent=2, ensure_ascii=False)

    def meta_dict(self) -> dict:
        """Provenance as a JSON-serialisable dict (no attributes)."""
        return {
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "hash": self.content_hash,
            "warnings": list(self.warnings),
            "metadata": dict(self.metadata),
        }

    # ------------------------------------------------------------- queries
    @property
    def classes(self) -> list[str]:
        """Class names in order (the order of logits)."""
        return list(self.attributes.keys())

    def __len__(self) -> int:
        return len(self.attributes)

    def __getitem__(self, cls_name: str) -> list[str]:
        return self.attributes[cls_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributes)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of ``{class: [attribute, ...]}`` (order
        included) and the format; identifies the content whatever the name."""
        payload = json.dumps(
            {"format": self.format, "attributes": list(self.attributes.items())},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def empty_classes(self) -> list[str]:
        """Classes whose attribute list is empty."""
        return [c for c, a in self.attributes.items() if not a]

    def max_attributes(self) -> int:
        """Largest number of attributes of one class (at least 1)."""
        return max(1, max(len(a) for a in self.attributes.values()))

    # ------------------------------------------------------------- editing
    def replace(self, **changes: Any) -> AttributeSet:
        """A copy with some fields changed (like :func:`dataclasses.replace`).

        ``changes`` are any of ``attributes``, ``name``, ``source``, ``format``,
        ``warnings``, ``metadata``; the others are copied (lists and dicts are new
        objects). When ``attributes`` change and ``warnings`` are not given, the
        "class(es) with no attribute" note is recomputed for the new classes.

        Raises:
            TypeError: an unknown field; AttributeSetError: invalid new content.
        """
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"AttributeSet has no field(s) {sorted(unknown)}")
        warnings = list(self.warnings)
        if "attributes" in changes and "warnings" not in changes:
            warnings = [w for w in warnings if not w.startswith(_EMPTY_NOTE)]
        current = dict(
            attributes=self.to_dict(),
            name=self.name,
            source=self.source,
            format=self.format,
            warnings=warnings,
            metadata=dict(self.metadata),
        )
        current.update(changes)
        return AttributeSet(**current)

    def with_classes(self, classes: Sequence[str]) -> AttributeSet:
        """A new set restricted to (and ordered as) ``classes``; names are matched
        with :func:`class_key`. Raises :class:`AttributeSetError` listing any class
        the set lacks."""
        index = {class_key(c): c for c in self.attributes}
        missing = [c for c in classes if class_key(c) not in index]
        if missing:
            raise AttributeSetError(
                f"attribute set {self.name or ''} lacks {len(missing)} class(es): "
                + ", ".join(repr(m) for m in missing)
            )
        return self.replace(
            attributes=OrderedDict(
                (index[class_key(c)], list(self.attributes[index[class_key(c)]])) for c in classes
            ),
            warnings=list(self.warnings),
        )

    def set_class(self, cls_name: str, attributes: Sequence[str]) -> AttributeSet:
        """A new set with one class's attributes replaced (or the class appended)."""
        d = self.to_dict()
        index = {class_key(c): c for c in d}
        d[index.get(class_key(cls_name), _clean_name(cls_name))] = list(attributes)
        return self.replace(attributes=d)

    def merge(self, other: AttributeSet) -> AttributeSet:
        """A new set with the classes of both; shared classes get the union of
        their attributes (this set's first)."""
        d = self.to_dict()
        index = {class_key(c): c for c in d}
        for c, attrs in other.attributes.items():
            k = class_key(c)
            if k in index:
                for a in attrs:
                    if a not in d[index[k]]:
                        d[index[k]].append(a)
            else:
                d[c] = list(attrs)
                index[k] = c
        warnings = [w for w in self.warnings + other.warnings if not w.startswith(_EMPTY_NOTE)]
        return self.replace(attributes=d, warnings=warnings)

    def validate_classes(self, classes: Iterable[str]) -> None:
        """Check that every class in ``classes`` (e.g. a label field's distinct
        values) is in this set, matched with :func:`class_key`.

        Raises:
            AttributeSetError: listing every missing class.
        """
        have = {class_key(c) for c in self.attributes}
        missing = sorted({c for c in classes if c is not None and class_key(c) not in have})
        if missing:
            raise AttributeSetError(
                f"attribute set {self.name or ''} has no attributes for {len(missing)} class(es) "
                f"of the label field: "
                + ", ".join(repr(m) for m in missing)
                + " (add them to the set, or restrict the run to the set's classes)"
            )

    def resolve(self, label: str | None) -> str | None:
        """The set's own spelling of ``label`` (matched with :func:`class_key`), or None."""
        if label is None:
            return None
        if label in self.attributes:
            return label
        for c in self.attributes:
            if class_key(c) == class_key(label):
                return c
        return None
