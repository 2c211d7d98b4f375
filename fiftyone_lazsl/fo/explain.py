"""Per-sample explanations of a LaZSL run (the content of the App panel).

Everything the App panel (``operators/panel.py``) shows comes from here, so it
can be tested without the App:

* :func:`explain_sample`: predicted class and runner-up with their scores, the
  predicted class's attributes with each one's contribution to the class score
  (``attribute_scores``: the transport-weighted similarity
  ``sum_n T[n, a] * S[n, a]``; balanced transport gives every attribute the same
  ``1 / A_c`` of the mass, so the contribution is what ranks them) and the
  number of crops that matched it, and the same for the ground-truth class
  when it differs from the prediction;
* :func:`panel_content`: the explanation formatted as the panel's markdown and
  table rows;
* :func:`matched_attribute_view`: the samples whose ranked attributes
  (``F_attributes``) contain a given attribute;

Evidence heatmaps are in :mod:`fiftyone_lazsl.fo.heatmaps`, the label-field
scanner (``ground_truth_fields``) in :mod:`fiftyone_lazsl.fo.fields`; both stay
importable from here.

The stored layout that these functions read is documented in
:mod:`fiftyone_lazsl.fo.runs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

# Moved to fiftyone_lazsl.fo.heatmaps / fiftyone_lazsl.fo.fields; importable from here.
from fiftyone_lazsl.fo.fields import ground_truth_fields  # noqa: F401
from fiftyone_lazsl.fo.heatmaps import (  # noqa: F401
    HEATMAP_MAX_SIDE,
    evidence_heatmap,
    heatmap_field_name,
    write_heatmaps,
)
from fiftyone_lazsl.fo.labels import class_evidence
from fiftyone_lazsl.fo.runs import get_run_config, output_fields

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection


def _get(sample: fo.Sample | None, field: str) -> Any:
    """``sample[field]``, or None when the field does not exist or is unset."""
    try:
        return sample[field]
    except (KeyError, AttributeError):
        return None


def _class_summary(classes: list[str], logits: list[float], idx: int) -> dict:
    return {
        "label": classes[idx] if idx < len(classes) else str(idx),
        "index": int(idx),
        "score": float(logits[idx]) if idx < len(logits) else None,
    }


def _attribute_rows(attribute_labels: list[list[str]], pred: Any, class_idx: int) -> list[dict]:
    """Rows ``{attribute, attribute_index, contribution, crops}`` of one class,
    sorted by contribution (descending), ties by attribute order. A value the
    run did not store is None (``crops`` for DCLIP runs, both for CLIP and for
    classes compact outputs left out). Reads the compact and the full form
    (:func:`fiftyone_lazsl.fo.labels.class_evidence`)."""
    labels = list(attribute_labels[class_idx]) if class_idx < len(attribute_labels) else []
    scores, crops = class_evidence(pred, class_idx)
    s = list(scores) if scores is not None else []
    c = list(crops) if crops is not None else []
    rows = []
    for a, text in enumerate(labels):
        rows.append(
            {
                "attribute": text,
                "attribute_index": a,
                "contribution": float(s[a]) if a < len(s) and s[a] is not None else None,
                "crops": int(c[a]) if a < len(c) and c[a] is not None else None,
            }
        )
    rows.sort(
        key=lambda r: (r["contribution"] is None, -(r["contribution"] or 0.0), r["attribute_index"])
    )
    return rows


def _no_result(label_field: str, message: str, error: str | None = None) -> dict:
    return {
        "label_field": label_field,
        "has_result": False,
        "message": message,
        "error": error,
        "predicted": None,
        "runner_up": None,
        "predicted_rows": [],
        "ground_truth": None,
        "gt_differs": False,
        "gt_rows": [],
        "matched_attributes": [],
    }


def explain_sample(
    sample: fo.Sample, label_field: str, gt_field: str | None = None, config: dict | None = None
) -> dict:
    """Explain the LaZSL prediction stored in ``sample[label_field]``.

    Args:
        sample: a :class:`fiftyone.core.sample.Sample` (or ``SampleView``) of a
            dataset on which a LaZSL run wrote ``label_field``
        label_field: the run's label field ``F``
        gt_field (None): an optional ``fo.Classification`` field holding the
            ground truth
        config (None): the run config (:func:`fiftyone_lazsl.fo.runs.get_run_config`),
            looked up from the sample's dataset when omitted

    Returns:
        a dict with keys

        - ``label_field``;
        - ``has_result``: False when the sample has no LaZSL result, and then
          ``message`` says why (``error`` holds ``F_error`` if the run failed
          on it) and every other entry is empty;
        - ``predicted`` / ``runner_up``: ``{label, index, score}`` (score = the
          class logit), ``predicted`` also has ``confidence``; ``runner_up`` is
          None with a single class;
        - ``predicted_rows``: one ``{attribute, attribute_index, contribution,
          crops}`` per attribute of the predicted class, largest contribution
          to the class score first (``contribution`` is the stored
          ``attribute_scores`` entry, ``crops`` the ``attribute_crops`` entry:
          kept crops whose largest share of mass goes to the attribute);
        - ``ground_truth``: None without a ground-truth label, else
          ``{label, index, score, rank}`` (``index``/``score``/``rank`` are None
          when the class is not among the run's classes; ``rank`` is 1 for the
          top-scoring class);
        - ``gt_differs``: whether the ground truth is not the predicted class;
        - ``gt_rows``: the ground-truth class's rows when it differs (empty
          otherwise, or when the class is unknown to the run);
        - ``matched_attributes``: ``F_attributes``, the predicted class's
          top attributes ranked by contribution;
        - ``message``: a one-line human summary.
    """
    names = output_fields(label_field)
    pred = _get(sample, label_field)
    error = _get(sample, names["error"])
    if pred is None:
        if error:
            return _no_result(label_field, f"LaZSL failed on this sample: {error}", error=error)
        return _no_result(label_field, f"This sample has no LaZSL result in field '{label_field}'.")
    if config is None:
        config = get_run_config(sample.dataset, label_field)
    run = _StoredPrediction.read(pred, config)
    p_idx = run.predicted_index(pred.label)
    if p_idx is None:
        return _no_result(
            label_field,
            f"The LaZSL result in '{label_field}' has label {pred.label!r}, which is not among "
            "the run's classes.",
        )
    predicted = _class_summary(run.classes, run.logits, p_idx)
    predicted["label"] = pred.label if pred.label is not None else predicted["label"]
    predicted["confidence"] = None if pred.confidence is None else float(pred.confidence)
    others = [i for i in run.order if i != p_idx]
    runner_up = _class_summary(run.classes, run.logits, others[0]) if others else None
    gt = _get(sample, gt_field) if gt_field else None
    ground_truth, gt_differs, gt_rows = _ground_truth_part(
        run, getattr(gt, "label", None) if gt is not None else None, predicted["label"]
    )
    return {
        "label_field": label_field,
        "has_result": True,
        "message": _summary_line(predicted, runner_up, ground_truth, gt_differs),
        "error": error,
        "predicted": predicted,
        "runner_up": runner_up,
        "predicted_rows": run.rows(p_idx),
        "ground_truth": ground_truth,
        "gt_differs": gt_differs,
        "gt_rows": gt_rows,
        "matched_attributes": list(_get(sample, names["attributes"]) or []),
    }


@dataclass
class _StoredPrediction:
    """What a run stored for one sample, read once: class order, attribute
    labels (run config), logits, and the label holding the attribute evidence
    (compact or full form)."""

    classes: list[str]
    attribute_labels: list[list[str]]
    logits: list[float]
    label: Any

    @classmethod
    def read(cls, pred: fo.Classification, config: dict) -> _StoredPrediction:
        classes = list(config.get("classes") or [])
        logits = pred.logits
        return cls(
            classes=classes,
            attribute_labels=config.get("attribute_labels") or [[] for _ in classes],
            logits=[] if logits is None else [float(v) for v in np.asarray(logits).ravel()],
            label=pred,
        )

    @property
    def order(self) -> list[int]:
        """Class indices by decreasing logit (ties: class order)."""
        return sorted(range(len(self.logits)), key=lambda i: (-self.logits[i], i))

    def predicted_index(self, label: str | None) -> int | None:
        """Index of the predicted class: its label, else the top logit, else None."""
        if label in self.classes:
            return self.classes.index(label)
        if self.logits:
            return int(np.argmax(self.logits))
        return None

    def rows(self, class_idx: int) -> list[dict]:
        """:func:`_attribute_rows` of one class."""
        return _attribute_rows(self.attribute_labels, self.label, class_idx)


def _ground_truth_part(
    run: _StoredPrediction, gt_label: str | None, predicted_label: str
) -> tuple[dict | None, bool, list[dict]]:
    """``(ground_truth, gt_differs, gt_rows)`` of :func:`explain_sample`."""
    if gt_label is None:
        return None, False, []
    if gt_label in run.classes:
        g_idx = run.classes.index(gt_label)
        ground_truth = _class_summary(run.classes, run.logits, g_idx)
        ground_truth["rank"] = run.order.index(g_idx) + 1 if g_idx < len(run.logits) else None
    else:
        ground_truth = {"label": gt_label, "index": None, "score": None, "rank": None}
    gt_differs = gt_label != predicted_label
    gt_rows = (
        run.rows(ground_truth["index"]) if gt_differs and ground_truth["index"] is not None else []
    )
    return ground_truth, gt_differs, gt_rows


def _summary_line(
    predicted: dict, runner_up: dict | None, ground_truth: dict | None, gt_differs: bool
) -> str:
    msg = f"Predicted {predicted['label']}"
    if runner_up is not None:
        msg += f"; runner-up {runner_up['label']}"
    if ground_truth is not None:
        msg += f"; ground truth {ground_truth['label']}" + (
            " (differs)" if gt_differs else " (agrees)"
        )
    return msg + "."


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table_rows(rows: list[dict], matched: Iterable[str]) -> list[dict]:
    matched = set(matched)
    return [
        {
            "attribute": r["attribute"],
            "contribution": _fmt(r["contribution"], 4),
            "crops": "n/a" if r["crops"] is None else str(r["crops"]),
            "ranked": "yes" if r["attribute"] in matched else "",
        }
        for r in rows
    ]


def panel_content(explanation: dict) -> dict:
    """Format :func:`explain_sample`'s output for the explanations panel.

    Returns:
        a dict with ``summary`` (markdown: predicted class and runner-up with
        scores, or why there is no result), ``predicted_title`` and
        ``predicted_table`` (rows of strings ``attribute``, ``contribution``,
        ``crops``, ``ranked``), ``gt_title`` and ``gt_table`` (empty when the ground truth
        agrees or is absent), and ``matched_attributes`` (the attributes to
        offer as "show samples sharing this attribute" buttons)
    """
    e = explanation
    if not e["has_result"]:
        return {
            "summary": f"**No LaZSL result.** {e['message']}",
            "predicted_title": "",
            "predicted_table": [],
            "gt_title": "",
            "gt_table": [],
            "matched_attributes": [],
        }
    p, r, g = e["predicted"], e["runner_up"], e["ground_truth"]
    lines = [f"**Predicted:** {p['label']} (score {_fmt(p['score'], 4)}"]
    if p.get("confidence") is not None:
        lines[0] += f", confidence {_fmt(p['confidence'])}"
    lines[0] += ")"
    if r is not None:
        lines.append(f"**Runner-up:** {r['label']} (score {_fmt(r['score'], 4)})")
    if g is not None:
        if g["index"] is None:
            lines.append(f"**Ground truth:** {g['label']} (not among this run's classes)")
        elif e["gt_differs"]:
            lines.append(
                f"**Ground truth:** {g['label']} (score {_fmt(g['score'], 4)}, "
                f"rank {g['rank']}) differs from the prediction"
            )
        else:
            lines.append(f"**Ground truth:** {g['label']} agrees with the prediction")
    content = {
        "summary": "  \n".join(lines),
        "predicted_title": f"Attributes of predicted class {p['label']}",
        "predicted_table": _table_rows(e["predicted_rows"], e["matched_attributes"]),
        "gt_title": "",
        "gt_table": [],
        "matched_attributes": list(e["matched_attributes"]),
    }
    if e["gt_rows"]:
        content["gt_title"] = f"Attributes of ground-truth class {g['label']}"
        content["gt_table"] = _table_rows(e["gt_rows"], [])
    return content


def matched_attribute_view(
    samples: SampleCollection, label_field: str, attribute: str
) -> fo.DatasetView:
    """The samples of ``samples`` whose ``F_attributes`` list (the predicted
    class's top attributes, ranked by contribution) contains ``attribute``."""
    field = output_fields(label_field)["attributes"]
    return samples.match(F(field).exists() & F(field).contains(attribute))
