"""Every environment variable the package reads, parsed and checked in one place.

Modules read a variable with :func:`get` (never ``os.environ`` directly); the
CLI checks all of them with :func:`validate_environment` before a command
runs, so a malformed value (``FIFTYONE_LAZSL_HEARTBEAT_S=10s``) ends the
command with one line naming the variable (exit status 2) instead of a
traceback at import or deep inside a run.

Variables (see :data:`KNOBS` for defaults and ranges):

* ``FIFTYONE_LAZSL_CACHE`` -- cache root (text features, LLM answers).
* ``FIFTYONE_LAZSL_FEATURES`` -- the feature store folder.
* ``FIFTYONE_LAZSL_MODEL_CONFIGS`` -- extra open_clip model configs (paths, ``os.pathsep``).
* ``FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS`` -- folders holding published sets (``os.pathsep``).
* ``FIFTYONE_LAZSL_DECODE_TIMEOUT`` -- seconds one image may take to decode (<= 0: none).
* ``FIFTYONE_LAZSL_HEARTBEAT_S`` -- seconds between a run's lock heartbeats (> 0).
* ``FIFTYONE_LAZSL_STALE_S`` -- heartbeat age after which a lock is stale (> 0).
* ``OPENAI_BASE_URL`` -- default LLM endpoint (an ``http(s)://`` URL).
* ``DEMO_IMAGES``, ``DEMO_ATTRIBUTES``, ``DEMO_PRETRAINED``, ``DEMO_PER_CLASS`` -- the demo command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fiftyone_lazsl.errors import ConfigError

__all__ = ["KNOBS", "Knob", "get", "validate_environment"]


@dataclass(frozen=True)
class Knob:
    """One environment variable: its kind (``"seconds"``, ``"positive_seconds"``,
    ``"count"``, ``"path"``, ``"paths"``, ``"url"``, ``"text"``), default and meaning."""

    kind: str
    default: Any
    help: str


KNOBS: dict[str, Knob] = {
    "FIFTYONE_LAZSL_CACHE": Knob("path", None, "cache root folder"),
    "FIFTYONE_LAZSL_FEATURES": Knob("path", None, "feature store folder"),
    "FIFTYONE_LAZSL_MODEL_CONFIGS": Knob("paths", "", "extra open_clip model config files"),
    "FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS": Knob("paths", "", "folders holding published sets"),
    "FIFTYONE_LAZSL_DECODE_TIMEOUT": Knob(
        "seconds", 60.0, "seconds one image may take to decode (<= 0: no limit)"
    ),
    "FIFTYONE_LAZSL_HEARTBEAT_S": Knob("positive_seconds", 10.0, "seconds between lock heartbeats"),
    "FIFTYONE_LAZSL_STALE_S": Knob(
        "positive_seconds", 60.0, "heartbeat age after which a lock is stale"
    ),
    "OPENAI_BASE_URL": Knob("url", None, "default LLM endpoint"),
    "DEMO_IMAGES": Knob("path", None, "demo image folder"),
    "DEMO_ATTRIBUTES": Knob("text", None, "demo attribute set"),
    "DEMO_PRETRAINED": Knob("text", "openai", "demo pretrained weights"),
    "DEMO_PER_CLASS": Knob("count", 2, "demo images per class (0: all)"),
}


def _bad(name: str, raw: str, expected: str) -> ConfigError:
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    return ConfigError(
        f"environment variable {name}={shown!r} is invalid: expected {expected} "
        f"({KNOBS[name].help}); fix or unset it"
    )


def _parse(name: str, raw: str) -> Any:
    knob = KNOBS[name]
    text = raw.strip()
    if knob.kind in ("seconds", "positive_seconds"):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (knob.kind == "positive_seconds" and value <= 0):
            raise _bad(
                name,
                raw,
                "a positive number of seconds, e.g. 10"
                if knob.kind == "positive_seconds"
                else "a number of seconds, e.g. 60",
            )
        return value
    if knob.kind == "count":
        try:
            value = int(text)
        except ValueError:
            raise _bad(name, raw, "a whole number >= 0, e.g. 2") from None
        if value < 0:
            raise _bad(name, raw, "a whole number >= 0, e.g. 2")
        return value
    if "\x00" in raw:
        raise _bad(name, raw.replace("\x00", "\\0"), "text without NUL characters")
    if knob.kind == "path":
        if not text:
            raise _bad(name, raw, "a folder path")
        return os.path.expanduser(text)
    if knob.kind == "paths":
        return [os.path.expanduser(p.strip()) for p in raw.split(os.pathsep) if p.strip()]
    if knob.kind == "url":
        if not text.lower().startswith(("http://", "https://")):
            raise _bad(name, raw, "an http:// or https:// URL")
        return text
    return text


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of environment variable ``name``, or its default when
    it is unset (an empty value counts as unset for paths, URLs and text).

    Args:
        name: one of :data:`KNOBS`.
        environ: the environment (default ``os.environ``).

    Returns:
        A float (seconds), int (count), str (path, URL, text) or list of str
        (paths), or the knob's default.

    Raises:
        ConfigError: the value is malformed (the message names the variable).
        KeyError: ``name`` is not a knob of this package.
    """
    knob = KNOBS[name]
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None or (not raw.strip() and knob.kind in ("path", "paths", "url", "text")):
        return knob.default
    return _parse(name, raw)


def validate_environment(environ: Mapping[str, str] | None = None) -> None:
    """Check every variable of :data:`KNOBS` that is set.

    Raises:
        ConfigError: the first malformed one (one line naming it).
    """
    for name in KNOBS:
        get(name, environ)
