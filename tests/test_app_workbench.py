"""In the real App (headless Chromium), the explanations
panel's attribute workbench edits the predicted class's attributes, re-scores
the open sample and the view from stored features, and the labels change as
the library computes them."""

import json
import os
import time

import pytest

from app_server import AppServer, artifacts_dir, browser, chromium_available
from plugin_fixtures import lazsl_plugin  # noqa: F401

_MISSING = chromium_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"browser test needs Chromium: {_MISSING}"),
]
WAIT_S = 120


@pytest.fixture(scope="module")
def stored(shared_data, tmp_path_factory):
    import fiftyone as fo

    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.testing import tiny_clip

    model = tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3))
    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=4)
    name = "lazsl-app-workbench"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(
        [fo.Sample(filepath=p, ground_truth=fo.Classification(label=c)) for p, c in photos]
    )
    ds.compute_metadata()
    texts = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    classes = list(dict.fromkeys(c for _, c in photos))
    aset = {
        c: [f"trait {i}", f"{c} colouring", "a beak"] + texts[c][:2] for i, c in enumerate(classes)
    }
    kw = dict(
        model=model,
        pretrained=ckpt,
        n_crops=12,
        seed=1,
        device="cpu",
        num_workers=0,
        gt_field="ground_truth",
    )
    # dclip first, lazsl last: the panel must open on lazsl (the latest run)
    run_lazsl(ds, aset, label_field="dclip", method="dclip", **kw)
    run_lazsl(ds, aset, store_features=str(tmp_path_factory.mktemp("features")), **kw)
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.store import save_attribute_set

    save_attribute_set(ds, AttributeSet.from_dict(aset), "birds")
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app(stored, lazsl_plugin):
    from fiftyone_lazsl.testing import tiny_clip

    server = AppServer(
        plugins_dir=str(lazsl_plugin), env={"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG)}
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(tmp_path):
    with browser(tmp_path / "chromium-profile") as d:
        yield d


def _input_with_value(driver, value):
    """The visible input holding ``value`` in the sample modal (the grid
    behind it may hold a twin): the right-most one."""
    found = []
    for e in driver.find_elements("tag name", "input"):
        try:
            if e.is_displayed() and e.get_attribute("value") == value:
                found.append(e)
        except Exception:  # noqa: BLE001 -- re-rendered
            pass
    return max(found, key=lambda e: e.location["x"]) if found else False


def _visible(driver, el):
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    time.sleep(0.5)
    return el


def _click(driver, el):
    """Click; through the page's script if chromedriver finds it covered."""
    from selenium.common.exceptions import ElementNotInteractableException

    try:
        el.click()
    except ElementNotInteractableException:
        driver.execute_script("arguments[0].click();", el)


def _body(driver):
    return driver.find_element("tag name", "body").text


def _type_keys(driver, text, pause=0.12):
    """Type ``text`` key by key into the focused element, as a person types
    (real key events, spaced so the App's debounced events fire in between)."""
    from selenium.webdriver.common.action_chains import ActionChains

    for ch in text:
        ActionChains(driver).send_keys(ch).perform()
        time.sleep(pause)


def _dismiss_banner(driver):
    """Close the App's "Explore Enterprise" banner if it is shown."""
    for b in driver.find_elements("tag name", "button"):
        try:
            if b.is_displayed() and b.text.strip() == "Dismiss":
                b.click()
        except Exception:  # noqa: BLE001
            pass


def _close_popovers(driver, timeout=10):
    """Close menus left open (e.g. the modal's "new panel" menu after the
    panel was added): click their backdrop, as a user clicks beside a menu."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        drops = [
            b
            for b in driver.find_elements("css selector", ".MuiPopover-root .MuiBackdrop-root")
            if b.is_displayed()
        ]
        if not drops:
            return
        for b in drops:
            try:
                driver.execute_script("arguments[0].click();", b)
            except Exception:  # noqa: BLE001 -- gone already
                pass
        time.sleep(0.3)


def _focus_end(driver, el):
    """Click into ``el`` and put the caret at its end (End key)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _dismiss_banner(driver)
    _close_popovers(driver)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    try:
        el.click()
    except Exception:  # noqa: BLE001 -- chromedriver may call it covered
        pass
    if not driver.execute_script("return document.activeElement === arguments[0];", el):
        driver.execute_script("arguments[0].focus();", el)
    ActionChains(driver).send_keys(Keys.END).perform()
    active = driver.execute_script(
        "const a = document.activeElement; return a === arguments[0] ? 'ok' : "
        "(a ? a.outerHTML.slice(0, 300) : 'none');",
        el,
    )
    assert active == "ok", f"could not put the focus into the text field; active: {active}"


def _stable(driver, get, seconds=4.0, every=0.25):
    """``get()`` sampled for ``seconds``: every value seen (a value that
    flips between two states shows up as several)."""
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            v = get()
        except Exception:  # noqa: BLE001 -- re-rendered under us
            v = None
        if not seen or seen[-1] != v:
            seen.append(v)
        time.sleep(every)
    return seen


def _docs_image(driver, name):
    """Save the page as ``docs/images/<name>`` (palette PNG, < 300 KB) when
    ``LAZSL_DOCS_IMAGES`` is set (how docs/app-tour.md's images are made)."""
    from app_server import ROOT
    from test_app_browser import _save_docs_png

    if not os.environ.get("LAZSL_DOCS_IMAGES"):
        return
    shot = artifacts_dir() / name
    driver.save_screenshot(str(shot))
    _save_docs_png(shot, str(ROOT / "docs" / "images" / name), max_bytes=300_000)


def test_workbench_typing_keystrokes_and_save(stored, app, driver):
    """Type into the workbench key by key (End, then "; black legs"): the text
    keeps every key, focus stays, the field does not flip; the result names the
    edited class's new score and rank; the saved set holds exactly that class's
    typed attributes (and every other class unchanged)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl.fo.explain import explain_sample
    from fiftyone_lazsl.fo.store import load_attribute_set
    from fiftyone_lazsl.fo.workbench import edit_attribute_set, rescore_sample, run_attribute_set
    from test_app_browser import _displayed, _open_panel, _save_failure, _split_beside_sample

    ds = stored
    sample = ds.first()
    run = run_attribute_set(ds, "lazsl")
    cls = sample["lazsl"].label
    old_text = "; ".join(run.attributes[cls])
    new_text = old_text + "; black legs"
    wait = WebDriverWait(driver, WAIT_S)
    try:
        # the grid: crop detections start hidden (their sidebar checkbox is off)
        driver.get(f"{app.url}/datasets/{ds.name}")
        wait.until(lambda d: f"{len(ds)} samples" in _body(d))
        _dismiss_banner(driver)
        boxes = wait.until(
            lambda d: d.find_elements("css selector", "[data-cy='checkbox-lazsl_crops'] input")
        )
        assert not any(b.is_selected() for b in boxes)
        # the run's prediction is shown, primitives are not (FiftyOne's default)
        for name, on in (("lazsl", True), ("filepath", False)):
            cb = driver.find_elements("css selector", f"[data-cy='checkbox-{name}'] input")
            assert cb and all(b.is_selected() == on for b in cb), name
        if os.environ.get("LAZSL_DOCS_IMAGES"):
            time.sleep(2)  # let the tiles draw for the screenshot
        _docs_image(driver, "app-grid.png")

        driver.get(f"{app.url}/datasets/{ds.name}?id={sample.id}")
        _open_panel(driver)
        _split_beside_sample(driver)
        # (which run the panel opens on is checked by the split test)
        wait.until(lambda d: _dropdown_value(d, "LaZSL field"))
        if _dropdown_value(driver, "LaZSL field") != "lazsl":
            _close_popovers(driver)
            _choose(driver, "LaZSL field", "lazsl", wait)
        wait.until(lambda d: "Attribute workbench" in _body(d))
        p = explain_sample(sample, "lazsl", "ground_truth")["predicted"]
        wait.until(lambda d: f"Predicted: {p['label']} (score {p['score']:.4f}" in _body(d))
        # for the tour's picture: the crops ticked in the sample's sidebar
        boxes = [
            e
            for e in driver.find_elements("css selector", "[data-cy='checkbox-lazsl_crops']")
            if e.is_displayed()
        ]
        if boxes and os.environ.get("LAZSL_DOCS_IMAGES"):
            _click(driver, max(boxes, key=lambda e: e.location["x"]))
            time.sleep(2)  # let the canvas draw the boxes
        _docs_image(driver, "app-sample-panel.png")

        box = wait.until(lambda d: _input_with_value(d, old_text))
        _focus_end(driver, box)
        _type_keys(driver, "; black legs")
        try:
            box = WebDriverWait(driver, 30).until(lambda d: _input_with_value(d, new_text))
        except Exception:
            now = driver.execute_script(
                "const a = document.activeElement; return [a && a.tagName, a && a.value];"
            )
            held = [
                e.get_attribute("value")
                for e in driver.find_elements("tag name", "input")
                if old_text[:8] in (e.get_attribute("value") or "")
            ]
            raise AssertionError(
                f"typed text not kept: active element {now}; field holds {held}"
            ) from None
        seen = _stable(driver, lambda: _input_with_value(driver, new_text) is not False)
        assert seen == [True], f"the text field changed after typing: {seen}"
        active = driver.execute_script(
            "return document.activeElement && document.activeElement.value"
        )
        assert active == new_text, f"focus left the text field (active element value {active!r})"

        _click(
            driver,
            _visible(
                driver,
                wait.until(
                    lambda d: _displayed(d, "//button[normalize-space()='Re-score this sample']")
                ),
            ),
        )
        edited = edit_attribute_set(run, cls, run.attributes[cls] + ["black legs"])
        r = rescore_sample(sample, "lazsl", edited, class_name=cls)
        c = r["class"]
        wait.until(lambda d: f"With the edit of {cls}: predicted {r['label']}" in _body(d))
        assert f"{cls}: score {c['score']:.4f}, rank {c['rank']} of {c['num_classes']}" in _body(
            driver
        )
        result = [
            e
            for e in driver.find_elements("xpath", "//*[contains(text(), 'With the edit of')]")
            if e.is_displayed()
        ]
        if result:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", result[-1])
            time.sleep(0.5)
        _docs_image(driver, "app-workbench.png")

        name_box = wait.until(
            lambda d: _displayed(
                d, "//*[self::p or self::label][contains(., 'Save as')]/following::input[1]"
            )
        )
        _focus_end(driver, name_box)
        _type_keys(driver, "crow-edit", pause=0.05)
        wait.until(lambda d: _input_with_value(d, "crow-edit"))
        _click(
            driver,
            _visible(
                driver,
                wait.until(
                    lambda d: _displayed(
                        d, "//button[normalize-space()='Save edited attribute set']"
                    )
                ),
            ),
        )
        wait.until(lambda d: "Saved attribute set 'crow-edit'" in _body(d))
        ds.reload()  # saved by the App server's process
        saved = load_attribute_set(ds, "crow-edit")
        assert saved.attributes[cls] == run.attributes[cls] + ["black legs"]
        assert all(saved.attributes[k] == v for k, v in run.attributes.items() if k != cls)
    except Exception:
        _save_failure(driver, app, "app_workbench_typing")
        raise


def _dropdown_value(driver, label):
    """The value shown by the panel dropdown labelled ``label`` (right-most:
    the modal's)."""
    boxes = [
        e
        for e in driver.find_elements(
            "xpath",
            f"//*[self::p or self::label][normalize-space()={json.dumps(label)}]/following::*[@role='combobox'][1]",
        )
        if e.is_displayed()
    ]
    return max(boxes, key=lambda e: e.location["x"]).text.strip() if boxes else None


def _choose(driver, label, option, wait):
    box = wait.until(
        lambda d: [
            e
            for e in d.find_elements(
                "xpath",
                f"//*[self::p or self::label][normalize-space()={json.dumps(label)}]/following::*[@role='combobox'][1]",
            )
            if e.is_displayed()
        ]
    )
    _click(driver, max(box, key=lambda e: e.location["x"]))
    opt = wait.until(
        lambda d: [
            o
            for o in d.find_elements("xpath", "//li[@role='option']")
            if o.is_displayed() and o.text.strip() == option
        ]
    )
    opt[0].click()


def test_panel_field_stays_after_split_and_between_samples(stored, app, driver):
    """Choose the other run in the panel, split the panel off: the field stays
    (sampled for several seconds) and the panel shows that run; opening
    another sample (a new page and panel) keeps the choice."""
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl.fo.explain import explain_sample
    from test_app_browser import _displayed, _open_panel, _save_failure, _split_beside_sample

    ds = stored
    a, b = ds.first(), ds.last()
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(f"{app.url}/datasets/{ds.name}?id={a.id}")
        _open_panel(driver)
        _close_popovers(driver)
        _click(
            driver,
            wait.until(
                lambda d: _displayed(d, "//button[@data-cy='panel-tab-lazsl_explanations']")
            ),
        )
        wait.until(lambda d: _dropdown_value(d, "LaZSL field") == "lazsl")
        _choose(driver, "LaZSL field", "dclip", wait)
        p = explain_sample(a, "dclip", "ground_truth")["predicted"]
        wait.until(lambda d: f"Predicted: {p['label']} (score {p['score']:.4f}" in _body(d))
        _split_beside_sample(driver)
        seen = _stable(driver, lambda: _dropdown_value(driver, "LaZSL field"), seconds=8)
        assert seen == ["dclip"], f"the panel's field changed by itself: {seen}"
        assert f"Predicted: {p['label']} (score {p['score']:.4f}" in _body(driver)

        driver.get(f"{app.url}/datasets/{ds.name}?id={b.id}")
        _open_panel(driver)
        _close_popovers(driver)
        _click(
            driver,
            wait.until(
                lambda d: _displayed(d, "//button[@data-cy='panel-tab-lazsl_explanations']")
            ),
        )
        pb = explain_sample(b, "dclip", "ground_truth")["predicted"]
        wait.until(lambda d: f"Predicted: {pb['label']} (score {pb['score']:.4f}" in _body(d))
        assert _dropdown_value(driver, "LaZSL field") == "dclip"
        # back to lazsl for the other tests (the choice is remembered per dataset)
        _choose(driver, "LaZSL field", "lazsl", wait)
        pl = explain_sample(b, "lazsl", "ground_truth")["predicted"]
        wait.until(lambda d: f"Predicted: {pl['label']} (score {pl['score']:.4f}" in _body(d))
    except Exception:
        _save_failure(driver, app, "app_panel_split")
        raise


def test_workbench_edit_rescore_view_in_browser(stored, app, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl import rescore
    from fiftyone_lazsl.fo.workbench import edit_attribute_set, run_attribute_set
    from test_app_browser import _displayed, _open_panel, _save_failure, _split_beside_sample
    from test_workbench import label_changing_edit

    ds = stored
    sample = ds.first()
    run = run_attribute_set(ds, "lazsl")
    pred, attrs, expected = label_changing_edit(sample, "lazsl", run)
    old_text = "; ".join(run.attributes[pred])
    new_text = "; ".join(attrs)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(f"{app.url}/datasets/{ds.name}?id={sample.id}")
        _open_panel(driver)
        _split_beside_sample(driver)
        wait.until(lambda d: "Attribute workbench" in d.find_element(By.TAG_NAME, "body").text)
        box = _visible(driver, wait.until(lambda d: _input_with_value(d, old_text)))
        # chromedriver calls the panel's text field "not interactable" for
        # clicks and keys (the modal's overlay); set its value the way React
        # sees typing: the native value setter, then an input event
        driver.execute_script(
            "const el = arguments[0];"
            "const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;"
            "el.focus(); set.call(el, arguments[1]);"
            "el.dispatchEvent(new Event('input', {bubbles: true}));",
            box,
            new_text,
        )
        wait.until(lambda d: _input_with_value(d, new_text))
        time.sleep(2)  # the App debounces on_change
        _click(
            driver,
            _visible(
                driver,
                wait.until(
                    lambda d: _displayed(d, "//button[normalize-space()='Re-score this sample']")
                ),
            ),
        )
        wait.until(
            lambda d: (
                f"With the edit of {pred}: predicted {expected['label']}"
                in d.find_element(By.TAG_NAME, "body").text
            )
        )
        body = driver.find_element(By.TAG_NAME, "body").text
        assert f"was {pred}" in body and expected["label"] != pred
        driver.save_screenshot(
            str(
                os.path.join(
                    os.environ.get("LAZSL_TEST_ARTIFACTS", "/tmp"), "app_workbench_sample.png"
                )
            )
        )

        _click(
            driver,
            _visible(
                driver,
                wait.until(
                    lambda d: _displayed(
                        d, "//button[normalize-space()='Re-score the current view']"
                    )
                ),
            ),
        )
        wait.until(lambda d: "View re-scored" in d.find_element(By.TAG_NAME, "body").text)
        ds.reload()
        got = ds.values("lazsl_edited.label")
        rescore(
            ds, edit_attribute_set(run, pred, attrs), from_field="lazsl", label_field="expected"
        )
        ds.reload()
        assert got == ds.values("expected.label")
        assert got != ds.values("lazsl.label")
        assert ds[sample.id]["lazsl_edited"].label == expected["label"]
    except Exception:
        _save_failure(driver, app, "app_workbench")
        raise


def _hover_tooltip(driver, field, timeout=60):
    """Move the mouse over the top-left of the sample's canvas (where the App
    draws classification pills, one under the other), point by point, until
    the label tooltip of ``field`` shows; returns its text. Once a pill's
    tooltip shows at some x, the rows below are tried at that x first (the
    other pills are in the same column); a sweep that misses tries every
    point."""
    from selenium.webdriver.common.action_chains import ActionChains

    def tooltip_at(canvas, w, h, x, y):
        try:
            ActionChains(driver).move_to_element_with_offset(
                canvas, x - w // 2, y - h // 2
            ).perform()
        except Exception:  # noqa: BLE001 -- moved under us
            return None
        titles = [
            t
            for t in driver.find_elements("css selector", "[data-cy='sample-canvas-tooltip-title']")
            if t.is_displayed()
        ]
        return titles[0].text.strip() if titles else None

    deadline = time.time() + timeout
    shortcut = True  # alternates: a sweep that missed with it is followed by a full one
    while time.time() < deadline:
        canvases = [c for c in driver.find_elements("tag name", "canvas") if c.is_displayed()]
        if canvases:
            canvas = max(canvases, key=lambda c: c.size["width"] * c.size["height"])
            w, h = canvas.size["width"], canvas.size["height"]
            xs = list(range(8, min(240, w), 24))
            pill_x = None
            for y in range(6, min(160, h), 8):
                for x in [pill_x] if shortcut and pill_x is not None else xs:
                    title = tooltip_at(canvas, w, h, x, y)
                    if title is not None and pill_x is None:
                        pill_x = x
                    if title == field:
                        content = driver.find_element(
                            "css selector", "[data-cy='sample-canvas-tooltip-content']"
                        )
                        return content.text
            shortcut = not shortcut
        time.sleep(1)
    raise AssertionError(f"no tooltip of {field!r} found over the sample")


def test_prediction_pill_tooltip_reads(stored, app, driver):
    """Hovering the prediction's pill in the sample view shows readable
    attributes: the evidence summary, no "[object Object]"."""
    from test_app_browser import _save_failure

    ds = stored
    sample = ds.first()
    try:
        driver.get(f"{app.url}/datasets/{ds.name}?id={sample.id}")
        _dismiss_banner(driver)
        text = _hover_tooltip(driver, "lazsl")
        assert "[object Object]" not in text, text
        summary = sample["lazsl"]["evidence_summary"]
        assert "evidence_summary" in text and summary.split(":")[0] in text, text
        assert sample["lazsl"].label in text
    except Exception:
        _save_failure(driver, app, "app_tooltip")
        raise


def test_rescore_form_mistakes(stored, app, driver):
    """The rescore_lazsl form names the mistake and keeps Execute disabled for
    the label fields run_lazsl's form refuses; no traceback. Then the audit's
    result (for the tour's screenshot)."""
    from fiftyone_lazsl.errors import UserError
    from fiftyone_lazsl.fo.apply import check_label_field
    from test_app_operators import Page

    ds = stored

    class _Page(Page):
        def load(self):
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.keys import Keys

            self.d.get(f"{self.app.url}/datasets/{ds.name}")
            self.wait(lambda: f"{len(ds)} samples" in self.text(), what="the grid")
            _dismiss_banner(self.d)
            # the App may reopen the sample of the earlier test: close it
            for _ in range(10):
                if not [
                    m
                    for m in self.d.find_elements("css selector", "[data-cy='modal']")
                    if m.is_displayed()
                ]:
                    break
                ActionChains(self.d).send_keys(Keys.ESCAPE).perform()
                time.sleep(0.5)

    ui = _Page(driver, app)
    try:
        ui.load()
        ui.open_operator("rescore_lazsl", "Re-score from stored features")
        ui.type("Attribute set", "birds")
        for field in ("a.b", "ground_truth", "lazsl_attributes"):
            with pytest.raises(UserError) as e:
                check_label_field(ds, field)
            line = str(e.value).splitlines()[0]
            ui.type("Label field", field)
            ui.wait_text(line)
            assert not ui.execute_enabled(), field
            ui.assert_no_traceback()
        ui.type("Label field", "lazsl_rescored")
        ui.wait(lambda: ui.execute_enabled(), what="Execute enabled for a good field")
        ui.close_prompt()

        ui.open_operator("audit_labels", "Audit labels")
        ui.type("Samples to tag", "3")
        ui.button("Execute").click()
        ui.wait_text("Label audit")
        ui.assert_no_traceback()
        if os.environ.get("LAZSL_DOCS_IMAGES"):
            time.sleep(1)  # let the result draw for the screenshot
        _docs_image(driver, "app-audit.png")
        ui.close_prompt()
    except Exception:
        ui.save_failure("app_rescore_form")
        raise


_PANEL_FIT_JS = """
const r = e => { const b = e.getBoundingClientRect();
  return {left: b.left, right: b.right, top: b.top, bottom: b.bottom}; };
const shown = Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null);
// the panel's scroll box: the nearest ancestor that scrolls sideways
const panelBox = t => { let e = t.parentElement;
  while (e && !['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) e = e.parentElement;
  return e; };
const tables = shown.map(t => {
  const c = t.parentElement, box = panelBox(c);
  return {header: Array.from(t.querySelectorAll('thead th')).map(h => h.textContent.trim()),
          table: r(t), panel: box ? r(box) : null,
          scrollWidth: box ? box.scrollWidth : null, clientWidth: box ? box.clientWidth : null};
});
const tops = [];
shown.forEach(t => t.querySelectorAll('thead th').forEach(h => {
  if (h.textContent.trim() === 'Top') tops.push(r(h)); }));
const nav = document.querySelector("[data-cy='nav-right-button']");
return {tables: tables, tops: tops, arrow: nav ? r(nav.parentElement) : null};
"""


def _overlap(a, b):
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def test_panel_tables_fit_split_panel(stored, app, driver):
    """Open a sample and split the panel beside it: every table of the panel
    fits its panel container (no horizontal overflow) and the "Top" column's
    header is clear of the panel's right 4rem (where the modal draws its
    next-sample arrow)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl.fo.explain import explain_sample
    from test_app_browser import _displayed, _open_panel, _save_failure, _split_beside_sample

    ds = stored
    a = ds.first()
    wait = WebDriverWait(driver, WAIT_S)
    driver.set_window_size(1280, 800)  # a laptop screen: the split panel is narrow
    try:
        driver.get(f"{app.url}/datasets/{ds.name}?id={a.id}")
        _open_panel(driver)
        _close_popovers(driver)
        _click(
            driver,
            wait.until(
                lambda d: _displayed(d, "//button[@data-cy='panel-tab-lazsl_explanations']")
            ),
        )
        wait.until(lambda d: _dropdown_value(d, "LaZSL field") == "lazsl")
        p = explain_sample(a, "lazsl", "ground_truth")["predicted"]
        wait.until(lambda d: f"Predicted: {p['label']} (score {p['score']:.4f}" in _body(d))
        _split_beside_sample(driver)
        wait.until(lambda d: d.execute_script(_PANEL_FIT_JS).get("tops"))
        time.sleep(2)  # let the split's layout settle
        m = driver.execute_script(_PANEL_FIT_JS)
        for t in m["tables"]:
            assert t["scrollWidth"] <= t["clientWidth"] + 1, f"table {t['header']} overflows: {t}"
            assert t["panel"] and t["table"]["right"] <= t["panel"]["right"] + 1, (
                f"table {t['header']} is wider than its panel: {m}"
            )
        # the App draws the arrow 0.75rem from the panel's right edge, 3rem wide
        arrow_left = m["tables"][0]["panel"]["right"] - 3.75 * 16
        for top in m["tops"]:
            assert top["right"] <= arrow_left, (
                f"the 'Top' header {top} reaches under the arrow (x > {arrow_left})"
            )
        _docs_image(driver, "panel-split.png")
    except Exception:
        _save_failure(driver, app, "app_panel_fit")
        raise
