"""On-disk cache of LLM attribute answers, one JSON file per class.

Location: ``$FIFTYONE_LAZSL_CACHE/llm`` (or ``~/.cache/fiftyone-lazsl/llm``).
A record is keyed by the endpoint (its public URL, see
:func:`fiftyone_lazsl.llm.secrets.public_url`), the model, the prompt
version, the class name as sent, the number of attributes asked for and the
domain hint, so re-running a generation costs nothing and an interrupted run
resumes where it stopped. Only usable answers are cached; a class that failed
or came back empty is asked again next time. Records never hold the API key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from fiftyone_lazsl.core.cache import cache_root


def default_cache_dir() -> str:
    """``$FIFTYONE_LAZSL_CACHE/llm``, else ``~/.cache/fiftyone-lazsl/llm``."""
    return os.fspath(cache_root("llm"))


def cache_key(
    *, endpoint: str, model: str, prompt_version: str, class_name: str, n: int, hint: str | None
) -> str:
    """SHA-256 hex digest identifying one class's request."""
    payload = json.dumps(
        {
            "endpoint": endpoint,
            "model": model,
            "prompt_version": prompt_version,
            "class": class_name,
            "n": int(n),
            "hint": hint or "",
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LLMCache:
    """A folder of ``<key>.json`` records.

    Args:
        root: the folder (default :func:`default_cache_dir`); created on first write.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = os.fspath(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> str:
        """File holding the record of ``key``."""
        return os.path.join(self.root, key + ".json")

    def get(self, key: str) -> dict | None:
        """The record of ``key``, or None if absent or unreadable."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict) -> None:
        """Write ``record`` atomically (temporary file, then rename), so an
        interrupted run never leaves a half-written record."""
        os.makedirs(self.root, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
