"""The FiftyOne layer of fiftyone-lazsl (datasets, fields, runs, stored attribute
sets, explanations, audits, evaluation).

:func:`check_fiftyone_version` is the one version gate: the plugin calls it when
FiftyOne loads it, so an older FiftyOne gets one clear line instead of an
``AttributeError`` deep in an operator (``ctx.target_view()`` and the panel API
used here are those of the FiftyOne line in :data:`MIN_FIFTYONE`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from fiftyone_lazsl.errors import DependencyError

#: Oldest FiftyOne release the plugin and library are tested with (keep in step
#: with pyproject.toml and fiftyone.yml).
MIN_FIFTYONE = "1.22.1"


def check_fiftyone_version(installed: str | None = None) -> str:
    """Check that FiftyOne is at least :data:`MIN_FIFTYONE` (and below 2).

    Args:
        installed: a version string to check instead of the installed FiftyOne's.

    Returns:
        the version checked.

    Raises:
        fiftyone_lazsl.errors.DependencyError: FiftyOne is too old or too new.
    """
    if installed is None:
        try:
            installed = version("fiftyone")
        except PackageNotFoundError:
            raise DependencyError(
                "fiftyone-lazsl needs FiftyOne, which is not installed "
                f"(pip install 'fiftyone>={MIN_FIFTYONE},<2')"
            ) from None
    v = Version(installed)
    if v < Version(MIN_FIFTYONE) or v >= Version("2"):
        raise DependencyError(
            f"fiftyone-lazsl needs FiftyOne >={MIN_FIFTYONE},<2 but FiftyOne {installed} is "
            f"installed (pip install 'fiftyone>={MIN_FIFTYONE},<2')"
        )
    return installed
