"""Per-sample explanations of a LaZSL run, and evidence heatmaps.

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
* :func:`evidence_heatmap` / :func:`write_heatmaps`: the predicted class's
  transport mass accumulated over the crop boxes, as ``fo.Heatmap`` labels.

The stored layout that these functions read is documented in
:mod:`fiftyone_lazsl.fo.runs`.
"""

from __future__ import annotations

import math

import numpy as np

from fiftyone_lazsl.fo.labels import class_evidence
from fiftyone_lazsl.fo.runs import get_run_config, list_lazsl_fields, output_fields

#: Default longest side, in cells, of the heatmaps written by :func:`write_heatmaps`.
HEATMAP_MAX_SIDE = 64


def heatmap_field_name(label_field: str) -> str:
    """The default field :func:`write_heatmaps` writes for ``label_field``."""
    return f"{label_field}_heatmap"


def _get(sample, field):
    """``sample[field]``, or None when the field does not exist or is unset."""
    try:
        return sample[field]
    except (KeyError, AttributeError):
        return None


def _label_attr(label, name):
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def _class_summary(classes, logits, idx):
    return {
        "label": classes[idx] if idx < len(classes) else str(idx),
        "index": int(idx),
        "score": float(logits[idx]) if idx < len(logits) else None,
    }


def _attribute_rows(attribute_labels, pred, class_idx):
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
    rows.sort(key=lambda r: (r["contribution"] is None, -(r["contribution"] or 0.0), r["attribute_index"]))
    return rows


def _no_result(label_field, message, error=None):
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


def explain_sample(sample, label_field: str, gt_field: str | None = None, config: dict | None = None) -> dict:
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
        config = get_run_config(sample._dataset, label_field)
    classes = list(config.get("classes") or [])
    attribute_labels = config.get("attribute_labels") or [[] for _ in classes]
    logits = pred.logits
    logits = [] if logits is None else [float(v) for v in np.asarray(logits).ravel()]

    if pred.label in classes:
        p_idx = classes.index(pred.label)
    elif logits:
        p_idx = int(np.argmax(logits))
    else:
        return _no_result(
            label_field,
            f"The LaZSL result in '{label_field}' has label {pred.label!r}, which is not among the run's classes.",
        )

    predicted = _class_summary(classes, logits, p_idx)
    predicted["label"] = pred.label if pred.label is not None else predicted["label"]
    predicted["confidence"] = None if pred.confidence is None else float(pred.confidence)

    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    others = [i for i in order if i != p_idx]
    runner_up = _class_summary(classes, logits, others[0]) if others else None

    ground_truth = None
    gt_differs = False
    gt_rows = []
    gt = _get(sample, gt_field) if gt_field else None
    gt_label = getattr(gt, "label", None) if gt is not None else None
    if gt_label is not None:
        if gt_label in classes:
            g_idx = classes.index(gt_label)
            ground_truth = _class_summary(classes, logits, g_idx)
            ground_truth["rank"] = order.index(g_idx) + 1 if g_idx < len(logits) else None
        else:
            ground_truth = {"label": gt_label, "index": None, "score": None, "rank": None}
        gt_differs = gt_label != predicted["label"]
        if gt_differs and ground_truth["index"] is not None:
            gt_rows = _attribute_rows(attribute_labels, pred, ground_truth["index"])

    matched = _get(sample, names["attributes"]) or []
    pred_rows = _attribute_rows(attribute_labels, pred, p_idx)

    msg = f"Predicted {predicted['label']}"
    if runner_up is not None:
        msg += f"; runner-up {runner_up['label']}"
    if ground_truth is not None:
        msg += f"; ground truth {ground_truth['label']}" + (" (differs)" if gt_differs else " (agrees)")
    return {
        "label_field": label_field,
        "has_result": True,
        "message": msg + ".",
        "error": error,
        "predicted": predicted,
        "runner_up": runner_up,
        "predicted_rows": pred_rows,
        "ground_truth": ground_truth,
        "gt_differs": gt_differs,
        "gt_rows": gt_rows,
        "matched_attributes": list(matched),
    }


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table_rows(rows, matched):
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
            lines.append(f"**Ground truth:** {g['label']} (score {_fmt(g['score'], 4)}, rank {g['rank']}) differs from the prediction")
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


def ground_truth_fields(samples) -> list[str]:
    """Top-level ``fo.Classification`` fields of ``samples`` that are not
    LaZSL outputs (candidates for the ground-truth dropdown)."""
    import fiftyone as fo

    lazsl = set(list_lazsl_fields(samples))
    schema = samples.get_field_schema(embedded_doc_type=fo.Classification)
    return [name for name in schema if name not in lazsl]


def matched_attribute_view(samples, label_field: str, attribute: str):
    """The samples of ``samples`` whose ``F_attributes`` list (the predicted
    class's top attributes, ranked by contribution) contains ``attribute``."""
    from fiftyone import ViewField as F

    field = output_fields(label_field)["attributes"]
    return samples.match(F(field).exists() & F(field).contains(attribute))


def evidence_heatmap(crop_boxes_rel, crop_mass, size=(HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE)) -> np.ndarray:
    """Accumulate transport mass over crop boxes into a ``[0, 1]`` map.

    Args:
        crop_boxes_rel: ``[N, 4]`` boxes ``[x, y, w, h]`` relative to the image
            (FiftyOne's ``bounding_box`` convention)
        crop_mass: ``[N]`` transport mass of the predicted class each crop carries
        size: ``(h, w)`` of the map

    Returns:
        a float32 ``[h, w]`` array: each cell is the summed mass of the boxes
        covering it, divided by the maximum (all zeros when there is no mass).
        A box covers the cells between its rounded edges, and at least one cell.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"heatmap size must be positive, got {size!r}")
    out = np.zeros((h, w), dtype=np.float64)
    boxes = np.asarray(crop_boxes_rel, dtype=np.float64).reshape(-1, 4)
    mass = np.asarray(crop_mass, dtype=np.float64).reshape(-1)
    if len(boxes) != len(mass):
        raise ValueError(f"{len(boxes)} boxes but {len(mass)} masses")
    for (x, y, bw, bh), m in zip(boxes, mass):
        if not np.isfinite(m) or m <= 0:
            continue
        x0 = min(max(int(round(x * w)), 0), w - 1)
        y0 = min(max(int(round(y * h)), 0), h - 1)
        x1 = min(max(int(round((x + bw) * w)), x0 + 1), w)
        y1 = min(max(int(round((y + bh) * h)), y0 + 1), h)
        out[y0:y1, x0:x1] += m
    peak = out.max()
    if peak > 0:
        out /= peak
    return out.astype(np.float32)


def _heatmap_size(width, height, max_side):
    if not width or not height:
        return (max_side, max_side)
    scale = max_side / max(width, height)
    return (max(1, int(math.ceil(height * scale))), max(1, int(math.ceil(width * scale))))


def write_heatmaps(samples, label_field: str, heatmap_field: str | None = None, max_side: int = HEATMAP_MAX_SIDE) -> str:
    """Write an ``fo.Heatmap`` of the predicted class's evidence per sample.

    Reads the crop detections ``F_crops`` (``bounding_box`` and the custom
    attribute ``mass``) and stores :func:`evidence_heatmap` of them, with the
    image's aspect ratio when ``metadata`` is set (longest side ``max_side``),
    in ``heatmap_field``; samples without crops get None. Values are written in
    one batch with ``set_values``.

    Args:
        samples: a dataset or view on which a LaZSL run wrote ``label_field``
        label_field: the run's label field ``F``
        heatmap_field (None): the field to write, default ``F_heatmap``
        max_side (64): the heatmap's longest side, in cells

    Returns:
        the name of the heatmap field
    """
    import fiftyone as fo

    if heatmap_field is None:
        heatmap_field = heatmap_field_name(label_field)
    crops_field = output_fields(label_field)["crops"]
    if not samples.has_field(crops_field):
        raise ValueError(f"no field {crops_field!r}: was a LaZSL run written to {label_field!r}?")
    boxes, masses, widths, heights = samples.values(
        [
            f"{crops_field}.detections.bounding_box",
            f"{crops_field}.detections.mass",
            "metadata.width",
            "metadata.height",
        ]
    )
    maps = []
    for b, m, w, h in zip(boxes, masses, widths, heights):
        if not b:
            maps.append(None)
            continue
        m = [0.0 if v is None else float(v) for v in (m or [0.0] * len(b))]
        hm = evidence_heatmap(b, m, size=_heatmap_size(w, h, max_side))
        maps.append(fo.Heatmap(map=hm, range=[0.0, 1.0]))
    samples.set_values(heatmap_field, maps)
    return heatmap_field
