"""API keys for LLM endpoints: where they come from, and keeping them out of
everything that is written (dataset, cache, logs, error messages).

The key is looked up, in order, in the FiftyOne plugin secrets (``ctx.secrets``
of an operator) and then in the environment, under ``OPENAI_API_KEY`` and then
``FIFTYONE_OPENAI_API_KEY`` (the two secrets declared in ``fiftyone.yml``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

#: Secret / environment variable names, in lookup order.
KEY_NAMES = ("OPENAI_API_KEY", "FIFTYONE_OPENAI_API_KEY")

#: The endpoint used when no base URL is given (the ``openai`` client's default).
DEFAULT_BASE_URL = "https://api.openai.com/v1"

REDACTED = "***"

# Things that look like credentials even when we were not told the value:
# OpenAI-style keys and bearer tokens.
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;()\[\]{}]+")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]+@")


def resolve_api_key(
    secrets: Mapping | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The API key, from plugin secrets first, then the environment.

    Args:
        secrets: an operator's ``ctx.secrets`` (a FiftyOne ``SecretsDictionary``,
            which has no ``get``) or any mapping; None to skip.
        environ: the environment (default ``os.environ``).

    Returns:
        The first non-empty value of :data:`KEY_NAMES` in ``secrets`` then in
        ``environ``, or None.
    """
    environ = os.environ if environ is None else environ
    for source in (secrets, environ):
        if not source:
            continue
        for name in KEY_NAMES:
            try:
                value = source[name]
            except Exception:  # missing, or a secrets resolver that failed: not set
                value = None
            # FiftyOne's SecretsDictionary may hand back the resolved secret
            # object (with ``.value``) on first access, the string afterwards.
            value = getattr(value, "value", value)
            if value and str(value).strip():
                return str(value).strip()
    return None


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret, anything shaped like an API key
    (``sk-...``), bearer tokens and URL user-info replaced by ``***``.

    Args:
        text: any message (an exception's text, a log line).
        *secrets: exact values to remove (None and empty values are ignored).

    Returns:
        The scrubbed text.
    """
    text = str(text)
    for s in secrets:
        if s:
            text = replace_secret(text, s, REDACTED)
    text = _KEY_LIKE.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return text


#: Secrets shorter than this are replaced only where they stand alone (not
#: inside a longer word or number), so a short placeholder key ("k", "ollama")
#: cannot mangle ordinary text; longer ones are replaced wherever they occur.
MIN_ANYWHERE = 8


def replace_secret(text, secret, replacement):
    """``text`` (str or bytes) with ``secret`` (same type) replaced by
    ``replacement``: everywhere when it has at least :data:`MIN_ANYWHERE`
    characters, else only where no letter or digit touches it."""
    if len(secret) >= MIN_ANYWHERE:
        return text.replace(secret, replacement)
    if isinstance(text, bytes):
        pat = re.compile(rb"(?<![A-Za-z0-9])" + re.escape(secret) + rb"(?![A-Za-z0-9])")
    else:
        pat = re.compile(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")
    return pat.sub(lambda m: replacement, text)


def public_url(base_url: str | None) -> str:
    """The endpoint URL as it may be stored: the default OpenAI URL for None,
    user-info (``user:pass@``), query and fragment removed, no trailing slash."""
    if not base_url:
        return DEFAULT_BASE_URL
    parts = urlsplit(base_url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
