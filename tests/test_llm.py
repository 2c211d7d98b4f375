"""Attribute generation against a real local OpenAI-compatible HTTP server,
driven through the official ``openai`` client."""

import json
import logging
import os
import socket
import traceback

import pytest

from fiftyone_lazsl.llm.cache import LLMCache, cache_key
from fiftyone_lazsl.llm.generate import (
    PROMPT_VERSION,
    AttributeGenerator,
    LLMError,
    build_messages,
    generate_attribute_set,
)
from fiftyone_lazsl.llm.secrets import public_url, resolve_api_key, scrub
from openai_stub_server import (
    StubOpenAI,
    attributes_json,
    content,
    delayed,
    refusal,
    status,
)

KEY = "sk-test-SECRET-0123456789abcdefXYZ"
FAST = dict(timeout=0.5, max_retries=1)

SCRIPT = {
    "Json Bird": [attributes_json(["Black plumage.", "a long hooked beak", "It has white cheeks"])],
    "Bullet Bird": [content('- black plumage\n* "a long hooked beak"\n• white cheeks.\n')],
    "Numbered Bird": [
        content(
            "Sure! Here are the features of a Numbered Bird:\n\n1. Black plumage\n"
            "2) which has a red crown.\n3. It is a small bird\n\nThese should help you."
        )
    ],
    "Dup Bird": [
        content(
            "- black plumage\n- Black Plumage\n\n- black plumage.\n-   \n"
            "- Dup Bird\n- red crown\n- RED CROWN"
        )
    ],
    "Late Bird": [content(""), attributes_json(["grey back"])],
    "Busy Bird": [status(429, "rate limited"), attributes_json(["yellow bill"])],
    "Broken Bird": [status(500, "upstream exploded")],
    "Slow Bird": [delayed(1.2, attributes_json(["too late"]))],
    "Shy Bird": [refusal("I can't help with that.")],
}

EXPECTED = {
    "Json Bird": ["Black plumage", "a long hooked beak", "white cheeks"],
    "Bullet Bird": ["black plumage", "a long hooked beak", "white cheeks"],
    "Numbered Bird": ["Black plumage", "a red crown", "a small bird"],
    "Dup Bird": ["black plumage", "red crown"],
    "Late Bird": ["grey back"],
    "Busy Bird": ["yellow bill"],
    "Broken Bird": [],
    "Slow Bird": [],
    "Shy Bird": [],
}


@pytest.fixture
def no_env_key(monkeypatch):
    for k in ("OPENAI_API_KEY", "FIFTYONE_OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(k, raising=False)


def test_every_reply_kind_gives_the_exact_attributes(tmp_cache, no_env_key):
    seen = []
    with StubOpenAI(SCRIPT) as server:
        aset = generate_attribute_set(
            list(SCRIPT),
            model="stub-model",
            base_url=server.base_url,
            api_key=KEY,
            n=3,
            hint="bird species",
            name="birds",
            concurrency=3,
            progress=lambda done, total, r: seen.append((done, total, r.class_name)),
            **FAST,
        )
        counts = dict(server.counts)
        first_body = server.requests[0][1]
    assert aset.to_dict() == EXPECTED
    assert aset.classes == list(SCRIPT)  # class order kept despite concurrency
    assert aset.name == "birds" and aset.source == "llm:stub-model"
    # HTTP requests per class: the client's retries (max_retries=1) and the one re-ask;
    # metadata["requests"] counts the calls made, without the client's retries
    assert counts == {
        "Json Bird": 1,
        "Bullet Bird": 1,
        "Numbered Bird": 1,
        "Dup Bird": 1,
        "Late Bird": 2,
        "Busy Bird": 2,
        "Broken Bird": 2,
        "Slow Bird": 2,
        "Shy Bird": 2,
    }
    assert [s[:2] for s in seen] == [(i, 9) for i in range(1, 10)]
    assert sorted(s[2] for s in seen) == sorted(SCRIPT)
    assert aset.metadata == {
        "generator": "llm",
        "llm_model": "stub-model",
        "base_url": server.base_url,
        "n": 3,
        "hint": "bird species",
        "prompt_version": PROMPT_VERSION,
        "json_mode": True,
        "requests": 11,
        "cached_classes": 0,
        "failed_classes": ["Broken Bird", "Slow Bird"],
    }
    assert aset.warnings == [
        "class 'Broken Bird': request failed after retries (HTTP 500: Error code: 500 - "
        "upstream exploded); it falls back to a class-name-only prompt",
        "class 'Slow Bird': request failed after retries (request timed out: Request timed out.);"
        " it falls back to a class-name-only prompt",
        "class 'Shy Bird': the LLM gave no usable attribute in 2 requests (refused: I can't help "
        "with that.; refused: I can't help with that.); it falls back to a class-name-only prompt",
        "class(es) with no attribute, scored with a class-name-only prompt: "
        "Broken Bird, Slow Bird, Shy Bird",
    ]
    assert aset.empty_classes == ["Broken Bird", "Slow Bird", "Shy Bird"]
    # JSON mode was asked for, the hint and n went into the prompt, the key was sent
    assert first_body["response_format"] == {"type": "json_object"}
    assert first_body["model"] == "stub-model"
    user = first_body["messages"][1]["content"]
    assert "(domain: bird species)" in user and user.startswith("List 3 distinct")


def test_empty_then_good_uses_the_reminder_prompt(tmp_cache, no_env_key):
    with StubOpenAI({"Late Bird": SCRIPT["Late Bird"]}) as server:
        aset = generate_attribute_set(
            ["Late Bird"], model="m", base_url=server.base_url, api_key=KEY, n=3, **FAST
        )
        bodies = [b for _, b in server.requests]
    assert aset.to_dict() == {"Late Bird": ["grey back"]}
    assert aset.warnings == []
    assert [b["messages"] for b in bodies] == [
        build_messages("Late Bird", 3),
        build_messages("Late Bird", 3, reminder=True),
    ]


def test_rerun_hits_the_cache_and_a_partial_run_resumes(tmp_cache, no_env_key):
    script = {
        "Json Bird": SCRIPT["Json Bird"],
        "Bullet Bird": SCRIPT["Bullet Bird"],
        # fails in run 1 (500 + one client retry), answers in run 2
        "Flaky Bird": [status(500), status(500), attributes_json(["green wings"])],
    }
    with StubOpenAI(script) as server:
        kw = dict(model="m", base_url=server.base_url, api_key=KEY, n=3, **FAST)
        first = generate_attribute_set(list(script), **kw)
        assert server.total == 4
        assert first["Flaky Bird"] == []
        second = generate_attribute_set(list(script), **kw)
        assert server.counts == {"Json Bird": 1, "Bullet Bird": 1, "Flaky Bird": 3}
        assert second.to_dict() == {
            "Json Bird": EXPECTED["Json Bird"],
            "Bullet Bird": EXPECTED["Bullet Bird"],
            "Flaky Bird": ["green wings"],
        }
        assert second.metadata["cached_classes"] == 2 and second.metadata["requests"] == 1
        third = generate_attribute_set(list(script), **kw)
        assert server.total == 5  # zero requests on a fully cached run
        assert third.to_dict() == second.to_dict()
        assert third.metadata["cached_classes"] == 3 and third.metadata["requests"] == 0
        # the key names endpoint + model + prompt version + class + n + hint
        other_n = generate_attribute_set(["Json Bird"], **dict(kw, n=2))
        assert other_n["Json Bird"] == ["Black plumage", "a long hooked beak"]
        assert server.total == 6
    files = sorted(os.listdir(tmp_cache / "llm"))
    key = cache_key(
        endpoint=server.base_url,
        model="m",
        prompt_version=PROMPT_VERSION,
        class_name="Flaky Bird",
        n=3,
        hint=None,
    )
    assert key + ".json" in files and len(files) == 4
    record = LLMCache(tmp_cache / "llm").get(key)
    assert record["attributes"] == ["green wings"] and record["class"] == "Flaky Bird"


def test_no_cache_asks_every_time(tmp_cache, no_env_key):
    with StubOpenAI({"Json Bird": SCRIPT["Json Bird"]}) as server:
        for _ in range(2):
            generate_attribute_set(
                ["Json Bird"],
                model="m",
                base_url=server.base_url,
                api_key=KEY,
                n=3,
                cache=False,
                **FAST,
            )
        assert server.total == 2
    assert not (tmp_cache / "llm").exists()


def test_server_without_json_mode_falls_back_to_text(tmp_cache, no_env_key):
    script = {"Bullet Bird": SCRIPT["Bullet Bird"], "Numbered Bird": SCRIPT["Numbered Bird"]}
    with StubOpenAI(script, reject_json_mode=True) as server:
        aset = generate_attribute_set(
            list(script),
            model="m",
            base_url=server.base_url,
            api_key=KEY,
            n=3,
            concurrency=1,
            **FAST,
        )
        formats = ["response_format" in b for _, b in server.requests]
    assert aset.to_dict() == {k: EXPECTED[k] for k in script}
    assert formats == [True, False, False]  # rejected once, then plain text for the run
    assert aset.metadata["json_mode"] is False


def test_concurrency_is_bounded(tmp_cache, no_env_key):
    script = {f"Bird {i}": [delayed(0.15, attributes_json([f"mark {i}"]))] for i in range(6)}
    with StubOpenAI(script) as server:
        aset = generate_attribute_set(
            list(script),
            model="m",
            base_url=server.base_url,
            api_key=KEY,
            n=2,
            concurrency=2,
            **FAST,
        )
        assert server.max_in_flight == 2
    assert aset.to_dict() == {f"Bird {i}": [f"mark {i}"] for i in range(6)}


def test_prompt_names_map_labels_to_readable_names(tmp_cache, no_env_key):
    script = {"Black-footed Albatross": [attributes_json(["dark brown plumage"])]}
    with StubOpenAI(script) as server:
        aset = generate_attribute_set(
            {"001.Black_footed_Albatross": "Black-footed Albatross"},
            model="m",
            base_url=server.base_url,
            api_key=KEY,
            n=3,
            **FAST,
        )
    assert aset.to_dict() == {"001.Black_footed_Albatross": ["dark brown plumage"]}
    assert aset.metadata["prompt_names"] == {"001.Black_footed_Albatross": "Black-footed Albatross"}


def test_key_never_written_anywhere(tmp_cache, no_env_key, caplog, tmp_path):
    import fiftyone as fo
    from fiftyone.core.odm import get_db_conn

    from fiftyone_lazsl.fo import store

    caplog.set_level(logging.DEBUG)
    script = {
        "Json Bird": SCRIPT["Json Bird"],
        "Broken Bird": SCRIPT["Broken Bird"],
        "Leaky Bird": [status(503, "overloaded", echo_auth=True)],
        "Shy Bird": [content(f"I'm sorry, I can't use {KEY}.")],
    }
    ds = fo.Dataset()
    try:
        with StubOpenAI(script) as server:
            aset = generate_attribute_set(
                list(script),
                model="m",
                base_url=server.base_url,
                api_key=KEY,
                n=3,
                name="birds",
                **FAST,
            )
            assert set(server.auth_headers) == {f"Bearer {KEY}"}  # it was really sent
        assert aset["Json Bird"] == EXPECTED["Json Bird"]
        assert any("you sent Bearer ***" in w for w in aset.warnings)
        assert any("refused: I'm sorry, I can't use ***" in w for w in aset.warnings)
        store.save_attribute_set(ds, aset, "birds")
        out = tmp_path / "birds.json"
        aset.to_json(out)
        written = [
            json.dumps(ds.info),
            out.read_text(),
            (tmp_path / "birds.json.meta.json").read_text(),
            repr(aset),
            caplog.text,
        ]
        db = get_db_conn()
        for coll in db.list_collection_names():
            written.extend(json.dumps(d, default=str) for d in db[coll].find({}))
        for root, _, names in os.walk(tmp_cache):
            written.extend(open(os.path.join(root, n), encoding="utf-8").read() for n in names)
        assert "Leaky Bird" in caplog.text and len(caplog.records) > 5
        for text in written:
            assert KEY not in text
            assert "SECRET-0123456789" not in text
    finally:
        ds.delete()


def test_fatal_errors_are_scrubbed(tmp_cache, no_env_key, caplog):
    caplog.set_level(logging.DEBUG)
    script = {"Json Bird": [status(401, "Incorrect API key provided", echo_auth=True)]}
    with StubOpenAI(script) as server:
        with pytest.raises(LLMError) as info:
            generate_attribute_set(
                list(script), model="m", base_url=server.base_url, api_key=KEY, **FAST
            )
        assert server.total == 1  # 401 is not retried
    msg = str(info.value)
    assert msg == (
        f"LLM endpoint {server.base_url} (model 'm'): AuthenticationError: Error code:"
        " 401 - Incorrect API key provided (you sent Bearer ***)"
    )
    formatted = "".join(traceback.format_exception(info.value))
    assert KEY not in formatted and KEY not in caplog.text


def test_every_class_failing_is_an_error(tmp_cache, no_env_key):
    with StubOpenAI({"Broken Bird": SCRIPT["Broken Bird"]}) as server:
        with pytest.raises(
            LLMError,
            match="every request to .* failed; first: class 'Broken "
            "Bird': request failed after retries \\(HTTP 500",
        ):
            generate_attribute_set(
                ["Broken Bird"], model="m", base_url=server.base_url, api_key=KEY, **FAST
            )


def test_unreachable_server_and_missing_key(tmp_cache, no_env_key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        LLMError, match=r"http://127.0.0.1:\d+/v1 \(model 'm'\): APIConnectionError"
    ):
        generate_attribute_set(
            ["A"],
            model="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            max_retries=0,
            timeout=0.5,
        )
    with pytest.raises(LLMError, match="no API key for the OpenAI endpoint"):
        AttributeGenerator("gpt-4o-mini")
    with pytest.raises(LLMError, match="between 1 and 50"):
        AttributeGenerator("m", base_url="http://127.0.0.1:1/v1", n=0)
    # a local server needs no key: a placeholder is sent
    with StubOpenAI({"A": [attributes_json(["a mark"])]}) as server:
        aset = generate_attribute_set(["A"], model="m", base_url=server.base_url, **FAST)
        assert server.auth_headers == ["Bearer no-key"]
    assert aset["A"] == ["a mark"]


def test_key_resolution_and_scrubbing():
    env = {"FIFTYONE_OPENAI_API_KEY": "sk-env-fiftyone-key", "OPENAI_API_KEY": ""}
    assert resolve_api_key(None, env) == "sk-env-fiftyone-key"
    assert resolve_api_key({"OPENAI_API_KEY": "from-secrets"}, env) == "from-secrets"
    assert resolve_api_key({"FIFTYONE_OPENAI_API_KEY": " s2 "}, {"OPENAI_API_KEY": "e"}) == "s2"
    assert resolve_api_key({}, {}) is None
    assert scrub("key=abc123 Bearer tok-1 sk-abcdefghijk0 https://u:p@host/v1", "abc123") == (
        "key=*** Bearer *** *** https://***@host/v1"
    )
    assert public_url("https://user:pw@example.com/v1/?x=1") == "https://example.com/v1"
    assert public_url(None) == "https://api.openai.com/v1"
