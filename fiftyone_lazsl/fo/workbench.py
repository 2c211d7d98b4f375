"""Attribute workbench: edit one class's attributes, re-score a sample at
once or a view from stored features, save the edited set with its parent and
edit; and a per-class summary of a run over a view (the panel's grid mode).

Library side of the explanations panel (``operators/panel.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fiftyone import ViewField as F

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.config import LaZSLConfig
from fiftyone_lazsl.core.features import FeatureStore, predict_entries
from fiftyone_lazsl.core.models import LazyModel, load_model
from fiftyone_lazsl.errors import AttributeSetError
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.rescore import stored_run
from fiftyone_lazsl.fo.runs import get_run_config, output_fields
from fiftyone_lazsl.fo.store import recorded_attribute_set

#: Loaded models reused between panel events (model, weights, device) -> LoadedModel.
_MODELS: dict = {}


def run_attribute_set(samples: Any, label_field: str) -> Any:
    """The attribute set of the run on ``label_field`` (the stored set of its
    name if unchanged, else rebuilt from the run record)."""
    dataset = dataset_of(samples)
    return recorded_attribute_set(dataset, get_run_config(dataset, label_field))


def edit_attribute_set(attribute_set: Any, class_name: str, attributes: Sequence[str]) -> Any:
    """A copy of ``attribute_set`` with ``class_name``'s attributes replaced.

    Args:
        attribute_set: the parent :class:`AttributeSet`.
        class_name: a class of the set (any spelling :meth:`AttributeSet.resolve` accepts).
        attributes: the new attributes (blank lines dropped).

    Returns:
        an :class:`AttributeSet` whose metadata records ``parent``,
        ``parent_hash`` and ``edit`` (``class``, ``before``, ``after``).

    Raises:
        AttributeSetError: unknown class, or no attribute left.
    """
    c = attribute_set.resolve(class_name)
    if c is None:
        raise AttributeSetError(
            f"class {class_name!r} is not in attribute set {attribute_set.name!r}"
        )
    new = [a.strip() for a in attributes if a and a.strip()]
    if not new:
        raise AttributeSetError(f"class {c!r} needs at least one attribute")
    d = {k: list(v) for k, v in attribute_set.attributes.items()}
    before = d[c]
    d[c] = new
    edits = list(attribute_set.metadata.get("edits", [])) if attribute_set.metadata else []
    edit = {"class": c, "before": before, "after": new}
    return AttributeSet.from_dict(
        d,
        name=attribute_set.name,
        source=attribute_set.source,
        format=attribute_set.format,
        metadata={
            "parent": attribute_set.metadata.get("parent", attribute_set.name)
            if attribute_set.metadata.get("edits")
            else attribute_set.name,
            "parent_hash": attribute_set.metadata.get("parent_hash", attribute_set.content_hash)
            if attribute_set.metadata.get("edits")
            else attribute_set.content_hash,
            "edit": edit,
            "edits": edits + [edit],
        },
    )


def classifier_for(samples: Any, label_field: str, attribute_set: Any) -> Any:
    """A :class:`LaZSLClassifier` with the run's parameters and model (one per
    process, a :class:`~fiftyone_lazsl.core.models.LazyModel` for real weights)
    for ``attribute_set``."""
    old = stored_run(samples, label_field)
    cfg = LaZSLConfig.from_dict(old, strict=False)
    if cfg.method == "clip":
        cfg = cfg.replace(method="lazsl")
    key = (cfg.model, cfg.pretrained, cfg.device)
    if key not in _MODELS:
        # real weights: loaded only as far as used (cached prompts: nothing; an
        # edited attribute: the text tower; an image to encode: the whole model)
        _MODELS[key] = (
            LazyModel.from_provenance(old, device=cfg.device)
            if cfg.pretrained is not None
            else load_model(cfg.model, cfg.pretrained, device=cfg.device)
        )
    return LaZSLClassifier(attribute_set, model=_MODELS[key], config=cfg)


def rescore_sample(
    sample: Any,
    label_field: str,
    attribute_set: Any,
    classifier: Any = None,
    class_name: str | None = None,
) -> dict:
    """Re-score one sample from its stored features (nothing is written).

    Args:
        sample: a sample of a dataset with a run on ``label_field`` that
            stored features.
        label_field: the run's label field.
        attribute_set: the (edited) :class:`AttributeSet` to score with.
        classifier: a pre-built classifier for ``attribute_set`` (else one is
            built with the run's parameters).
        class_name: a class whose new score and rank to report (e.g. the
            edited one), or None.

    Returns:
        ``{"ok", "message", "label", "confidence", "previous", "top_attributes",
        "class"}``: the new predicted class and confidence, the label in
        ``label_field``, the new predicted class's attributes by contribution
        (highest first), and for ``class_name`` a dict ``{"name", "score"
        (logit, as the panel shows scores), "probability", "rank" (1 = highest
        logit), "num_classes", "previous_score", "previous_rank"}`` (previous
        figures from the stored logits; None where not stored), else None.
    """
    ds = sample.dataset
    rec = stored_run(ds, label_field)["feature_store"]
    clf = classifier or classifier_for(ds, label_field, attribute_set)
    with FeatureStore(
        rec["path"], dtype=rec.get("dtype", "float16"), check=rec.get("check", "stat")
    ) as store:
        found, why = store.get_many(rec["fingerprint"], [sample.filepath])
    label = sample[label_field]
    prev = label.label if label is not None else None
    if not found:
        return {
            "ok": False,
            "message": why[sample.filepath],
            "label": None,
            "confidence": None,
            "previous": prev,
            "top_attributes": [],
            "class": None,
        }
    p = predict_entries(clf, [found[sample.filepath]])[0]
    names = clf.attribute_labels[p.label_index]
    top = []
    if p.attribute_scores is not None:
        a = p.attribute_scores[p.label_index]
        top = [(names[i], float(a[i])) for i in np.argsort(-a, kind="stable")]
    cls = None
    c = attribute_set.resolve(class_name) if class_name else None
    if c is not None and c in clf.classes:
        i = list(clf.classes).index(c)
        logits = np.asarray(p.logits, dtype=np.float64)
        cls = {
            "name": c,
            "score": float(logits[i]),
            "probability": float(p.probs[i]),
            "rank": int((logits > logits[i]).sum()) + 1,
            "num_classes": int(logits.size),
            "previous_score": None,
            "previous_rank": None,
        }
        old = getattr(label, "logits", None) if label is not None else None
        if old is not None and len(old) == logits.size:
            old = np.asarray(old, dtype=np.float64)
            cls["previous_score"] = float(old[i])
            cls["previous_rank"] = int((old > old[i]).sum()) + 1
    return {
        "ok": True,
        "message": "",
        "label": p.label,
        "confidence": float(p.probs[p.label_index]),
        "previous": prev,
        "top_attributes": top,
        "class": cls,
    }


def grid_summary(
    view: Any, label_field: str, *, top_attributes: int = 3, max_classes: int = 12
) -> dict:
    """The run's parameters and, per predicted class in ``view``, how many
    samples and the attributes most often ranked first for them.

    Returns:
        ``{"params": {name: value}, "rows": [{"class", "count", "attributes"}]}``
        (rows by count, at most ``max_classes``).
    """
    cfg = get_run_config(dataset_of(view), label_field)
    keys = (
        "method",
        "model",
        "pretrained",
        "attribute_set",
        "n_crops",
        "theta",
        "eps",
        "gamma",
        "seed",
        "random_weights",
    )
    params = {k: cfg.get(k) for k in keys if k in cfg}
    fs = cfg.get("feature_store")
    params["feature_store"] = fs["path"] if fs else "(none)"
    if cfg.get("rescored_from"):
        params["rescored_from"] = cfg["rescored_from"]
    counts = view.count_values(f"{label_field}.label")
    attrs_field = output_fields(label_field)["attributes"]
    has_attrs = attrs_field in dataset_of(view).get_field_schema()
    rows = []
    for c, n in sorted(
        ((c, n) for c, n in counts.items() if c is not None), key=lambda x: (-x[1], x[0])
    )[:max_classes]:
        top = []
        if has_attrs:
            firsts = view.match(F(f"{label_field}.label") == c).values(attrs_field)
            tally: dict = {}
            for lst in firsts:
                if lst:
                    tally[lst[0]] = tally.get(lst[0], 0) + 1
            top = [
                a for a, _ in sorted(tally.items(), key=lambda x: (-x[1], x[0]))[:top_attributes]
            ]
        rows.append({"class": c, "count": int(n), "attributes": "; ".join(top)})
    return {"params": params, "rows": rows}
