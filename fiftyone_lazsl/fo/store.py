"""Attribute sets stored with a FiftyOne dataset.

Each set lives in FiftyOne's own MongoDB database (the one the dataset is in),
in the ``lazsl_attribute_sets`` collection: one small *header* document per
``(dataset, set name)`` (``_id = "<dataset id>:<name>"``: name, summary, hash,
version) and the record itself, zlib-compressed JSON, in *chunk* documents of
at most :data:`CHUNK_BYTES` each. So

* a set's size is not bounded by MongoDB's 16 MB document limit (the limit is
  :data:`MAX_SET_BYTES` of JSON, refused with one line), and
* writers of different sets never touch the same document: eight processes
  importing eight sets at once all keep theirs. A set is replaced by writing
  the chunks of a new version first and then swapping the header in one atomic
  operation, so a reader sees the old or the new set, never a mix; the old
  version's chunks are deleted afterwards.

Each record holds the classes (in logit order), their attributes (a list
parallel to the classes, so class names never become database keys), source,
format, warnings, metadata (as a JSON string, whatever its keys) and the
content hash, which is checked again on load. Sets are keyed by the dataset's
id, so a new dataset with a deleted one's name starts without sets; a clone
(``dataset.clone()``) does not carry them: copy them with
:func:`copy_attribute_sets`.

Earlier versions kept every set inside the dataset document
(``dataset.info["lazsl_attribute_sets"]``); such sets are moved into the
collection, unchanged, the first time the dataset's sets are read or written.

Also here: :func:`resolve_attribute_set` (a stored name, a JSON path or a
published name). :func:`load_dataset` (now in :mod:`fiftyone_lazsl.fo.datasets`)
and :func:`validate_for_field` (now in :mod:`fiftyone_lazsl.fo.fields`) stay
importable from here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import uuid
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import fiftyone.core.odm.database as fod
from bson import Binary
from pymongo.errors import DuplicateKeyError

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attribute_formats import load_attribute_file
from fiftyone_lazsl.core.attributes import FORMATS, AttributeSet, AttributeSetError
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.datasets import dataset_of, load_dataset
from fiftyone_lazsl.fo.fields import validate_for_field

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

__all__ = [
    "INFO_KEY",
    "RECORD_VERSION",
    "COLLECTION",
    "MAX_SET_BYTES",
    "validate_set_name",
    "safe_set_name",
    "derived_set_name",
    "save_attribute_set",
    "list_attribute_sets",
    "has_attribute_set",
    "load_attribute_set",
    "delete_attribute_set",
    "copy_attribute_sets",
    "resolve_attribute_set",
    # re-exported (moved)
    "load_dataset",
    "validate_for_field",
]

#: Key of ``dataset.info`` under which earlier versions stored attribute sets
#: (read once and moved into :data:`COLLECTION`).
INFO_KEY = "lazsl_attribute_sets"
#: Version of the stored record layout.
RECORD_VERSION = 1
#: The collection of FiftyOne's database holding the sets.
COLLECTION = "lazsl_attribute_sets"
#: Largest compressed piece of a set in one document (bytes), well below
#: MongoDB's 16 MB document limit.
CHUNK_BYTES = 8 << 20
#: Largest set stored, as JSON (bytes): 1 GiB, far beyond any real vocabulary
#: (the 49 MB of a 200-class set with 10 kB attributes is fine).
MAX_SET_BYTES = 1 << 30
#: Most warnings (of at most 1000 characters each) kept in a set's header, which
#: :func:`list_attribute_sets` reads; the record itself keeps them all.
_HEADER_WARNINGS = 200

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


def derived_set_name(parent: str | None, suffix: str) -> str:
    """The name of a set derived from ``parent`` (e.g. the doctor's pruned
    copy, ``suffix="-pruned"``): ``<parent><suffix>`` when that is a valid name;
    when it would be longer than 64 characters, ``parent`` is cut and a short
    digest of the full parent name keeps derived names of different parents
    apart: ``<first characters of parent>-<8 hex digits of SHA-1(parent)><suffix>``,
    64 characters in all. Deterministic: the same parent always gives the same
    name.

    Args:
        parent: the parent set's name (made valid with :func:`safe_set_name`).
        suffix: what to append, letters, digits, ``_`` or ``-`` (at most 40 characters).

    Returns:
        a valid set name (:func:`validate_set_name`).
    """
    base = safe_set_name(parent)
    name = base + suffix
    if len(name) <= 64:
        return validate_set_name(name)
    digest = hashlib.sha1(str(parent).encode("utf-8")).hexdigest()[:8]
    keep = 64 - len(suffix) - len(digest) - 1
    return validate_set_name(f"{base[:keep].rstrip('_-')}-{digest}{suffix}")


# ------------------------------------------------------------------ records
def _collection():
    global _INDEXED
    coll = fod.get_db_conn()[COLLECTION]
    if not _INDEXED:
        coll.create_index([("dataset_id", 1), ("kind", 1)])
        coll.create_index([("set", 1), ("version", 1), ("i", 1)])
        _INDEXED = True
    return coll


_INDEXED = False


def _dataset_id(dataset: fo.Dataset) -> str:
    return str(dataset._doc.id)


def _header_id(dataset: fo.Dataset, name: str) -> str:
    return f"{_dataset_id(dataset)}:{name}"


def _migrate_legacy(dataset: fo.Dataset) -> None:
    """Move the sets an earlier version kept in ``dataset.info`` into the
    collection (records unchanged; a set already in the collection wins), then
    remove them from ``dataset.info``."""
    info = dataset.info or {}
    legacy = info.get(INFO_KEY)
    if not legacy:
        return
    dataset.reload()
    info = dict(dataset.info or {})
    legacy = info.get(INFO_KEY)
    if isinstance(legacy, dict):
        coll = _collection()
        for name, record in legacy.items():
            if not isinstance(record, dict) or coll.find_one(
                {"_id": _header_id(dataset, name)}, {"_id": 1}
            ):
                continue
            _write(dataset, str(name), record, overwrite=False, quiet_exists=True)
    info.pop(INFO_KEY, None)
    dataset.info = info  # the setter saves the dataset


def _headers(dataset: fo.Dataset) -> dict[str, dict]:
    """``{name: header}`` of the sets stored on ``dataset``."""
    _migrate_legacy(dataset)
    coll = _collection()
    return {h["name"]: h for h in coll.find({"kind": "header", "dataset_id": _dataset_id(dataset)})}


def _stored(dataset: fo.Dataset) -> dict[str, dict]:
    return _headers(dataset)


def _encode(record: dict, where: str) -> bytes:
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_SET_BYTES:
        raise UserError(
            f"{where} is too big to store: {len(data) / 2**20:.0f} MB as JSON, "
            f"the most a dataset stores is {MAX_SET_BYTES / 2**20:.0f} MB; split it "
            "or shorten its attributes"
        )
    return zlib.compress(data, 6)


def _write(
    dataset: fo.Dataset, name: str, record: dict, *, overwrite: bool, quiet_exists: bool = False
) -> None:
    """Store ``record`` as set ``name``: chunks of a new version first, then
    the header in one atomic operation, then the replaced version's chunks go."""
    where = f"attribute set {name!r} of dataset {dataset.name!r}"
    blob = _encode(record, where)
    coll = _collection()
    hid = _header_id(dataset, name)
    version = uuid.uuid4().hex
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    for i, piece in enumerate(chunks):
        coll.insert_one(
            {
                "_id": f"{hid}:{version}:{i}",
                "kind": "chunk",
                "set": hid,
                "version": version,
                "i": i,
                "data": Binary(piece),
            }
        )
    attrs = record.get("attributes") or []
    warnings = list(record.get("warnings") or [])
    header = {
        "_id": hid,
        "kind": "header",
        "dataset_id": _dataset_id(dataset),
        "dataset_name": dataset.name,
        "name": name,
        "version": version,
        "n_chunks": len(chunks),
        "bytes": len(blob),
        "num_classes": len(record.get("classes") or []),
        "num_attributes": sum(len(a) for a in attrs if isinstance(a, list)),
        "source": record.get("source"),
        "format": record.get("format", "descriptors"),
        "hash": record.get("hash"),
        "num_warnings": len(warnings),
        "warnings": [str(w)[:1000] for w in warnings[:_HEADER_WARNINGS]],
        "saved_at": record.get("saved_at"),
    }
    try:
        if overwrite:
            old = coll.find_one_and_replace({"_id": hid}, header, upsert=True)
        else:
            coll.insert_one(header)
            old = None
    except DuplicateKeyError:
        coll.delete_many({"set": hid, "version": version})
        if quiet_exists:
            return
        raise UserError(
            f"dataset {dataset.name!r} already has an attribute set named {name!r}; "
            "choose another name or allow overwriting"
        ) from None
    except BaseException:
        coll.delete_many({"set": hid, "version": version})
        raise
    if old is not None:
        coll.delete_many({"set": hid, "version": old.get("version")})


def _read(dataset: fo.Dataset, header: dict) -> dict:
    """The record a header points to."""
    coll = _collection()
    where = f"attribute set {header['name']!r} stored on dataset {dataset.name!r}"
    pieces = list(
        coll.find({"set": header["_id"], "version": header.get("version")}, sort=[("i", 1)])
    )
    if len(pieces) != header.get("n_chunks") or [p["i"] for p in pieces] != list(
        range(len(pieces))
    ):
        raise AttributeSetError(
            f"{where} is incomplete ({len(pieces)} of "
            f"{header.get('n_chunks')} pieces); import it again"
        )
    try:
        record = json.loads(zlib.decompress(b"".join(bytes(p["data"]) for p in pieces)))
    except (zlib.error, ValueError) as e:
        raise AttributeSetError(f"{where} is unreadable: {e}; import it again") from None
    if not isinstance(record, dict):
        raise AttributeSetError(f"{where} is unreadable: not a record; import it again")
    return record


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
def save_attribute_set(
    dataset: SampleCollection,
    attribute_set: AttributeSet,
    name: str | None = None,
    overwrite: bool = True,
) -> str:
    """Store an attribute set on a dataset (persisted in the database).

    Each set is its own group of documents (see the module docstring), so sets
    saved meanwhile by other processes, and concurrent writers of other sets,
    are never affected; a set of the same name is replaced atomically.

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
        UserError: invalid name, a set of that name exists and ``overwrite``
            is False, or the set is larger than :data:`MAX_SET_BYTES` as JSON.
        TypeError: ``attribute_set`` is not an :class:`AttributeSet`.
    """
    if not isinstance(attribute_set, AttributeSet):
        raise TypeError(f"expected an AttributeSet, got {type(attribute_set).__name__}")
    dataset = dataset_of(dataset)
    name = validate_set_name(name if name is not None else safe_set_name(attribute_set.name))
    _migrate_legacy(dataset)
    _write(dataset, name, _to_record(attribute_set, name), overwrite=overwrite)
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
    for name, head in sorted(_headers(dataset_of(dataset)).items()):
        out.append(
            {
                "name": name,
                "num_classes": head.get("num_classes", 0),
                "num_attributes": head.get("num_attributes", 0),
                "source": head.get("source"),
                "format": head.get("format", "descriptors"),
                "hash": head.get("hash"),
                "num_warnings": head.get("num_warnings", 0),
                "warnings": list(head.get("warnings") or []),
                "saved_at": head.get("saved_at"),
            }
        )
    return out


def _unknown(dataset: fo.Dataset, name: str) -> UserError:
    names = sorted(_stored(dataset))
    have = (
        ("available: " + ", ".join(names))
        if names
        else "it has no attribute sets (import one first)"
    )
    return UserError(f"dataset {dataset.name!r} has no attribute set named {name!r}; {have}")


def has_attribute_set(dataset: SampleCollection, name: str) -> bool:
    """Whether a set of that name is stored on the dataset (or the view's dataset)."""
    return name in _headers(dataset_of(dataset))


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
    return _load(dataset, name, _headers(dataset))


def _load(dataset: fo.Dataset, name: str, sets: dict) -> AttributeSet:
    """:func:`load_attribute_set` on a dataset whose set headers were read (``sets``)."""
    if name not in sets:
        raise _unknown(dataset, name)
    for _ in range(3):
        try:
            return _from_record(_read(dataset, sets[name]), name, dataset.name)
        except AttributeSetError:
            # replaced meanwhile by another writer (its old pieces deleted): read
            # the new header; a set that stays unreadable is reported
            fresh = _headers(dataset).get(name)
            if fresh is None:
                raise _unknown(dataset, name) from None
            if fresh.get("version") == sets[name].get("version"):
                raise
            sets[name] = fresh
    return _from_record(_read(dataset, sets[name]), name, dataset.name)


def delete_attribute_set(dataset: SampleCollection, name: str) -> None:
    """Remove an attribute set from a dataset (persisted).

    Raises:
        UserError: no set of that name (the message lists the available names).
    """
    dataset = dataset_of(dataset)
    head = _headers(dataset).get(name)
    if head is None:
        raise _unknown(dataset, name)
    coll = _collection()
    if coll.delete_one({"_id": head["_id"], "version": head.get("version")}).deleted_count:
        coll.delete_many({"set": head["_id"], "version": head.get("version")})


def copy_attribute_sets(
    source: SampleCollection,
    dest: SampleCollection,
    names: list[str] | None = None,
    overwrite: bool = True,
) -> list[str]:
    """Copy stored attribute sets from one dataset to another (e.g. to a
    ``dataset.clone()``, which does not carry them).

    Args:
        source, dest: datasets or views (their root datasets are used).
        names: the sets to copy (default: all of ``source``'s).
        overwrite: whether sets of ``dest`` with the same names may be replaced.

    Returns:
        the names copied.

    Raises:
        UserError: a name is not stored on ``source``, or exists on ``dest``
            and ``overwrite`` is False.
    """
    source, dest = dataset_of(source), dataset_of(dest)
    heads = _headers(source)
    names = sorted(heads) if names is None else list(names)
    for name in names:
        if name not in heads:
            raise _unknown(source, name)
    _migrate_legacy(dest)
    for name in names:
        _write(dest, name, _read(source, heads[name]), overwrite=overwrite)
    return names


def resolve_attribute_set(
    spec: str | os.PathLike | AttributeSet,
    dataset: SampleCollection | None = None,
    *,
    format: str | None = None,
) -> AttributeSet:
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
        raise UserError(
            f"unknown attribute-set format {format!r}; expected one of {FORMATS + ('auto',)}"
        )
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    ds = dataset_of(dataset) if dataset is not None else None
    heads = _headers(ds) if ds is not None else {}
    if spec in heads:
        return _load(ds, spec, heads)
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return load_attribute_file(path, format=format or "auto")
    if published.is_published(spec):
        return published.load_published(spec, format=format)
    tried = []
    if ds is not None:
        names = sorted(_stored(ds))
        tried.append(
            f"no set of that name on dataset {ds.name!r} ("
            + (", ".join(names) if names else "none stored")
            + ")"
        )
    tried.append(f"no file {os.path.abspath(path)}")
    tried.append(
        "not a published set (" + ", ".join(p["name"] for p in published.list_published()) + ")"
    )
    raise UserError(f"cannot find attribute set {spec!r}: " + "; ".join(tried))


def recorded_attribute_set(dataset: Any, record: dict) -> AttributeSet:
    """The attribute set a recorded run used: the set of that name stored on
    ``dataset`` if its content hash matches the record's, else rebuilt from the
    recorded classes and attribute texts under the recorded name (so a pruned
    copy of a published set is ``"<name>-pruned"``).

    Args:
        dataset: the dataset the run is recorded on.
        record: the run's config (:func:`fiftyone_lazsl.fo.runs.get_run_config`).
    """
    name = record.get("attribute_set")
    ds = dataset_of(dataset)
    heads = _headers(ds)
    if name and name in heads:
        s = _load(ds, name, heads)
        if s.content_hash == record.get("attribute_set_hash"):
            return s
    return AttributeSet.from_dict(
        dict(zip(record["classes"], record["attribute_labels"])), name=name or None
    )
