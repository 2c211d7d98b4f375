"""Published attribute sets: registry, local copies, hash checks, download."""

import hashlib
import http.server
import json
import os
import re
import socket
import threading

import pytest

from fiftyone_lazsl.core import published
from fiftyone_lazsl.errors import UserError

NAMES = ["cub", "imagenet", "pets", "food101", "places365", "dtd", "eurosat"]


@pytest.fixture(autouse=True)
def _no_env_dirs(monkeypatch, tmp_cache):
    monkeypatch.delenv(published.DIRS_ENV, raising=False)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_lists_the_seven_sets_with_provenance():
    entries = {e["name"]: e for e in published.list_published()}
    assert sorted(entries) == sorted(NAMES)
    for name, e in entries.items():
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), name
        assert e["url"].startswith("https://raw.githubusercontent.com/"), name
        assert e["url"].endswith(f"/descriptors/descriptors_{name}.json"), name
        assert re.search(r"/[0-9a-f]{40}/", e["url"]), f"{name}: URL not pinned to a commit"
        assert e["license"] == "Apache-2.0"
        assert e["citation"] and e["format"] == "descriptors"


def test_registry_hashes_and_counts_match_the_published_files(shared_data):
    for e in published.list_published():
        path = shared_data / "attribute_sets" / f"{e['name']}.json"
        assert _sha(path) == e["sha256"], e["name"]
        assert path.stat().st_size == e["size_bytes"], e["name"]
        data = json.loads(path.read_text(encoding="utf-8"))
        assert len(data) == e["num_classes"], e["name"]
        assert sum(1 for v in data.values() if not v) == e["empty_classes"], e["name"]


def test_fetch_from_local_dirs_and_load(shared_data, tmp_cache):
    src = shared_data / "attribute_sets"
    path = published.fetch_published("cub", local_dirs=[src], download=False)
    assert path == src / "cub.json"
    aset = published.load_published("cub", local_dirs=[src], download=False)
    assert aset.name == "cub"
    assert aset.source == published.get_published_entry("cub")["url"]
    assert len(aset) == 200 and aset.classes[0] == "Black-footed Albatross"
    assert aset.metadata["published"]["sha256"] == _sha(src / "cub.json")
    food = published.load_published("FOOD101", local_dirs=[src], download=False)
    assert food.empty_classes == ["donuts", "french fries", "fried calamari", "mussels", "oysters"]
    assert any("donuts" in w for w in food.warnings)


def test_fetch_from_env_dirs_with_descriptors_prefix(shared_data, tmp_path, monkeypatch):
    d = tmp_path / "mirror"
    d.mkdir()
    (d / "descriptors_eurosat.json").write_bytes(
        (shared_data / "attribute_sets" / "eurosat.json").read_bytes()
    )
    monkeypatch.setenv(published.DIRS_ENV, os.pathsep.join([str(tmp_path / "missing"), str(d)]))
    assert published.fetch_published("eurosat", download=False) == d / "descriptors_eurosat.json"
    assert published.find_local_copy("eurosat") == d / "descriptors_eurosat.json"
    assert published.find_local_copy("dtd") is None


def test_tampered_local_copy_is_rejected_with_both_hashes(shared_data, tmp_path):
    good = (shared_data / "attribute_sets" / "dtd.json").read_bytes()
    bad = good.replace(b"a repeating pattern", b"a repeating pattern!", 1)
    (tmp_path / "dtd.json").write_bytes(bad)
    with pytest.raises(published.HashMismatchError) as e:
        published.fetch_published("dtd", local_dirs=[tmp_path], download=False)
    msg = str(e.value)
    assert str(tmp_path / "dtd.json") in msg
    assert published.get_published_entry("dtd")["sha256"] in msg
    assert hashlib.sha256(bad).hexdigest() in msg
    # a good copy in another folder is still found
    path = published.fetch_published(
        "dtd", local_dirs=[tmp_path, shared_data / "attribute_sets"], download=False
    )
    assert path == shared_data / "attribute_sets" / "dtd.json"


def test_unknown_name_lists_published_sets():
    with pytest.raises(UserError, match="unknown published attribute set 'birds'.*cub.*eurosat"):
        published.fetch_published("birds")
    assert not published.is_published("birds") and published.is_published("Cub")


class _Server:
    """An HTTP server on 127.0.0.1 serving ``body`` at every path, counting requests."""

    def __init__(self, body: bytes):
        outer = self
        self.body, self.requests = body, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/descriptors_eurosat.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _registry_with_url(tmp_path, monkeypatch, name, url):
    with open(published.REGISTRY_PATH, encoding="utf-8") as f:
        reg = json.load(f)
    reg["sets"][name]["url"] = url
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(reg), encoding="utf-8")
    monkeypatch.setattr(published, "REGISTRY_PATH", path)


def test_download_verifies_caches_and_reuses(shared_data, tmp_path, tmp_cache, monkeypatch):
    body = (shared_data / "attribute_sets" / "eurosat.json").read_bytes()
    server = _Server(body)
    try:
        _registry_with_url(tmp_path, monkeypatch, "eurosat", server.url)
        path = published.fetch_published("eurosat")
        assert path == tmp_cache / "attribute_sets" / "eurosat.json"
        assert path.read_bytes() == body and server.requests == 1
        # second call: the verified cached copy, no request
        assert published.fetch_published("eurosat") == path and server.requests == 1
        aset = published.load_published("eurosat")
        assert aset.source == server.url and len(aset) == 10
        # a stale cached copy is ignored and replaced by a fresh download
        path.write_bytes(body + b"\n")
        assert published.fetch_published("eurosat").read_bytes() == body
        assert server.requests == 2
    finally:
        server.close()


def test_download_with_wrong_hash_is_not_stored(shared_data, tmp_path, tmp_cache, monkeypatch):
    body = (
        (shared_data / "attribute_sets" / "eurosat.json").read_bytes().replace(b"forest", b"jungle")
    )
    server = _Server(body)
    try:
        _registry_with_url(tmp_path, monkeypatch, "eurosat", server.url)
        with pytest.raises(published.HashMismatchError) as e:
            published.fetch_published("eurosat")
    finally:
        server.close()
    msg = str(e.value)
    assert server.url in msg
    assert published.get_published_entry("eurosat")["sha256"] in msg
    assert hashlib.sha256(body).hexdigest() in msg
    assert not (tmp_cache / "attribute_sets" / "eurosat.json").exists()
    assert not list((tmp_cache / "attribute_sets").glob("*"))


def test_offline_without_local_copy_says_how_to_supply_the_file(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    url = f"http://127.0.0.1:{port}/descriptors_pets.json"
    _registry_with_url(tmp_path, monkeypatch, "pets", url)
    with pytest.raises(UserError) as e:
        published.fetch_published("pets", timeout=2)
    msg = str(e.value)
    assert not isinstance(e.value, published.HashMismatchError)
    assert url in msg and published.DIRS_ENV in msg and "pets.json" in msg
    with pytest.raises(UserError, match="not available locally.*" + published.DIRS_ENV):
        published.fetch_published("pets", download=False)
