"""The one cache location of fiftyone-lazsl.

Everything the library caches on disk lives under one root,
``$FIFTYONE_LAZSL_CACHE`` (``~`` expanded) or ``~/.cache/fiftyone-lazsl``:
``text/`` (text features, :mod:`fiftyone_lazsl.core.models`),
``attribute_sets/`` (verified published sets, :mod:`fiftyone_lazsl.core.published`)
and ``llm/`` (LLM answers, :mod:`fiftyone_lazsl.llm.cache`).
"""

from __future__ import annotations

import pathlib

from fiftyone_lazsl import env

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "FIFTYONE_LAZSL_CACHE"


def cache_root(*parts: str) -> pathlib.Path:
    """``$FIFTYONE_LAZSL_CACHE/<parts...>``, else ``~/.cache/fiftyone-lazsl/<parts...>``.

    The folder is not created; writers create it when they first write.
    """
    root = env.get(CACHE_ENV)
    base = (
        pathlib.Path(root).expanduser()
        if root
        else (pathlib.Path.home() / ".cache" / "fiftyone-lazsl")
    )
    return base.joinpath(*parts)
