"""One writer per label field: a lock document in MongoDB with an owner and a heartbeat.

Two runs writing the same label field at once would mix labels of one with the
run record and ``dataset.classes[F]`` of the other. :func:`acquire` inserts one
document per ``(dataset, label field)`` into the ``lazsl_locks`` collection of
FiftyOne's database (MongoDB's unique ``_id`` makes the insert atomic: of two
runs starting together exactly one succeeds). The owner refreshes
``heartbeat`` every ``heartbeat_s`` seconds from a daemon thread and deletes the
document on release (normal end, error or Ctrl-C). A run killed with SIGKILL,
or whose machine or database connection died, stops beating: its lock is
*stale* once the heartbeat is older than ``stale_s`` seconds, or at once when
the owner was a process on this host that no longer exists, and the next run
takes it over (atomically, compare-and-swap on the old owner and heartbeat).

The same heartbeat tells readers whether a run record that says ``"running"``
is still alive (:func:`is_alive`, used by
:func:`fiftyone_lazsl.fo.runs.get_run_config`).

Uses ``fiftyone.core.odm.database.get_db_conn()`` (FiftyOne 1.x; the public way
to reach FiftyOne's own database; there is no public lock API).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import fiftyone.core.odm.database as fod
from pymongo.errors import DuplicateKeyError

from fiftyone_lazsl import env
from fiftyone_lazsl.errors import RunConflictError
from fiftyone_lazsl.fo import writer

logger = logging.getLogger(__name__)

COLLECTION = "lazsl_locks"
#: Default seconds between heartbeats of a lock owner (env ``FIFTYONE_LAZSL_HEARTBEAT_S``,
#: read when a lock is taken, see :mod:`fiftyone_lazsl.env`).
HEARTBEAT_S = 10.0
#: Default age (seconds) after which a lock's heartbeat is stale and the lock may
#: be taken over (env ``FIFTYONE_LAZSL_STALE_S``).
STALE_S = 60.0


def default_heartbeat_s() -> float:
    """Seconds between heartbeats: ``$FIFTYONE_LAZSL_HEARTBEAT_S`` or :data:`HEARTBEAT_S`."""
    return env.get("FIFTYONE_LAZSL_HEARTBEAT_S")


def default_stale_s() -> float:
    """Heartbeat age after which a lock is stale: ``$FIFTYONE_LAZSL_STALE_S`` or :data:`STALE_S`."""
    return env.get("FIFTYONE_LAZSL_STALE_S")


_HOST = socket.gethostname()


def _now() -> _dt.datetime:
    # MongoDB stores milliseconds; naive UTC like pymongo returns by default.
    t = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _collection() -> Any:
    return fod.get_db_conn()[COLLECTION]


def _database_answers() -> None:
    """The database answered: clear the writer's "lost" mark of an earlier run."""
    writer.note_database_answers()


def lock_id(dataset: Any, label_field: str) -> str:
    """The lock document's ``_id``: ``"<dataset id>:<label field>"``."""
    return f"{dataset._doc.id}:{label_field}"


def _pid_dead(doc: dict) -> bool:
    """True when ``doc``'s owner was a process on this host that is gone."""
    if doc.get("host") != _HOST or not isinstance(doc.get("pid"), int):
        return False
    if doc["pid"] == os.getpid():
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def is_alive(doc: dict | None, *, stale_s: float | None = None) -> bool:
    """Whether the owner of lock document ``doc`` is still running: a fresh
    heartbeat and, on this host, a live process."""
    if not doc:
        return False
    stale_s = default_stale_s() if stale_s is None else stale_s
    age = (_now() - doc["heartbeat"]).total_seconds()
    return age <= stale_s and not _pid_dead(doc)


def describe(doc: dict) -> str:
    """``"pid 123 on host, started 2026-01-01 10:00:00 UTC, last heartbeat 3 s ago"``."""
    age = (_now() - doc["heartbeat"]).total_seconds()
    started = doc.get("started")
    return (
        f"pid {doc.get('pid')} on {doc.get('host')}, started "
        f"{started:%Y-%m-%d %H:%M:%S} UTC, last heartbeat {age:.0f} s ago"
        if started
        else f"owner {doc.get('owner')}"
    )


def current(dataset: Any, label_field: str) -> dict | None:
    """The lock document of ``label_field`` on ``dataset``, or None."""
    return _collection().find_one({"_id": lock_id(dataset, label_field)})


class LabelFieldLock:
    """A held lock; release it with :meth:`release` or use it as a context manager.

    Attributes:
        owner: unique id of this holder (``host:pid:uuid``), also written into
            the run record so readers can match a run to its lock.
        stolen_from: the stale lock document taken over, or None.
    """

    def __init__(
        self,
        dataset: Any,
        label_field: str,
        *,
        heartbeat_s: float | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._id = lock_id(dataset, label_field)
        self.label_field = label_field
        self.dataset_name = dataset.name
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.stolen_from: dict | None = None
        self._heartbeat_s = default_heartbeat_s() if heartbeat_s is None else heartbeat_s
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> dict:
        now = _now()
        return {
            "_id": self._id,
            "owner": self.owner,
            "host": _HOST,
            "pid": os.getpid(),
            "dataset": self.dataset_name,
            "label_field": self.label_field,
            "started": now,
            "heartbeat": now,
        }

    def _beat(self) -> None:
        coll = _collection()
        while not self._stop.wait(self._heartbeat_s):
            try:
                res = coll.update_one(
                    {"_id": self._id, "owner": self.owner}, {"$set": {"heartbeat": _now()}}
                )
                if res.matched_count == 0:
                    logger.warning(
                        "the lock on label field %r was taken over by another run", self.label_field
                    )
                    return
            except Exception as e:  # database hiccup: try again next beat
                logger.debug("lock heartbeat failed: %s", e)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="lazsl-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock (only if still ours); after
        a lost database (:func:`fiftyone_lazsl.fo.writer.database_lost`) the
        release is tried for :data:`~fiftyone_lazsl.fo.writer.DB_LOST_CLEANUP_S`
        seconds only (the lock then goes stale by itself)."""
        self._stop.set()
        try:
            with writer.cleanup_budget():  # a lost database: try briefly
                _collection().delete_one({"_id": self._id, "owner": self.owner})
        except Exception as e:  # the database is gone: the lock goes stale by itself
            logger.warning("could not release the lock on label field %r: %s", self.label_field, e)

    def __enter__(self) -> LabelFieldLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(
    dataset: Any,
    label_field: str,
    *,
    stale_s: float | None = None,
    heartbeat_s: float | None = None,
) -> LabelFieldLock:
    """Take the write lock of ``label_field`` on ``dataset``.

    Args:
        dataset: a FiftyOne dataset.
        label_field: the prediction field ``F`` (the lock covers ``F*``).
        stale_s: heartbeat age after which another run's lock is taken over
            (default :data:`STALE_S`, env ``FIFTYONE_LAZSL_STALE_S``).
        heartbeat_s: seconds between heartbeats (default :data:`HEARTBEAT_S`).

    Returns:
        the held :class:`LabelFieldLock` (heartbeat running).

    Raises:
        RunConflictError: a live run holds the lock; the message names it
            (process, host, start time, last heartbeat).
    """
    stale_s = default_stale_s() if stale_s is None else float(stale_s)
    lock = LabelFieldLock(dataset, label_field, heartbeat_s=heartbeat_s)
    coll = _collection()
    for _ in range(3):
        try:
            coll.insert_one(lock._doc())
            _database_answers()
            lock._start_heartbeat()
            return lock
        except DuplicateKeyError:
            pass
        old = coll.find_one({"_id": lock._id})
        if old is None:
            continue  # released meanwhile: try again
        if is_alive(old, stale_s=stale_s):
            raise RunConflictError(
                f"label field {label_field!r} of dataset {dataset.name!r} is being written by "
                f"another run ({describe(old)}); wait for it to finish or use another label field"
            )
        # stale: take it over unless someone else did first
        new = lock._doc()
        took = coll.find_one_and_replace(
            {"_id": lock._id, "owner": old["owner"], "heartbeat": old["heartbeat"]}, new
        )
        if took is not None:
            lock.stolen_from = old
            logger.warning(
                "taking over the lock of a run that is gone on label field %r (%s)",
                label_field,
                describe(old),
            )
            lock._start_heartbeat()
            return lock
    raise RunConflictError(
        f"label field {label_field!r} of dataset {dataset.name!r} is being "
        "claimed by several runs at once; try again"
    )
