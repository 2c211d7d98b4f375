"""Reading what an OpenAI-compatible endpoint answers: bounded, scrubbed, parsed.

Two pieces, used by :class:`fiftyone_lazsl.llm.generate.AttributeGenerator`
for every request:

* :func:`guarded_http_client` -- the HTTP client handed to the ``openai``
  client. Its transport reads every answer (success or error) itself, before
  the ``openai`` client or anything else sees it: it decodes ``gzip`` /
  ``deflate`` itself with a cap on the *decoded* size
  (:data:`MAX_RESPONSE_BYTES`), so a small compressed body cannot inflate to
  hundreds of megabytes, refuses other content encodings, and removes the API
  key from the bytes (:func:`scrub_bytes`: the key itself, its JSON-escaped,
  URL-encoded and base64 forms, and ``Bearer <key>``). Whatever a server
  echoes, the key therefore never reaches an error message, the cache, the
  ``--out`` file or the dataset.
* :func:`parse_chat_completion` -- the one parser of a chat-completions answer
  (``POST /v1/chat/completions``, https://platform.openai.com/docs/api-reference/chat/object).
  It accepts the forms the OpenAI API and compatible servers (Ollama, vLLM,
  LM Studio, llama.cpp) send: ``message.content`` as a string, as a list of
  content parts (``[{"type": "text", "text": ...}]``: the texts are joined), as
  an object (JSON-mode servers that decode it: serialised back to JSON), null
  with ``message.refusal``; a legacy ``choices[0].text``; and a
  server-sent-event stream of ``chat.completion.chunk`` objects sent although
  no stream was asked for (the ``delta.content`` pieces are joined). Anything
  else (truncated JSON, an HTML page, a choice without a message, a number as
  content, an ``error`` object) raises :class:`MalformedAnswerError` with one
  line saying what came back. Every string taken from the answer is scrubbed
  of the key again after JSON decoding (which undoes ``\\uXXXX`` escapes).
"""

from __future__ import annotations

import base64
import importlib
import json
import urllib.parse
import zlib
from typing import Any

from fiftyone_lazsl.llm.secrets import REDACTED, replace_secret, scrub

#: Largest answer read from a server, after content decoding (bytes). A
#: chat answer with 50 attributes is a few kilobytes; 1 MiB leaves ample room.
MAX_RESPONSE_BYTES = 1 << 20

#: Content encodings the guarded transport decodes (and asks for).
ENCODINGS = ("gzip", "deflate", "identity")


class MalformedAnswerError(Exception):
    """A server answer that is not a usable chat completion; the message is
    one line (already scrubbed of the key)."""


class ResponseTooLargeError(MalformedAnswerError):
    """A server answer larger than :data:`MAX_RESPONSE_BYTES` once decoded."""


# ------------------------------------------------------------------ scrubbing
def secret_forms(key: str | None) -> list[bytes]:
    """The byte strings under which ``key`` may appear in an answer: itself,
    JSON-escaped (ASCII and ``\\/`` forms), URL-encoded, and base64 (standard
    and URL-safe, of the key and of ``Bearer <key>``), longest first.
    Empty for None or an empty key."""
    if not key:
        return []
    forms: set[str] = {
        key,
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        json.dumps(key)[1:-1].replace("/", "\\/"),
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote_plus(key),
    }
    for s in (key, f"Bearer {key}"):  # base64 does not contain the key's own text
        raw = s.encode("utf-8")
        for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            forms.add(enc.decode("ascii"))
            forms.add(enc.decode("ascii").rstrip("="))
    return sorted((f.encode("utf-8") for f in forms if f), key=len, reverse=True)


def scrub_bytes(data: bytes, key: str | None) -> bytes:
    """``data`` with every form of ``key`` (:func:`secret_forms`) replaced by
    ``***`` (a key shorter than :data:`~fiftyone_lazsl.llm.secrets.MIN_ANYWHERE`
    only where it stands alone)."""
    for form in secret_forms(key):
        if form in data:
            data = replace_secret(data, form, REDACTED.encode())
    return data


# ------------------------------------------------------------- bounded reads
def _decoder(encoding: str):
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS + 32)  # zlib or gzip header
    raise MalformedAnswerError(
        f"the server answered with content encoding {encoding!r}, "
        f"which is not one of {', '.join(ENCODINGS)}"
    )


def read_bounded(chunks, content_encoding: str | None, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The decoded body of ``chunks`` (raw bytes as received), at most ``limit`` bytes.

    Args:
        chunks: an iterable of raw (still encoded) byte chunks.
        content_encoding: the ``Content-Encoding`` header (``gzip``, ``deflate``,
            ``identity`` or None; a list such as ``gzip, identity`` is decoded right
            to left).
        limit: the cap on the decoded size, in bytes.

    Raises:
        ResponseTooLargeError: more than ``limit`` bytes, compressed or decoded.
        MalformedAnswerError: an unsupported encoding or a corrupt compressed stream.
    """
    decoders = [
        d
        for d in (_decoder(e) for e in reversed((content_encoding or "").split(",")))
        if d is not None
    ]
    out = bytearray()
    raw_total = 0

    def too_large() -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"the server's answer is larger than {limit // 1024} KiB"
            + (" once decompressed" if decoders else "")
            + "; a chat answer is far smaller, "
            "so the endpoint is not behaving as an OpenAI-compatible server"
        )

    def feed(data: bytes) -> None:
        for d in decoders:
            # never inflate more than the room left (+1 to notice an overflow);
            # input left over means the cap was reached
            data = d.decompress(data, limit - len(out) + 1)
            if d.unconsumed_tail:
                raise too_large()
        out.extend(data)
        if len(out) > limit:
            raise too_large()

    try:
        for chunk in chunks:
            raw_total += len(chunk)
            if raw_total > limit:
                raise too_large()
            feed(chunk)
        for d in decoders:
            rest = d.flush()
            if rest:
                out.extend(rest)
                if len(out) > limit:
                    raise too_large()
    except zlib.error as e:
        raise MalformedAnswerError(f"the server's compressed answer is corrupt ({e})") from None
    return bytes(out)


def _http_module():
    """The HTTP library the installed ``openai`` client is built on (``httpx``,
    or ``httpx2`` in newer releases)."""
    import openai

    for cls in getattr(openai, "DefaultHttpxClient", object).__mro__:
        top = (cls.__module__ or "").split(".")[0]
        if top in ("httpx", "httpx2"):
            return importlib.import_module(top)
    return importlib.import_module("httpx")


def guarded_http_client(key: str | None, limit: int = MAX_RESPONSE_BYTES):
    """An HTTP client for ``openai.OpenAI(http_client=...)`` whose transport
    bounds and scrubs every answer (see the module docstring).

    Args:
        key: the API key to remove from answers (None: nothing to remove).
        limit: the cap on one decoded answer, in bytes.

    Returns:
        ``openai.DefaultHttpxClient`` (the client's own defaults: timeouts,
        connection limits, redirects) over the guarded transport.

    Raises:
        Nothing here; a request raises :class:`ResponseTooLargeError` or
        :class:`MalformedAnswerError` from the transport.
    """
    import openai

    mod = _http_module()

    class GuardedTransport(mod.BaseTransport):
        def __init__(self) -> None:
            self._inner = mod.HTTPTransport()

        def handle_request(self, request):
            request.headers["Accept-Encoding"] = "gzip, deflate"
            response = self._inner.handle_request(request)
            try:
                body = read_bounded(
                    response.stream, response.headers.get("content-encoding"), limit
                )
            finally:
                response.close()
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            ]
            return mod.Response(
                response.status_code,
                headers=headers,
                content=scrub_bytes(body, key),
                request=request,
            )

        def close(self) -> None:
            self._inner.close()

    client_cls = getattr(openai, "DefaultHttpxClient", None) or mod.Client
    return client_cls(transport=GuardedTransport())


# ------------------------------------------------------------------- parsing
def _describe(body: bytes) -> str:
    head = body[:200].decode("utf-8", "replace").strip().lower()
    if head.startswith("<!doctype html") or head.startswith("<html") or "<html" in head[:100]:
        return "an HTML page, not a chat completion (check the base URL: it usually ends in /v1)"
    if not head:
        return "an empty body"
    return "something that is not JSON"


def _text_of_content(content: Any, key: str | None) -> str | None:
    if content is None or isinstance(content, str):
        return None if content is None else scrub(content, key)
    if isinstance(content, list):  # content parts
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and isinstance(part.get("text"), str)
                and part.get("type", "text") in ("text", "output_text")
            ):
                texts.append(part["text"])
            elif (
                isinstance(part, dict)
                and isinstance(part.get("text"), dict)
                and isinstance(part["text"].get("value"), str)
            ):
                texts.append(part["text"]["value"])
        if not texts and content:
            raise MalformedAnswerError("the answer's content is a list without text parts")
        return scrub("\n".join(texts), key)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return scrub(content["text"], key)
        return scrub(json.dumps(content, ensure_ascii=False), key)
    raise MalformedAnswerError(f"the answer's content is a {type(content).__name__}, not text")


def _from_completion(data: Any, key: str | None) -> tuple[str | None, str | None]:
    if not isinstance(data, dict):
        raise MalformedAnswerError(
            f"the answer is a JSON {type(data).__name__}, not a chat completion object"
        )
    if "error" in data and "choices" not in data:
        err = data["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise MalformedAnswerError(
            "the server answered with an error: " + scrub(str(msg), key)[:200]
        )
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise MalformedAnswerError("the answer has no 'choices' list")
    if not choices:
        return None, None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise MalformedAnswerError("the answer's first choice is not an object")
    message = choice.get("message")
    if message is None:
        message = choice.get("delta")
    if message is None and isinstance(choice.get("text"), str):  # legacy completions
        return scrub(choice["text"], key), None
    if not isinstance(message, dict):
        raise MalformedAnswerError("the answer's first choice has no message")
    refusal = message.get("refusal")
    refusal = scrub(refusal, key) if isinstance(refusal, str) and refusal else None
    return _text_of_content(message.get("content"), key), refusal


def _from_event_stream(text: str, key: str | None) -> tuple[str | None, str | None]:
    pieces: list[str] = []
    refusals: list[str] = []
    seen = False
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("data:"):
            continue  # comments, event:/id: lines, blank separators
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise MalformedAnswerError(
                "the server sent an event stream whose events are not JSON"
            ) from None
        content, refusal = _from_completion(chunk, key)
        seen = True
        if content:
            pieces.append(content)
        if refusal:
            refusals.append(refusal)
    if not seen:
        raise MalformedAnswerError("the server sent an event stream without chat-completion events")
    return ("".join(pieces) or None), ("".join(refusals) or None)


def parse_chat_completion(
    body: bytes | str, key: str | None = None
) -> tuple[str | None, str | None]:
    """``(content, refusal)`` of a chat-completions answer body.

    Args:
        body: the (decoded) response body.
        key: the API key, removed from every string taken from the answer.

    Returns:
        The first choice's text (content parts joined with newlines; an object
        content as JSON text; None when the answer has no choice or a null
        content) and its refusal (None if none).

    Raises:
        MalformedAnswerError: the body is not a chat completion in any
            accepted form (one line, scrubbed).
    """
    raw = body if isinstance(body, bytes) else body.encode("utf-8")
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    stripped = text.lstrip()
    if stripped.startswith("data:") or stripped.startswith("event:") or stripped.startswith(":"):
        return _from_event_stream(text, key)
    try:
        data = json.loads(text)
    except ValueError:
        what = _describe(raw)
        if stripped[:1] in "{[":
            what = f"JSON that is cut off or malformed ({len(raw)} bytes)"
        raise MalformedAnswerError(f"the server answered with {what}") from None
    return _from_completion(data, key)
