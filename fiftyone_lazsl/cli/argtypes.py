"""Argument types shared by the sub-commands: numbers checked against their
range and names that must not be empty, so a bad value is one argparse line
(``fiftyone-lazsl CMD: error: argument --port: ...``, exit 2) before anything
runs. (:class:`~fiftyone_lazsl.core.config.LaZSLConfig` checks its own
parameters, including the 64-bit range MongoDB can store.)"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

#: The integers MongoDB stores (BSON int64).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]`` (None: unbounded, but
    always within BSON int64)."""
    lo_ = INT64_MIN if lo is None else lo
    hi_ = INT64_MAX if hi is None else hi

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo_ <= v <= hi_:
            if hi is None:
                want = f">= {lo_}"
            elif lo is None:
                want = f"<= {hi_}"
            else:
                want = f"between {lo_} and {hi_}"
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number ``>= lo``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or (lo is not None and v < lo):
            raise argparse.ArgumentTypeError(
                f"must be a finite number{f' >= {lo:g}' if lo is not None else ''}, got {text}"
            )
        return v

    parse.__name__ = "number"
    return parse


def tag(text: str) -> str:
    """An argparse ``type`` for ``--tag`` filters: a non-empty sample tag (an
    empty shell variable must not select the whole dataset)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the tag is empty (an unset shell variable?); give "
            "a sample tag, or leave --tag out for every sample"
        )
    return text
