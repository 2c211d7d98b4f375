"""FiftyOne plugin entry point for fiftyone-lazsl.

FiftyOne imports this file when the plugin directory (the repository root) is
found under ``FIFTYONE_PLUGINS_DIR``. Every module of ``operators/`` lists its
operators and panels in ``OPERATORS``; :func:`register` registers them all.
The operators are thin shells over :mod:`fiftyone_lazsl`.
"""

import importlib
import os
import pkgutil
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    # Lets the plugin import the library straight from a checkout.
    sys.path.insert(0, _HERE)

# After the path set-up above, which lets a checkout's library be found.
from fiftyone_lazsl.fo import check_fiftyone_version  # noqa: E402


def _operator_modules():
    pkg_dir = os.path.join(_HERE, "operators")
    for info in sorted(pkgutil.iter_modules([pkg_dir]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{__name__}.operators.{info.name}")


def register(p):
    """Register every operator and panel of ``operators/`` with FiftyOne.

    Raises:
        fiftyone_lazsl.errors.DependencyError: FiftyOne is older than the plugin
            needs (one clear line in the App's plugin errors).
    """
    check_fiftyone_version()
    for mod in _operator_modules():
        for cls in getattr(mod, "OPERATORS", ()):
            p.register(cls)
