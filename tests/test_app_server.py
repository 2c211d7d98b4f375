"""The App server without a browser: the FiftyOne App server starts on
localhost (same private database as the tests, this checkout as a plugin) and
serves the dataset page and the dataset itself, including the LaZSL fields."""

import json
import urllib.parse
import urllib.request

import fiftyone as fo

from app_server import AppServer
from fiftyone_lazsl import run_lazsl
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


def test_app_server_serves_classified_dataset(photo_data):
    paths = [p for p, _ in tiny_clip.some_images(photo_data, per_class=1, max_classes=2)]
    ds = fo.Dataset("app-server-check", overwrite=True)
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    run_lazsl(
        ds,
        str(photo_data / "attribute_sets" / "cub.json"),
        model=tiny_clip.TINY_MODEL,
        pretrained=None,
        n_crops=4,
        num_workers=0,
    )

    with AppServer() as app:
        with urllib.request.urlopen(
            f"{app.url}/datasets/{urllib.parse.quote(ds.name)}", timeout=30
        ) as r:
            assert r.status == 200
            page = r.read().decode("utf-8", "replace")
        assert "<html" in page.lower() and "fiftyone" in page.lower()

        query = {
            "query": f'query {{ dataset(name: "{ds.name}") {{ name sampleFields {{ path }} }} }}'
        }
        req = urllib.request.Request(
            f"{app.url}/graphql",
            data=json.dumps(query).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            data = json.loads(r.read())
    assert data.get("errors") is None, data
    got = data["data"]["dataset"]
    assert got["name"] == ds.name
    fields = {f["path"] for f in got["sampleFields"]}
    assert {"lazsl", "lazsl_crops", "lazsl_attributes"} <= fields
    ds.delete()
