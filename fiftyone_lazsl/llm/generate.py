"""Attribute sets from an LLM, through any OpenAI-compatible chat endpoint.

Works with OpenAI and with local servers that speak the same API (Ollama at
``http://localhost:11434/v1``, vLLM, LM Studio...). It uses the official
``openai`` client (``client.chat.completions.create``) and relies on it for
retries with exponential backoff on 408/409/429/5xx and timeouts
(``max_retries``, ``timeout``).

For every class one request asks for ``n`` short visual attributes, with an
optional domain hint ("bird species"). The answer is requested as JSON
(``response_format={"type": "json_object"}``); an endpoint that rejects that
option (HTTP 400/422) is asked again, for the rest of the run, without it.
Every answer is read through :mod:`fiftyone_lazsl.llm.response`: bounded in
size (a decompression bomb is refused), scrubbed of the API key in any
encoding before anything parses, caches or writes it, and parsed by one
parser that accepts every chat-completion form of OpenAI and compatible
servers (an unusable answer fails its class with a one-line warning). The
attribute text is then cleaned by :mod:`fiftyone_lazsl.llm.text`. A class whose
answer has no usable attribute (empty, refusal, prose) is asked once more with
a stricter reminder; if that fails too it keeps an empty list, which LaZSL
scores with a class-name-only prompt, and the set records a warning. A class
whose request fails after the client's retries (timeout, 429, 5xx) also gets
an empty list and a warning; errors that concern the whole run (bad key,
unknown model or URL, unreachable server) stop it with :class:`LLMError`.

Classes run concurrently on a few daemon threads. Every request has a *total*
deadline (:meth:`AttributeGenerator.request_deadline`), not only the client's
per-read socket timeout, so a server that trickles bytes or never finishes its
answer cannot hold a class (or the run) forever: the class fails with a warning.
Ctrl-C stops the run at once (the calling thread never waits for requests in
flight; they are abandoned with their daemon threads). Usable answers are
cached on disk (:mod:`fiftyone_lazsl.llm.cache`) as each class finishes, so
re-running costs nothing and an interrupted run resumes; a cache that cannot be
written is reported once and the run goes on without it. The API key is never
stored or logged, and is scrubbed from error messages
(:mod:`fiftyone_lazsl.llm.secrets`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fiftyone_lazsl import env
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.errors import LLMError
from fiftyone_lazsl.llm.cache import LLMCache, cache_key
from fiftyone_lazsl.llm.response import (
    MalformedAnswerError,
    guarded_http_client,
    parse_chat_completion,
)
from fiftyone_lazsl.llm.secrets import DEFAULT_BASE_URL, public_url, resolve_api_key, scrub
from fiftyone_lazsl.llm.text import (
    MAX_ATTRIBUTE_CHARS,
    is_refusal,
    normalize_attributes,
    parse_attribute_reply,
)

logger = logging.getLogger(__name__)

#: Bump when the prompt or the cleaning changes: it is part of the cache key.
PROMPT_VERSION = "lazsl-attributes-v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_N = 8
#: Placeholder key sent to local servers that need none (the client requires one).
NO_KEY = "no-key"
#: Characters of a raw reply kept in its cache record (for inspection only;
#: answers themselves are bounded by :data:`fiftyone_lazsl.llm.response.MAX_RESPONSE_BYTES`).
MAX_CACHED_REPLY = 20_000

SYSTEM_PROMPT = (
    "You are an expert in visual recognition. You describe what things look like "
    "in photographs, for an image classifier. You reply with JSON only."
)


@dataclass
class ClassResult:
    """Outcome of one class.

    Attributes:
        class_name: the class as it is keyed in the attribute set.
        prompt_name: the name sent to the LLM (e.g. a readable form of the label).
        attributes: the cleaned attributes (empty when none was usable).
        requests: chat-completion calls made for it (0 when cached; the client's
            own retries are not counted).
        cached: whether it came from the cache.
        warning: why it is empty, or None.
        failed: whether a request failed (as opposed to a reply without attribute).
    """

    class_name: str
    prompt_name: str
    attributes: list
    requests: int = 0
    cached: bool = False
    warning: str | None = None
    failed: bool = False


def build_messages(
    class_name: str, n: int, hint: str | None = None, reminder: bool = False
) -> list[dict]:
    """The chat messages asking for ``n`` attributes of ``class_name``.

    Args:
        class_name: the class, as the LLM should read it.
        n: how many attributes to ask for.
        hint: an optional domain ("bird species", "dog and cat breeds").
        reminder: add the stricter reminder used when a first answer had no
            usable attribute.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    domain = f" (domain: {hint.strip()})" if hint and hint.strip() else ""
    user = (
        f'List {n} distinct visual attributes that help to recognise "{class_name}"{domain} '
        "in a photo. Each attribute is a short noun phrase of 2 to 6 words about something "
        "visible: shape, size, colour, pattern, texture, parts or typical surroundings, "
        'for example "black plumage" or "a long hooked beak". Do not repeat the name '
        f'"{class_name}". Reply with a JSON object of the form '
        '{"attributes": ["...", "..."]}.'
    )
    if reminder:
        user += (
            f"\nYour previous answer had no usable attribute. Reply with the JSON object "
            f"only, holding {n} short visual attributes."
        )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class AttributeGenerator:
    """Asks an OpenAI-compatible endpoint for class attributes.

    Args:
        model: the chat model (``"gpt-4o-mini"``, ``"llama3.1"`` on Ollama...).
        base_url: the endpoint (default: ``$OPENAI_BASE_URL`` or OpenAI's).
        api_key: the key; default :func:`~fiftyone_lazsl.llm.secrets.resolve_api_key`
            from the environment. A custom ``base_url`` may go without one.
        n: attributes asked for per class (and kept at most), 1 to 50.
        hint: optional domain hint put into the prompt.
        timeout: seconds allowed per HTTP attempt (each socket operation); the
            whole call, retries included, ends within :attr:`request_deadline`
            even if the server keeps trickling bytes. Must be > 0.
        max_retries: the ``openai`` client's retries (with its exponential
            backoff, honouring ``Retry-After``) on timeouts, 408/409/429 and 5xx.
        concurrency: classes requested at the same time.
        json_mode: ask for ``response_format={"type": "json_object"}`` (dropped
            automatically if the endpoint rejects it).
        cache: True (the default cache folder), False/None (no cache), a folder
            path, or an :class:`~fiftyone_lazsl.llm.cache.LLMCache`.
        max_chars: cap on one attribute's length.

    Raises:
        LLMError: no API key for OpenAI's endpoint; ``n``, ``concurrency``,
            ``timeout`` or ``max_retries`` out of range.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        n: int = DEFAULT_N,
        hint: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        json_mode: bool = True,
        cache=True,
        max_chars: int = MAX_ATTRIBUTE_CHARS,
    ):
        import openai

        if not model or not str(model).strip():
            raise LLMError("no LLM model given")
        if not 1 <= int(n) <= 50:
            raise LLMError(f"the number of attributes must be between 1 and 50, got {n}")
        if int(concurrency) < 1:
            raise LLMError(f"concurrency must be at least 1, got {concurrency}")
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise LLMError(f"timeout must be a number of seconds, got {timeout!r}") from None
        if not (timeout > 0 and timeout != float("inf")):
            raise LLMError(f"timeout must be a positive number of seconds, got {timeout:g}")
        if int(max_retries) < 0:
            raise LLMError(f"max_retries must be >= 0, got {max_retries}")
        self.model = str(model).strip()
        self.n = int(n)
        self.hint = hint.strip() if hint and hint.strip() else None
        self.max_chars = int(max_chars)
        self.concurrency = int(concurrency)
        self.json_mode = bool(json_mode)

        base_url = base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.endpoint = public_url(base_url)
        key = api_key if api_key else resolve_api_key()
        if not key:
            if self.endpoint == DEFAULT_BASE_URL:
                raise LLMError(
                    "no API key for the OpenAI endpoint: set the OPENAI_API_KEY (or "
                    "FIFTYONE_OPENAI_API_KEY) secret or environment variable, or give the "
                    "base URL of a local server (Ollama, vLLM, LM Studio)"
                )
            key = NO_KEY
        self._key = key
        self.timeout = timeout
        self.max_retries = int(max_retries)
        # every answer is read by the guarded transport: bounded in size and
        # scrubbed of the key before the client (or anything else) sees it
        secret = None if key == NO_KEY else key
        self.client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=float(timeout),
            max_retries=int(max_retries),
            http_client=guarded_http_client(secret),
        )
        self._secret = secret
        self._cache_warned = threading.Event()
        if cache is True:
            self.cache = LLMCache()
        elif not cache:
            self.cache = None
        elif isinstance(cache, LLMCache):
            self.cache = cache
        else:
            self.cache = LLMCache(cache)

    def __repr__(self) -> str:  # never shows the key
        return f"AttributeGenerator(model={self.model!r}, endpoint={self.endpoint!r}, n={self.n})"

    # ---------------------------------------------------------------- cache
    def _key_for(self, prompt_name: str) -> str:
        return cache_key(
            endpoint=self.endpoint,
            model=self.model,
            prompt_version=PROMPT_VERSION,
            class_name=prompt_name,
            n=self.n,
            hint=self.hint,
        )

    def cached(self, class_name: str, prompt_name: str | None = None) -> ClassResult | None:
        """The cached result of a class, or None."""
        if self.cache is None:
            return None
        prompt_name = prompt_name or class_name
        record = self.cache.get(self._key_for(prompt_name))
        if not record or not isinstance(record.get("attributes"), list):
            return None
        attrs = normalize_attributes(
            record["attributes"], class_name=prompt_name, max_items=self.n, max_chars=self.max_chars
        )
        if not attrs:
            return None
        return ClassResult(class_name, prompt_name, attrs, requests=0, cached=True)

    # -------------------------------------------------------------- request
    @property
    def request_deadline(self) -> float:
        """Seconds one chat-completion call may take in total, the client's
        retries included: ``timeout * (max_retries + 1)`` plus the client's
        largest backoff (8 s) per retry. ``timeout`` alone bounds each socket
        read; this bounds the whole answer."""
        return self.timeout * (self.max_retries + 1) + 8.0 * self.max_retries

    def _fatal(self, e: Exception) -> LLMError:
        what = type(e).__name__
        detail = scrub(str(e), self._key)
        return LLMError(f"LLM endpoint {self.endpoint} (model {self.model!r}): {what}: {detail}")

    def _complete(self, messages: list[dict], counter: list) -> tuple[str | None, str | None]:
        """One chat completion; returns ``(content, refusal)``; ``counter[0]``
        is increased for every call made (a JSON-mode rejection makes two).

        Raises:
            MalformedAnswerError: the answer is too large or not a chat
                completion (see :mod:`fiftyone_lazsl.llm.response`).
            openai.OpenAIError: what the client raises (status, connection, timeout).
        """
        import openai

        kwargs = {"model": self.model, "messages": messages}
        while True:
            use_json = self.json_mode
            if use_json:
                kwargs["response_format"] = {"type": "json_object"}
            else:
                kwargs.pop("response_format", None)
            counter[0] += 1
            try:
                resp = _call_with_deadline(
                    lambda: self.client.chat.completions.with_raw_response.create(**kwargs),
                    self.request_deadline,
                )
            except MalformedAnswerError:
                raise
            except openai.OpenAIError as e:
                # the guarded transport's refusal, however this client version wraps it
                cause = _answer_error(e)
                if cause is not None:
                    raise cause from None
                if isinstance(e, (openai.BadRequestError, openai.UnprocessableEntityError)):
                    if use_json:
                        if self.json_mode:
                            logger.info(
                                "%s rejected JSON mode (%s); asking for plain text",
                                self.endpoint,
                                type(e).__name__,
                            )
                        self.json_mode = False
                        continue
                raise
            break
        return parse_chat_completion(_body_of(resp), self._secret)

    def generate_class(self, class_name: str, prompt_name: str | None = None) -> ClassResult:
        """Attributes of one class: from the cache, else asked (twice at most
        when the first answer has no usable attribute).

        Args:
            class_name: the class as keyed in the set.
            prompt_name: the name sent to the LLM (default ``class_name``).

        Returns:
            A :class:`ClassResult`; a failed request or two unusable answers give
            an empty list and a ``warning``.

        Raises:
            LLMError: for errors of the whole run: authentication or permission
                refused, model or URL not found, a request the endpoint rejects,
                the server cannot be reached.
        """
        import openai

        prompt_name = prompt_name or class_name
        hit = self.cached(class_name, prompt_name)
        if hit is not None:
            return hit
        counter = [0]
        reasons = []
        for attempt in range(2):
            messages = build_messages(prompt_name, self.n, self.hint, reminder=attempt > 0)
            try:
                content, refusal = self._complete(messages, counter)
            except (
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.NotFoundError,
                openai.BadRequestError,
                openai.UnprocessableEntityError,
            ) as e:
                raise self._fatal(e) from None
            except openai.APITimeoutError as e:
                return self._failed(class_name, prompt_name, counter[0], "request timed out", e)
            except RequestDeadlineError as e:
                return self._failed(
                    class_name, prompt_name, counter[0], "no complete answer in time", e
                )
            except openai.APIConnectionError as e:
                raise self._fatal(e) from None
            except openai.APIStatusError as e:
                return self._failed(class_name, prompt_name, counter[0], f"HTTP {e.status_code}", e)
            except MalformedAnswerError as e:  # too large, not a chat completion
                return self._failed(class_name, prompt_name, counter[0], "unusable answer", e)
            except openai.APIError as e:  # malformed response and the like
                return self._failed(class_name, prompt_name, counter[0], type(e).__name__, e)
            if refusal:
                reasons.append("refused: " + scrub(refusal, self._key)[:120])
                continue
            attrs = normalize_attributes(
                parse_attribute_reply(content),
                class_name=prompt_name,
                max_items=self.n,
                max_chars=self.max_chars,
            )
            if attrs:
                self._cache_put(
                    prompt_name,
                    {
                        "class": prompt_name,
                        "endpoint": self.endpoint,
                        "model": self.model,
                        "prompt_version": PROMPT_VERSION,
                        "n": self.n,
                        "hint": self.hint,
                        "attributes": attrs,
                        "reply": (content or "")[:MAX_CACHED_REPLY],
                    },
                )
                return ClassResult(class_name, prompt_name, attrs, requests=counter[0])
            if not content or not content.strip():
                reasons.append("empty answer")
            elif is_refusal(content):
                reasons.append("refused: " + scrub(content.strip(), self._key)[:120])
            else:
                reasons.append("no usable attribute in the answer")
        calls = counter[0]
        warning = (
            f"class {class_name!r}: the LLM gave no usable attribute in {calls} "
            f"requests ({'; '.join(reasons)}); it falls back to a class-name-only prompt"
        )
        logger.warning(warning)
        return ClassResult(class_name, prompt_name, [], requests=calls, warning=warning)

    def _cache_put(self, prompt_name: str, record: dict) -> None:
        """Cache one answer; the cache is only an optimisation, so a cache that
        cannot be written (read-only folder, disk full) is reported once and the
        run goes on without it: the answers received are kept in the result."""
        if self.cache is None or self._cache_warned.is_set():
            return
        try:
            self.cache.put(self._key_for(prompt_name), record)
        except OSError as e:
            if not self._cache_warned.is_set():
                self._cache_warned.set()
                logger.warning(
                    "cannot write the LLM answer cache in %s (%s); going on without caching",
                    self.cache.root,
                    e.strerror or e,
                )

    def _failed(self, class_name, prompt_name, calls, what, e) -> ClassResult:
        warning = (
            f"class {class_name!r}: request failed after retries ({what}: "
            f"{scrub(str(e), self._key)[:200]}); it falls back to a class-name-only prompt"
        )
        logger.warning(warning)
        return ClassResult(
            class_name, prompt_name, [], requests=calls, warning=warning, failed=True
        )

    # ------------------------------------------------------------------ run
    def generate(
        self,
        classes: Sequence[str] | Mapping[str, str],
        progress: Callable[[int, int, ClassResult], None] | None = None,
    ) -> list[ClassResult]:
        """Attributes of every class, ``concurrency`` requests at a time.

        Args:
            classes: class names, or ``{class name: name sent to the LLM}``.
            progress: called as ``progress(done, total, result)`` in the calling
                thread after each class (cached ones first).

        Returns:
            One :class:`ClassResult` per class, in the order of ``classes``.

        Raises:
            LLMError: an error of the whole run (see :meth:`generate_class`), or
                every requested class failed; the classes answered so far stay
                cached.
        """
        pairs = list(classes.items()) if isinstance(classes, Mapping) else [(c, c) for c in classes]
        if not pairs:
            raise LLMError("no class to generate attributes for")
        total = len(pairs)
        results: list[ClassResult | None] = [None] * total
        done = 0
        todo = []
        for i, (cls, prompt_name) in enumerate(pairs):
            hit = self.cached(cls, prompt_name)
            if hit is None:
                todo.append(i)
                continue
            results[i] = hit
            done += 1
            if progress:
                progress(done, total, hit)
        logger.info(
            "LLM attributes for %d classes with %s at %s: %d cached, %d to request",
            total,
            self.model,
            self.endpoint,
            total - len(todo),
            len(todo),
        )
        if todo:
            for i, r in self._run_concurrently(pairs, todo):
                results[i] = r
                done += 1
                if progress:
                    progress(done, total, r)
            failed = [results[i] for i in todo if results[i].failed]
            if failed and len(failed) == len(todo):
                raise LLMError(
                    f"every request to {self.endpoint} failed; first: {failed[0].warning}"
                )
        return results  # type: ignore[return-value]

    def _run_concurrently(self, pairs: list, todo: list[int]):
        """Yield ``(index, ClassResult)`` as classes finish, ``concurrency`` at a time.

        Daemon threads, not ``ThreadPoolExecutor`` (whose threads are joined at
        interpreter exit, so Ctrl-C used to wait for every request in flight):
        the calling thread only waits on a queue in short steps, so
        ``KeyboardInterrupt`` reaches it at once; on any exit the workers take
        no new class and requests in flight are abandoned. An error of the
        whole run (:class:`LLMError`) raised by a worker is re-raised here.
        """
        jobs: queue.Queue[int] = queue.Queue()
        for i in todo:
            jobs.put(i)
        out: queue.Queue[tuple] = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    i = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    out.put((i, self.generate_class(*pairs[i]), None))
                except BaseException as e:  # noqa: BLE001 -- handed to the caller
                    out.put((i, None, e))

        for k in range(min(self.concurrency, len(todo))):
            threading.Thread(target=work, name=f"lazsl-llm-{k}", daemon=True).start()
        remaining = len(todo)
        try:
            while remaining:
                try:
                    i, r, e = out.get(timeout=0.1)
                except queue.Empty:
                    continue
                remaining -= 1
                if e is not None:
                    raise e
                yield i, r
        finally:
            stop.set()


def _answer_error(e: BaseException | None) -> MalformedAnswerError | None:
    """The :class:`MalformedAnswerError` in ``e``'s cause chain (older
    ``openai`` clients wrap what the transport raised in ``APIConnectionError``)."""
    for _ in range(10):
        if e is None:
            return None
        if isinstance(e, MalformedAnswerError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _body_of(raw) -> bytes:
    """The body of a ``with_raw_response`` answer (already read, bounded and
    scrubbed by the guarded transport)."""
    http = getattr(raw, "http_response", raw)
    return http.content


class RequestDeadlineError(Exception):
    """A chat-completion call did not return within its total deadline."""


def _call_with_deadline(fn: Callable[[], object], seconds: float) -> object:
    """``fn()``, or :class:`RequestDeadlineError` once ``seconds`` have passed.

    ``fn`` runs in a daemon thread that is abandoned on timeout (a blocking
    HTTP read cannot be interrupted from outside; the thread ends with its
    socket, or with the process)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="lazsl-llm-request", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise RequestDeadlineError(
            f"no complete answer within {seconds:g} s (the server is too slow or stalled)"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def generate_attribute_set(
    classes: Sequence[str] | Mapping[str, str],
    *,
    model: str = DEFAULT_MODEL,
    base_url: str | None = None,
    api_key: str | None = None,
    n: int = DEFAULT_N,
    hint: str | None = None,
    name: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 3,
    concurrency: int = 4,
    json_mode: bool = True,
    cache=True,
    max_chars: int = MAX_ATTRIBUTE_CHARS,
    progress: Callable[[int, int, ClassResult], None] | None = None,
) -> AttributeSet:
    """Generate an attribute set (DCLIP/LaZSL format) for ``classes`` with an LLM.

    Args:
        classes: class names, or ``{class name: name sent to the LLM}`` (e.g.
            :func:`fiftyone_lazsl.core.classnames.readable_names`); the set is keyed
            by the class names, in this order.
        model, base_url, api_key, n, hint, timeout, max_retries, concurrency,
        json_mode, cache, max_chars: see :class:`AttributeGenerator`.
        name: the set's name.
        progress: ``progress(done, total, result)`` after each class.

    Returns:
        An :class:`~fiftyone_lazsl.core.attributes.AttributeSet` with
        ``source="llm:<model>"``, warnings for classes left empty, and metadata
        ``generator, llm_model, base_url`` (without credentials), ``n, hint,
        prompt_version, json_mode, requests, cached_classes, failed_classes``
        and, when names sent differ from class names, ``prompt_names``.

    Raises:
        LLMError: see :meth:`AttributeGenerator.generate`.
    """
    gen = AttributeGenerator(
        model,
        base_url=base_url,
        api_key=api_key,
        n=n,
        hint=hint,
        timeout=timeout,
        max_retries=max_retries,
        concurrency=concurrency,
        json_mode=json_mode,
        cache=cache,
        max_chars=max_chars,
    )
    results = gen.generate(classes, progress=progress)
    metadata = {
        "generator": "llm",
        "llm_model": gen.model,
        "base_url": gen.endpoint,
        "n": gen.n,
        "hint": gen.hint,
        "prompt_version": PROMPT_VERSION,
        "json_mode": gen.json_mode,
        "requests": sum(r.requests for r in results),
        "cached_classes": sum(r.cached for r in results),
        "failed_classes": [r.class_name for r in results if r.failed],
    }
    if any(r.prompt_name != r.class_name for r in results):
        metadata["prompt_names"] = {r.class_name: r.prompt_name for r in results}
    return AttributeSet(
        OrderedDict((r.class_name, list(r.attributes)) for r in results),
        name=name,
        source=f"llm:{gen.model}",
        format="descriptors",
        warnings=[r.warning for r in results if r.warning],
        metadata=metadata,
    )
