"""Label audit: rank likely label errors and say why, in attribute words.

:func:`audit_labels` reads the predictions a LaZSL / WCA / DCLIP / CLIP run wrote in a
field ``F`` (see :mod:`fiftyone_lazsl.fo.runs`) and a ground-truth
``fo.Classification`` field ``G``, and writes for every audited sample:

* ``F_suspicion`` (float): how strongly the model contradicts the label,

  ``suspicion = max_{c != gt} p(c) - p(gt)``,  ``p = softmax(logits)``

  in ``[-1, 1]``. When the prediction differs from the label this is
  ``p(predicted) - p(label)`` (> 0): high when the model is sure of another
  class *and* gives the label little probability. When they agree it is minus
  the margin of the label over the runner-up (< 0), so confident agreements rank
  last and shaky ones just below the disagreements. A label that is not among
  the run's classes has ``p(gt) = 0`` (suspicion = ``p(predicted)``). Samples
  without a prediction or without a label get no suspicion (None).

  Why not FiftyOne Brain's ``compute_mistakenness``? With logits it scores
  ``(+-exp(-entropy(softmax)) + 1) / 2`` from the prediction's entropy and
  whether the labels match, and never looks at the probability of the labelled
  class: a wrong prediction where the label is a close runner-up ranks as high
  as one where the label got no probability at all, and with hundreds of
  classes the entropy is dominated by the tail. The margin above uses the
  labelled class directly and is exact to recompute from the stored logits.

* ``F_evidence_gt`` (list of strings): the labelled class's attributes with the
  *least* evidence for this image, weakest first;
* ``F_evidence_pred`` (list of strings): the predicted class's attributes with
  the *most* evidence, strongest first;
* ``F_evidence`` (string): one readable sentence with both lists, their values
  and the probabilities (or why there is no evidence).

"Evidence" is an attribute's **contribution to its class score**, not the
transport mass it received: balanced optimal transport gives every attribute of
a class exactly ``1 / A_c`` of the mass, so mass cannot rank attributes. For
LaZSL it is ``sum_n T[n, a] * S[n, a]`` (the stored ``attribute_scores``, which
sum to the class score); for WCA the sentence's weighted share of the class
score, ``v_a (z . t_a) / ||sum v t||`` (also summing to it); for DCLIP, whose class score is the mean of the global
view's cosines with the attributes, it is ``cosine / A_c``. CLIP runs score one
class-name prompt per class and have no attribute evidence: their evidence
lists are empty (None) and the sentence says so.

The ``top_k`` most suspicious samples (by default only those whose prediction
contradicts the label, ``suspicion > 0``) get a sample tag, and a saved view
``"suspects: F"`` lists the tagged samples, most suspicious first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import numpy as np

from fiftyone_lazsl.core.attributes import class_key
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.labels import class_evidence
from fiftyone_lazsl.fo.runs import get_run_config, output_fields

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

#: Note shown with every audit: what "evidence" means.
EVIDENCE_NOTE = (
    "evidence = each attribute's contribution to its class score (balanced optimal "
    "transport gives every attribute the same mass, so mass cannot rank attributes)"
)

NO_EVIDENCE_CLIP = "no attribute evidence: 'clip' runs score one class-name prompt per class"


def audit_fields(pred_field: str) -> dict[str, str]:
    """Names of the fields :func:`audit_labels` writes for ``pred_field``."""
    return {
        "suspicion": f"{pred_field}_suspicion",
        "evidence": f"{pred_field}_evidence",
        "evidence_gt": f"{pred_field}_evidence_gt",
        "evidence_pred": f"{pred_field}_evidence_pred",
    }


def suspects_view_name(pred_field: str) -> str:
    """Name of the saved view of the samples :func:`audit_labels` tagged."""
    return f"suspects: {pred_field}"


def softmax(logits: Sequence[float] | np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-d sequence of logits (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def suspicion_score(logits: Sequence[float] | np.ndarray, gt_index: int | None) -> float:
    """``max_{c != gt} p(c) - p(gt)`` with ``p = softmax(logits)``.

    Args:
        logits: ``[C]`` class logits in the run's class order.
        gt_index: index of the labelled class, or None when the label is not one
            of the classes (then ``p(gt) = 0`` and the score is ``max p``).

    Returns:
        a float in ``[-1, 1]``; > 0 exactly when another class is more probable
        than the label.
    """
    p = softmax(logits)
    if gt_index is None:
        return float(p.max())
    others = np.delete(p, gt_index)
    rival = float(others.max()) if others.size else 0.0
    return rival - float(p[gt_index])


def _match_class(label: str | None, classes: list[str], keys: dict[str, int]) -> int | None:
    if label is None:
        return None
    if label in classes:
        return classes.index(label)
    return keys.get(class_key(label))


def _contributions(method: str | None, label: Any, class_index: int | None) -> np.ndarray | None:
    """Per-attribute contribution of one class from a stored prediction
    (``{"attribute_scores": ...}`` full form or ``{"evidence": ...}`` compact
    form), or None when not stored."""
    scores, _ = class_evidence(label, class_index)
    if scores is None:
        return None
    a = np.asarray(scores, dtype=np.float64)
    if a.size == 0:
        return None
    if method == "dclip":
        a = a / a.size
    return a


def _ranked(
    names: Sequence[str], contrib: np.ndarray, n: int, *, most: bool
) -> list[tuple[str, float]]:
    order = np.argsort(-contrib if most else contrib, kind="stable")[:n]
    return [(names[int(i)], float(contrib[int(i)])) for i in order]


def _fmt_attrs(pairs: Sequence[tuple[str, float]]) -> str:
    return "; ".join(f"{a} ({v:.4g})" for a, v in pairs)


@dataclass
class AuditRow:
    """One audited sample.

    Attributes:
        sample_id, filepath: the sample.
        suspicion: see :func:`suspicion_score`; None without prediction or label.
        ground_truth, predicted: labels (None when absent).
        p_ground_truth, p_predicted: their probabilities (None when unknown).
        evidence_gt: labelled class's weakest attributes ``[(attribute, contribution)]``.
        evidence_pred: predicted class's strongest attributes.
        sentence: the ``F_evidence`` text.
    """

    sample_id: str
    filepath: str
    suspicion: float | None
    ground_truth: str | None
    predicted: str | None
    p_ground_truth: float | None
    p_predicted: float | None
    evidence_gt: list | None
    evidence_pred: list | None
    sentence: str


@dataclass
class AuditResult:
    """What :func:`audit_labels` did.

    Attributes:
        pred_field, gt_field, method: the audited run's field, the label field and
            the run's method (``"lazsl"``, ``"dclip"``, ``"clip"``, or None when no
            LaZSL run wrote the field).
        fields: names of the written fields (:func:`audit_fields`).
        tag: the sample tag given to the suspects; saved_view: its saved view name.
        rows: every audited sample, most suspicious first (None last).
        tagged: ids of the tagged samples, most suspicious first.
        num_no_prediction, num_no_label, num_label_not_in_classes: counts.
        has_evidence: False for runs without attribute evidence (CLIP).
    """

    pred_field: str
    gt_field: str
    method: str | None
    fields: dict
    tag: str | None
    saved_view: str | None
    rows: list = field(default_factory=list)
    tagged: list = field(default_factory=list)
    num_no_prediction: int = 0
    num_no_label: int = 0
    num_label_not_in_classes: int = 0
    has_evidence: bool = True

    @property
    def num_samples(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        """One line: what was audited and tagged."""
        n_dis = sum(1 for r in self.rows if r.suspicion is not None and r.suspicion > 0)
        s = (
            f"audited {self.num_samples} samples of {self.pred_field!r} against "
            f"{self.gt_field!r}: {n_dis} contradict their label; tagged {len(self.tagged)} "
            f"as {self.tag!r}"
        )
        extra = []
        if self.num_no_prediction:
            extra.append(f"{self.num_no_prediction} without prediction")
        if self.num_no_label:
            extra.append(f"{self.num_no_label} without label")
        if self.num_label_not_in_classes:
            extra.append(
                f"{self.num_label_not_in_classes} labelled with a class the run does not know"
            )
        if extra:
            s += " (" + ", ".join(extra) + ")"
        return s

    def table(self, n: int = 20) -> str:
        """The ``n`` most suspicious samples as a text table, with their evidence."""
        lines = [f"{'rank':>4}  {'suspicion':>9}  {'label':<28} {'predicted':<28} file"]
        for i, r in enumerate(self.rows[:n], 1):
            s = "-" if r.suspicion is None else f"{r.suspicion:+.3f}"
            lines.append(
                f"{i:>4}  {s:>9}  {str(r.ground_truth)[:28]:<28} "
                f"{str(r.predicted)[:28]:<28} {r.filepath}"
            )
            lines.append(f"{'':>17}{r.sentence}")
        lines.append(EVIDENCE_NOTE if self.has_evidence else NO_EVIDENCE_CLIP)
        return "\n".join(lines)


def _ensure_fields(dataset: fo.Dataset, names: dict[str, str]) -> None:
    schema = dataset.get_field_schema()
    want = {
        names["suspicion"]: dict(ftype=fo.FloatField),
        names["evidence"]: dict(ftype=fo.StringField),
        names["evidence_gt"]: dict(ftype=fo.ListField, subfield=fo.StringField),
        names["evidence_pred"]: dict(ftype=fo.ListField, subfield=fo.StringField),
    }
    for name, kw in want.items():
        if name not in schema:
            dataset.add_sample_field(name, **kw)


def _run_info(
    samples: SampleCollection, pred_field: str
) -> tuple[str | None, list[str], list[list[str]] | None]:
    """``(method, classes, attribute_labels)`` of the run that wrote ``pred_field``."""
    dataset = dataset_of(samples)
    try:
        cfg = get_run_config(samples, pred_field)
    except ValueError:
        cfg = {}
    classes = cfg.get("classes") or dataset.classes.get(pred_field)
    if not classes:
        raise UserError(
            f"field {pred_field!r} has no known class order: it was not written by a LaZSL "
            f"run and dataset.classes[{pred_field!r}] is not set"
        )
    return cfg.get("method"), list(classes), cfg.get("attribute_labels")


def audit_labels(
    samples: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    top_k: int = 20,
    tag: str | None = "suspect",
    n_evidence: int = 3,
    min_suspicion: float | None = 0.0,
    save_view: bool = True,
) -> AuditResult:
    """Rank the samples of ``samples`` by how likely their label is wrong, write
    the attribute evidence, and tag the most suspicious ones.

    See the module docstring for the score (``F_suspicion``), the evidence fields
    (``F_evidence_gt``, ``F_evidence_pred``, ``F_evidence``) and what "evidence"
    means. Re-running replaces the fields on ``samples`` and moves ``tag``: it is
    first removed from every sample of ``samples``.

    Args:
        samples: a FiftyOne dataset or view.
        pred_field: a prediction field ``F`` written by :func:`fiftyone_lazsl.run_lazsl`
            (any method), or any ``fo.Classification`` field with ``logits`` whose
            class order is in ``dataset.classes[F]``.
        gt_field: the ``fo.Classification`` field holding the labels to audit.
        top_k: how many of the most suspicious samples to tag.
        tag: the sample tag (None: tag nothing).
        n_evidence: attributes listed per class.
        min_suspicion: only samples with a suspicion strictly above this are
            tagged (default 0: only samples whose prediction contradicts the
            label); None tags the ``top_k`` whatever their score.
        save_view: save the view ``"suspects: F"`` of the tagged samples, most
            suspicious first.

    Returns:
        an :class:`AuditResult`.

    Raises:
        UserError: a field is missing, or the class order of ``pred_field`` is unknown.
    """
    dataset = dataset_of(samples)
    schema = dataset.get_field_schema()
    for f in (pred_field, gt_field):
        if f not in schema:
            raise UserError(f"dataset {dataset.name!r} has no field {f!r}")
    run = _AuditedRun(pred_field, *_run_info(samples, pred_field), n_evidence=n_evidence)
    names = audit_fields(pred_field)
    res = AuditResult(
        pred_field=pred_field,
        gt_field=gt_field,
        method=run.method,
        fields=names,
        tag=tag,
        saved_view=None,
        has_evidence=run.method != "clip",
    )
    ids, samples_values = _read_samples(
        samples, pred_field, gt_field, output_fields(pred_field)["error"], schema
    )
    for values in samples_values:
        res.rows.append(_audit_sample(run, res, *values))
    # Most suspicious first; samples without a score last, in dataset order.
    res.rows.sort(key=lambda r: (r.suspicion is None, -(r.suspicion or 0.0)))
    _write_audit(samples, dataset, ids, res.rows, names)
    if tag:
        _tag_suspects(
            samples, dataset, res, top_k=top_k, min_suspicion=min_suspicion, save_view=save_view
        )
    return res


@dataclass
class _AuditedRun:
    """What the audit needs to know about the run that wrote ``pred_field``."""

    pred_field: str
    method: str | None
    classes: list[str]
    attribute_labels: list[list[str]] | None
    n_evidence: int = 3

    def __post_init__(self) -> None:
        self.keys = {class_key(c): i for i, c in enumerate(self.classes)}


def _read_samples(
    samples: SampleCollection, pred_field: str, gt_field: str, err_field: str, schema: dict
) -> tuple[list[str], list[tuple]]:
    """Sample ids and, per sample, ``(id, filepath, gt label, predicted label,
    logits, stored evidence, error)`` in one ``values()`` call (the evidence as
    ``{"attribute_scores": full form, "evidence": compact form}``, None when
    neither is stored)."""
    has_err = err_field in schema
    paths = [
        "id",
        "filepath",
        f"{gt_field}.label",
        f"{pred_field}.label",
        f"{pred_field}.logits",
        f"{pred_field}.attribute_scores",
        f"{pred_field}.evidence",
        f"{pred_field}.evidence_by_class",
    ]
    if has_err:
        paths.append(err_field)
    values = samples.values(paths)
    ids, fps, gts, preds, logits, full, compact, by_class = values[:8]
    errors = values[8] if has_err else [None] * len(ids)
    att = [
        None
        if f is None and c is None and b is None
        else {"attribute_scores": f, "evidence": c, "evidence_by_class": b}
        for f, c, b in zip(full, compact, by_class)
    ]
    return ids, list(zip(ids, fps, gts, preds, logits, att, errors))


def _audit_sample(
    run: _AuditedRun,
    res: AuditResult,
    sid: str,
    fp: str,
    gt: str | None,
    pred: str | None,
    lg: list[float] | None,
    sc: list | None,
    err: str | None,
) -> AuditRow:
    """The audit row of one sample (counters of ``res`` updated)."""
    row = AuditRow(sid, fp, None, gt, pred, None, None, None, None, "")
    classes = run.classes
    if pred is None or lg is None or len(lg) != len(classes):
        res.num_no_prediction += 1
        row.sentence = _no_prediction_sentence(run, lg, err)
        return row
    p = softmax(lg)
    pi = _match_class(pred, classes, run.keys)
    if pi is None:
        pi = int(np.argmax(lg))
    row.p_predicted = float(p[pi])
    gi = _match_class(gt, classes, run.keys)
    parts = [_label_sentence(run, res, row, lg, p, pi, gi)]
    parts.extend(_evidence_sentences(run, res, row, sc, pi, gi))
    row.sentence = ". ".join(parts) + "."
    return row


def _no_prediction_sentence(run: _AuditedRun, lg: list[float] | None, err: str | None) -> str:
    if err:
        return f"no prediction: {err}"
    if lg is not None and len(lg) != len(run.classes):
        return f"prediction has {len(lg)} logits but the run has {len(run.classes)} classes"
    return f"no prediction in field {run.pred_field!r}"


def _label_sentence(
    run: _AuditedRun,
    res: AuditResult,
    row: AuditRow,
    lg: list[float],
    p: np.ndarray,
    pi: int,
    gi: int | None,
) -> str:
    """Label vs prediction (sets ``row.suspicion`` and ``row.p_ground_truth``)."""
    gt, pred = row.ground_truth, row.predicted
    if gt is None:
        res.num_no_label += 1
        return f"no label; predicted {pred!r} (p {p[pi]:.3f})"
    row.suspicion = suspicion_score(lg, gi)
    if gi is None:
        res.num_label_not_in_classes += 1
        return (
            f"labelled {gt!r}, which is not one of the run's {len(run.classes)} "
            f"classes; predicted {pred!r} (p {p[pi]:.3f})"
        )
    row.p_ground_truth = float(p[gi])
    if gi == pi:
        return f"labelled and predicted {pred!r} (p {p[pi]:.3f})"
    return f"labelled {gt!r} (p {p[gi]:.3f}) but predicted {pred!r} (p {p[pi]:.3f})"


def _evidence_sentences(
    run: _AuditedRun, res: AuditResult, row: AuditRow, sc: list | None, pi: int, gi: int | None
) -> list[str]:
    """The attribute evidence (sets ``row.evidence_gt`` / ``row.evidence_pred``)."""
    if not res.has_evidence:
        return [NO_EVIDENCE_CLIP]
    if sc is None or run.attribute_labels is None:
        return ["no attribute evidence stored for this prediction"]
    parts = []
    cg = _contributions(run.method, sc, gi)
    if cg is not None:
        row.evidence_gt = _ranked(run.attribute_labels[gi], cg, run.n_evidence, most=False)
        parts.append(f"weakest {run.classes[gi]!r} attributes: {_fmt_attrs(row.evidence_gt)}")
    elif gi is not None and gi != pi:
        parts.append(
            f"no attribute evidence stored for {run.classes[gi]!r} (compact outputs "
            "keep it when the run is given the ground-truth field, or run with "
            "evidence='full')"
        )
    cp = _contributions(run.method, sc, pi)
    if cp is not None:
        row.evidence_pred = _ranked(run.attribute_labels[pi], cp, run.n_evidence, most=True)
        parts.append(f"strongest {run.classes[pi]!r} attributes: {_fmt_attrs(row.evidence_pred)}")
    return parts


def _write_audit(
    samples: SampleCollection,
    dataset: fo.Dataset,
    ids: list[str],
    rows: list[AuditRow],
    names: dict[str, str],
) -> None:
    """Write suspicion and evidence fields with one ``set_values`` per field."""
    _ensure_fields(dataset, names)
    by_id = {r.sample_id: r for r in rows}
    samples.set_values(names["suspicion"], [by_id[i].suspicion for i in ids])
    samples.set_values(names["evidence"], [by_id[i].sentence for i in ids])
    samples.set_values(
        names["evidence_gt"],
        [[a for a, _ in by_id[i].evidence_gt] if by_id[i].evidence_gt else None for i in ids],
    )
    samples.set_values(
        names["evidence_pred"],
        [[a for a, _ in by_id[i].evidence_pred] if by_id[i].evidence_pred else None for i in ids],
    )


def _tag_suspects(
    samples: SampleCollection,
    dataset: fo.Dataset,
    res: AuditResult,
    *,
    top_k: int,
    min_suspicion: float | None,
    save_view: bool,
) -> None:
    """Move ``res.tag`` to the most suspicious samples and save their view."""
    tag, pred_field = res.tag, res.pred_field
    samples.untag_samples(tag)
    cands = [
        r
        for r in res.rows
        if r.suspicion is not None
        and not math.isnan(r.suspicion)
        and (min_suspicion is None or r.suspicion > min_suspicion)
    ]
    res.tagged = [r.sample_id for r in cands[: max(0, int(top_k))]]
    if res.tagged:
        dataset.select(res.tagged).tag_samples(tag)
    if save_view:
        res.saved_view = suspects_view_name(pred_field)
        view = samples.match_tags(tag).sort_by(res.fields["suspicion"], reverse=True)
        dataset.save_view(
            res.saved_view,
            view,
            overwrite=True,
            description=f"samples tagged {tag!r} by the audit of {pred_field!r} "
            f"against {res.gt_field!r}, most suspicious first",
        )
