"""Test environment: an isolated FiftyOne database, no tracking, no network
for model hubs. Set before FiftyOne or open_clip is imported."""

import os
import shutil

# Tests that press Ctrl-C on a child process need SIGINT to reach it. A runner
# started as a background job of a non-interactive shell ignores SIGINT, and
# children inherit an ignored signal (a Python child then never raises
# KeyboardInterrupt); a handler, unlike SIG_IGN, is reset to the default on exec.
import signal  # noqa: E402
import tempfile

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_TMP = tempfile.mkdtemp(prefix="lazsl-tests-")
os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_TMP, "db")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ["FIFTYONE_LAZSL_CACHE"] = os.path.join(_TMP, "cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import pathlib  # noqa: E402


def _start_private_mongod() -> None:
    """Our own mongod for the whole session (see
    :mod:`fiftyone_lazsl.testing.mongod`); subprocesses (CLI tests) inherit its URI."""
    from fiftyone_lazsl.testing import mongod as private_mongod

    proc = private_mongod.start(
        os.environ["FIFTYONE_DATABASE_DIR"], os.path.join(_TMP, "mongod.log")
    )

    def stop():
        # atexit runs this after FiftyOne's own exit cleanup (registered later,
        # when it connects), so the database is still up for it.
        private_mongod.stop(proc)
        shutil.rmtree(_TMP, ignore_errors=True)

    atexit.register(stop)


_start_private_mongod()

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the checkout; ``LAZSL_SHARED_DATA`` points elsewhere
#: (``LAZSL_SHARED_DATA=none`` runs the suite as a fresh clone without it would).
SHARED = pathlib.Path(os.environ.get("LAZSL_SHARED_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (real photos, attribute sets, golden outputs); tests
    that need it skip with a clear message where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def photo_data(tmp_path_factory):
    """Photos and a matching attribute set in the layout of ``../shared/data``
    (``images/cub/<class>/<image>``, ``attribute_sets/cub.json``): the real CUB
    photos and published set when ``../shared`` exists, else the generated
    stand-in of :mod:`fiftyone_lazsl.testing.synthetic`. For tests of the
    pipeline's mechanics, which must run in a fresh clone; tests about the real
    data itself use ``shared_data``."""
    if SHARED.is_dir():
        return SHARED
    from fiftyone_lazsl.testing.synthetic import make_standin

    return make_standin(tmp_path_factory.mktemp("standin-data"))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FIFTYONE_LAZSL_CACHE", str(d))
    return d
