"""In the real App (headless Chromium), the explanations
panel's attribute workbench edits the predicted class's attributes, re-scores
the open sample and the view from stored features, and the labels change as
the library computes them."""

import os
import time

import pytest

from app_server import AppServer, chromium_available, browser
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
    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=4)
    name = "lazsl-app-workbench"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p, ground_truth=fo.Classification(label=c)) for p, c in photos])
    aset = {c: [f"trait {i}", f"{c} colouring", "a beak"] for i, (_, c) in enumerate(photos)}
    run_lazsl(ds, aset, model=model, pretrained=ckpt, n_crops=6, seed=1, device="cpu",
              num_workers=0, store_features=str(tmp_path_factory.mktemp("features")))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app(stored, lazsl_plugin):
    from fiftyone_lazsl.testing import tiny_clip

    server = AppServer(plugins_dir=str(lazsl_plugin),
                       env={"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG)}).start()
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
            "el.dispatchEvent(new Event('input', {bubbles: true}));", box, new_text)
        wait.until(lambda d: _input_with_value(d, new_text))
        time.sleep(2)  # the App debounces on_change
        _click(driver, _visible(driver, wait.until(
            lambda d: _displayed(d, "//button[normalize-space()='Re-score this sample']"))))
        wait.until(lambda d: f"With the edit: {expected['label']}" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert f"was {pred}" in body and expected["label"] != pred
        driver.save_screenshot(str(os.path.join(os.environ.get("LAZSL_TEST_ARTIFACTS", "/tmp"),
                                                "app_workbench_sample.png")))

        _click(driver, _visible(driver, wait.until(
            lambda d: _displayed(d, "//button[normalize-space()='Re-score the current view']"))))
        wait.until(lambda d: "View re-scored:" in d.find_element(By.TAG_NAME, "body").text)
        ds.reload()
        got = ds.values("lazsl_edited.label")
        rescore(ds, edit_attribute_set(run, pred, attrs), from_field="lazsl", label_field="expected")
        ds.reload()
        assert got == ds.values("expected.label")
        assert got != ds.values("lazsl.label")
        assert ds[sample.id]["lazsl_edited"].label == expected["label"]
    except Exception:
        _save_failure(driver, app, "app_workbench")
        raise
