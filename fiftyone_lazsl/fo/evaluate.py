"""Compare CLIP, DCLIP and LaZSL runs side by side with FiftyOne's evaluation.

:func:`evaluate_methods` runs FiftyOne's ``evaluate_classifications`` for every
prediction field against one ground-truth field:

* top-1 (``method="simple"``), eval key ``eval_F``: a boolean per sample;
* top-k (``method="top-k"``, default k = 5) from the stored ``logits`` and the
  class order ``dataset.classes[F]``, eval key ``eval_F_top5``.

Only samples with a ground-truth label are evaluated. A sample without a
prediction (its image failed, ``F_error``) counts as a miss, as does a label
that is not among the run's classes (FiftyOne's top-k evaluation cannot take
such labels, so it runs on the other samples, and the accuracy printed here
still divides by all labelled samples; the report says how many there were).
Re-running replaces the evaluations under the same keys.

It then builds one side-by-side table (overall top-1 / top-k accuracy per
method, and the classes with the lowest mean top-1 accuracy over the methods,
ties broken by the larger class, then the name)
and saves views for browsing in the App, for every ordered pair of fields
``"A right, B wrong"`` (top-1) and ``"all wrong"`` (every method wrong).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.runs import get_run_config

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

#: Name of the saved view of samples that every evaluated method got wrong.
ALL_WRONG_VIEW = "all wrong"


def eval_keys(pred_field: str, k: int = 5) -> tuple[str, str]:
    """``(top1_key, topk_key)`` that :func:`evaluate_methods` uses for a field."""
    base = "eval_" + pred_field.replace(".", "_")
    return base, f"{base}_top{k}"


def pair_view_name(right: str, wrong: str) -> str:
    """Name of the saved view of samples ``right`` got right and ``wrong`` got wrong."""
    return f"{right} right, {wrong} wrong"


@dataclass
class MethodResult:
    """Evaluation of one prediction field.

    Attributes:
        field: the prediction field; method: the run's method (None if no LaZSL run
            wrote it).
        eval_key, topk_eval_key: FiftyOne eval keys (``topk_eval_key`` None when no
            class order is known).
        k: the k of top-k (at most the number of classes).
        num_samples: labelled samples evaluated; num_correct / num_topk_correct:
            top-1 / top-k hits.
        num_no_prediction: labelled samples without a prediction.
        num_label_not_in_classes: labels the run does not know (top-k misses).
        results: FiftyOne's ``ClassificationResults`` of the top-1 evaluation.
    """

    field: str
    method: str | None
    eval_key: str
    topk_eval_key: str | None
    k: int
    num_samples: int = 0
    num_correct: int = 0
    num_topk_correct: int | None = None
    num_no_prediction: int = 0
    num_label_not_in_classes: int = 0
    results: object = None

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy over the labelled samples."""
        return self.num_correct / self.num_samples if self.num_samples else None

    @property
    def topk_accuracy(self) -> float | None:
        """Top-k accuracy over the labelled samples (None without class order)."""
        if self.num_topk_correct is None or not self.num_samples:
            return None
        return self.num_topk_correct / self.num_samples


@dataclass
class EvaluationReport:
    """What :func:`evaluate_methods` computed.

    Attributes:
        gt_field: the ground-truth field.
        methods: one :class:`MethodResult` per prediction field, in the order given.
        class_accuracy: ``{class: (support, [top-1 accuracy per method])}``.
        worst_classes: the classes of the table, lowest mean accuracy first.
        saved_views: ``{view name: number of samples}``.
    """

    gt_field: str
    methods: list = field(default_factory=list)
    class_accuracy: dict = field(default_factory=dict)
    worst_classes: list = field(default_factory=list)
    saved_views: dict = field(default_factory=dict)

    def table(self) -> str:
        """The side-by-side comparison as text."""
        k = self.methods[0].k if self.methods else 5
        w = max([len("field")] + [len(m.field) for m in self.methods])
        lines = [
            f"{'field':<{w}}  {'method':<6}  {'top-1':>6}  {'top-' + str(k):>6}  "
            f"{'samples':>7}  {'no pred':>7}"
        ]
        for m in self.methods:
            t1 = "-" if m.accuracy is None else f"{m.accuracy:.3f}"
            tk = "-" if m.topk_accuracy is None else f"{m.topk_accuracy:.3f}"
            lines.append(
                f"{m.field:<{w}}  {str(m.method or '?'):<6}  {t1:>6}  {tk:>6}  "
                f"{m.num_samples:>7}  {m.num_no_prediction:>7}"
            )
        notes = [
            f"{m.field}: {m.num_label_not_in_classes} labels not among the run's classes"
            for m in self.methods
            if m.num_label_not_in_classes
        ]
        lines.extend(notes)
        if self.worst_classes:
            cw = max(len("class"), *(len(c) for c in self.worst_classes))
            cw = min(cw, 40)
            lines.append("")
            lines.append("worst classes (top-1 accuracy; lowest mean over methods first)")
            lines.append(
                f"{'class':<{cw}}  {'n':>4}  " + "  ".join(f"{m.field:>8}" for m in self.methods)
            )
            for c in self.worst_classes:
                n, accs = self.class_accuracy[c]
                lines.append(f"{c[:cw]:<{cw}}  {n:>4}  " + "  ".join(f"{a:>8.3f}" for a in accs))
        if self.saved_views:
            lines.append("")
            lines.append(
                "saved views: " + ", ".join(f"'{v}' ({n})" for v, n in self.saved_views.items())
            )
        return "\n".join(lines)


def _classes_of(samples: SampleCollection, pred_field: str) -> tuple[str | None, list[str] | None]:
    try:
        cfg = get_run_config(samples, pred_field)
    except ValueError:
        cfg = {}
    classes = dataset_of(samples).classes.get(pred_field) or cfg.get("classes")
    return cfg.get("method"), (list(classes) if classes else None)


def _delete_eval(dataset: fo.Dataset, key: str) -> None:
    if key in dataset.list_evaluations():
        dataset.delete_evaluation(key)


def evaluate_methods(
    samples: SampleCollection,
    gt_field: str,
    pred_fields: str | Sequence[str],
    *,
    k: int = 5,
    worst: int = 10,
    save_views: bool = True,
    progress: bool | None = None,
) -> EvaluationReport:
    """Evaluate several prediction fields against ``gt_field`` with FiftyOne.

    Args:
        samples: a FiftyOne dataset or view.
        gt_field: ``fo.Classification`` ground-truth field.
        pred_fields: prediction fields (e.g. ``["clip", "dclip", "lazsl"]``) or a
            comma-separated string.
        k: the k of top-k accuracy (capped at each run's number of classes).
        worst: number of classes in the worst-classes table.
        save_views: save ``"A right, B wrong"`` views for every ordered pair of
            fields and ``"all wrong"``, each only when it holds samples.
        progress: FiftyOne's progress-bar setting for the evaluations (None:
            FiftyOne's default; False: none).

    Returns:
        an :class:`EvaluationReport` (``report.table()`` is the printed table).
        The evaluations are kept under the keys of :func:`eval_keys`.

    Raises:
        UserError: a missing field, no field given, or no labelled sample.
    """
    if isinstance(pred_fields, str):
        pred_fields = [f.strip() for f in pred_fields.split(",") if f.strip()]
    pred_fields = list(dict.fromkeys(pred_fields))
    if not pred_fields:
        raise UserError("no prediction field given")
    dataset = dataset_of(samples)
    schema = dataset.get_field_schema()
    for f in [gt_field, *pred_fields]:
        if f not in schema:
            raise UserError(f"dataset {dataset.name!r} has no field {f!r}")
    view = samples.exists(f"{gt_field}.label")
    if len(view) == 0:
        raise UserError(f"no sample of the view has a label in {gt_field!r}")
    report = EvaluationReport(gt_field=gt_field)
    gt_labels = view.values(f"{gt_field}.label")
    for pf in pred_fields:
        report.methods.append(
            _evaluate_field(samples, view, dataset, gt_field, gt_labels, pf, k=k, progress=progress)
        )
    _per_class_accuracy(view, gt_labels, report, worst=worst)
    if save_views:
        _save_comparison_views(view, dataset, report, pred_fields)
    return report


def _evaluate_field(
    samples: SampleCollection,
    view: SampleCollection,
    dataset: fo.Dataset,
    gt_field: str,
    gt_labels: list[str],
    pf: str,
    *,
    k: int,
    progress: bool | None,
) -> MethodResult:
    """Top-1 (``method="simple"``) and top-k evaluation of one prediction field,
    stored under the keys of :func:`eval_keys`."""
    n = len(view)
    method, classes = _classes_of(samples, pf)
    kk = max(1, min(int(k), len(classes))) if classes else int(k)
    key1, keyk = eval_keys(pf, int(k))
    mr = MethodResult(
        field=pf,
        method=method,
        eval_key=key1,
        topk_eval_key=keyk if classes else None,
        k=kk,
        num_samples=n,
    )
    _delete_eval(dataset, key1)
    mr.results = view.evaluate_classifications(
        pf, gt_field=gt_field, eval_key=key1, method="simple", progress=progress
    )
    mr.num_correct = int(view.count_values(key1).get(True, 0))
    mr.num_no_prediction = int(n - view.count(f"{pf}.label"))
    if not classes:
        return mr
    known = set(classes)
    mr.num_label_not_in_classes = sum(1 for g in gt_labels if g not in known)
    _delete_eval(dataset, keyk)
    sub = view.match(F(f"{gt_field}.label").is_in(classes))
    mr.num_topk_correct = 0
    if len(sub):
        with warnings.catch_warnings():
            # FiftyOne warns per sample without logits; they count as misses.
            warnings.filterwarnings("ignore", message="Found sample.*no logits")
            sub.evaluate_classifications(
                pf,
                gt_field=gt_field,
                eval_key=keyk,
                method="top-k",
                classes=classes,
                k=kk,
                progress=progress,
            )
        mr.num_topk_correct = int(sub.count_values(keyk).get(True, 0))
    return mr


def _per_class_accuracy(
    view: SampleCollection, gt_labels: list[str], report: EvaluationReport, *, worst: int
) -> None:
    """Per-class top-1 accuracy side by side (``report.class_accuracy``) and the
    ``worst`` classes (``report.worst_classes``)."""
    cols = view.values([m.eval_key for m in report.methods])
    per_class: dict[str, list] = {}
    for i, g in enumerate(gt_labels):
        per_class.setdefault(g, []).append([bool(c[i]) for c in cols])
    hits = {}
    for c, rows in per_class.items():
        hits[c] = [sum(r[j] for r in rows) for j in range(len(report.methods))]
        report.class_accuracy[c] = (len(rows), [h / len(rows) for h in hits[c]])
    # Lowest mean accuracy first (hits over support x methods: exact ties stay
    # ties), then the larger class, then the name.
    ranked = sorted(
        per_class,
        key=lambda c: (sum(hits[c]) / (len(per_class[c]) * len(hits[c])), -len(per_class[c]), c),
    )
    report.worst_classes = ranked[: max(0, int(worst))]


def _save_comparison_views(
    view: SampleCollection, dataset: fo.Dataset, report: EvaluationReport, pred_fields: list[str]
) -> None:
    """Save ``"A right, B wrong"`` for every ordered pair of fields, and ``"all wrong"``."""
    gt_field = report.gt_field
    for a in report.methods:
        for b in report.methods:
            if a is b:
                continue
            v = view.match((F(a.eval_key) == True) & (F(b.eval_key) != True))  # noqa: E712
            name = pair_view_name(a.field, b.field)
            if _save_if_any(
                dataset,
                name,
                v,
                f"top-1: {a.field!r} right and {b.field!r} wrong against {gt_field!r}",
            ):
                report.saved_views[name] = len(v)
    expr = None
    for m in report.methods:
        e = F(m.eval_key) != True  # noqa: E712
        expr = e if expr is None else expr & e
    v = view.match(expr)
    if _save_if_any(
        dataset,
        ALL_WRONG_VIEW,
        v,
        f"top-1: every one of {', '.join(pred_fields)} wrong against {gt_field!r}",
    ):
        report.saved_views[ALL_WRONG_VIEW] = len(v)


def _save_if_any(dataset: fo.Dataset, name: str, view: Any, description: str) -> bool:
    """Save ``view`` as ``name`` when it holds samples (an empty saved view is
    clutter); an earlier view of that name is removed when it no longer
    would. Returns whether it was saved."""
    if len(view) == 0:
        if dataset.has_saved_view(name):
            dataset.delete_saved_view(name)
        return False
    dataset.save_view(name, view, overwrite=True, description=description)
    return True
