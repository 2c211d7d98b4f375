"""A scripted OpenAI-compatible chat-completions server for tests.

It runs a real HTTP server on 127.0.0.1 (``http.server`` in a thread) that
answers ``POST /v1/chat/completions``. Each class name has a script: a list of
replies used one per request (the last one repeats). The class of a request is
the scripted name that appears in double quotes in its messages.

Replies are built with :func:`content`, :func:`attributes_json`,
:func:`status`, :func:`refusal` and :func:`delayed`. The server counts
requests per class, remembers request bodies and the largest number of
requests in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def content(text):
    """A normal answer whose message content is ``text`` (may be "" or None)."""
    return {"kind": "content", "content": text}


def attributes_json(attrs):
    """A JSON-mode answer ``{"attributes": attrs}``."""
    return content(json.dumps({"attributes": attrs}))


def refusal(text):
    """An OpenAI structured-output refusal: ``content`` null, ``refusal`` set."""
    return {"kind": "refusal", "refusal": text}


def status(code, message="scripted error", retry_after_ms=10, echo_auth=False):
    """An HTTP error with an OpenAI-style error body. ``retry_after_ms`` keeps
    the client's backoff short; ``echo_auth`` puts the request's Authorization
    header into the error message (as careless servers do)."""
    return {
        "kind": "status",
        "code": code,
        "message": message,
        "retry_after_ms": retry_after_ms,
        "echo_auth": echo_auth,
    }


def raw(body, content_type="application/json", encoding=None, code=200):
    """A body sent as is (bytes or text): for answers that are not a chat
    completion, or hostile ones. Text may hold the placeholders of
    :func:`fill` (the request's key, echoed back). ``encoding="gzip"``
    compresses it (and sends ``Content-Encoding: gzip``)."""
    return {
        "kind": "raw",
        "body": body,
        "content_type": content_type,
        "encoding": encoding,
        "code": code,
    }


def completion(message=None, choice=None, **fields):
    """A chat completion whose first choice is ``choice`` (default
    ``{"index": 0, "message": message, "finish_reason": "stop"}``), for
    answers in unusual shapes (``content`` as a list of parts, an object, a
    number; a choice without ``message``)."""
    if choice is None:
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body = dict(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "stub",
            "choices": [choice],
        },
        **fields,
    )
    return raw(json.dumps(body))


def event_stream(pieces, valid=True):
    """A server-sent-event stream of ``chat.completion.chunk`` events whose
    deltas carry ``pieces`` (sent although no stream was asked for);
    ``valid=False`` sends events that are not JSON."""
    lines = []
    for i, p in enumerate(pieces):
        chunk = {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "stub",
            "choices": [
                {
                    "index": 0,
                    "delta": ({"role": "assistant", "content": p} if i == 0 else {"content": p}),
                    "finish_reason": None,
                }
            ],
        }
        lines.append("data: " + (json.dumps(chunk) if valid else "{not json " + p) + "\n\n")
    lines.append("data: [DONE]\n\n")
    return raw("".join(lines), content_type="text/event-stream")


def gzip_bomb(decoded_bytes):
    """A 200 answer whose gzip body inflates to ``decoded_bytes`` bytes (a JSON
    completion whose content is one enormous attribute)."""
    return {"kind": "bomb", "size": int(decoded_bytes)}


def fill(text, auth):
    """``text`` with ``{AUTHORIZATION}`` (the request's Authorization header),
    ``{KEY}`` (the key in it), ``{KEY_B64}`` (the key in base64) and
    ``{KEY_U}`` (the key as JSON ``\\uXXXX`` escapes) replaced."""
    import base64

    auth = auth or ""
    key = auth.split(" ", 1)[-1]
    return (
        text.replace("{AUTHORIZATION}", auth)
        .replace("{KEY}", key)
        .replace("{KEY_B64}", base64.b64encode(key.encode()).decode())
        .replace("{KEY_U}", "".join(f"\\u{ord(c):04x}" for c in key))
    )


def delayed(seconds, reply):
    """``reply`` after sleeping ``seconds`` (longer than the client timeout
    makes the request time out)."""
    return dict(reply, delay=seconds)


def trickle(interval, reply):
    """``reply`` sent one byte every ``interval`` seconds (headers at once):
    every read gets data before a socket timeout, so only a total deadline
    ends the request."""
    return dict(reply, trickle=interval)


class StubOpenAI:
    """The server; use as a context manager.

    Args:
        script: ``{class name: [reply, ...]}``.
        default: reply for requests that name no scripted class.
        reject_json_mode: answer 400 to requests carrying ``response_format``
            (like servers without JSON mode).
    """

    def __init__(self, script, default=None, reject_json_mode=False):
        self.script = {k: list(v) for k, v in script.items()}
        self.default = default or status(404, "no scripted class")
        self.reject_json_mode = reject_json_mode
        self.requests = []  # (class name or None, body dict)
        self.auth_headers = []  # kept in memory only
        self.counts = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                stub._handle(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address):
                pass  # a client that timed out and closed its socket

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._closed = True  # ends trickling replies
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def base_url(self):
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def total(self):
        """Requests received so far."""
        with self._lock:
            return len(self.requests)

    # ------------------------------------------------------------- serving
    def _class_of(self, body):
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        for name in sorted(self.script, key=len, reverse=True):
            if f'"{name}"' in text:
                return name
        return None

    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length) or b"{}")
        with self._lock:
            name = self._class_of(body)
            self.requests.append((name, body))
            self.auth_headers.append(h.headers.get("Authorization"))
            i = self.counts.get(name, 0)
            self.counts[name] = i + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if h.path.rstrip("/") != "/v1/chat/completions":
                return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
            if self.reject_json_mode and "response_format" in body:
                return self._send(
                    h,
                    400,
                    {
                        "error": {
                            "message": "response_format is not supported by this server",
                            "type": "invalid_request_error",
                        }
                    },
                )
            replies = self.script.get(name) or [self.default]
            reply = replies[min(i, len(replies) - 1)]
            if reply.get("delay"):
                time.sleep(reply["delay"])
            if reply["kind"] == "status":
                message = reply["message"]
                if reply["echo_auth"]:
                    message += f" (you sent {h.headers.get('Authorization')})"
                headers = {"retry-after-ms": str(reply["retry_after_ms"])}
                return self._send(h, reply["code"], {"error": {"message": message}}, headers)
            auth = h.headers.get("Authorization")
            if reply["kind"] == "raw":
                body = reply["body"]
                if isinstance(body, str):
                    body = fill(body, auth).encode("utf-8")
                headers = {}
                if reply["encoding"] == "gzip":
                    import gzip

                    body = gzip.compress(body)
                    headers["Content-Encoding"] = "gzip"
                return self._send_bytes(h, reply["code"], body, reply["content_type"], headers)
            if reply["kind"] == "bomb":
                return self._send_bytes(
                    h, 200, _bomb(reply["size"]), "application/json", {"Content-Encoding": "gzip"}
                )
            send = self._send
            if reply.get("trickle"):

                def send(h, code, payload):
                    return self._send_trickle(h, code, payload, reply["trickle"])

            text = reply.get("content")
            message = {
                "role": "assistant",
                "content": fill(text, auth) if isinstance(text, str) else text,
            }
            if reply["kind"] == "refusal":
                message = {"role": "assistant", "content": None, "refusal": reply["refusal"]}
            return send(
                h,
                200,
                {
                    "id": f"chatcmpl-{len(self.requests)}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body.get("model", "stub"),
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                },
            )
        finally:
            with self._lock:
                self.in_flight -= 1

    def _send_trickle(self, h, code, payload, interval):
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.flush()
            for i in range(len(data)):
                if self._server is None or getattr(self, "_closed", False):
                    return
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                time.sleep(interval)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    @staticmethod
    def _send_bytes(h, code, data, content_type, headers=None):
        try:
            h.send_response(code)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _send(h, code, payload, headers=None):
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


_BOMBS = {}


def _bomb(size):
    """gzip bytes of a chat completion padded to ``size`` bytes once inflated
    (built in 1 MiB steps, so the test process never holds the inflated body)."""
    if size not in _BOMBS:
        import zlib

        head = (
            b'{"id":"x","object":"chat.completion","created":1,"model":"stub","choices":'
            b'[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"'
        )
        tail = b'"}}]}'
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [c.compress(head)]
        left = size - len(head) - len(tail)
        block = b"a" * (1 << 20)
        while left > 0:
            parts.append(c.compress(block[: min(left, len(block))]))
            left -= len(block)
        parts.append(c.compress(tail))
        parts.append(c.flush())
        _BOMBS[size] = b"".join(parts)
    return _BOMBS[size]
