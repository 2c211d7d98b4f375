"""Feature store: keep each sample's view embeddings so attribute sets and
LaZSL parameters can be changed without re-encoding images.

What is stored, per sample: the ``[1 + N, D]`` unit view embeddings (global
view first, then the ``N`` crops; float16 by default, float32 on request), the
``[N]`` float32 crop-to-global cosines that the vision selection thresholds
(computed before rounding, so float16 storage selects exactly the crops a fresh
run selects: the selection is a hard threshold), the ``[N, 4]`` int64 pixel
crop boxes in the decoded image, the decoded and the original image size and
the decode scale. Everything that determines those
numbers forms the entry's *fingerprint* (:func:`feature_spec`): the model
(architecture, weights identity = :attr:`LoadedModel.weights_id`), its
preprocessing (input size, mean, std, resize mode, interpolation), the crop
backend and the visual-set parameters (``n_crops``, ``crop_scale``, ``seed``).
Entries are keyed by ``(fingerprint, sample key)``; the sample key is the crop
seed key, i.e. the image file path in FiftyOne runs.

Format (a directory, default ``<cache root>/features``, or
``$FIFTYONE_LAZSL_FEATURES``)::

    index.sqlite            SQLite in WAL mode: fingerprints, entries, writers
    shards/<fp>/<writer>.bin append-only raw arrays, one file per writer
                            (per entry: embeddings in the store dtype, then
                            the N float32 crop-to-global cosines)

A writer appends an entry's bytes to its *own* shard file, flushes and
``fsync``s them, and only then inserts the index row (with offset, length and
a CRC-32 of the bytes) in one SQLite transaction. So:

* a process killed at any moment (SIGKILL) leaves at most unreferenced bytes at
  the end of its shard: no index row points to a half-written entry, and
  SQLite's journal makes the row insert atomic;
* concurrent writers never share a file; SQLite serialises their index
  transactions (``busy_timeout``), so nothing is corrupted;
* readers look entries up by key in the index (B-tree, millions of rows) and
  read exactly ``nbytes`` at ``offset`` (random access), verifying the CRC;
* an entry whose image file changed since it was stored (size or mtime in
  nanoseconds, or its SHA-256 with ``check="hash"``) is not served.

:meth:`FeatureStore.prune` deletes entries (all, one fingerprint, entries whose
file is missing or changed) and rewrites shards to drop dead bytes;
:meth:`FeatureStore.info` reports the size.

Only NumPy and the standard library (``sqlite3``) are needed; see
``docs/feature-store.md`` ("Why this format") for why this format rather than
Zarr or Lance.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fiftyone_lazsl import env
from fiftyone_lazsl.core.cache import cache_root
from fiftyone_lazsl.core.config import CROP_METHODS
from fiftyone_lazsl.core.scoring import crop_global_similarity
from fiftyone_lazsl.errors import ConfigError

__all__ = [
    "FeatureStore",
    "FeatureEntry",
    "feature_spec",
    "fingerprint",
    "default_store_path",
    "StoringClassifier",
    "predict_entries",
    "FEATURE_DTYPES",
    "STORE_ENV",
]

#: Environment variable naming the store directory.
STORE_ENV = "FIFTYONE_LAZSL_FEATURES"
#: Storage precisions.
FEATURE_DTYPES = ("float16", "float32")
#: Version of the on-disk layout (part of every fingerprint).
FORMAT_VERSION = 2
#: Ways to detect a changed image file.
CHECKS = ("stat", "hash", "none")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS writers (
    shard TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    fingerprint TEXT NOT NULL, key TEXT NOT NULL,
    shard TEXT NOT NULL, offset INTEGER NOT NULL, nbytes INTEGER NOT NULL, crc INTEGER NOT NULL,
    n_views INTEGER NOT NULL, dim INTEGER NOT NULL, dtype TEXT NOT NULL,
    boxes BLOB NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    orig_width INTEGER NOT NULL, orig_height INTEGER NOT NULL, scale REAL NOT NULL,
    file_size INTEGER, file_mtime_ns INTEGER, file_sha256 TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, key));
CREATE INDEX IF NOT EXISTS entries_shard ON entries (shard);
"""


def default_store_path() -> str:
    """``$FIFTYONE_LAZSL_FEATURES``, else ``<cache root>/features`` (cache root:
    ``$FIFTYONE_LAZSL_CACHE`` or ``~/.cache/fiftyone-lazsl``)."""
    return env.get(STORE_ENV) or os.fspath(cache_root("features"))


def feature_spec(classifier: Any) -> dict:
    """Everything that determines a classifier's view embeddings and boxes.

    Args:
        classifier: a :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier`.

    Returns:
        a JSON-serialisable dict: model name, ``weights_id`` (random weights get
        a per-loaded-model token, so their features are only reused with the
        same loaded model object), preprocessing, crop backend, ``n_crops``,
        ``crop_scale``, ``seed`` and the format version.
    """
    m = classifier.model
    wid = m.weights_id
    if wid is None:
        # Random weights differ per loaded model object: key the store to it.
        token = getattr(m, "random_weights_token", None)
        if token is None:
            token = uuid.uuid4().hex
            m.random_weights_token = token
        wid = f"random:{token}"
    return {
        "format": FORMAT_VERSION,
        "model": m.name,
        "weights_id": wid,
        "image_size": int(m.image_size),
        "mean": [round(float(x), 8) for x in m.mean],
        "std": [round(float(x), 8) for x in m.std],
        "resize_mode": m.resize_mode,
        "interpolation": m.interpolation,
        # "pil" and "device" make the same views: one fingerprint for both
        "crop_backend": {"device": "pil"}.get(
            getattr(classifier, "crop_backend", "tensor"),
            getattr(classifier, "crop_backend", "tensor"),
        ),
        "n_crops": int(classifier.n_crops),
        "crop_scale": [float(x) for x in np.atleast_1d(classifier.crop_scale)],
        "seed": int(classifier.seed),
    }


def fingerprint(spec: dict) -> str:
    """32 hex digits of SHA-256 over the canonical JSON of ``spec``."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:32]


@dataclass
class FeatureEntry:
    """One sample's stored visual set.

    Attributes:
        key: the sample key (crop seed key; the file path in FiftyOne runs).
        features: ``[1 + N, D]`` float32 (as read; stored float16 or float32)
            unit view embeddings, global view first.
        boxes: ``[N, 4]`` int64 pixel boxes ``(x, y, w, h)`` in the decoded image.
        image_size: decoded ``(width, height)`` in pixels.
        original_size: original ``(width, height)`` (differs when downscaled on decode).
        scale: decoded / original size.
        crop_global: ``[N]`` float32 cosines ``x_n . g`` of the unrounded
            embeddings (what the vision selection thresholds); computed from
            ``features`` when None on write.
    """

    key: str
    features: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    scale: float = 1.0
    crop_global: np.ndarray | None = None


def _file_signature(path: str, check: str) -> tuple[int | None, int | None, str | None]:
    """``(size, mtime_ns, sha256)`` of ``path`` (None where unknown / not asked)."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None, None
    digest = None
    if check == "hash":
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    return int(st.st_size), int(st.st_mtime_ns), digest


#: A fingerprint folder's name (:func:`fingerprint`) and a shard file's name
#: (``<pid>-<12 hex>.bin``, :meth:`FeatureStore._open_shard`).
_FP_RE = re.compile(r"[0-9a-f]{32}")
_SHARD_RE = re.compile(r"[0-9]+-[0-9a-f]{12}\.bin")


def _writable(path: str) -> bool:
    """Whether files can be created in ``path`` (a read-only mount says no
    even to root, which ``os.access`` would not tell)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=path)
    except OSError:
        return False
    os.close(fd)
    os.remove(tmp)
    return True


def _connect_readonly(index: str) -> sqlite3.Connection:
    """The index opened read-only (``mode=ro``; on a read-only mount where
    SQLite cannot create its WAL shared-memory file, ``immutable=1``)."""
    from urllib.parse import quote

    uri = "file:" + quote(index)
    for opts in ("?mode=ro", "?mode=ro&immutable=1"):
        db = sqlite3.connect(
            uri + opts, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("SELECT COUNT(*) FROM entries").fetchone()
            return db
        except sqlite3.OperationalError as e:
            db.close()
            err = e
            if "no such table" in str(e):
                break
    raise sqlite3.DatabaseError(str(err))


def _decode_entry(
    k: str,
    data: bytes,
    nv: Any,
    dim: Any,
    dtype: Any,
    boxes: Any,
    w: Any,
    h: Any,
    ow: Any,
    oh: Any,
    scale: Any,
) -> FeatureEntry:
    """A :class:`FeatureEntry` from an index row and its bytes.

    Raises:
        ValueError, TypeError: a row whose ``dtype``, ``n_views``, ``dim`` or
            ``boxes`` do not describe the bytes (a corrupt index).
    """
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype {dtype!r}")
    nv, dim = int(nv), int(dim)
    if nv < 1 or dim < 1:
        raise ValueError(f"shape [{nv}, {dim}]")
    fbytes = nv * dim * np.dtype(dtype).itemsize
    if fbytes > len(data):
        raise ValueError(f"shape [{nv}, {dim}] {dtype} needs {fbytes} bytes, {len(data)} stored")
    feats = np.frombuffer(data[:fbytes], dtype=dtype).reshape(nv, dim).astype(np.float32)
    r = (
        np.frombuffer(data[fbytes:], dtype=np.float32).copy()
        if len(data) == fbytes + 4 * (nv - 1)
        else None
    )
    if not isinstance(boxes, (bytes, bytearray, memoryview)) or len(boxes) != 32 * (nv - 1):
        raise ValueError(f"boxes: expected {nv - 1} boxes of 4 int64")
    return FeatureEntry(
        key=k,
        features=feats,
        boxes=np.frombuffer(boxes, dtype=np.int64).reshape(-1, 4).copy(),
        image_size=(int(w), int(h)),
        original_size=(int(ow), int(oh)),
        scale=float(scale),
        crop_global=r,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FeatureStore:
    """A directory of stored view embeddings (see the module docstring).

    Args:
        path: the store directory (created on first use); default
            :func:`default_store_path`.
        dtype: storage precision for new entries, ``"float16"`` (default; 2 bytes
            per number) or ``"float32"``.
        check: how a changed image file is detected: ``"stat"`` (size and
            mtime in ns, default), ``"hash"`` (SHA-256 of the file; reads it) or
            ``"none"`` (keys are not files).

        create: create the store when there is none at ``path`` (False: a
            :class:`ConfigError` says there is no store there; read-only
            commands such as ``features info`` create nothing).

    A store the process cannot write (a read-only mount or folder) is opened
    read-only: look-ups work, writes raise :class:`ConfigError`.

    Raises:
        ConfigError: unknown ``dtype`` or ``check``; a path that is a file; no
            store at ``path`` with ``create=False``; an ``index.sqlite`` that
            is not a SQLite database or has not the store's tables.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        dtype: str = "float16",
        check: str = "stat",
        create: bool = True,
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ConfigError(
                f"feature dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}"
            )
        if check not in CHECKS:
            raise ConfigError(f"feature check must be one of {', '.join(CHECKS)}, got {check!r}")
        self.path = os.path.abspath(os.fspath(path) if path is not None else default_store_path())
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"feature store path {self.path} is a file, not a directory")
        self.dtype, self.check = dtype, check
        index = os.path.join(self.path, "index.sqlite")
        if not create and not os.path.isfile(index):
            raise ConfigError(
                f"there is no feature store at {self.path} (no index.sqlite); "
                "give the folder a run stored features in (--store)"
            )
        self.readonly = os.path.isfile(index) and not _writable(self.path)
        if not self.readonly:
            os.makedirs(os.path.join(self.path, "shards"), exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"feature store {self.path}: index.sqlite is not a feature-store "
                f"index ({e}); point --store at another folder, or move it "
                "away to start a new store"
            ) from None
        self._shard: str | None = None
        self._fh = None
        self._readers: dict[str, Any] = {}

    # ------------------------------------------------------------ plumbing
    def _connect(self) -> sqlite3.Connection:
        index = os.path.join(self.path, "index.sqlite")
        if self.readonly:
            return _connect_readonly(index)
        db = sqlite3.connect(index, timeout=60.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with self._tx(db):
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, et, ev, tb) -> None:
            self.db.execute("COMMIT" if et is None else "ROLLBACK")

    def _tx(self, db: sqlite3.Connection | None = None) -> FeatureStore._Tx:
        return FeatureStore._Tx(db or self._db)

    def close(self) -> None:
        """Close the shard and the index (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for f in self._readers.values():
            f.close()
        self._readers.clear()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """``{"path", "dtype", "check"}`` (what a run record names)."""
        return {"path": self.path, "dtype": self.dtype, "check": self.check}

    # ------------------------------------------------------------- writing
    def _check_writable(self) -> None:
        if self.readonly:
            raise ConfigError(
                f"feature store {self.path} is read-only (a read-only folder or "
                "mount): it can be read, not written"
            )

    def register(self, spec: dict) -> str:
        """Record a fingerprint's spec; returns the fingerprint (on a
        read-only store: only if it is already recorded)."""
        fp = fingerprint(spec)
        if self.readonly:
            if self.spec(fp) is None:
                self._check_writable()
            return fp
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?)",
                (fp, json.dumps(spec, sort_keys=True), time.time()),
            )
        return fp

    def _open_shard(self, fp: str) -> None:
        if self._shard is not None and self._shard.startswith(fp + "/"):
            return
        if self._fh is not None:
            self._fh.close()
        os.makedirs(os.path.join(self.path, "shards", fp), exist_ok=True)
        self._shard = f"{fp}/{os.getpid()}-{uuid.uuid4().hex[:12]}.bin"
        with self._tx():
            self._db.execute(
                "INSERT INTO writers VALUES (?, ?, ?, ?)",
                (self._shard, os.getpid(), os.uname().nodename, time.time()),
            )
        self._fh = open(os.path.join(self.path, "shards", self._shard), "ab")

    def put_many(self, fp: str, entries: Sequence[FeatureEntry]) -> int:
        """Store entries under fingerprint ``fp`` (replacing older ones of the
        same keys): bytes appended and fsynced first, index rows committed
        after, in one transaction. Returns the bytes appended."""
        if not entries:
            return 0
        self._check_writable()
        self._open_shard(fp)
        fh = self._fh
        fh.seek(0, os.SEEK_END)
        offset = fh.tell()
        rows, total = [], 0
        for e in entries:
            arr = np.ascontiguousarray(np.asarray(e.features, dtype=self.dtype))
            if arr.ndim != 2:
                raise ValueError(f"features of {e.key} must be [1+N, D], got shape {arr.shape}")
            r = e.crop_global
            if r is None:
                f32 = np.asarray(e.features, dtype=np.float32)
                r = f32[1:] @ f32[0]
            r = np.ascontiguousarray(np.asarray(r, dtype=np.float32).reshape(-1))
            if r.shape[0] != arr.shape[0] - 1:
                raise ValueError(
                    f"crop_global of {e.key} must have {arr.shape[0] - 1} values, got {r.shape[0]}"
                )
            data = arr.tobytes() + r.tobytes()
            fh.write(data)
            size, mtime, sha = (
                _file_signature(e.key, self.check) if self.check != "none" else (None, None, None)
            )
            boxes = np.ascontiguousarray(np.asarray(e.boxes, dtype=np.int64).reshape(-1, 4))
            rows.append(
                (
                    fp,
                    e.key,
                    self._shard,
                    offset,
                    len(data),
                    zlib.crc32(data),
                    arr.shape[0],
                    arr.shape[1],
                    self.dtype,
                    boxes.tobytes(),
                    int(e.image_size[0]),
                    int(e.image_size[1]),
                    int(e.original_size[0]),
                    int(e.original_size[1]),
                    float(e.scale),
                    size,
                    mtime,
                    sha,
                    time.time(),
                )
            )
            offset += len(data)
            total += len(data)
        fh.flush()
        os.fsync(fh.fileno())
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
        return total

    # ------------------------------------------------------------- reading
    def _read(self, shard: str, offset: int, nbytes: int) -> bytes:
        f = self._readers.get(shard)
        if f is None:
            f = self._readers[shard] = open(os.path.join(self.path, "shards", shard), "rb")
        f.seek(offset)
        return f.read(nbytes)

    def get_many(
        self, fp: str, keys: Iterable[str]
    ) -> tuple[dict[str, FeatureEntry], dict[str, str]]:
        """Look up keys under fingerprint ``fp``.

        Returns:
            ``(found, missing)``: ``{key: FeatureEntry}`` for valid entries and
            ``{key: reason}`` for the others (not stored, image file changed or
            missing, unreadable or corrupted bytes).
        """
        found: dict[str, FeatureEntry] = {}
        missing: dict[str, str] = {}
        keys = list(keys)
        rows: dict[str, tuple] = {}
        for s in range(0, len(keys), 500):
            chunk = keys[s : s + 500]
            q = (
                "SELECT key, shard, offset, nbytes, crc, n_views, dim, dtype, boxes, width, height,"
                " orig_width, orig_height, scale, file_size, file_mtime_ns, file_sha256"
                f" FROM entries WHERE fingerprint = ? AND key IN ({','.join('?' * len(chunk))})"
            )
            for r in self._db.execute(q, [fp, *chunk]):
                rows[r[0]] = r
        for k in keys:
            r = rows.get(k)
            if r is None:
                missing[k] = "no stored features for this model and visual set"
                continue
            (
                _,
                shard,
                offset,
                nbytes,
                crc,
                nv,
                dim,
                dtype,
                boxes,
                w,
                h,
                ow,
                oh,
                scale,
                fsize,
                fmtime,
                fsha,
            ) = r
            if self.check != "none" and fsize is not None:
                size, mtime, sha = _file_signature(
                    k, "hash" if (self.check == "hash" and fsha) else "stat"
                )
                if size is None:
                    missing[k] = "image file is missing"
                    continue
                if (size, mtime) != (fsize, fmtime) or (fsha and sha != fsha):
                    missing[k] = "image file changed since its features were stored"
                    continue
            try:
                data = self._read(shard, offset, nbytes)
            except OSError as e:
                missing[k] = f"stored features unreadable ({e.__class__.__name__})"
                continue
            if len(data) != nbytes or zlib.crc32(data) != crc:
                missing[k] = "stored features corrupted (checksum mismatch)"
                continue
            try:
                found[k] = _decode_entry(k, data, nv, dim, dtype, boxes, w, h, ow, oh, scale)
            except (TypeError, ValueError) as e:
                missing[k] = f"stored features corrupt (index row: {e})"
        return found, missing

    def count(self, fp: str | None = None) -> int:
        """Number of index entries (of one fingerprint, or all)."""
        if fp is None:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._db.execute(
            "SELECT COUNT(*) FROM entries WHERE fingerprint = ?", (fp,)
        ).fetchone()[0]

    def spec(self, fp: str) -> dict | None:
        """The spec recorded for a fingerprint (None if unknown)."""
        r = self._db.execute(
            "SELECT spec FROM fingerprints WHERE fingerprint = ?", (fp,)
        ).fetchone()
        return json.loads(r[0]) if r else None

    # ----------------------------------------------------------- managing
    def size_bytes(self) -> int:
        """Bytes on disk: index (with its WAL) and every shard."""
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total

    def info(self) -> dict:
        """Size and contents.

        Returns:
            ``{"path", "bytes" (on disk), "entries", "live_bytes" (referenced
            feature bytes), "fingerprints": [{"fingerprint", "spec", "entries",
            "bytes", "bytes_per_sample"}]}``.
        """
        fps = []
        for fp, spec, n, b in self._db.execute(
            "SELECT f.fingerprint, f.spec, COUNT(e.key), COALESCE(SUM(e.nbytes), 0) FROM "
            "fingerprints f LEFT JOIN entries e ON e.fingerprint = f.fingerprint "
            "GROUP BY f.fingerprint ORDER BY f.created"
        ):
            fps.append(
                {
                    "fingerprint": fp,
                    "spec": json.loads(spec),
                    "entries": n,
                    "bytes": b,
                    "bytes_per_sample": (b / n) if n else 0.0,
                }
            )
        live = sum(f["bytes"] for f in fps)
        return {
            "path": self.path,
            "bytes": self.size_bytes(),
            "entries": self.count(),
            "live_bytes": live,
            "fingerprints": fps,
        }

    def prune(
        self,
        *,
        fingerprint: str | None = None,
        everything: bool = False,
        stale: bool = True,
        older_than_s: float | None = None,
    ) -> dict:
        """Delete entries and reclaim their bytes.

        Args:
            fingerprint: delete every entry of this fingerprint.
            everything: delete every entry.
            stale: delete entries whose image file is missing or changed.
            older_than_s: delete entries stored more than this many seconds ago.

        Shards no entry references (and whose writer process is gone) are
        deleted; shards with more dead than live bytes are rewritten with
        their live entries only (written and fsynced before the index is
        switched to them, so a kill during pruning loses nothing).

        Only the store's own files are ever deleted (:meth:`_delete`): shard
        files named as this store names them, inside ``shards/``, never
        through a symbolic link; anything else there is left alone.

        Returns:
            ``{"deleted_entries", "bytes_before", "bytes_after"}``.

        Raises:
            ConfigError: a negative ``older_than_s``; a read-only store.
        """
        if older_than_s is not None:
            older_than_s = float(older_than_s)
            if not older_than_s >= 0:
                raise ConfigError(
                    f"the age of entries to prune must be >= 0 (0: every entry "
                    f"stored before now), got {older_than_s:g} s"
                )
        self._check_writable()
        before = self.size_bytes()
        deleted = 0
        with self._tx():
            if everything:
                deleted += self._db.execute("DELETE FROM entries").rowcount
            if fingerprint is not None:
                deleted += self._db.execute(
                    "DELETE FROM entries WHERE fingerprint = ?", (fingerprint,)
                ).rowcount
            if older_than_s is not None:
                deleted += self._db.execute(
                    "DELETE FROM entries WHERE created < ?", (time.time() - older_than_s,)
                ).rowcount
        if stale and self.check != "none":
            dead = []
            for k, fs, fm in self._db.execute(
                "SELECT key, file_size, file_mtime_ns FROM entries WHERE file_size IS NOT NULL"
            ):
                size, mtime, _ = _file_signature(k, "stat")
                if (size, mtime) != (fs, fm):
                    dead.append((k, fs, fm))
            with self._tx():
                for k, fs, fm in dead:
                    deleted += self._db.execute(
                        "DELETE FROM entries WHERE key = ? AND file_size = ? AND file_mtime_ns = ?",
                        (k, fs, fm),
                    ).rowcount
        self._compact()
        with self._tx():
            self._db.execute(
                "DELETE FROM fingerprints WHERE fingerprint NOT IN "
                "(SELECT DISTINCT fingerprint FROM entries)"
            )
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {
            "deleted_entries": deleted,
            "bytes_before": before,
            "bytes_after": self.size_bytes(),
        }

    def _active_shards(self) -> set[str]:
        active = set()
        host = os.uname().nodename
        for shard, pid, h in self._db.execute("SELECT shard, pid, host FROM writers").fetchall():
            if shard == self._shard or (h == host and _pid_alive(pid)) or h != host:
                active.add(shard)
        return active

    def _compact(self) -> None:
        active = self._active_shards()
        sroot = os.path.join(self.path, "shards")
        for shard in self._own_shard_files():
            if shard in active:
                continue
            full = os.path.join(sroot, shard)
            live = self._db.execute(
                "SELECT key, offset, nbytes FROM entries WHERE shard = ? ORDER BY offset", (shard,)
            ).fetchall()
            size = os.path.getsize(full)
            if not live:
                self._delete(shard)
                with self._tx():
                    self._db.execute("DELETE FROM writers WHERE shard = ?", (shard,))
                continue
            live_bytes = sum(r[2] for r in live)
            if live_bytes * 2 >= size:
                continue
            new = f"{shard.partition('/')[0]}/{os.getpid()}-{uuid.uuid4().hex[:12]}.bin"
            moves, off = [], 0
            with open(full, "rb") as src, open(os.path.join(sroot, new), "wb") as dst:
                for key, o, n in live:
                    src.seek(o)
                    dst.write(src.read(n))
                    moves.append((new, off, shard, key, o))
                    off += n
                dst.flush()
                os.fsync(dst.fileno())
            with self._tx():
                self._db.execute(
                    "INSERT INTO writers VALUES (?, ?, ?, ?)",
                    (new, 0, os.uname().nodename, time.time()),
                )
                self._db.executemany(
                    "UPDATE entries SET shard = ?, offset = ? "
                    "WHERE shard = ? AND key = ? AND offset = ?",
                    moves,
                )
                self._db.execute("DELETE FROM writers WHERE shard = ?", (shard,))
            f = self._readers.pop(shard, None)
            if f is not None:
                f.close()
            self._delete(shard)

    def _own_shard_files(self) -> list[str]:
        """``"<fp>/<name>"`` of every shard file this store wrote: folders
        named by a fingerprint and files named as :meth:`_open_shard` names
        them, both real (not symbolic links). Anything else under
        ``shards/`` (a stray README, a link to another folder) is skipped."""
        sroot = os.path.join(self.path, "shards")
        out = []
        try:
            fpdirs = list(os.scandir(sroot))
        except FileNotFoundError:
            return out
        for d in fpdirs:
            if not _FP_RE.fullmatch(d.name) or not d.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(d.path):
                if _SHARD_RE.fullmatch(f.name) and f.is_file(follow_symlinks=False):
                    out.append(f"{d.name}/{f.name}")
        return sorted(out)

    def _delete(self, shard: str) -> None:
        """The one way this store deletes a file: ``shards/<fp>/<name>``, a
        regular file (not a link) of the store's own naming, whose real path
        is inside the store's real ``shards/`` folder.

        Raises:
            ConfigError: anything else (never deleted).
        """
        sroot = os.path.realpath(os.path.join(self.path, "shards"))
        fpdir, _, name = shard.partition("/")
        full = os.path.join(self.path, "shards", fpdir, name)
        real = os.path.realpath(full)
        if (
            not _FP_RE.fullmatch(fpdir)
            or not _SHARD_RE.fullmatch(name)
            or os.path.islink(os.path.dirname(full))
            or os.path.islink(full)
            or os.path.dirname(os.path.dirname(real)) != sroot
            or not os.path.isfile(real)
        ):
            raise ConfigError(
                f"feature store {self.path}: refusing to delete {full} "
                "(not a shard file of this store)"
            )
        os.remove(full)


class StoringClassifier:
    """A :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier` that also
    stores every batch's view embeddings in a :class:`FeatureStore` (and
    serves those already stored instead of encoding them again).

    It exposes what :func:`fiftyone_lazsl.core.pipeline.iter_predictions` uses
    (``predict_prepared``, ``visual_spec``, ``batch_size``) and forwards
    everything else to the classifier. (Decode workers still prepare the views
    of samples whose features are stored; only their encoding is saved.) A
    failing store write is logged once and counted in ``store_errors``;
    predictions go on.
    """

    def __init__(self, classifier: Any, store: FeatureStore, *, reuse: bool = True) -> None:
        self._clf = classifier
        self.store = store
        self.fingerprint = store.register(feature_spec(classifier))
        self.reuse = reuse
        self.stored = 0
        self.reused = 0
        self.store_errors = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clf, name)

    def predict_tensors(
        self,
        images: Sequence,
        keys: Sequence[str],
        sizes: Sequence[tuple[int, int]] | None = None,
        scales: Sequence[float] | None = None,
    ) -> list:
        """As :meth:`LaZSLClassifier.predict_tensors`, through the store."""
        prepared = [self._clf.prepare_views(im, k) for im, k in zip(images, keys)]
        return self.predict_prepared(prepared, sizes, scales)

    def predict_prepared(
        self,
        prepared: Sequence,
        sizes: Sequence[tuple[int, int]] | None = None,
        scales: Sequence[float] | None = None,
    ) -> list:
        """As :meth:`LaZSLClassifier.predict_prepared` (what the decode-worker
        pipeline calls): features of samples already in the store are read
        from it; the others are encoded and stored."""
        import logging

        import torch

        clf = self._clf
        keys = [p.key for p in prepared]
        dims = [(int(p.width), int(p.height)) for p in prepared]
        sizes = list(sizes) if sizes is not None else dims
        scales = list(scales) if scales is not None else [1.0] * len(prepared)
        found: dict = {}
        if self.reuse:
            try:
                found, _ = self.store.get_many(self.fingerprint, keys)
            except Exception:  # noqa: BLE001 -- a broken store never stops a run
                found = {}
        todo = [i for i, k in enumerate(keys) if k not in found]
        feats: list = [None] * len(prepared)
        boxes: list = [None] * len(prepared)
        sims: list = [None] * len(prepared)
        if todo:
            f = clf.encode_prepared([prepared[i] for i in todo])
            r = crop_global_similarity(f)
            for j, i in enumerate(todo):
                feats[i], boxes[i], sims[i] = f[j], prepared[i].boxes, r[j]
            try:
                self.store.put_many(
                    self.fingerprint,
                    [
                        FeatureEntry(
                            key=keys[i],
                            features=f[j].cpu().numpy(),
                            boxes=prepared[i].boxes,
                            image_size=dims[i],
                            original_size=tuple(sizes[i]),
                            scale=float(scales[i]),
                            crop_global=r[j].cpu().numpy(),
                        )
                        for j, i in enumerate(todo)
                    ],
                )
                self.stored += len(todo)
            except Exception as e:  # noqa: BLE001
                if not self.store_errors:
                    logging.getLogger(__name__).warning(
                        "feature store %s: could not store features (%s); the run goes on",
                        self.store.path,
                        e,
                    )
                self.store_errors += len(todo)
        for i, k in enumerate(keys):
            if k in found:
                feats[i] = torch.from_numpy(found[k].features).to(clf.model.device)
                boxes[i] = found[k].boxes
                sims[i] = _crop_global_tensor(found[k], feats[i])
                self.reused += 1
        return clf.predict_features(
            torch.stack(feats),
            boxes,
            dims,
            sizes,
            scales,
            crop_global=torch.stack([x.to(clf.model.device) for x in sims]),
        )


def _crop_global_tensor(entry: FeatureEntry, features: Any) -> Any:
    """The entry's stored crop-to-global cosines as a float32 tensor (from its
    features when the entry has none)."""
    import torch

    if entry.crop_global is not None:
        return torch.from_numpy(np.asarray(entry.crop_global, dtype=np.float32))
    return crop_global_similarity(features[None].float())[0]


def predict_entries(classifier: Any, entries: Sequence[FeatureEntry]) -> list:
    """Score stored visual sets with a classifier's attribute set and parameters.

    Args:
        classifier: a :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier`
            whose visual set matches the entries (same ``n_crops``).
        entries: ``B`` entries from :meth:`FeatureStore.get_many`.

    Returns:
        ``B`` :class:`~fiftyone_lazsl.core.classifier.Prediction` objects, the
        same as :meth:`LaZSLClassifier.predict_features` on the unrounded
        embeddings up to the storage precision (float32: to 1e-6; the vision
        selection and WCA's crop weights use the stored float32 cosines, so
        they are exact either way).

    Raises:
        ValueError: entries with another ``N`` than the classifier's ``n_crops``.
    """
    import torch

    feats = torch.from_numpy(np.stack([np.asarray(e.features, dtype=np.float32) for e in entries]))
    sims = None
    if classifier.method in CROP_METHODS:
        sims = torch.stack([_crop_global_tensor(e, f) for e, f in zip(entries, feats)])
    else:
        feats = feats[:, :1]
    return classifier.predict_features(
        feats,
        [e.boxes for e in entries],
        [e.image_size for e in entries],
        [e.original_size for e in entries],
        [e.scale for e in entries],
        crop_global=sims,
    )


def iter_entries(
    store: FeatureStore, fp: str, keys: Sequence[str], batch: int = 256
) -> Iterator[tuple[dict[str, FeatureEntry], dict[str, str]]]:
    """:meth:`FeatureStore.get_many` in chunks of ``batch`` keys (bounded memory)."""
    for s in range(0, len(keys), batch):
        yield store.get_many(fp, keys[s : s + batch])
