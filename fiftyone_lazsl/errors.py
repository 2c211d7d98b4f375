"""Exceptions shared across the library.

``UserError`` subclasses are problems with what the user asked for (unknown
dataset, unreadable file, missing weights...). The CLI prints them as one line
and exits non-zero; the operators show them in the App.
"""


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded."""


class ModelNotFoundError(UserError, ValueError):
    """The open_clip model name is unknown."""


class DatasetNotFoundError(UserError, ValueError):
    """No FiftyOne dataset of that name."""
