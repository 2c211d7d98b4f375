"""Every exception the library raises on purpose, in one hierarchy.

``UserError`` subclasses are problems with what the user asked for (unknown
dataset, unreadable file, missing weights, a parameter out of range...). The
CLI prints them as one line and exits with status 2; the operators show the
message in the App without a traceback; Python callers catch ``UserError``
once. Anything else escaping the library is a bug and keeps its traceback.

Each class also derives from the built-in exception that describes it
(``ValueError``, ``RuntimeError``, ``OSError``), so ``except ValueError`` code
written against earlier versions keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "UserError",
    "ConfigError",
    "AttributeSetError",
    "WeightsUnavailableError",
    "ModelNotFoundError",
    "DatasetNotFoundError",
    "ImageLoadError",
    "HashMismatchError",
    "LLMError",
    "RunConflictError",
]


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A LaZSL parameter (:class:`~fiftyone_lazsl.core.config.LaZSLConfig`) or
    run option is outside its domain; the message names the parameter."""


class AttributeSetError(UserError, ValueError):
    """An attribute set cannot be read or does not fit the data."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded."""


class ModelNotFoundError(UserError, ValueError):
    """The open_clip model name is unknown."""


class DatasetNotFoundError(UserError, ValueError):
    """No FiftyOne dataset of that name."""


class HashMismatchError(UserError):
    """A copy of a published attribute set does not have the registered SHA-256."""


class LLMError(UserError):
    """The LLM endpoint cannot be used for this run (no or bad API key, unknown
    model or URL, server unreachable, every class failed). The message never
    holds the API key."""


class RunConflictError(UserError):
    """A run would overwrite another run's fields or mix with a run in progress."""


class ImageLoadError(UserError):
    """An image file could not be read or decoded.

    Attributes:
        path: the file, as given (``str``).
        reason: short human-readable cause, e.g. ``"truncated JPEG file"``.

    The message is ``"cannot load image <path>: <reason>"``. Instances pickle
    (they cross ``DataLoader`` worker boundaries).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = str(reason)
        super().__init__(f"cannot load image {self.path}: {self.reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.reason))


class DependencyError(UserError, ImportError):
    """An installed dependency is older than the version the code needs (e.g.
    FiftyOne below :data:`fiftyone_lazsl.fo.MIN_FIFTYONE`)."""
