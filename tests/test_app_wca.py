"""WCA in the real App: the ``run_lazsl`` form runs WCA (chosen in the
form's method choice, with WCA's own crop defaults), and the explanations
panel opens its evidence: the predicted class's CuPL sentences with their
contributions, equal to :func:`fiftyone_lazsl.fo.explain.panel_content`.

Real Oxford-IIIT Pet photos, the published CuPL sentences of their classes,
the App server as a subprocess, headless Chromium; tiny random-weights model.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from app_server import AppServer, browser, chromium_available
from plugin_fixtures import lazsl_plugin  # noqa: F401  (fails fast if the plugin cannot load)

_MISSING = chromium_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"browser test needs Chromium: {_MISSING}"),
]

CLASSES = ["Abyssinian", "beagle", "pug"]
DATASET = "lazsl-app-wca"
WAIT_S = 120


@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory):
    import os

    import fiftyone as fo

    from fiftyone_lazsl.testing import tiny_clip

    tmp = tmp_path_factory.mktemp("app-wca")
    cupl = json.loads((shared_data / "attribute_sets" / "cupl" / "pets.json").read_text())
    path = tmp / "pets_cupl.json"
    path.write_text(json.dumps({c: cupl[c] for c in CLASSES}))
    ckpt = tiny_clip.save_checkpoint(tmp / "tiny.pt", seed=3)
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    ds = fo.Dataset(DATASET, persistent=True)
    for c in CLASSES:
        folder = shared_data / "images" / "pets" / c
        for f in sorted(os.listdir(folder))[:2]:
            ds.add_sample(
                fo.Sample(filepath=str(folder / f), ground_truth=fo.Classification(label=c))
            )
    yield {"ds": ds, "set": str(path), "ckpt": str(ckpt)}
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)


@pytest.fixture(scope="module")
def app(world, lazsl_plugin):
    from fiftyone_lazsl.testing import tiny_clip

    env = {"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG), "HF_HUB_OFFLINE": "1"}
    server = AppServer(plugins_dir=str(lazsl_plugin), env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(tmp_path):
    with browser(tmp_path / "chromium-profile") as d:
        yield d


def test_run_wca_from_the_form_and_open_its_evidence(world, app, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fiftyone_lazsl.fo.explain import explain_sample, panel_content
    from fiftyone_lazsl.fo.runs import get_run_config
    from test_app_browser import (
        expected_rows,
        open_panel,
        page_tables,
        save_failure,
        split_beside_sample,
    )
    from test_app_operators import Page

    ds = world["ds"]
    ui = Page(driver, app)

    def field(label):
        """The form input labelled ``label`` (as Page.type finds it)."""
        return driver.find_element(
            By.XPATH,
            f"//p[normalize-space()={json.dumps(label)}]/ancestor::div[.//input][1]//input",
        )

    try:
        driver.get(f"{app.url}/datasets/{DATASET}")
        ui.wait(lambda: re.search(r"\n\d+ samples?(\n|$)", ui.text()), what="the grid")
        ad = ui.button("Dismiss")
        if ad:
            ad.click()
        ui.open_operator("run_lazsl", "Run LaZSL")
        # the method choice offers WCA; choosing it re-resolves the form with
        # WCA's parameters and defaults
        radio = ui.wait(
            lambda: driver.find_element(By.XPATH, "//input[@type='radio' and @value='wca']"),
            what="the wca choice",
        )
        driver.execute_script("arguments[0].click()", radio)
        ui.wait(lambda: field("Image scale log"), what="WCA's parameters in the form")
        assert field("Smallest crop (alpha)").get_attribute("value") == "0.5"
        assert field("N crops").get_attribute("value") == "60"
        assert not [
            e
            for e in driver.find_elements(By.XPATH, "//p[normalize-space()='Theta']")
            if e.is_displayed()
        ]
        ui.type("Attribute set", world["set"])
        ui.type("Label field", "wca")
        ui.type("Model", "lazsl-tiny-test")
        ui.type("Pretrained", world["ckpt"])
        ui.type("N crops", "6")
        ui.type("Batch size", "2")
        ui.type("Device", "cpu")
        assert ui.execute_enabled()
        ui.button("Execute").click()
        ui.wait_text("samples classified into field 'wca'", timeout=300)
        ui.assert_no_traceback()
        ds.reload()
        cfg = get_run_config(ds, "wca")
        assert cfg["method"] == "wca" and cfg["n_crops"] == 6 and cfg["crop_scale"] == [0.5, 0.9]
        assert len(ds.exists("wca")) == len(ds) and len(ds.exists("wca_crops")) == len(ds)

        # the panel opens the WCA evidence of a sample
        sample = ds.first()
        expl = explain_sample(sample, "wca", "ground_truth")
        content = panel_content(expl)
        assert expl["has_result"] and content["predicted_table"]
        driver.get(f"{app.url}/datasets/{DATASET}?id={sample.id}")
        open_panel(driver)
        split_beside_sample(driver)
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: "Predicted:" in d.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda d: len(page_tables(d)) >= (2 if content["gt_table"] else 1))
        time.sleep(1)
        body = driver.find_element(By.TAG_NAME, "body").text
        p = expl["predicted"]
        assert f"Predicted: {p['label']} (score {p['score']:.4f}" in body
        header = ["Attribute", "Contribution", "Crops", "Top"]
        tables = [t for t in page_tables(driver) if t[0] == header]
        assert tables and tables[0][1] == expected_rows(content["predicted_table"])
        # the rows are the predicted class's CuPL sentences
        own = {s.strip() for s in json.loads(open(world["set"]).read())[p["label"]]}
        assert {r[0] for r in tables[0][1]} <= own
    except Exception:
        save_failure(driver, app, "app_wca")
        raise
