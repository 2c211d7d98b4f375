"""Background writer: database writes of a run in their own thread, so the
encoder never waits on MongoDB.

:class:`BackgroundWriter` collects per-sample outputs (``{field: value}``, the
BSON-ready documents of :func:`fiftyone_lazsl.fo.labels.label_documents`),
hands them to a writer thread in batches of ``batch_size`` samples through a
bounded queue of ``max_pending`` batches (when MongoDB is slower than the
encoder, :meth:`~BackgroundWriter.put` blocks: back-pressure, bounded memory),
and re-raises a failure of the writer thread in the caller's thread at the
next :meth:`~BackgroundWriter.put`, :meth:`~BackgroundWriter.flush` or
:meth:`~BackgroundWriter.close` (nothing is swallowed; batches queued after a
failure are not written).

Each sample is one MongoDB update that sets all its fields at once (``$set``
of error, crops, attributes and prediction), and a single-document update is
atomic: a sample never has a prediction without its crops and attributes, or
an error next to a prediction, even if the process is killed mid-write. This
is the error-first / prediction-last invariant of the per-field writes before
it, made exact.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pymongo
import pymongo.errors as pe
from bson import ObjectId
from pymongo import UpdateOne

logger = logging.getLogger(__name__)

_STOP = object()


def bulk_set(dataset: Any, batch: list[tuple[str, dict]]) -> None:
    """Set several fields of several samples, one atomic update per sample.

    Args:
        dataset: a ``fiftyone.core.dataset.Dataset``.
        batch: ``[(sample_id, {field: value})]``; values are BSON-ready (plain
            types, label dicts with ``_id`` / ``_cls``), None unsets nothing but
            stores null, as ``set_values`` does.

    Uses ``Dataset._bulk_write`` (FiftyOne 1.22, private): the public
    ``set_values`` writes one field per bulk write (four round trips per batch,
    and a prediction could be visible before its crops), re-parses every value
    and has no way to set several fields of a sample in one update. The
    private method is the one ``set_values`` itself ends in: it runs the
    ``UpdateOne`` ops and reloads in-memory ``Sample`` objects of those ids.
    """
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    ops, ids = [], []
    for sid, values in batch:
        oid = ObjectId(sid)
        ids.append(oid)
        ops.append(UpdateOne({"_id": oid}, {"$set": dict(values, last_modified_at=now)}))
    if ops:
        retry_db(lambda: dataset._bulk_write(ops, ids=ids))


#: Waits (seconds) before each retry of a database write that failed because
#: MongoDB was unreachable or stalled; then the error propagates (the CLI turns
#: it into one line, status 2; written batches stay).
DB_RETRY_WAITS = (1.0, 3.0, 10.0)
#: Seconds each *retry* of a failed write may take, server selection included
#: (``pymongo.timeout``): a database that is gone (connection refused) is given
#: up about 30 s after the first failure instead of after pymongo's 30 s server
#: selection per attempt (~2 minutes), while the first attempt keeps pymongo's
#: own patience so a stalled server (paused, failing over) is waited for.
DB_RETRY_ATTEMPT_S = 5.0
#: Seconds the clean-up after a lost database (run record, lock) may take.
DB_LOST_CLEANUP_S = 2.0  # budget of a write once the database was lost

_lost = threading.Event()


def database_lost() -> bool:
    """Whether a write of this process gave up on the database
    (:func:`retry_db`) and nothing reached it since (a later successful write
    or lock clears it); the clean-up of the failed run then skips it."""
    return _lost.is_set()


def note_database_answers() -> None:
    """Clear :func:`database_lost` (the database answered again)."""
    _lost.clear()


def note_database_error(error: BaseException | None) -> None:
    """Mark the database lost (:func:`database_lost`) when ``error`` or its
    cause chain is a pymongo connection failure or timeout, so the clean-up
    that follows does not wait on it again."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (pe.ConnectionFailure, pe.NetworkTimeout, pe.ExecutionTimeout)):
            _lost.set()
            return
        error = error.__cause__ or error.__context__
        seen += 1


def cleanup_budget() -> Any:
    """A context for the clean-up database calls after a failed run (run
    record, lock release): once the database was lost
    (:func:`database_lost`), each gets at most :data:`DB_LOST_CLEANUP_S`
    seconds (``pymongo.timeout``) instead of pymongo's 30 s server selection;
    otherwise no limit."""
    return pymongo.timeout(DB_LOST_CLEANUP_S) if database_lost() else contextlib.nullcontext()


def retry_db(write: Callable[[], Any]) -> Any:
    """``write()``, retried after :data:`DB_RETRY_WAITS` on pymongo connection
    failures and timeouts (``AutoReconnect``, ``NetworkTimeout``,
    ``ServerSelectionTimeoutError``...); each retry runs under
    ``pymongo.timeout(DB_RETRY_ATTEMPT_S)`` (:data:`DB_RETRY_ATTEMPT_S`), so a
    database that is gone is given up about 30 s after the first failure.
    Writes by id (``$set``, ``set_values``) are idempotent, so a retried
    batch cannot be written twice."""
    mod = sys.modules[__name__]
    waits = mod.DB_RETRY_WAITS  # read at call time (tests shorten it)
    limit = mod.DB_LOST_CLEANUP_S if database_lost() else None
    for wait in (*waits, None):
        try:
            with pymongo.timeout(limit):
                result = write()
            _lost.clear()  # the database answers (again)
            return result
        except (pe.ConnectionFailure, pe.NetworkTimeout, pe.ExecutionTimeout) as e:
            if wait is None:
                _lost.set()
                raise
            limit = float(mod.DB_RETRY_ATTEMPT_S)
            logger.warning(
                "database write failed (%s: %s); retrying in %g s",
                type(e).__name__,
                str(e).split(",")[0],
                wait,
            )
            time.sleep(wait)


class WriterError(RuntimeError):
    """The background writer failed; ``__cause__`` is the original exception."""


class BackgroundWriter:
    """Write per-sample field values from a background thread.

    Args:
        dataset: the dataset to write to.
        batch_size: samples per database write (flush by size).
        max_pending: batches queued at most; :meth:`put` blocks beyond it.
        write: ``write(dataset, batch)``; default :func:`bulk_set`.
        on_written: called in the writer thread with the number of samples of
            each written batch (e.g. to count or report progress).

    Use as a context manager, or call :meth:`close` (always: it joins the
    thread). Raises (from :meth:`put`, :meth:`flush`, :meth:`close`):
    :class:`WriterError` from the writer thread's exception.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int = 64,
        max_pending: int = 4,
        write: Callable[[Any, list], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1 or max_pending < 1:
            raise ValueError("batch_size and max_pending must be >= 1")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self._write = write or bulk_set
        self._on_written = on_written
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_pending))
        self._batch: list[tuple[str, dict]] = []
        self._error: BaseException | None = None
        self._closed = False
        self.samples_written = 0
        self.seconds_writing = 0.0
        self.seconds_blocked = 0.0
        self._thread = threading.Thread(target=self._run, name="lazsl-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is _STOP:
                    return
                if self._error is not None:
                    continue  # drain without writing after a failure
                t0 = time.perf_counter()
                self._write(self.dataset, batch)
                self.seconds_writing += time.perf_counter() - t0
                self.samples_written += len(batch)
                if self._on_written is not None:
                    self._on_written(len(batch))
            except BaseException as e:  # re-raised in the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    # ------------------------------------------------------------ caller side
    def _check(self) -> None:
        if self._error is not None:  # sticky: nothing more is written after a failure
            err = self._error
            raise WriterError(
                f"writing to dataset {getattr(self.dataset, 'name', None)!r} failed: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _enqueue(self, batch: list) -> None:
        t0 = time.perf_counter()
        while True:
            self._check()
            try:
                self._queue.put(batch, timeout=0.5)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    raise WriterError("the writer thread stopped") from None
        self.seconds_blocked += time.perf_counter() - t0

    def put(self, sample_id: str, values: dict) -> None:
        """Queue ``{field: value}`` for one sample (written with the next full batch)."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        self._check()
        self._batch.append((sample_id, values))
        if len(self._batch) >= self.batch_size:
            batch, self._batch = self._batch, []
            self._enqueue(batch)

    def flush(self, wait: bool = True) -> None:
        """Queue the partial batch; with ``wait``, return once everything queued
        is written (raising the writer's failure, if any)."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._enqueue(batch)
        if wait:
            self._queue.join()
            self._check()

    def close(self) -> None:
        """Write what is left, stop the thread, raise the writer's failure."""
        if self._closed:
            return
        try:
            if self._error is None:
                self.flush(wait=True)
        finally:
            self._closed = True
            self._batch = []
            self._queue.put(_STOP)
            self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop without raising (the caller is already raising): write
        everything collected so far, partial batch included, unless the writer
        itself failed."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(wait=True)
        except BaseException:
            pass
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
