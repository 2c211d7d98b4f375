"""fiftyone-lazsl: LaZSL interpretable zero-shot classification for FiftyOne.

Public API::

    from fiftyone_lazsl import (
        AttributeSet, LaZSLClassifier, lazsl_scores, dclip_scores, clip_scores,
        load_model, run_lazsl,
    )

LaZSL: Chen et al., "Interpretable Zero-Shot Learning with Locally-Aligned
Vision-Language Model", ICCV 2025.
"""

from fiftyone_lazsl.core.attributes import AttributeSet, AttributeSetError

__version__ = "0.1.0"

__all__ = [
    "AttributeSet", "AttributeSetError", "LaZSLClassifier", "Prediction",
    "lazsl_scores", "dclip_scores", "clip_scores", "load_model", "run_lazsl",
    "__version__",
]


def __getattr__(name):
    # Heavy modules (open_clip, FiftyOne) load on first use.
    if name in ("LaZSLClassifier", "Prediction"):
        from fiftyone_lazsl.core import classifier
        return getattr(classifier, name)
    if name in ("lazsl_scores", "dclip_scores", "clip_scores"):
        # torch loads on first use (keeps `fiftyone-lazsl --help` fast)
        from fiftyone_lazsl.core import scoring
        return getattr(scoring, name)
    if name == "load_model":
        from fiftyone_lazsl.core.models import load_model
        return load_model
    if name in ("run_lazsl", "RunSummary"):
        from fiftyone_lazsl.fo import apply
        return getattr(apply, name)
    raise AttributeError(f"module 'fiftyone_lazsl' has no attribute {name!r}")
