"""Published attribute sets, fetched by name and verified by SHA-256.

The registry (``fiftyone_lazsl/data/published_attribute_sets.json``, package
data, so wheel installs have it too) lists
the GPT-3 descriptor files published with DCLIP (Menon & Vondrick, ICLR 2023)
and LaZSL (ICCV 2025): for each name (``"cub"``, ``"imagenet"``...) the
upstream URL (pinned to a commit), the SHA-256 of the file, its number of
classes, licence and citation. The repository carries no copy of the files.

:func:`fetch_published` returns the path of a verified copy, looked up in this
order:

1. the cache, ``$FIFTYONE_LAZSL_CACHE/attribute_sets/`` (or
   ``~/.cache/fiftyone-lazsl/attribute_sets/``);
2. a file ``<name>.json`` or ``descriptors_<name>.json`` in ``local_dirs`` or in
   the folders of ``$FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS`` (``os.pathsep``
   separated) - for machines without internet access;
3. a download of the upstream URL, verified and then stored in the cache.

A copy whose SHA-256 differs from the registry's is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable

from fiftyone_lazsl import env
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.cache import cache_root
from fiftyone_lazsl.errors import HashMismatchError, UserError

#: Environment variable: folders (``os.pathsep`` separated) holding local copies.
DIRS_ENV = "FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS"
#: Environment variable: root of the fiftyone-lazsl cache.
#: Seconds to wait for the upstream server before giving up.
DOWNLOAD_TIMEOUT = 15.0
#: Largest file accepted from a download (the biggest set is ~250 kB).
MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024

#: Where the registry is read from: package data, present in checkouts, editable
#: installs and wheels alike.
REGISTRY_PATH = (
    pathlib.Path(__file__).resolve().parents[1] / "data" / "published_attribute_sets.json"
)


def load_registry() -> dict:
    """The registry of published attribute sets.

    Returns:
        ``{name: entry}`` where each entry has ``url``, ``sha256``,
        ``num_classes``, ``empty_classes``, ``format``, ``license``,
        ``citation``, ``title``, ``origin`` and ``size_bytes``.

    Raises:
        UserError: the registry file is missing or malformed.
    """
    path = pathlib.Path(REGISTRY_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        sets = data["sets"]
        if not isinstance(sets, dict):
            raise TypeError("'sets' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the published attribute-set registry {path}: {e}") from e
    return sets


def list_published() -> list[dict]:
    """The published attribute sets, in registry order.

    Returns:
        one dict per set: ``name`` plus the registry entry's fields.
    """
    return [{"name": name, **entry} for name, entry in load_registry().items()]


def get_published_entry(name: str) -> dict:
    """The registry entry of one published set.

    Raises:
        UserError: ``name`` is not in the registry (the message lists the names).
    """
    registry = load_registry()
    key = str(name).strip().lower()
    if key not in registry:
        raise UserError(
            f"unknown published attribute set {name!r}; published sets: " + ", ".join(registry)
        )
    return {"name": key, **registry[key]}


def is_published(name: str) -> bool:
    """Whether ``name`` is a published set's name (case-insensitive)."""
    try:
        return str(name).strip().lower() in load_registry()
    except UserError:
        return False


def default_cache_dir() -> pathlib.Path:
    """Folder where verified published sets are cached:
    ``$FIFTYONE_LAZSL_CACHE/attribute_sets`` or
    ``~/.cache/fiftyone-lazsl/attribute_sets``."""
    return cache_root("attribute_sets")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _env_dirs() -> list[str]:
    return env.get(DIRS_ENV)


def _candidates(name: str, dirs: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    out = []
    for d in dirs:
        for fname in (f"{name}.json", f"descriptors_{name}.json"):
            p = pathlib.Path(d).expanduser() / fname
            if p.is_file():
                out.append(p)
    return out


def find_local_copy(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    local_dirs: Iterable[str | os.PathLike] | None = None,
) -> pathlib.Path | None:
    """A verified copy already on this machine (cache first, then local folders),
    without downloading anything.

    Args:
        name: a published set's name.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        local_dirs: extra folders searched before ``$FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS``.

    Returns:
        the path, or None if there is no copy.

    Raises:
        UserError: unknown name.
        HashMismatchError: a local-folder file of that name exists but none has
            the registered hash (the message names each file with expected and
            actual hash). Stale cached copies are ignored instead.
    """
    entry = get_published_entry(name)
    name, expected = entry["name"], entry["sha256"].lower()
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{name}.json"
    if cached.is_file() and sha256_file(cached) == expected:
        return cached
    mismatches = []
    for p in _candidates(name, [*(local_dirs or ()), *_env_dirs()]):
        actual = sha256_file(p)
        if actual == expected:
            return p
        mismatches.append((p, actual))
    if mismatches:
        raise HashMismatchError(
            f"local copy of published attribute set {name!r} has the wrong SHA-256 "
            + "; ".join(f"{p}: expected {expected}, got {a}" for p, a in mismatches)
            + f" (replace it with the file from {entry['url']})"
        )
    return None


def _download(url: str, dest: pathlib.Path, expected: str, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "fiftyone-lazsl"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = resp.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise HashMismatchError(f"download of {url} is larger than {MAX_DOWNLOAD_BYTES} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise HashMismatchError(
            f"downloaded file {url} has the wrong SHA-256: expected {expected}, got {actual}; "
            "it was not stored (the upstream file may have changed)"
        )
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fetch_published(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    local_dirs: Iterable[str | os.PathLike] | None = None,
    *,
    download: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> pathlib.Path:
    """Path of a verified copy of a published attribute set.

    Looks in the cache, then in ``local_dirs`` and ``$FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS``
    (files ``<name>.json`` or ``descriptors_<name>.json``), then downloads the
    registered URL, checks its SHA-256 and stores it in the cache.

    Args:
        name: a published set's name (see :func:`list_published`).
        cache_dir: cache folder (default :func:`default_cache_dir`).
        local_dirs: folders holding local copies, searched before the env var's.
        download: whether a download may be attempted.
        timeout: seconds to wait for the server.

    Returns:
        the path of a file whose SHA-256 equals the registry's.

    Raises:
        UserError: unknown name, or no local copy and the download failed
            (offline); the message says how to supply the file.
        HashMismatchError: a local copy or the download has the wrong hash (the
            message names the file, the expected and the actual hash).
    """
    entry = get_published_entry(name)
    name, expected, url = entry["name"], entry["sha256"].lower(), entry["url"]
    found = find_local_copy(name, cache_dir=cache_dir, local_dirs=local_dirs)
    if found is not None:
        return found
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / f"{name}.json"
    put = (
        f"(SHA-256 {expected}) and put it, as {name}.json or descriptors_{name}.json, in a "
        f"folder listed in ${DIRS_ENV} (or pass local_dirs=, or copy it to {dest})"
    )
    if not download:
        raise UserError(
            f"published attribute set {name!r} is not available locally; download {url} {put}"
        )
    try:
        _download(url, dest, expected, timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"cannot download published attribute set {name!r} from {url} ({reason}); "
            f"without internet access, download that file on another machine {put}"
        ) from e
    return dest


def load_published(name: str, *, format: str | None = None, **kwargs) -> AttributeSet:
    """Load a published attribute set, fetching a verified copy if needed.

    Args:
        name: a published set's name (see :func:`list_published`).
        format: override the registered format (``"descriptors"`` or ``"cupl"``).
        **kwargs: passed to :func:`fetch_published` (``cache_dir``,
            ``local_dirs``, ``download``, ``timeout``).

    Returns:
        an :class:`AttributeSet` named after the registry entry, with the
        upstream URL as ``source`` and ``metadata["published"]`` holding the
        name, SHA-256, licence and citation.

    Raises:
        UserError, HashMismatchError: see :func:`fetch_published`.
        AttributeSetError: the file cannot be parsed.
    """
    entry = get_published_entry(name)
    path = fetch_published(entry["name"], **kwargs)
    loaded = AttributeSet.from_json(path, name=entry["name"])
    return loaded.replace(
        source=entry["url"],
        format=format or entry.get("format", "descriptors"),
        metadata={
            "published": {
                "name": entry["name"],
                "sha256": entry["sha256"],
                "license": entry.get("license"),
                "citation": entry.get("citation"),
            }
        },
    )
