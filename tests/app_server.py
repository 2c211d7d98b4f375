"""Start and stop a real FiftyOne App server (and drive headless Chromium) for
browser tests.

The server is ``python -m fiftyone.server.main`` in a subprocess that shares
this process's database (``FIFTYONE_DATABASE_DIR``) and sees this repository as
a plugin through ``FIFTYONE_PLUGINS_DIR`` (a temp dir holding a symlink to the
repository root). Nothing is downloaded: the App's static files ship with the
``fiftyone`` wheel and Chromium/chromedriver come from Debian
(``apt-get install -y chromium chromium-driver``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PLUGIN_LINK_NAME = "fiftyone-lazsl"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1920,1080",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_plugins_dir() -> str:
    """A new temp dir whose only entry is a symlink to the repository root
    (the plugin directory: ``fiftyone.yml`` + ``__init__.py``)."""
    d = tempfile.mkdtemp(prefix="lazsl-plugins-")
    os.symlink(ROOT, os.path.join(d, PLUGIN_LINK_NAME))
    return d


class AppServer:
    """A FiftyOne App server subprocess on ``127.0.0.1:<port>``.

    Use as a context manager; :attr:`url` is its base URL and :attr:`log_path`
    its combined stdout/stderr (read it when something fails).
    """

    def __init__(
        self, port: int | None = None, plugins_dir: str | None = None, env: dict | None = None
    ):
        self.port = port or free_port()
        self._own_plugins = plugins_dir is None
        self.plugins_dir = plugins_dir or make_plugins_dir()
        self.env = dict(os.environ)
        self.env.update(
            {
                "FIFTYONE_PLUGINS_DIR": self.plugins_dir,
                "FIFTYONE_DO_NOT_TRACK": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env or {})
        self.proc = None
        self._log = None
        self.log_path = None

    @property
    def url(self) -> str:
        """Base URL of the App."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> AppServer:
        """Start the server and wait until it answers HTTP (raises
        ``RuntimeError`` with the log tail if it exits or times out)."""
        fd, self.log_path = tempfile.mkstemp(prefix="lazsl-app-", suffix=".log")
        os.close(fd)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fiftyone.server.main",
                "--port",
                str(self.port),
                "--address",
                "127.0.0.1",
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"App server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as r:
                    ok = r.status == 200
                if ok:
                    time.sleep(1.0)
                    if self.proc.poll() is not None:
                        # Someone else answered on this port; ours failed to bind.
                        raise RuntimeError(
                            f"App server exited with {self.proc.returncode}:\n{self.log_tail()}"
                        )
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"App server did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the server log."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]

    def stop(self):
        """Terminate the server process (and its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_plugins:
            shutil.rmtree(self.plugins_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def chromium_available() -> str | None:
    """None when Chromium, chromedriver and selenium are usable, else why not."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not found (apt-get install -y chromium chromium-driver)"
    if not os.path.exists(CHROMEDRIVER):
        return f"{CHROMEDRIVER} not found (apt-get install -y chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def make_driver(user_data_dir: str):
    """A selenium WebDriver on Debian's headless Chromium (no browser download:
    the binary and chromedriver paths are given explicitly)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={user_data_dir}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@contextlib.contextmanager
def browser(profile_dir):
    """:func:`make_driver` with a new profile in ``profile_dir`` (created),
    quit on exit."""
    profile = pathlib.Path(profile_dir)
    profile.mkdir(parents=True, exist_ok=True)
    d = make_driver(str(profile))
    try:
        yield d
    finally:
        d.quit()


def artifacts_dir() -> pathlib.Path:
    """Where browser tests leave screenshots and page text
    (``$LAZSL_TEST_ARTIFACTS``, default ``tests/artifacts``), created."""
    d = pathlib.Path(os.environ.get("LAZSL_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d
