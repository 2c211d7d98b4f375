"""``fiftyone-lazsl`` command line.

Each sub-command group lives in its own module exposing ``register(subparsers)``;
the handler is stored as ``func`` on the parsed namespace. User errors
(:class:`fiftyone_lazsl.errors.UserError` and its kin) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import threading
import time
from typing import Any

from fiftyone_lazsl import __version__
from fiftyone_lazsl.env import validate_environment
from fiftyone_lazsl.errors import UserError

# Modules of this package that add sub-commands, in help order.
COMMAND_MODULES = (
    "datasets",  # import-folder, app
    "attributes",  # attributes import|list|show|delete|generate
    "classify",  # classify
    "features",  # features info|prune, rescore
    "audit",  # audit, evaluate
    "demo",  # demo
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` once per option, and not for None/False/help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if (
            "default" in h
            or action.default in (None, False, argparse.SUPPRESS)
            or isinstance(action, argparse._HelpAction)
        ):
            return h
        return super()._get_help_string(action)


def _version() -> str:
    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; building it imports neither torch nor FiftyOne
    (sub-command modules import them inside their handlers), so ``--help``
    and ``--version`` are fast."""
    parser = argparse.ArgumentParser(
        prog="fiftyone-lazsl",
        formatter_class=_HelpFormatter,
        description="LaZSL zero-shot classification with attribute evidence, for FiftyOne datasets.",
        epilog="Expected failures (bad input, missing GPU or weights, database unavailable, disk "
        "full, permissions) print one line and exit with status 2; --debug shows the "
        "traceback.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of expected failures too, and debug logging",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _orig_add_parser = sub.add_parser

    def add_parser(name: str, **kw):  # every sub-command shows its defaults
        kw.setdefault("formatter_class", _HelpFormatter)
        return _orig_add_parser(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def expected_failure(e: BaseException) -> str | None:
    """The one-line message for an *expected* failure, or None for a bug.

    Expected: :class:`~fiftyone_lazsl.errors.UserError` (bad input, unknown
    dataset, missing GPU or weights...), a missing file, permission refused,
    a full disk or quota, a read-only file system, and MongoDB being
    unreachable or stalled (after the bounded retries of the write path).
    """
    if isinstance(e, UserError):
        return str(e)
    db = _database_error(e)
    if db is not None:
        first = str(db).split(",")[0].split(" (configured timeouts")[0]
        return (
            f"the FiftyOne database is unavailable or not answering ({type(db).__name__}: "
            f"{first}); what was written before stays; check that MongoDB is running "
            "and rerun (classify: --skip-existing resumes)"
        )
    if isinstance(e, OSError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        if isinstance(
            e,
            (
                FileNotFoundError,
                PermissionError,
                FileExistsError,
                NotADirectoryError,
                IsADirectoryError,
            ),
        ) or e.errno in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EROFS,
            errno.EACCES,
            errno.EPERM,
            errno.ENOENT,
            errno.EISDIR,
            errno.ENOTDIR,
            errno.EEXIST,
            errno.ENAMETOOLONG,
            errno.EFBIG,
        ):
            return f"{where}{e.strerror or e}"
        return None
    return None


def _database_error(e: BaseException | None) -> BaseException | None:
    """The pymongo connection/timeout error in ``e``'s cause chain (FiftyOne
    wraps a refused connection in ``ConnectionError("Could not connect to
    `mongod`")``), or None."""
    seen = 0
    while e is not None and seen < 10:
        mod = type(e).__module__ or ""
        if mod.startswith("pymongo"):
            import pymongo.errors as pe

            if isinstance(
                e, (pe.ConnectionFailure, pe.NetworkTimeout, pe.ExecutionTimeout, pe.WTimeoutError)
            ):
                return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


class _QuietMongoNotice:
    """Drops FiftyOne's "You are running the oldest supported major version of
    MongoDB" notice (printed by every command on FiftyOne's bundled MongoDB;
    nothing the user of this CLI can act on). ``--debug`` keeps it."""

    def filter(self, record) -> bool:
        return "oldest supported major version of MongoDB" not in record.getMessage()


class ProgressLines:
    """A ``progress(fraction, label)`` callback for ``run_lazsl`` that prints a
    plain line (``progress: 40% encoding and scoring images 13-16, 25 s elapsed,
    ~37 s left``) every ``every_s`` seconds and at the end: for output that is
    not a terminal (piped, logged), where a tqdm bar would print nothing useful.

    A timer thread prints the latest state every ``every_s`` seconds even when
    no new report arrived (a batch of ViT-B-32 crops takes ~20 s on 2 CPU
    cores), so the line names the stage the run is in, not the one it just
    left. Call :meth:`close` (or use it as a context manager) when the run
    ends; reaching 100 % closes it too."""

    def __init__(self, out: Any = None, every_s: float = 5.0) -> None:
        self.out = out or sys.stderr
        self.every_s = float(every_s)
        self._t0 = time.time()
        self._last = -1e9
        self._state: tuple[float, str, float] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="lazsl-progress", daemon=True)
        self._thread.start()

    def _emit(self, now: float) -> None:
        fraction, label, t_report = self._state
        self._last = now
        el = now - self._t0
        # remaining time as estimated at the last report, counted down since
        el_r = t_report - self._t0
        eta = (
            f", ~{max(0.0, el_r / fraction - el_r - (now - t_report)):.0f} s left"
            if 0 < fraction < 1
            else ""
        )
        print(
            f"progress: {fraction:4.0%} {label}, {el:.0f} s elapsed{eta}", file=self.out, flush=True
        )

    def __call__(self, fraction: float, label: str) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            now = time.time()
            self._state = (float(fraction), label, now)
            if fraction >= 1.0 or now - self._last >= self.every_s:
                self._emit(now)
            if fraction >= 1.0:
                self._closed.set()

    def _tick(self) -> None:
        while not self._closed.wait(min(1.0, self.every_s / 5)):
            with self._lock:
                now = time.time()
                if (
                    self._state is not None
                    and not self._closed.is_set()
                    and now - self._last >= self.every_s
                ):
                    self._emit(now)

    def close(self) -> None:
        """Stop the timer (no more lines)."""
        self._closed.set()
        self._thread.join(timeout=2)

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_lines(out: Any = None, every_s: float = 5.0) -> ProgressLines:
    """A :class:`ProgressLines` printing to ``out`` (default stderr) every
    ``every_s`` seconds."""
    return ProgressLines(out, every_s)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fiftyone-lazsl`` console script.

    Returns the exit status: 0, 2 for an expected failure (one line on
    stderr, see :func:`expected_failure`), 130 after Ctrl-C, 141 (as a
    command killed by SIGPIPE) when the reader of stdout went away
    (``... | head -1``), without a message. Malformed environment variables
    (:mod:`fiftyone_lazsl.env`) are expected failures, checked first.
    Characters the terminal's encoding cannot show are replaced. Other exceptions
    are bugs and keep their traceback. Run as the console script
    (``argv=None``), Ctrl-C exits at once without waiting for abandoned
    worker threads (network requests in flight).
    """
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG)
    else:
        logging.getLogger("fiftyone.core.odm.database").addFilter(_QuietMongoNotice())
    try:
        validate_environment()
        rc = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (``... | head -1``): stop quietly, as a tool killed
        # by SIGPIPE would; nothing more can be printed
        if argv is None:  # the console script: its own stdout, not a caller's
            _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print(f"fiftyone-lazsl {args.command}: interrupted", file=sys.stderr)
        if argv is None:
            _exit_now(130)
        return 130
    except Exception as e:  # noqa: BLE001 -- sorted into expected failures and bugs
        msg = expected_failure(e)
        if msg is None or args.debug:
            raise
        msg = " ".join(msg.split())  # always one line
        print(f"fiftyone-lazsl {args.command}: error: {msg}", file=sys.stderr)
        if argv is None and _database_error(e) is not None:
            _exit_now(2)  # FiftyOne's exit hooks would wait on the lost database
        return 2
    return int(rc or 0)


def _tolerant_streams() -> None:
    """Let stdout and stderr replace characters their encoding cannot show
    (a Latin-1 or ASCII terminal printing Chinese class names) instead of
    failing with ``UnicodeEncodeError``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError, OSError):  # not a text file, or detached
            pass


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush
    after a closed pipe prints no "Exception ignored" message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        pass


def _exit_now(code: int) -> None:
    """Flush and leave without interpreter shutdown (which would wait on
    abandoned threads and atexit hooks); everything the command keeps was
    written before the interrupt reached here."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
    finally:
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
