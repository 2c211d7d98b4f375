"""The public surface documented in README stays importable after the move to
core/ and fo/: top-level names, and the 0.1 module paths with a warning."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import fiftyone_lazsl


@pytest.mark.parametrize("name", fiftyone_lazsl.__all__)
def test_top_level_names_resolve(name):
    assert getattr(fiftyone_lazsl, name) is not None


def test_import_is_light():
    code = (
        "import sys, fiftyone_lazsl; "
        "print(sorted(m for m in ('torch', 'fiftyone', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("fiftyone_lazsl.evaluate", "fiftyone_lazsl.fo.evaluate", "evaluate_methods"),
        ("fiftyone_lazsl.audit", "fiftyone_lazsl.fo.audit", "audit_labels"),
        ("fiftyone_lazsl.scoring", "fiftyone_lazsl.core.scoring", "lazsl_scores"),
    ],
)
def test_old_module_paths_warn_and_work(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert any(issubclass(x.category, DeprecationWarning) and new in str(x.message) for x in w)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        fiftyone_lazsl.no_such_thing  # noqa: B018
