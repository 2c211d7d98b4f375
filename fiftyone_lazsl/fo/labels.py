"""Label documents of one LaZSL prediction, compact by default, and readers of
both stored forms.

:func:`label_documents` builds the BSON-ready documents a run writes (no
``fo.Label`` objects: building and validating thousands of them per second was
the cost of writing), :func:`class_evidence` / :func:`evidence_classes` read the
per-class evidence back from either form:

* ``evidence="compact"`` (default): the ``Classification`` carries
  ``evidence_by_class``, a dict keyed by class index (as a string) with one
  entry per class people look at (the predicted class first, ``runner_ups``
  runner-ups, and the ground-truth class when a ground-truth field was
  given)::

      {"class": "Laysan Albatross", "index": 1, "role": "predicted",
       "attributes": ["a white head", ...],   # the class's attributes, set order
       "scores": [0.031, ...],                # contribution of each to the score
       "crops": [3, ...]}                     # kept crops matched to it (LaZSL)

  (outputs written before this layout hold the same entries as a list named
  ``evidence``, which the App's label tooltip rendered as ``[object Object]``;
  :func:`evidence_entries` reads both), ``evidence_summary``: one readable line
  of those classes' top attributes (what the tooltip shows), ``keywords``: the
  predicted class's top attributes without a leading article (``"white
  head"``), and ``words``: their distinct words (``"white"``, ``"head"``), so
  the App sidebar's search, which matches the start of a value, finds an
  attribute by any of its words; ``F_crops`` keeps the ``top_k_crops`` kept crops that
  match their attribute best (hybrid similarity;
  :data:`DEFAULT_TOP_K_CROPS`).
* ``evidence="full"``: also every class's arrays ``attribute_scores`` and
  ``attribute_crops`` (``[C][A_c]``, the pre-0.2 layout, which datasets written
  before compact outputs still have) and all kept crops.

``logits`` are stored as FiftyOne stores any ``VectorField`` value (a serialized
NumPy array, :func:`serialize_vector`), float64 as before.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from bson import ObjectId

# (declared with the output options they are the defaults of)
from fiftyone_lazsl.core.config import (
    DEFAULT_RUNNER_UPS,
    DEFAULT_TOP_K_CROPS,
    EVIDENCE_MODES,
)

_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


def strip_article(text: str) -> str:
    """``"a white head"`` -> ``"white head"`` (leading English article removed,
    the rest unchanged); text without one is returned as is."""
    return _ARTICLE.sub("", text.strip(), count=1)


_NPY_HEADERS: dict[int, bytes] = {}


def serialize_vector(values: Any) -> bytes:
    """A 1-d float64 vector in FiftyOne's ``VectorField`` storage format
    (``np.save`` bytes, zlib-compressed: what
    :func:`fiftyone.core.utils.serialize_numpy_array` writes and
    ``deserialize_numpy_array`` reads), built without ``np.save`` per call
    (the ``.npy`` header is cached per length) and with zlib level 1
    (float32-derived logits still compress to about 60 %; level 6 costs 4x
    the time for 3 % less)."""
    a = np.ascontiguousarray(values, dtype="<f8").reshape(-1)
    header = _NPY_HEADERS.get(a.size)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        header = _NPY_HEADERS[a.size] = buf.getvalue()[: -a.nbytes]
    return zlib.compress(header + a.tobytes(), 1)


def _round(values: Any, digits: int = 6) -> list[float]:
    return [round(v, digits) for v in np.asarray(values, dtype=np.float64).tolist()]


def _class_entry(
    pred: Any, names: Sequence[Sequence[str]], classes: Sequence[str], c: int, role: str
) -> dict:
    entry = {
        "class": classes[c],
        "index": int(c),
        "role": role,
        "attributes": list(names[c]),
        "scores": _round(pred.attribute_scores[c]),
    }
    if pred.attribute_crops is not None:
        entry["crops"] = np.asarray(pred.attribute_crops[c]).astype(int).tolist()
    return entry


def evidence_class_indices(
    pred: Any, gt_index: int | None, runner_ups: int
) -> list[tuple[int, str]]:
    """``[(class_index, role)]`` whose evidence compact outputs keep: the
    predicted class, the ``runner_ups`` highest-scoring other classes, and the
    ground-truth class (role ``"ground_truth"``) unless already listed."""
    c = int(pred.label_index)
    out = [(c, "predicted")]
    if runner_ups > 0:
        logits = np.asarray(pred.logits)
        k = min(runner_ups + 1, logits.size)
        top = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
        top = sorted((int(i) for i in top), key=lambda i: (-float(logits[i]), i))
        out += [(i, "runner_up") for i in top if i != c][:runner_ups]
    if gt_index is not None and gt_index not in {i for i, _ in out}:
        out.append((int(gt_index), "ground_truth"))
    return out


def label_documents(
    pred: Any,
    classes: Sequence[str],
    attribute_labels: Sequence[Sequence[str]],
    *,
    evidence: str = "compact",
    runner_ups: int = DEFAULT_RUNNER_UPS,
    gt_index: int | None = None,
    top_k_crops: int | None = DEFAULT_TOP_K_CROPS,
    top_attributes: int = 5,
) -> tuple[dict, dict | None, list | None]:
    """The documents a run stores for one prediction, ready for MongoDB.

    Args:
        pred: a :class:`fiftyone_lazsl.core.classifier.Prediction`.
        classes: ``[C]`` class names (logit order).
        attribute_labels: ``[C][A_c]`` attribute texts.
        evidence: ``"compact"`` or ``"full"`` (see the module docstring).
        runner_ups: runner-up classes whose evidence is kept (compact).
        gt_index: the sample's ground-truth class index, or None.
        top_k_crops: kept crops stored as detections, best-matching first
            (hybrid similarity to their attribute, to 3 decimals; WCA: crop
            weight, to 6 decimals; None: all kept crops, in crop order). WCA
            detections carry the crop's weight as ``confidence`` and ``mass``
            and its most similar sentence of the predicted class as ``label``.
        top_attributes: length of ``F_attributes`` / ``keywords``.

    Returns:
        ``(classification, detections, attributes)``: the ``fo.Classification``
        and ``fo.Detections`` documents (``_id``, ``_cls`` and the fields, as
        ``Label.to_dict()`` would give them; ``detections`` None without crops)
        and the predicted class's top attributes (None for CLIP).

    Raises:
        ValueError: an unknown ``evidence`` mode.
    """
    if evidence not in EVIDENCE_MODES:
        raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, got {evidence!r}")
    c = int(pred.label_index)
    cls = {
        "_id": ObjectId(),
        "_cls": "Classification",
        "tags": [],
        "label": pred.label,
        "confidence": float(pred.probs[c]),
        "logits": serialize_vector(pred.logits),
    }
    attrs = None
    if pred.attribute_scores is not None:
        a = np.asarray(pred.attribute_scores[c])
        order = np.argsort(-a, kind="stable")[:top_attributes]
        attrs = [attribute_labels[c][int(i)] for i in order]
        cls["keywords"] = [strip_article(t) for t in attrs]
        cls["words"] = attribute_words(attrs)
        entries = [
            _class_entry(pred, attribute_labels, classes, i, role)
            for i, role in evidence_class_indices(pred, gt_index, runner_ups)
        ]
        cls["evidence_summary"] = evidence_summary(entries)
        cls["evidence_by_class"] = {str(e["index"]): e for e in entries}
        if evidence == "full":
            cls["attribute_scores"] = [_round(s) for s in pred.attribute_scores]
            if pred.attribute_crops is not None:
                cls["attribute_crops"] = [
                    np.asarray(x).astype(int).tolist() for x in pred.attribute_crops
                ]
    dets = None
    if pred.crops is not None:
        cr = pred.crops
        idx = np.nonzero(cr.kept)[0]
        if top_k_crops:
            # Balanced OT gives every kept crop the same mass (1 / #kept, up to
            # Sinkhorn's tolerance), so mass cannot rank crops: rank by each
            # crop's hybrid similarity to the attribute it matched, rounded so
            # that float noise between batches or devices never reorders them
            # (ties keep crop order).
            # WCA weights crops unequally: its top crops are the heaviest ones.
            rank = cr.mass if getattr(pred, "method", None) == "wca" else cr.similarity
            key = np.round(rank[idx].astype(np.float64), 3 if rank is cr.similarity else 6)
            idx = idx[np.argsort(-key, kind="stable")[:top_k_crops]]
        boxes = np.clip(cr.boxes_rel[idx], 0.0, 1.0).tolist()
        share, sim, mass = (
            cr.share[idx].tolist(),
            cr.similarity[idx].tolist(),
            cr.mass[idx].tolist(),
        )
        att = cr.attribute[idx].tolist()
        names = attribute_labels[c]
        dets = {
            "_id": ObjectId(),
            "_cls": "Detections",
            "detections": [
                {
                    "_id": ObjectId(),
                    "_cls": "Detection",
                    "tags": [],
                    "label": names[att[j]],
                    "bounding_box": boxes[j],
                    "confidence": share[j],
                    "similarity": sim[j],
                    "mass": mass[j],
                    "crop_index": int(i),
                    "attribute_index": att[j],
                }
                for j, i in enumerate(idx.tolist())
            ],
        }
    return cls, dets, attrs


_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*", re.UNICODE)
_STOP = frozenset(
    "a an the and or of with its it has have is are to in on at by for from as "
    "that which this than".split()
)


def attribute_words(attributes: Sequence[str]) -> list[str]:
    """Distinct lower-case words of ``attributes`` in first-seen order, without
    English articles and other short function words (``"a small, brown bird"``
    -> ``["small", "brown", "bird"]``): stored as the label attribute ``words``
    so the App sidebar's search, which matches the start of a value, finds an
    attribute by any of its words."""
    out: dict[str, None] = {}
    for text in attributes:
        for w in _WORD.findall(str(text).lower()):
            if w not in _STOP:
                out.setdefault(w, None)
    return list(out)


_ROLE_TEXT = {"predicted": "predicted", "runner_up": "runner-up", "ground_truth": "ground truth"}


def evidence_summary(entries: Sequence[dict], top: int = 3) -> str:
    """One readable line per evidence class (what the App's label tooltip
    shows as ``evidence_summary``): its role, name and its ``top`` attributes
    by contribution, with the contribution and matched crops, e.g.
    ``predicted Cardinal: red crest 0.0312 (3 crops), ...``; classes joined by
    ``" | "``."""
    parts = []
    for e in entries:
        scores = list(e.get("scores") or [])
        crops = e.get("crops")
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top]
        items = []
        for i in order:
            t = f"{strip_article(e['attributes'][i])} {scores[i]:.4f}"
            if crops is not None:
                t += f" ({crops[i]} crop{'' if crops[i] == 1 else 's'})"
            items.append(t)
        parts.append(
            f"{_ROLE_TEXT.get(e.get('role'), e.get('role'))} {e['class']}: " + ", ".join(items)
        )
    return " | ".join(parts)


# ------------------------------------------------------------------ readers
def _get(label: Any, name: str) -> Any:
    if label is None:
        return None
    if isinstance(label, dict):
        return label.get(name)
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def evidence_entries(label: Any) -> list:
    """The compact per-class evidence entries of a stored ``Classification``
    (or its dict), in stored order (predicted class first): each a dict
    ``{"class", "index", "role", "attributes", "scores", "crops"}``. Reads
    ``evidence_by_class`` (the current layout: a dict keyed by class index, which
    the App's tooltip leaves out) and the earlier ``evidence`` list (a list of
    dicts, which the tooltip showed as ``[object Object]``); empty for the full
    form without it, and for CLIP."""
    by_class = _get(label, "evidence_by_class")
    if by_class:
        return list(by_class.values())
    return list(_get(label, "evidence") or [])


def evidence_classes(label: Any) -> list[int]:
    """Class indices whose per-attribute evidence ``label`` (a stored
    ``Classification``, or its dict) holds: all classes for the full form,
    the listed ones for the compact form, none for CLIP."""
    full = _get(label, "attribute_scores")
    if full is not None:
        return list(range(len(full)))
    return [int(_get(e, "index")) for e in evidence_entries(label)]


def class_evidence(label: Any, class_index: int | None) -> tuple[list | None, list | None]:
    """``(scores, crops)`` of one class from a stored ``Classification`` (or its
    dict), compact or full form: ``scores[a]`` the attribute's contribution to
    the class score, ``crops[a]`` kept crops matched to it (None when the run
    did not store it, e.g. DCLIP crops, CLIP, or a class compact outputs left
    out). Attribute order is the attribute set's."""
    if label is None or class_index is None:
        return None, None
    full = _get(label, "attribute_scores")
    if full is not None:
        crops = _get(label, "attribute_crops")
        s = full[class_index] if class_index < len(full) else None
        k = crops[class_index] if crops is not None and class_index < len(crops) else None
        return s, k
    for e in evidence_entries(label):
        if int(_get(e, "index")) == int(class_index):
            return _get(e, "scores"), _get(e, "crops")
    return None, None
