"""Attribute sets stored with a FiftyOne dataset.

An imported attribute set lives in the dataset document itself, under
``dataset.info["lazsl_attribute_sets"][<name>]``, so it is persisted in the
database, travels with clones and exports, and later runs can refer to it by
name. Each record holds the classes (in logit order), their attributes (a list
parallel to the classes, so class names never become database keys), source,
format, warnings, metadata (as a JSON string, whatever its keys) and the
content hash, which is checked again on load.

Also here: :func:`resolve_attribute_set` (a stored name, a JSON path or a
published name). :func:`load_dataset` (now in :mod:`fiftyone_lazsl.fo.datasets`)
and :func:`validate_for_field` (now in :mod:`fiftyone_lazsl.fo.fields`) stay
importable from here.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections import OrderedDict
from typing import TYPE_CHECKING


from fiftyone_lazsl.core.attributes import AttributeSet, AttributeSetError, FORMATS
from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attribute_formats import load_attribute_file
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.datasets import dataset_of, load_dataset
from fiftyone_lazsl.fo.fields import validate_for_field

if TYPE_CHECKING:
    import fiftyone as fo
    from fiftyone.core.collections import SampleCollection

__all__ = ["INFO_KEY", "RECORD_VERSION", "validate_set_name", "safe_set_name",
           "save_attribute_set", "list_attribute_sets", "has_attribute_set",
           "load_attribute_set", "delete_attribute_set", "resolve_attribute_set",
           # re-exported (moved)
           "load_dataset", "validate_for_field"]

#: Key of ``dataset.info`` under which attribute sets are stored.
INFO_KEY = "lazsl_attribute_sets"
#: Version of the stored record layout.
RECORD_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


# -------------------------------------------------------------------- names
def validate_set_name(name: str) -> str:
    """Check an attribute-set name: 1-64 characters, letters, digits, ``_``, ``-``,
    starting with a letter or digit.

    Returns:
        the name.

    Raises:
        UserError: the name is invalid.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(
            f"invalid attribute-set name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def safe_set_name(text: str | None) -> str:
    """A valid set name derived from ``text`` (e.g. a file stem): other characters
    become ``_``; ``"attribute_set"`` if nothing is left."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text or "")).strip("_-")[:64]
    return s or "attribute_set"


# ------------------------------------------------------------------ records
def _stored(dataset: fo.Dataset) -> dict:
    sets = (dataset.info or {}).get(INFO_KEY) or {}
    return sets if isinstance(sets, dict) else {}


def _to_record(attribute_set: AttributeSet, name: str) -> dict:
    return {
        "version": RECORD_VERSION,
        "name": name,
        "classes": attribute_set.classes,
        "attributes": [list(attribute_set[c]) for c in attribute_set.classes],
        "source": attribute_set.source,
        "format": attribute_set.format,
        "warnings": list(attribute_set.warnings),
        "metadata_json": json.dumps(attribute_set.metadata, ensure_ascii=False, sort_keys=True),
        "hash": attribute_set.content_hash,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _from_record(record: dict, name: str, dataset_name: str) -> AttributeSet:
    where = f"attribute set {name!r} stored on dataset {dataset_name!r}"
    try:
        classes, attrs = record["classes"], record["attributes"]
        if len(classes) != len(attrs):
            raise ValueError("classes and attributes differ in length")
        aset = AttributeSet(
            OrderedDict(zip(classes, attrs)),
            name=name,
            source=record.get("source"),
            format=record.get("format", "descriptors"),
            warnings=list(record.get("warnings") or []),
            metadata=json.loads(record.get("metadata_json") or "{}"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AttributeSetError(f"{where} is unreadable: {e}") from e
    if record.get("hash") and aset.content_hash != record["hash"]:
        raise AttributeSetError(
            f"{where} is corrupt: content hash {aset.content_hash} differs from the stored "
            f"{record['hash']}; import it again"
        )
    return aset


# --------------------------------------------------------------- public API
def save_attribute_set(dataset: SampleCollection, attribute_set: AttributeSet, name: str | None = None,
                       overwrite: bool = True) -> str:
    """Store an attribute set on a dataset (persisted in the database).

    The dataset is reloaded from the database first, so that attribute sets
    saved meanwhile by other processes are kept.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset` (or a view: its root
            dataset is used).
        attribute_set: the set to store.
        name: the name to store it under; default: ``attribute_set.name`` made
            valid with :func:`safe_set_name`.
        overwrite: whether an existing set of that name may be replaced.

    Returns:
        the name it was stored under.

    Raises:
        UserError: invalid name, or a set of that name exists and ``overwrite``
            is False.
        TypeError: ``attribute_set`` is not an :class:`AttributeSet`.
    """
    if not isinstance(attribute_set, AttributeSet):
        raise TypeError(f"expected an AttributeSet, got {type(attribute_set).__name__}")
    dataset = dataset_of(dataset)
    name = validate_set_name(name if name is not None else safe_set_name(attribute_set.name))
    dataset.reload()
    info = dict(dataset.info or {})
    sets = dict(_stored(dataset))
    if name in sets and not overwrite:
        raise UserError(
            f"dataset {dataset.name!r} already has an attribute set named {name!r}; "
            "choose another name or allow overwriting"
        )
    sets[name] = _to_record(attribute_set, name)
    info[INFO_KEY] = sets
    dataset.info = info  # the setter saves the dataset
    return name


def list_attribute_sets(dataset: SampleCollection) -> list[dict]:
    """The attribute sets stored on a dataset, sorted by name.

    Args:
        dataset: a dataset or view (its root dataset is read).

    Returns:
        one dict per set with ``name``, ``num_classes``, ``num_attributes``,
        ``source``, ``format``, ``hash``, ``num_warnings``, ``warnings`` and
        ``saved_at``.
    """
    out = []
    for name, rec in sorted(_stored(dataset_of(dataset)).items()):
        attrs = rec.get("attributes") or []
        out.append({
            "name": name,
            "num_classes": len(rec.get("classes") or []),
            "num_attributes": sum(len(a) for a in attrs),
            "source": rec.get("source"),
            "format": rec.get("format", "descriptors"),
            "hash": rec.get("hash"),
            "num_warnings": len(rec.get("warnings") or []),
            "warnings": list(rec.get("warnings") or []),
            "saved_at": rec.get("saved_at"),
        })
    return out


def _unknown(dataset: fo.Dataset, name: str) -> UserError:
    names = sorted(_stored(dataset))
    have = ("available: " + ", ".join(names)) if names else "it has no attribute sets (import one first)"
    return UserError(f"dataset {dataset.name!r} has no attribute set named {name!r}; {have}")


def has_attribute_set(dataset: SampleCollection, name: str) -> bool:
    """Whether a set of that name is stored on the dataset (or the view's dataset)."""
    return name in _stored(dataset_of(dataset))


def load_attribute_set(dataset: SampleCollection, name: str) -> AttributeSet:
    """Load an attribute set stored on a dataset.

    Args:
        dataset: a dataset or view (its root dataset is read).
        name: the stored name.

    Returns:
        the :class:`AttributeSet`, classes in their stored order.

    Raises:
        UserError: no set of that name (the message lists the available names).
        AttributeSetError: the stored record is unreadable or its content hash
            does not match.
    """
    dataset = dataset_of(dataset)
    sets = _stored(dataset)
    if name not in sets:
        raise _unknown(dataset, name)
    return _from_record(sets[name], name, dataset.name)


def delete_attribute_set(dataset: SampleCollection, name: str) -> None:
    """Remove an attribute set from a dataset (persisted).

    Raises:
        UserError: no set of that name (the message lists the available names).
    """
    dataset = dataset_of(dataset)
    dataset.reload()
    sets = dict(_stored(dataset))
    if name not in sets:
        raise _unknown(dataset, name)
    del sets[name]
    info = dict(dataset.info or {})
    if sets:
        info[INFO_KEY] = sets
    else:
        info.pop(INFO_KEY, None)
    dataset.info = info


def resolve_attribute_set(spec: str | os.PathLike | AttributeSet,
                          dataset: SampleCollection | None = None, *,
                          format: str | None = None) -> AttributeSet:
    """Turn what a user typed into an attribute set.

    Tried in this order: a set stored on ``dataset`` under that name; a path
    to a JSON file; a published set's name (``"cub"``, see
    :func:`fiftyone_lazsl.core.published.list_published`).

    Args:
        spec: a name, a path, or an :class:`AttributeSet` (returned as is).
        dataset: the dataset (or view) whose stored sets are searched first.
        format: ``"descriptors"``, ``"cupl"``, or ``"auto"``/None (default): for
            a file, its sidecar's format, else
            :func:`~fiftyone_lazsl.core.attribute_formats.detect_format` (CuPL
            sentences vs DCLIP attributes); for a published set, the registry's.
            Ignored for a stored set, which keeps its format.

    Returns:
        the :class:`AttributeSet`.

    Raises:
        UserError: nothing matches (the message says what was tried), or a
            published set cannot be fetched.
        AttributeSetError: the file is malformed.
    """
    if isinstance(spec, AttributeSet):
        return spec
    if format == "auto":
        format = None
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown attribute-set format {format!r}; expected one of "
                        f"{FORMATS + ('auto',)}")
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    if dataset is not None and has_attribute_set(dataset, spec):
        return load_attribute_set(dataset, spec)
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return load_attribute_file(path, format=format or "auto")
    if published.is_published(spec):
        return published.load_published(spec, format=format)
    tried = []
    if dataset is not None:
        ds = dataset_of(dataset)
        names = sorted(_stored(ds))
        tried.append(f"no set of that name on dataset {ds.name!r} ("
                     + (", ".join(names) if names else "none stored") + ")")
    tried.append(f"no file {os.path.abspath(path)}")
    tried.append("not a published set (" + ", ".join(p["name"] for p in published.list_published()) + ")")
    raise UserError(f"cannot find attribute set {spec!r}: " + "; ".join(tried))
