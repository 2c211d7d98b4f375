"""In the App: the explanations panel and the crop detections in the
real FiftyOne App, driven in Debian's headless Chromium.

A small dataset of real CUB photos is classified by ``run_lazsl`` (tiny
random-weight open_clip model, the published CUB attribute texts), the App
server runs as a subprocess on localhost with this checkout as a plugin, and
selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (no
browser download). The test opens a sample in the modal, puts the
``lazsl_explanations`` panel beside it, and checks in the DOM:

* the panel's summary and its attribute tables, row by row, equal
  :func:`fiftyone_lazsl.fo.explain.panel_content` for that sample;
* the crop detections' attribute labels (and how many crops carry each) in the
  modal sidebar's ``F_crops`` section (the boxes themselves are drawn on a
  canvas);
* clicking a matched-attribute button filters the grid to
  :func:`~fiftyone_lazsl.fo.explain.matched_attribute_view`'s sample count.

Screenshots go to ``$LAZSL_TEST_ARTIFACTS`` (default ``tests/artifacts/``,
git-ignored). With ``LAZSL_DOCS_SCREENSHOT=<path>`` the sample+panel view is
also saved there (how ``docs/app_screenshot.png`` is made); then
``LAZSL_APP_MODEL`` / ``LAZSL_APP_PRETRAINED`` may name real CLIP weights
instead of the tiny model.

Needs: ``apt-get install -y chromium chromium-driver`` and ``pip install
selenium``; skips with the reason otherwise.
"""

import json
import os
import re
import time

import pytest

from app_server import AppServer, artifacts_dir, browser, chromium_available
from plugin_fixtures import lazsl_plugin  # noqa: F401  (fails fast if the plugin cannot load)

_MISSING = chromium_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"browser test needs Chromium: {_MISSING}"),
]

CLASSES = ["Cardinal", "Indigo Bunting", "Bobolink"]
PER_CLASS = 2
WAIT_S = 120
PANEL_TAB = "[data-cy='panel-tab-lazsl_explanations']"


@pytest.fixture(scope="module")
def classified(shared_data, tmp_path_factory):
    """A persistent dataset of real CUB photos with a LaZSL run in ``lazsl``."""
    import fiftyone as fo

    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.testing import tiny_clip

    attribute_texts = json.loads((shared_data / "attribute_sets" / "cub.json").read_text())
    aset = {c: attribute_texts[c] for c in CLASSES}
    samples = []
    for c in CLASSES:
        folder = shared_data / "images" / "cub" / c
        for f in sorted(os.listdir(folder))[:PER_CLASS]:
            samples.append(
                fo.Sample(filepath=str(folder / f), ground_truth=fo.Classification(label=c))
            )

    model = os.environ.get("LAZSL_APP_MODEL")
    if model:
        pretrained = os.environ.get("LAZSL_APP_PRETRAINED") or None
    else:
        model = tiny_clip.register()
        pretrained = str(
            tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3)
        )

    name = "lazsl-app-browser"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(samples)
    ds.compute_metadata()
    run_lazsl(
        ds,
        aset,
        model=model,
        pretrained=pretrained,
        n_crops=24,
        top_k_crops=4,
        top_attributes=3,
        seed=0,
        batch_size=6,
        device="cpu",
        gt_field="ground_truth",
    )
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app(classified, lazsl_plugin):
    server = AppServer(plugins_dir=str(lazsl_plugin)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(tmp_path):
    with browser(tmp_path / "chromium-profile") as d:
        yield d


def _pick_sample(ds):
    """A sample whose ground truth differs from the prediction (so the panel
    shows both tables), else the first one."""
    from fiftyone_lazsl.fo.explain import explain_sample

    for s in ds:
        if explain_sample(s, "lazsl", "ground_truth")["gt_differs"]:
            return s
    return ds.first()


def _displayed(driver, xpath):
    """The first displayed element matching ``xpath``, or False (for waits)."""
    for e in driver.find_elements("xpath", xpath):
        if e.is_displayed() and e.is_enabled():
            return e
    return False


def _modal(driver, css):
    """The visible element matching ``css`` inside the sample modal (the grid
    behind it has twins): the right-most one."""
    els = [e for e in driver.find_elements("css selector", css) if e.is_displayed()]
    assert els, f"no visible element {css}"
    return max(els, key=lambda e: e.location["x"])


def _open_panel(driver, timeout=WAIT_S, grace_s=3.0):
    """Make sure the sample modal has a ``lazsl_explanations`` tab.

    The App usually adds it by itself, right when the modal shows (it
    remembers the panel); when it has not ``grace_s`` seconds after the modal
    showed, it is added through the modal's "+" (new panel) menu, as a user
    does, retrying until the panel is offered there (a menu opened before
    the plugin's panel was offered is closed first). A menu still open when
    the tab shows is closed."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.time() + timeout
    sample_tab = "[data-cy='panel-tab-fo-sample-modal-plugin']"
    modal_at = None
    while time.time() < deadline:
        if driver.find_elements("css selector", PANEL_TAB):
            _close_menus(driver)
            return
        tabs = driver.find_elements("css selector", sample_tab)
        if tabs and modal_at is None:
            modal_at = time.time()
        if modal_at is not None and time.time() - modal_at > grace_s:
            try:
                items = [
                    e
                    for e in driver.find_elements(
                        "xpath", "//p[normalize-space()='LaZSL explanations']"
                    )
                    if e.is_displayed()
                ]
                if items:
                    items[-1].click()
                else:
                    _close_menus(driver)
                    plus = tabs[0].find_elements(
                        "xpath", "./ancestor::*[2]//*[@data-cy='new-panel-btn']"
                    )
                    if plus:
                        plus[0].click()
            except WebDriverException:  # re-rendered or covered under us: look again
                pass
        time.sleep(0.5)
    raise AssertionError("the lazsl_explanations panel never became available in the sample modal")


def _close_menus(driver):
    """Close open menus (popovers) by clicking beside them, on their backdrop."""
    for b in driver.find_elements("css selector", ".MuiPopover-root .MuiBackdrop-root"):
        try:
            if b.is_displayed():
                driver.execute_script("arguments[0].click();", b)
        except Exception:  # gone already
            pass


def _expand_sidebar_field(driver, field, expected, timeout=WAIT_S):
    """Expand ``field`` in the modal sidebar (re-clicking its arrow while the
    App re-renders) until its section lists every string of ``expected``;
    returns the section's text."""
    arrow = f"[data-cy='sidebar-field-arrow-enabled-{field}']"
    container = f"[data-cy='sidebar-field-container-{field}']"
    deadline = time.time() + timeout
    last_click = 0.0
    text = ""
    while time.time() < deadline:
        try:
            box = _modal(driver, container)
            text = box.find_element("xpath", "./ancestor::*[5]").text
            if all(e in text for e in expected):
                return text
            if "confidence" not in text and time.time() - last_click > 5:
                _modal(driver, arrow).click()
                last_click = time.time()
        except Exception as e:  # re-rendered under us: try again
            text = f"{text}\n({type(e).__name__})"
        time.sleep(1)
    raise AssertionError(f"sidebar field {field} never listed {expected}; last text:\n{text}")


def _split_beside_sample(driver, timeout=WAIT_S):
    """Show the panel in its own split view right of the sample: click the
    panel tab's "Split horizontally" button, unless the App already laid the
    panel out in a separate panel container (it remembers layouts)."""
    deadline = time.time() + timeout
    split_xpath = (
        "//button[@data-cy='panel-tab-lazsl_explanations']/following-sibling::div"
        "//button[@title='Split horizontally']"
    )
    container = "./ancestor::*[@data-cy='panel-container'][1]"
    while time.time() < deadline:
        try:
            tab = _displayed(driver, "//button[@data-cy='panel-tab-lazsl_explanations']")
            sample_tab = _displayed(driver, "//button[@data-cy='panel-tab-fo-sample-modal-plugin']")
            if tab and sample_tab:
                if tab.find_element("xpath", container) != sample_tab.find_element(
                    "xpath", container
                ):
                    tab.click()  # make sure the panel is the active tab of its split
                    return
                split = _displayed(driver, split_xpath)
                if split:
                    split.click()
        except Exception:  # re-rendered under us: try again
            pass
        time.sleep(1)
    raise AssertionError("could not show the panel beside the sample")


def _tables(driver):
    """Every ``<table>`` on the page as ``(header, [[cell text]])``."""
    out = []
    for t in driver.find_elements("tag name", "table"):
        header = [c.text.strip() for c in t.find_elements("css selector", "thead th")]
        rows = [
            [c.text.strip() for c in r.find_elements("css selector", "td")]
            for r in t.find_elements("css selector", "tbody tr")
        ]
        out.append((header, rows))
    return out


def _save_docs_png(src, dst, max_bytes=500_000):
    """Copy screenshot ``src`` to ``dst`` as a palette PNG small enough for the
    repository (< ``max_bytes``)."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            dst, optimize=True
        )
    assert os.path.getsize(dst) < max_bytes, f"{dst} is {os.path.getsize(dst)} bytes"


def _expected_rows(table):
    return [[r["attribute"], r["contribution"], r["crops"], r["ranked"]] for r in table]


def _save_failure(driver, app, tag):
    art = artifacts_dir()
    try:
        driver.save_screenshot(str(art / f"{tag}-failure.png"))
        (art / f"{tag}-failure.html").write_text(driver.page_source)
        (art / f"{tag}-failure.txt").write_text(
            driver.find_element("tag name", "body").text
            + "\n\n--- browser console ---\n"
            + "\n".join(str(e) for e in driver.get_log("browser"))
            + "\n\n--- server log ---\n"
            + app.log_tail(20000)
        )
    except Exception as e:  # the original failure matters more
        print(f"could not save failure artifacts: {e}")


def test_panel_and_crops_in_browser(classified, app, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl.fo.explain import explain_sample, matched_attribute_view, panel_content

    ds = classified
    sample = _pick_sample(ds)
    expl = explain_sample(sample, "lazsl", "ground_truth")
    content = panel_content(expl)
    assert expl["has_result"] and content["predicted_table"]
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(f"{app.url}/datasets/{ds.name}?id={sample.id}")

        # The panel is offered as a tab of the sample modal; split it off to
        # the right of the sample so both are visible.
        _open_panel(driver)
        _split_beside_sample(driver)
        # Loading the panel runs on_load on the server: wait for its summary.
        wait.until(lambda d: "Predicted:" in d.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda d: len(_tables(d)) >= (2 if content["gt_table"] else 1))
        time.sleep(2)  # let the media canvas draw the crop boxes for the screenshot

        shot = artifacts_dir() / "app_panel.png"
        driver.save_screenshot(str(shot))
        docs = os.environ.get("LAZSL_DOCS_SCREENSHOT")
        if docs:
            _save_docs_png(shot, docs)

        body = driver.find_element(By.TAG_NAME, "body").text
        p, r = expl["predicted"], expl["runner_up"]
        assert f"Predicted: {p['label']} (score {p['score']:.4f}" in body
        assert f"Runner-up: {r['label']} (score {r['score']:.4f})" in body
        assert f"Attributes of predicted class {p['label']}" in body
        header = ["Attribute", "Contribution", "Crops", "Top"]
        tables = [t for t in _tables(driver) if t[0] == header]
        assert tables, f"no attribute table in the page; tables: {_tables(driver)}"
        assert tables[0][1] == _expected_rows(content["predicted_table"])
        if content["gt_table"]:
            assert f"Ground truth: {expl['ground_truth']['label']}" in body and "differs" in body
            assert len(tables) == 2 and tables[1][1] == _expected_rows(content["gt_table"])

        # Crop detections: their attribute labels, with counts, in the modal
        # sidebar's lazsl_crops section once expanded.
        labels = [d.label for d in sample["lazsl_crops"].detections]
        assert labels
        section = _expand_sidebar_field(driver, "lazsl_crops", labels)
        for lab in set(labels):
            assert f"{lab}\n{labels.count(lab)}" in section, (lab, section)
        driver.save_screenshot(str(artifacts_dir() / "app_crops_sidebar.png"))

        # A matched-attribute button filters the grid to the samples sharing it.
        matched = content["matched_attributes"]
        assert matched
        counts = {a: matched_attribute_view(ds, "lazsl", a).count() for a in matched}
        attr = min(matched, key=lambda a: (counts[a], matched.index(a)))
        n = counts[attr]
        assert 1 <= n <= len(ds)
        btn = wait.until(lambda d: _displayed(d, f"//button[normalize-space()={json.dumps(attr)}]"))
        btn.click()
        pattern = re.compile(rf"(^|\n){n} samples?(\n|$)")
        wait.until(lambda d: pattern.search(d.find_element(By.TAG_NAME, "body").text))
        driver.save_screenshot(str(artifacts_dir() / "app_matched_view.png"))
    except Exception:
        _save_failure(driver, app, "app_panel")
        raise


# Shared with the other browser tests (tests/test_app_wca.py).
open_panel = _open_panel
split_beside_sample = _split_beside_sample
page_tables = _tables
expected_rows = _expected_rows
save_failure = _save_failure
