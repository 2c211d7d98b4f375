"""fiftyone-lazsl: LaZSL interpretable zero-shot classification for FiftyOne.

Public API::

    from fiftyone_lazsl import (
        AttributeSet, LaZSLConfig, OutputConfig, LaZSLClassifier, lazsl_scores, wca_scores,
        dclip_scores, clip_scores, load_model, run_lazsl, audit_labels, evaluate_methods, rescore,
        attribute_doctor, DoctorConfig, FeatureStore,
    )

Every name loads its module on first use (``import fiftyone_lazsl`` imports
neither torch nor FiftyOne). Layers: :mod:`fiftyone_lazsl.core` (the method:
torch and NumPy only), :mod:`fiftyone_lazsl.fo` (FiftyOne datasets, runs,
explanations), :mod:`fiftyone_lazsl.llm`, :mod:`fiftyone_lazsl.cli`.

Modules of the flat 0.1 layout (``fiftyone_lazsl.scoring``,
``fiftyone_lazsl.audit``, ...) still import, with a ``DeprecationWarning``
naming their new place.

LaZSL: Chen et al., "Interpretable Zero-Shot Learning with Locally-Aligned
Vision-Language Model", ICCV 2025.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__version__ = "0.2.0"

#: Public name -> module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    "AttributeSet": "fiftyone_lazsl.core.attributes",
    "LaZSLConfig": "fiftyone_lazsl.core.config",
    "OutputConfig": "fiftyone_lazsl.core.config",
    "LaZSLClassifier": "fiftyone_lazsl.core.classifier",
    "Prediction": "fiftyone_lazsl.core.classifier",
    "lazsl_scores": "fiftyone_lazsl.core.scoring",
    "wca_scores": "fiftyone_lazsl.core.scoring",
    "dclip_scores": "fiftyone_lazsl.core.scoring",
    "clip_scores": "fiftyone_lazsl.core.scoring",
    "load_model": "fiftyone_lazsl.core.models",
    "run_lazsl": "fiftyone_lazsl.fo.apply",
    "RunSummary": "fiftyone_lazsl.fo.apply",
    "audit_labels": "fiftyone_lazsl.fo.audit",
    "evaluate_methods": "fiftyone_lazsl.fo.evaluate",
    "rescore": "fiftyone_lazsl.fo.rescore",
    "attribute_doctor": "fiftyone_lazsl.fo.doctor",
    "DoctorConfig": "fiftyone_lazsl.fo.doctor",
    "FeatureStore": "fiftyone_lazsl.core.features",
    "UserError": "fiftyone_lazsl.errors",
    "ConfigError": "fiftyone_lazsl.errors",
    "AttributeSetError": "fiftyone_lazsl.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

#: Modules of the 0.1 flat layout -> their place now.
_MOVED_MODULES: dict[str, str] = {
    "attributes": "core.attributes",
    "attribute_formats": "core.attribute_formats",
    "prompts": "core.prompts",
    "published": "core.published",
    "models": "core.models",
    "imageio": "core.imageio",
    "crops": "core.crops",
    "scoring": "core.scoring",
    "classifier": "core.classifier",
    "pipeline": "core.pipeline",
    "classnames": "core.classnames",
    "apply": "fo.apply",
    "runs": "fo.runs",
    "store": "fo.store",
    "explain": "fo.explain",
    "audit": "fo.audit",
    "evaluate": "fo.evaluate",
    "llm_cache": "llm.cache",
    "llm_secrets": "llm.secrets",
    "llm_text": "llm.text",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fiftyone_lazsl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _MovedModuleLoader(importlib.abc.Loader):
    """Serves an old module path as a proxy of the module's new place."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; import it from there "
            "(the old path will be removed in a future release)",
            DeprecationWarning,
            stacklevel=2,
        )
        real = importlib.import_module(self.target)
        proxy = types.ModuleType(spec.name, real.__doc__)
        proxy.__getattr__ = lambda attr: getattr(real, attr)  # type: ignore[method-assign]
        proxy.__dict__["__all__"] = getattr(
            real, "__all__", [n for n in vars(real) if not n.startswith("_")]
        )
        return proxy

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``fiftyone_lazsl.<old name>`` for the modules that moved in 0.2."""

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, leaf = fullname.partition(".")
        if prefix != __name__ or "." in leaf or leaf not in _MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _MovedModuleLoader(f"{__name__}.{_MOVED_MODULES[leaf]}")
        )


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
