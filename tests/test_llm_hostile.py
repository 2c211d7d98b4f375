"""Hostile and unusual LLM answers, through ``fiftyone-lazsl attributes
generate`` run as a process against a real local HTTP server: the key never
reaches disk or the dataset, answers are bounded in size, every form of chat
completion the OpenAI API and compatible servers send is read, anything else
is one line, and a cache that cannot be written loses nothing."""

import base64
import json
import os
import subprocess
import uuid

import fiftyone as fo
import pytest

from cli_helpers import EXE, one_error_line
from fiftyone_lazsl.fo import store
from openai_stub_server import (
    StubOpenAI,
    attributes_json,
    completion,
    event_stream,
    gzip_bomb,
    raw,
    status,
)

LABELS = ["crow", "raven", "heron"]


@pytest.fixture
def dataset():
    ds = fo.Dataset(f"lazsl-hostile-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nonexistent/{i}.jpg", gt=fo.Classification(label=lab))
            for i, lab in enumerate(LABELS)
        ]
    )
    yield ds
    if fo.dataset_exists(ds.name):
        fo.delete_dataset(ds.name)


def generate(server, tmp_path, key, *extra, dataset=None, cache=None, env=None):
    """Run ``attributes generate`` as a process; ``(rc, stdout, stderr, out path)``."""
    out = tmp_path / "set.json"
    args = [
        EXE,
        "attributes",
        "generate",
        "--out",
        str(out),
        "--llm-model",
        "m",
        "--base-url",
        server.base_url,
        "--max-retries",
        "0",
        "--timeout",
        "20",
        "--concurrency",
        "1",
    ]
    if dataset is not None:
        args += ["--dataset", dataset.name, "--field", "gt", "--name", "gen"]
    else:
        classes = tmp_path / "classes.txt"
        classes.write_text("\n".join(LABELS) + "\n")
        args += ["--classes", str(classes)]
    e = dict(os.environ, OPENAI_API_KEY=key, FIFTYONE_LAZSL_CACHE=str(cache or tmp_path / "cache"))
    e.pop("OPENAI_BASE_URL", None)
    e.update(env or {})
    p = subprocess.run(args + list(extra), capture_output=True, text=True, env=e, timeout=300)
    return p.returncode, p.stdout, p.stderr, out


def files_under(*roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
        for d, _, names in os.walk(root):
            for n in names:
                yield os.path.join(d, n)


def forms_of(key):
    """The key and the encodings the server echoes it in."""
    return [
        key,
        base64.b64encode(key.encode()).decode(),
        base64.b64encode(f"Bearer {key}".encode()).decode(),
    ]


# ------------------------------------------------------------- the API key
@pytest.mark.parametrize(
    "key", ["correct horse battery staple 42", "sk-proj-ECHOkey0123456789abcdefXYZ"]
)
def test_an_echoed_key_never_reaches_disk_or_the_dataset(key, dataset, tmp_path):
    script = {
        # the key in every shape a careless server may echo it
        "crow": [
            attributes_json(
                [
                    "black plumage",
                    "auth {AUTHORIZATION}",
                    "key {KEY}",
                    "b64 {KEY_B64}",
                    "a stout bill",
                ]
            )
        ],
        "raven": [
            raw(
                '{"choices": [{"index": 0, "message": {"role": "assistant", '
                '"content": "{\\"attributes\\": [\\"shaggy throat\\", '
                '\\"escaped {KEY_U}\\"]}"}}]}'
            )
        ],
        # an error that echoes the header (the class fails with a warning)
        "heron": [status(500, "bad gateway", echo_auth=True)],
    }
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, key, dataset=dataset)
        assert all(h == f"Bearer {key}" for h in server.auth_headers)  # it was sent
    assert rc == 0, err
    written = json.loads(path.read_text())
    assert written["crow"][0] == "black plumage" and "a stout bill" in written["crow"]
    assert "shaggy throat" in written["raven"]
    dataset.reload()
    stored = store.load_attribute_set(dataset, "gen")
    texts = [
        out,
        err,
        json.dumps(stored.to_dict()),
        json.dumps(stored.warnings),
        json.dumps(stored.metadata),
    ]
    files = list(files_under(str(tmp_path)))
    assert any(f.endswith(".json") and "cache" in f for f in files)  # the cache was written
    texts += [
        open(f, encoding="utf-8", errors="replace").read()
        for f in files
        if not f.endswith("classes.txt")
    ]
    # the dataset document itself, as MongoDB holds it
    texts.append(json.dumps(fo.load_dataset(dataset.name).info, default=str))
    for text in texts:
        for form in forms_of(key):
            assert form not in text
    assert written["crow"][1].startswith("auth") and written["crow"][2].startswith("key")


# ---------------------------------------------------------- bounded reads
def test_a_gzip_bomb_is_refused_in_one_line(tmp_path):
    script = {name: [gzip_bomb(200 << 20)] for name in LABELS}
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k")
    line = one_error_line(err, "attributes")
    assert "larger than 1024 KiB once decompressed" in line
    assert rc == 2 and not path.exists()


def test_a_bomb_for_one_class_leaves_the_others(tmp_path):
    script = {
        "crow": [gzip_bomb(200 << 20)],
        "raven": [attributes_json(["shaggy throat"])],
        "heron": [
            raw(
                json.dumps(
                    {
                        "choices": [
                            {"message": {"content": json.dumps({"attributes": ["long legs"]})}}
                        ]
                    }
                ),
                encoding="gzip",
            )
        ],
    }
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k")
    assert rc == 0, err
    written = json.loads(path.read_text())
    assert written == {"crow": [], "raven": ["shaggy throat"], "heron": ["long legs"]}
    assert "larger than 1024 KiB" in err


# ------------------------------------------------------- answers, one parser
ACCEPTED = {
    "parts": (
        completion(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": '{"attributes": ["glossy black feathers",'},
                    {"type": "text", "text": ' "wedge-shaped tail"]}'},
                ],
            }
        ),
        ["glossy black feathers", "wedge-shaped tail"],
    ),
    "object": (
        completion({"role": "assistant", "content": {"attributes": ["grey wings"]}}),
        ["grey wings"],
    ),
    "legacy text": (
        completion(choice={"index": 0, "text": "- long neck\n- dagger bill"}),
        ["long neck", "dagger bill"],
    ),
    "sse stream": (
        event_stream(['{"attributes": ["black', ' legs", "white crest"]}']),
        ["black legs", "white crest"],
    ),
}

REFUSED = {
    "truncated json": (
        raw('{"id": "x", "choices": [{"message": {"content": "ab'),
        "JSON that is cut off or malformed",
    ),
    "html page": (
        raw("<!DOCTYPE html><html><body>Welcome to nginx</body></html>", content_type="text/html"),
        "an HTML page",
    ),
    "no message": (completion(choice={"index": 0, "finish_reason": "stop"}), "has no message"),
    "number content": (
        completion({"role": "assistant", "content": 42}),
        "content is a int, not text",
    ),
    "bad sse stream": (event_stream(["a", "b"], valid=False), "events are not JSON"),
}


@pytest.mark.parametrize("form", sorted(ACCEPTED))
def test_every_chat_completion_form_is_read(form, tmp_path):
    reply, expected = ACCEPTED[form]
    script = {name: [reply] for name in LABELS}
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k", "--no-cache")
    assert rc == 0, err
    assert "Traceback" not in err
    written = json.loads(path.read_text())
    assert written == {name: expected for name in LABELS}


@pytest.mark.parametrize("form", sorted(REFUSED))
def test_anything_else_is_one_line(form, tmp_path):
    reply, what = REFUSED[form]
    script = {name: [reply] for name in LABELS}
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k", "--no-cache")
    line = one_error_line(err, "attributes")
    assert rc == 2 and what in line, line
    assert not path.exists()


def test_one_unusable_answer_is_a_warning_the_rest_is_kept(tmp_path):
    script = {
        "crow": [REFUSED["html page"][0]],
        "raven": [ACCEPTED["parts"][0]],
        "heron": [attributes_json(["long legs"])],
    }
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k", "--no-cache")
    assert rc == 0, err
    assert json.loads(path.read_text()) == {
        "crow": [],
        "raven": ACCEPTED["parts"][1],
        "heron": ["long legs"],
    }
    assert "an HTML page" in err and "Traceback" not in err


# ------------------------------------------------- a cache that cannot be written
def test_an_unwritable_cache_loses_no_answer(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    script = {name: [attributes_json([f"{name} feature"])] for name in LABELS}
    with StubOpenAI(script) as server:
        rc, out, err, path = generate(server, tmp_path, "k", cache=blocker)
    assert rc == 0, err
    assert json.loads(path.read_text()) == {n: [f"{n} feature"] for n in LABELS}
    assert err.count("cannot write the LLM answer cache") == 1, err
    assert "Traceback" not in err
