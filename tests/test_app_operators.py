"""Every operator of the plugin used from the real
FiftyOne App, the way a user does it, in Debian's headless Chromium.

One App server (a subprocess on localhost, this checkout as its plugin,
``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` so that "Schedule" is offered)
and one browser serve the whole module. Each test opens the operator browser
with the backtick key, types the operator's name, clicks it, fills the form
by its labels, clicks Execute (or Schedule) and reads the page: the progress
bar's labels, the notifications, the form's messages, the output view, the
grid. Expected values come from the database or the library, computed
independently of what the page shows.

* ``run_lazsl`` immediate: progress bar with stage labels, no error dialog, a
  success notification carrying the summary, the new field in the grid
  without a manual reload.
* ``run_lazsl`` scheduled: queued from the form, executed by a real
  ``fiftyone delegated launch`` worker started here; completed, its progress
  went through the stages, the summary is its result.
* ``build_attribute_sets`` against the local OpenAI-compatible server
  (``tests/openai_stub_server.py``); ``import_attribute_set`` and
  ``delete_attribute_set`` (with its confirmation); ``evaluate_methods``;
  ``audit_labels`` including the switch to the suspects' view.
* User mistakes: unknown set, existing label field, ground-truth classes
  missing from the set, nonexistent field, unreachable LLM endpoint, weights
  unavailable offline, an existing set name, a delete not confirmed: the form
  blocks Execute with its message, or one plain line comes after Execute;
  never a traceback.

The model is the tiny random-weight open_clip config (given to the server by
``FIFTYONE_LAZSL_MODEL_CONFIGS``) with a saved checkpoint. With
``LAZSL_DOCS_SCREENSHOTS=<dir>`` a run in progress and its success
notification are saved there as ``app_run_progress.png`` / ``app_run_done.png``
(how the screenshots of docs/app.md are made). Failure screenshots and page text go
to ``$LAZSL_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from app_server import AppServer, artifacts_dir, browser, chromium_available, free_port
from plugin_fixtures import lazsl_plugin  # noqa: F401  (fails fast if the plugin cannot load)

_MISSING = chromium_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"browser test needs Chromium: {_MISSING}"),
]

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["Cardinal", "Indigo Bunting", "Bobolink"]
PER_CLASS = 2
WAIT_S = 120
DATASET = "lazsl-app-operators"
LLM_KEY = "sk-test-APP-KEY-0123456789"
TRACEBACK = "Traceback (most recent call last)"
# the operator's dialog: its form, and what it shows while and after it runs
PROMPT = (
    "[data-cy='operators-prompt-modal'], [data-cy='operators-prompt-view-modal'], "
    "[data-cy='operators-prompt-drawer']"
)
# Counts the App's form resolutions in flight (its fetches of
# /operators/resolve-type), so that a test acts on a form the server has
# finished resolving. It only observes: every request goes through unchanged.
_WATCH_RESOLVES = r"""
if (!window.__lazslResolves) {
    const s = window.__lazslResolves = {pending: 0, last: Date.now()};
    const f = window.fetch;
    window.fetch = function (...a) {
        const u = String((a[0] && a[0].url) || a[0]);
        if (!u.includes('/operators/resolve-type')) return f.apply(this, a);
        s.pending++; s.last = Date.now();
        return f.apply(this, a).finally(() => { s.pending--; s.last = Date.now(); });
    };
}
"""


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory):
    """The dataset (real CUB photos, ``ground_truth``), attribute-set files
    (all three classes; two of them), the tiny model's checkpoint."""
    import fiftyone as fo

    from fiftyone_lazsl.testing import tiny_clip

    tmp = tmp_path_factory.mktemp("app-operators")
    texts = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    three = tmp / "three_birds.json"
    three.write_text(json.dumps({c: texts[c] for c in CLASSES}))
    two = tmp / "two_birds.json"
    two.write_text(json.dumps({c: texts[c] for c in CLASSES[:2]}))
    ckpt = tiny_clip.save_checkpoint(tmp / "tiny.pt", seed=3)

    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    ds = fo.Dataset(DATASET, persistent=True)
    for c in CLASSES:
        folder = shared_data / "images" / "cub" / c
        for f in sorted(os.listdir(folder))[:PER_CLASS]:
            ds.add_sample(
                fo.Sample(filepath=str(folder / f), ground_truth=fo.Classification(label=c))
            )
    yield {"ds": ds, "three": str(three), "two": str(two), "ckpt": str(ckpt), "tmp": tmp}
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)


@pytest.fixture(scope="module")
def app(world, lazsl_plugin):
    from fiftyone_lazsl.testing import tiny_clip

    env = {
        "FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG),
        "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true",
        "OPENAI_API_KEY": LLM_KEY,
        "HF_HUB_OFFLINE": "1",
    }
    server = AppServer(plugins_dir=str(lazsl_plugin), env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def driver(app, tmp_path_factory):
    with browser(tmp_path_factory.mktemp("chromium-profile")) as d:
        yield d


@pytest.fixture
def ui(world, driver, app, request):
    """The App's page for the dataset, freshly loaded, showing the whole
    dataset with no operator prompt open (nothing an earlier test left, e.g.
    the audit's switch to the suspects' view, or a dialog after a failure,
    stays in the way); on failure the screenshot, page text, console and
    server log are saved."""
    page = Page(driver, app, len(world["ds"]))
    failed = request.session.testsfailed
    page.load()
    yield page
    if request.session.testsfailed > failed:
        page.save_failure(request.node.name)


# ----------------------------------------------------------------- page driver
class Page:
    """What a user does in the App, as selenium calls."""

    def __init__(self, driver, app, n_samples: int | None = None):
        self.d = driver
        self.app = app
        self.n_samples = n_samples  # the dataset's size (load shows them all), if given

    # -- reading
    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.TAG_NAME, "body").text

    @staticmethod
    def poll(cond, timeout: float):
        """``cond()`` polled until truthy (returns it) or ``timeout`` seconds
        pass (returns None); an exception counts as falsy (re-rendered under us)."""
        deadline = time.time() + timeout
        while True:
            try:
                v = cond()
            except Exception:
                v = None
            if v or time.time() >= deadline:
                return v or None
            time.sleep(0.2)

    def wait(self, cond, timeout=WAIT_S, what="condition"):
        """Poll ``cond()`` until truthy (returns it); fails naming ``what``."""
        v = self.poll(cond, timeout)
        if v is None:
            raise AssertionError(f"timed out waiting for {what}; page text:\n{self.text()[-3000:]}")
        return v

    def wait_text(self, needle: str, timeout=WAIT_S) -> str:
        return self.wait(lambda: needle in self.text() and self.text(), timeout, repr(needle))

    def assert_no_traceback(self):
        t = self.text()
        assert TRACEBACK not in t and "Error occurred during operator execution" not in t, t[-3000:]

    def save_failure(self, tag: str):
        art = artifacts_dir()
        try:
            self.d.save_screenshot(str(art / f"{tag}-failure.png"))
            (art / f"{tag}-failure.txt").write_text(
                self.text()
                + "\n\n--- browser console ---\n"
                + "\n".join(str(e) for e in self.d.get_log("browser"))
                + "\n\n--- server log ---\n"
                + self.app.log_tail(20000)
            )
        except Exception as e:  # the original failure matters more
            print(f"could not save failure artifacts: {e}")

    def prompt(self):
        """The operator prompt (form or output dialog) shown, or None."""
        from selenium.webdriver.common.by import By

        for e in self.d.find_elements(By.CSS_SELECTOR, PROMPT):
            try:
                if e.is_displayed():
                    return e
            except Exception:  # closed under us
                pass
        return None

    def settle(self, quiet_s: float = 0.5, timeout=WAIT_S):
        """Wait until no form resolution has been in flight for ``quiet_s``
        (the form shows what the server resolved for the latest inputs)."""

        def idle():
            s = self.d.execute_script(
                "const s = window.__lazslResolves; return s ? [s.pending, Date.now() - s.last] : null"
            )
            if s is None:  # a new page: watch from now on
                self.d.execute_script(_WATCH_RESOLVES)
                return True
            return s[0] == 0 and s[1] >= quiet_s * 1000

        self.wait(idle, timeout, "the form's resolution on the server")

    def chips(self, label: str) -> list[str]:
        """The values (chips) of the multi-value input labelled ``label``."""
        from selenium.webdriver.common.by import By

        box = self.d.find_element(
            By.XPATH,
            f"//*[@data-cy='operators-prompt-modal']//p[normalize-space()={json.dumps(label)}]"
            "/ancestor::div[.//input][1]",
        )
        return [c.text for c in box.find_elements(By.CSS_SELECTOR, ".MuiChip-label")]

    # -- acting
    def load(self):
        """Open the dataset's page anew (no prompt, menu or notification of
        an earlier action stays) and wait for its grid of every sample: a
        view an earlier action set (the App server keeps it for the next
        page) is cleared with the view bar's clear button."""
        from selenium.webdriver.common.by import By

        self.d.get(f"{self.app.url}/datasets/{DATASET}")
        self.wait(lambda: re.search(r"\n\d+ samples?(\n|$)", self.text()), what="the grid")
        self.d.execute_script(_WATCH_RESOLVES)
        ad = self.button("Dismiss")  # the App's "Explore Enterprise" banner
        if ad:
            self.click(ad)
        self.close_prompt()
        if self.n_samples is None:
            return
        every = re.compile(rf"\n{self.n_samples} samples?\n")
        if not every.search(self.text() + "\n"):
            self.click(
                self.wait(
                    lambda: [
                        e
                        for e in self.d.find_elements(
                            By.CSS_SELECTOR, "[data-cy='btn-clear-view-bar']"
                        )
                        if e.is_displayed()
                    ],
                    what="the view bar's clear button",
                )[0]
            )
            self.wait(
                lambda: every.search(self.text() + "\n"), what=f"all {self.n_samples} samples"
            )

    def click(self, el, timeout: float = 15):
        """Click ``el`` as a user does (scrolled into view). Something shown
        over it for a moment (a notification, a closing menu) is waited out;
        still covered after ``timeout`` seconds fails naming what covers it."""
        from selenium.common.exceptions import ElementClickInterceptedException

        deadline = time.time() + timeout
        while True:
            self.d.execute_script("arguments[0].scrollIntoView({block: 'nearest'});", el)
            try:
                el.click()
                return
            except ElementClickInterceptedException as e:
                if time.time() >= deadline:
                    raise AssertionError(
                        f"{el.text!r} stays covered: {e.msg}\npage text:\n{self.text()[-3000:]}"
                    ) from e
            time.sleep(0.5)

    def execute(self):
        """Click the form's Execute button once the form is resolved."""
        self.settle()
        self.click(
            self.wait(
                lambda: self.button("Execute", within=self.prompt()), what="the Execute button"
            )
        )

    def open_operator(self, name: str, label: str):
        """Backtick opens the operator browser; type the name, click it, wait
        for its form (titled ``label``)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        self.close_prompt()  # (the backtick would go to an open form)
        ActionChains(self.d).send_keys("`").perform()
        search = self.wait(
            lambda: self.d.find_element(By.CSS_SELECTOR, "[data-cy='operators-browser-search']"),
            what="operator browser",
        )
        search.send_keys(name)
        item = self.wait(
            lambda: [
                e
                for e in self.d.find_elements(By.XPATH, f"//*[normalize-space(text())='{name}']")
                if e.is_displayed()
            ],
            what=f"operator {name} in the browser",
        )
        item[0].click()
        self.wait(lambda: self.button("Execute") or self.button("Schedule"), what=f"{name} form")
        self.wait_text(label)
        self.settle()

    def _input(self, label: str, tag: str = "input"):
        from selenium.webdriver.common.by import By

        return self.d.find_element(
            By.XPATH,
            f"//*[@data-cy='operators-prompt-modal']//p[normalize-space()={json.dumps(label)}]"
            f"/ancestor::div[.//{tag}][1]//{tag}",
        )

    def type(self, label: str, text: str):
        """Replace the text of the input labelled ``label``."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.keys import Keys

        for _attempt in range(5):  # the form may re-render under us: type again
            try:
                e = self.wait(lambda: self._input(label), what=f"input {label!r}")
                e.click()
                e.send_keys(Keys.CONTROL, "a")
                e.send_keys(Keys.BACKSPACE)
                e.send_keys(text)
                time.sleep(0.8)  # the form is resolved again on the server
                if self._input(label).get_attribute("value") == text:
                    return
            except StaleElementReferenceException:
                time.sleep(0.5)
        assert self._input(label).get_attribute("value") == text, label

    def add_value(self, label: str, value: str, timeout: float = WAIT_S) -> list[str]:
        """Add ``value`` to the multi-value autocomplete labelled ``label`` as
        a user adds a value that is not among its choices: click into it,
        type the value key by key, press Enter; returns the chips once
        ``value`` is one of them. A form re-rendered under the keys (typed
        text lost or cut) is typed into again; failing, the assertion lists
        every state seen (input text, chips)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        seen = []

        def state():
            try:
                e = self._input(label)
                return e, e.get_attribute("value"), self.chips(label)
            except Exception as ex:  # re-rendered under us
                return None, type(ex).__name__, None

        def note(what):
            _, text, chips = state()
            if not seen or seen[-1][1:] != (what, text, chips):
                seen.append((round(time.time() - start, 1), what, text, chips))

        start = time.time()
        while time.time() - start < timeout:
            self.settle()
            e, text, chips = state()
            note("before typing")
            if chips and value in chips:
                return chips
            if e is None:
                time.sleep(0.5)
                continue
            try:
                e.click()
                focused = self.d.execute_script("return document.activeElement === arguments[0]", e)
            except WebDriverException:  # covered for a moment, or re-rendered under us
                focused = False
            if not focused:
                note("clicked")
                time.sleep(0.5)
                continue
            keys = ActionChains(self.d)
            if text:  # a leftover of an interrupted try: select it and delete it
                keys.key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(
                    Keys.BACKSPACE
                )
            for ch in value:
                keys.send_keys(ch).pause(0.05)
            keys.perform()
            if not self.poll(lambda: state()[1] == value, 3):
                note("typed")
                continue
            ActionChains(self.d).send_keys(Keys.ENTER).perform()
            if self.poll(lambda: value in (state()[2] or []), 5):
                return state()[2]
            note("after Enter")
        raise AssertionError(
            f"could not add {value!r} to {label!r}; states seen "
            f"(seconds, step, input text, chips): {seen}\n"
            f"page text:\n{self.text()[-3000:]}"
        )

    def choose(self, label: str, option: str):
        """Pick ``option`` in the dropdown labelled ``label``."""
        from selenium.webdriver.common.by import By

        box = self.d.find_element(
            By.XPATH,
            f"//*[@data-cy='operators-prompt-modal']//p[normalize-space()={json.dumps(label)}]"
            "/ancestor::div[.//*[@role='combobox']][1]//*[@role='combobox']",
        )
        box.click()
        opt = self.wait(
            lambda: [
                o
                for o in self.d.find_elements(By.XPATH, "//li[@role='option']")
                if o.text.strip().split("\n")[0] == option
            ],
            what=f"option {option!r}",
        )
        opt[0].click()
        time.sleep(0.8)

    def tick(self, label: str):
        from selenium.webdriver.common.by import By

        self.d.find_element(
            By.XPATH,
            f"//*[normalize-space(text())={json.dumps(label)}]"
            "/ancestor::*[.//input[@type='checkbox']][1]//input[@type='checkbox']",
        ).click()
        time.sleep(0.8)

    def button(self, text: str, within=None):
        """The displayed button reading ``text`` (inside ``within`` if given), or None."""
        from selenium.webdriver.common.by import By

        for b in (within or self.d).find_elements(By.TAG_NAME, "button"):
            try:
                if b.is_displayed() and b.text.strip() == text:
                    return b
            except Exception:
                pass
        return None

    def execute_enabled(self) -> bool:
        b = self.button("Execute", within=self.prompt())
        return bool(b) and b.is_enabled()

    def schedule(self):
        """Execute's menu -> Schedule, then the Schedule button."""
        from selenium.webdriver.common.by import By

        arrow = self.button("Execute").find_element(By.XPATH, "./following-sibling::button")
        arrow.click()
        item = self.wait(
            lambda: [
                e
                for e in self.d.find_elements(By.XPATH, "//*[normalize-space(text())='Schedule']")
                if e.is_displayed()
            ],
            what="the Schedule choice",
        )
        item[-1].click()
        self.wait(lambda: self.button("Schedule"), what="the Schedule button").click()

    def close_prompt(self, timeout: float = 30):
        """Close the operator prompt if one is shown (its Done, Close or
        Cancel button) and wait until it is gone."""
        deadline = time.time() + timeout
        while (p := self.prompt()) is not None:
            assert time.time() < deadline, f"the prompt does not close:\n{self.text()[-3000:]}"
            b = next(
                (b for t in ("Done", "Close", "Cancel") if (b := self.button(t, within=p))), None
            )
            if b:
                try:
                    b.click()
                except Exception:  # re-rendered or covered for a moment: look again
                    pass
            self.poll(lambda: self.prompt() is None, 2)


def _fill_run_form(ui: Page, world: dict, label_field: str, attribute_set: str | None = None):
    ui.type("Attribute set", attribute_set or world["three"])
    ui.type("Label field", label_field)
    ui.type("Model", "lazsl-tiny-test")
    ui.type("Pretrained", world["ckpt"])
    ui.type("N crops", "8")
    ui.type("Batch size", "2")
    ui.type("Device", "cpu")


def _check_stages(labels: list, world: dict) -> None:
    """The progress labels seen (a poll may miss a short stage) are stage
    labels of a 6-image run of the tiny model, in the order of the run; the
    per-batch encoding and the final write were seen."""
    n_prompts = sum(len(v) for v in json.loads(pathlib.Path(world["three"]).read_text()).values())
    order = []
    for x in labels:
        if x == f"loading the model lazsl-tiny-test ({world['ckpt']})":
            order.append((0, 0, 0))
        elif x == f"encoding {n_prompts} attribute prompts":
            order.append((1, 0, 0))
        elif m := re.fullmatch(r"(decoding|encoding and scoring) images (\d)-(\d) of 6", x):
            assert int(m.group(3)) == int(m.group(2)) + 1, x  # batches of 2
            order.append((2, int(m.group(2)), m.group(1) == "encoding and scoring"))
        elif m := re.fullmatch(r"writing (\d)/6", x):
            order.append((2, int(m.group(1)), 2))
        else:
            raise AssertionError(f"unexpected progress label {x!r} in {labels}")
    assert order == sorted(order), labels
    assert any(x.startswith("encoding and scoring images") for x in labels), labels
    assert labels[-1] == "writing 6/6", labels


def _summary_line(ds, field: str) -> str:
    """The summary :class:`RunSummary` prints, computed from the database."""
    n = len(ds)
    done = len(ds.exists(field))
    return f"{done}/{n} samples classified into field {field!r}"


def _docs_png(ui: Page, name: str):
    d = os.environ.get("LAZSL_DOCS_SCREENSHOTS")
    if not d:
        return
    from PIL import Image

    raw = artifacts_dir() / f"raw-{name}"
    ui.d.save_screenshot(str(raw))
    dst = pathlib.Path(d) / name
    with Image.open(raw) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            dst, optimize=True
        )
    assert dst.stat().st_size < 500_000


# ----------------------------------------------------------------------- tests
def test_run_lazsl_immediate(world, app, ui):
    """Execute: progress bar with the stages, reload, success notification."""
    ds = world["ds"]
    ui.open_operator("run_lazsl", "Run LaZSL")
    _fill_run_form(ui, world, "lazsl")
    ui.choose("Ground-truth field (checked against the set)", "ground_truth")
    assert ui.execute_enabled()
    # every label the progress bar shows, recorded in the page as it changes
    # (polling from here could miss a short stage)
    ui.d.execute_script(r"""
        window.__lazslLabels = [];
        const re = /(?:^|\n)\s*(\d+)%\s*\n\s*([^\n]*\S)/;
        new MutationObserver(() => {
            const m = document.body.innerText.match(re);
            const l = window.__lazslLabels;
            if (m && (!l.length || l[l.length - 1] !== m[2])) l.push(m[2]);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    """)
    ui.execute()

    # the progress bar: its label goes through the stages while it runs
    labels, shot = [], False
    deadline = time.time() + WAIT_S
    note = None
    while time.time() < deadline:
        t = ui.text()
        m = re.search(r"\n(\d+)%\n([^\n]+)", t)
        if m and (not labels or labels[-1] != m.group(2)):
            labels.append(m.group(2))
            if not shot and m.group(2).startswith("encoding and scoring") and m.group(1) != "0":
                _docs_png(ui, "app_run_progress.png")
                shot = True
        assert TRACEBACK not in t and "Error occurred" not in t, t[-3000:]
        if "samples classified into field 'lazsl'" in t:
            note = t
            break
        time.sleep(0.1)
    assert note, f"no success notification; progress labels: {labels}\n{ui.text()[-2000:]}"
    ds.reload()
    preds = {s["lazsl"].label for s in ds}
    if os.environ.get("LAZSL_DOCS_SCREENSHOTS"):  # the notification over the reloaded grid
        end = time.time() + 5
        while time.time() < end and not all(p in ui.text() for p in preds):
            time.sleep(0.1)
        _docs_png(ui, "app_run_done.png")
    assert _summary_line(ds, "lazsl") in note
    assert len(ds.exists("lazsl")) == len(ds)
    shown = ui.d.execute_script("return window.__lazslLabels")
    _check_stages(shown, world)
    assert set(labels) <= set(shown), (labels, shown)

    # the grid shows the new field without a manual reload: the sidebar lists
    # it and the tiles carry its predicted labels
    ui.close_prompt()
    ui.wait(lambda: "lazsl_crops" in ui.text(), what="the new fields in the sidebar")
    ui.wait(lambda: all(p in ui.text() for p in preds), what=f"predictions {preds}")
    ui.assert_no_traceback()


def test_run_lazsl_scheduled_runs_on_a_delegated_worker(world, app, ui):
    """Schedule from the form; a real ``fiftyone delegated launch`` runs it."""
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = world["ds"]
    dos = DelegatedOperationService()
    before = {o.id for o in dos.list_operations(dataset_name=DATASET)}
    ui.open_operator("run_lazsl", "Run LaZSL")
    assert "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in ui.text()
    assert "fiftyone delegated launch" in ui.text()
    _fill_run_form(ui, world, "scheduled")
    ui.schedule()
    ui.wait_text("Operation successfully scheduled")
    ops = [o for o in dos.list_operations(dataset_name=DATASET) if o.id not in before]
    assert len(ops) == 1 and ops[0].run_state == "queued"
    assert "scheduled" not in ds.get_field_schema()

    env = dict(app.env, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log = open(world["tmp"] / "worker.log", "wb")
    fiftyone_cli = pathlib.Path(sys.executable).with_name("fiftyone")
    worker = subprocess.Popen(
        [str(fiftyone_cli), "delegated", "launch"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    states = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            op = dos.get(ops[0].id)
            st = (op.run_state, op.status.label if op.status else None)
            if not states or states[-1] != st:
                states.append(st)
            if op.run_state in ("completed", "failed") or worker.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        log.close()
    op = dos.get(ops[0].id)
    assert op.run_state == "completed", (states, (world["tmp"] / "worker.log").read_text()[-3000:])
    labels = [s[1] for s in states if s[1]]
    _check_stages(labels, world)
    assert any(x.startswith("decoding images") for x in labels), labels
    ds.reload()
    result = op._doc["result"]["result"]
    assert result["summary"] == _summary_line(ds, "scheduled")
    assert result["num_predicted"] == len(ds.exists("scheduled")) == len(ds)
    assert result["num_failed"] == 0 and result["label_field"] == "scheduled"


def test_run_lazsl_mistakes(world, app, ui):
    """Unknown set, existing label field, gt classes missing from the set:
    the form blocks Execute with its message. Weights unavailable offline: a
    warning in the form, and one plain line after Execute."""
    ui.open_operator("run_lazsl", "Run LaZSL")
    ui.type("Attribute set", "no-such-set")
    ui.wait_text("cannot find attribute set 'no-such-set'")
    assert not ui.execute_enabled()

    _fill_run_form(ui, world, "lazsl")  # the field of the first test's run
    ui.wait_text("field 'lazsl' holds an earlier LaZSL run")
    assert not ui.execute_enabled()
    ui.tick("Replace the outputs of the earlier run on 'lazsl'")
    ui.wait(lambda: "holds an earlier LaZSL run" not in ui.text(), what="the message to go")
    assert ui.execute_enabled()

    ui.type("Attribute set", world["two"])
    ui.choose("Ground-truth field (checked against the set)", "ground_truth")
    ui.wait_text("1 of the 3 classes of 'ground_truth' are not in the attribute set (Bobolink)")
    assert "Only samples whose ground-truth class is in the set" in ui.text()
    assert not ui.execute_enabled()
    ui.tick("Only samples whose ground-truth class is in the set")
    ui.wait(lambda: "are not in the attribute set" not in ui.text(), what="the message to go")

    # the default weights (openai) are not on this offline machine
    ui.type("Label field", "with_openai")
    ui.type("Pretrained", "openai")
    ui.type("Model", "ViT-B-32")
    ui.wait_text("Weights: pretrained weights 'openai' for 'ViT-B-32' are not on this machine")
    assert ui.execute_enabled()  # a warning: the check cannot be sure
    ui.execute()
    msg = "pretrained weights 'openai' for 'ViT-B-32' are not on this machine"
    # the form is gone (no "Weights:" warning): the line is the error notification
    text = ui.wait(
        lambda: "Weights:" not in ui.text() and msg in ui.text() and ui.text(),
        what="the one-line error notification",
    )
    line = next(ln for ln in text.splitlines() if msg in ln)
    from fiftyone_lazsl.core.models import check_weights
    from fiftyone_lazsl.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError) as err:  # the library's own message
        check_weights("ViT-B-32", "openai")
    assert line.strip() == str(err.value).strip()
    ui.assert_no_traceback()
    assert "with_openai" not in world["ds"].get_field_schema()


def test_evaluate_methods(world, app, ui):
    """Execute with the default fields (every LaZSL run): the comparison
    table's top-1 accuracy per field is the database's."""
    from fiftyone_lazsl.fo.evaluate import evaluate_methods  # noqa: F401  (the library the operator calls)

    ds = world["ds"]
    ds.reload()
    ui.open_operator("evaluate_methods", "Compare methods")
    ui.wait_text("lazsl")
    ui.execute()
    ui.wait_text("Methods compared")
    ui.assert_no_traceback()
    ds.reload()
    for field in ("lazsl", "scheduled"):
        acc = sum(s[field].label == s["ground_truth"].label for s in ds) / len(ds)
        row = ui.wait(
            lambda field=field: re.search(rf"\n{field}[ \t]+lazsl[ \t]+([0-9.]+)[^\n]*", ui.text()),
            what=f"row {field}",
        )
        assert row.group(1) == f"{acc:.3f}", (acc, row.group(0))
    ui.close_prompt()


def test_evaluate_methods_refuses_a_field_that_does_not_exist(world, app, ui):
    """A field name that does not exist, typed into the prediction fields:
    the form shows the one-line reason under them and blocks Execute."""
    ui.open_operator("evaluate_methods", "Compare methods")
    before = ui.wait(lambda: ui.chips("Prediction fields"), what="the default prediction fields")
    assert "nope" not in before and "nope" not in world["ds"].get_field_schema()
    chips = ui.add_value("Prediction fields", "nope")
    assert chips == before + ["nope"], (before, chips)
    ui.wait_text(f"dataset {DATASET!r} has no field 'nope'")
    ui.settle()
    assert ui.chips("Prediction fields") == chips  # the form still holds what was typed
    assert not ui.execute_enabled()


def test_audit_labels_switches_to_the_suspects_view(world, app, ui):
    ds = world["ds"]
    ui.open_operator("audit_labels", "Audit labels")
    ui.type("Samples to tag", "2")
    ui.execute()
    ui.wait_text("Label audit")
    ui.assert_no_traceback()
    ds.reload()
    tagged = ds.match_tags("suspect")
    n = len(tagged)
    assert 1 <= n <= 2
    assert "does not exist" not in ui.text()
    ui.close_prompt()
    # the grid now shows the tagged samples only
    ui.wait(lambda: re.search(rf"(^|\n){n} samples?(\n|$)", ui.text()), what=f"{n} samples")


def test_build_attribute_sets_with_local_llm_server(world, app, ui):
    from fiftyone_lazsl.fo import store
    from openai_stub_server import StubOpenAI, attributes_json

    ds = world["ds"]
    script = {c: [attributes_json([f"{c} feather {i}" for i in range(3)])] for c in CLASSES}
    with StubOpenAI(script) as server:
        ui.open_operator("build_attribute_sets", "Build attribute set with an LLM")
        ui.choose("Classes from field", "ground_truth")
        ui.type("LLM model", "stub")
        ui.type("Endpoint base URL", server.base_url)
        ui.type("Set name", "llm_birds")
        ui.execute()
        note = ui.wait_text("attribute set 'llm_birds' stored: 3 classes, 9 attributes")
        assert set(server.auth_headers) == {f"Bearer {LLM_KEY}"}  # the plugin secret
    ui.assert_no_traceback()
    assert "9 attributes" in note
    ds.reload()
    aset = store.load_attribute_set(ds, "llm_birds")
    assert sorted(aset.classes) == sorted(CLASSES)
    assert aset["Bobolink"] == [f"Bobolink feather {i}" for i in range(3)]
    ui.close_prompt()

    # the name is taken now; an unreachable endpoint is one plain line
    ui.open_operator("build_attribute_sets", "Build attribute set with an LLM")
    ui.choose("Classes from field", "ground_truth")
    ui.type("LLM model", "stub")
    ui.type("Set name", "llm_birds")
    ui.wait_text("the dataset already has an attribute set named 'llm_birds'")
    assert not ui.execute_enabled()
    ui.type("Set name", "llm_other")
    ui.type("Endpoint base URL", f"http://127.0.0.1:{free_port()}/v1")
    ui.execute()
    ui.wait(
        lambda: re.search(
            r"(every request to http://127\.0\.0\.1:\d+/v1 failed|"
            r"LLM endpoint http://127\.0\.0\.1:\d+/v1)[^\n]*",
            ui.text(),
        ),
        timeout=180,
        what="the endpoint error",
    )
    ui.assert_no_traceback()
    ds.reload()
    assert not store.has_attribute_set(ds, "llm_other")


def test_import_and_delete_attribute_set(world, app, ui):
    from fiftyone_lazsl.fo import store

    ds = world["ds"]
    ui.open_operator("import_attribute_set", "Import attribute set")
    ui.type("Published set or JSON file", world["two"])
    ui.type("Name on the dataset", "two_birds")
    ui.choose("Check against label field", "ground_truth")
    ui.wait_text("Bobolink")  # the field's classes are not all covered by this file
    assert not ui.execute_enabled()
    ui.type("Published set or JSON file", world["three"])
    ui.wait(lambda: ui.execute_enabled(), what="Execute to be enabled")
    ui.execute()
    ui.wait_text("Attribute set imported")
    ui.assert_no_traceback()
    ds.reload()
    assert store.has_attribute_set(ds, "two_birds")
    assert sorted(store.load_attribute_set(ds, "two_birds").classes) == sorted(CLASSES)
    ui.close_prompt()

    ui.open_operator("delete_attribute_set", "Delete attribute set")
    ui.choose("Attribute set", f"two_birds ({len(CLASSES)} classes)")
    ui.wait_text("tick the box to confirm deleting attribute set 'two_birds'")
    assert not ui.execute_enabled()
    ui.tick("Yes, delete 'two_birds' from this dataset")
    ui.wait(lambda: ui.execute_enabled(), what="Execute to be enabled")
    ui.execute()
    ui.wait(
        lambda: ds.reload() or not store.has_attribute_set(ds, "two_birds"),
        what="the set to be deleted",
    )
    ui.assert_no_traceback()
