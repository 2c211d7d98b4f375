"""Run LaZSL (or the DCLIP / CLIP baselines) on a FiftyOne dataset or view.

:func:`run_lazsl` is what the ``run_lazsl`` operator and the ``classify`` CLI
call. It writes the fields described in :mod:`fiftyone_lazsl.fo.runs` in batches
(``set_values``, never one save per sample), so a run that is killed leaves
every completed batch intact, and records the run's provenance as a FiftyOne
run (``dataset.list_runs()``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier, Prediction
from fiftyone_lazsl.core.config import LaZSLConfig
from fiftyone_lazsl.errors import ConfigError, RunConflictError
from fiftyone_lazsl.core.pipeline import iter_predictions
from fiftyone_lazsl.fo.runs import output_fields, run_key

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]


@dataclass
class RunSummary:
    """What a :func:`run_lazsl` call did.

    Attributes:
        label_field: the field written.
        run_key: the FiftyOne run key recording it.
        num_samples: samples in the target view (after ``skip_existing``).
        num_predicted: samples that got a prediction.
        failures: ``[(sample_id, filepath, reason)]`` for samples that got an error.
        random_weights: True if the model had random weights.
        seconds: wall time of the run.
    """

    label_field: str
    run_key: str | None
    num_samples: int = 0
    num_predicted: int = 0
    failures: list = field(default_factory=list)
    random_weights: bool = False
    seconds: float = 0.0

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:
        s = (f"{self.num_predicted}/{self.num_samples} samples classified into field "
             f"{self.label_field!r}")
        if self.failures:
            s += f"; {self.num_failed} failed (see field {self.label_field}_error)"
        if self.random_weights:
            s += "; RANDOM WEIGHTS (meaningless predictions)"
        return s


def _resolve_attribute_set(attribute_set: Any, dataset: Any) -> AttributeSet:
    if isinstance(attribute_set, AttributeSet):
        return attribute_set
    if isinstance(attribute_set, dict):
        return AttributeSet.from_dict(attribute_set)
    from fiftyone_lazsl.fo.store import resolve_attribute_set
    return resolve_attribute_set(str(attribute_set), dataset=dataset)


def to_labels(pred: Prediction, classifier: LaZSLClassifier, *, top_k_crops: int | None = None,
              top_attributes: int = 5):
    """FiftyOne labels for one prediction.

    Returns:
        ``(classification, detections, attributes)``: an ``fo.Classification``
        (label, confidence = probability, logits in class order, and for LaZSL /
        DCLIP ``attribute_scores`` and ``attribute_crops``), an ``fo.Detections``
        of kept crops (LaZSL; None otherwise) and the predicted class's top
        attributes by score contribution (None for CLIP).
    """
    import fiftyone as fo

    c = pred.label_index
    cls = fo.Classification(label=pred.label, confidence=float(pred.probs[c]),
                            logits=[float(x) for x in pred.logits])
    names = classifier.attribute_labels
    if pred.attribute_scores is not None:
        cls["attribute_scores"] = [[round(float(v), 6) for v in a] for a in pred.attribute_scores]
    if pred.attribute_crops is not None:
        cls["attribute_crops"] = [[int(v) for v in a] for a in pred.attribute_crops]
    dets = None
    if pred.crops is not None:
        cr = pred.crops
        idx = np.nonzero(cr.kept)[0]
        if top_k_crops:
            idx = idx[np.argsort(-cr.mass[idx], kind="stable")[:top_k_crops]]
        dets = fo.Detections(detections=[
            fo.Detection(
                label=names[c][int(cr.attribute[i])],
                bounding_box=[float(v) for v in np.clip(cr.boxes_rel[i], 0.0, 1.0)],
                confidence=float(cr.share[i]),
                similarity=float(cr.similarity[i]),
                mass=float(cr.mass[i]),
                crop_index=int(i),
                attribute_index=int(cr.attribute[i]),
            ) for i in idx])
    attrs = None
    if pred.attribute_scores is not None:
        a = pred.attribute_scores[c]
        order = np.argsort(-a, kind="stable")[:top_attributes]
        attrs = [names[c][int(i)] for i in order]
    return cls, dets, attrs


def _ensure_fields(dataset: Any, fields: dict, method: str) -> None:
    import fiftyone as fo

    schema = dataset.get_field_schema()
    want = {
        fields["prediction"]: dict(ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification),
        fields["error"]: dict(ftype=fo.StringField),
    }
    if method == "lazsl":
        want[fields["crops"]] = dict(ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    if method in ("lazsl", "dclip"):
        want[fields["attributes"]] = dict(ftype=fo.ListField, subfield=fo.StringField)
    for name, kw in want.items():
        if name not in schema:
            dataset.add_sample_field(name, **kw)


#: Run-config keys besides :class:`LaZSLConfig`'s own output parameters that must
#: match the recorded run for ``skip_existing`` to resume it.
_RESUME_KEYS = ("weights_id", "random_weights", "attribute_set_hash", "classes",
                "top_k_crops", "top_attributes")


def _all_output_fields(label_field: str) -> list[str]:
    """Fields a run on ``label_field`` may write: :func:`output_fields` and
    the default heatmap field ``F_heatmap``."""
    return list(output_fields(label_field).values()) + [f"{label_field}_heatmap"]


def _check_label_field(dataset: Any, label_field: str) -> None:
    """Refuse a label field whose outputs would overwrite fields this run does
    not own: fields of another LaZSL run (``F`` vs ``F_crops``...), or existing
    fields no LaZSL run wrote (``ground_truth``, ``filepath``...)."""
    from fiftyone_lazsl.fo.runs import list_lazsl_fields

    if not isinstance(label_field, str) or not label_field.strip():
        raise ConfigError("the label field name must be a non-empty string")
    ours = _all_output_fields(label_field)
    runs = list_lazsl_fields(dataset)
    for other in runs:
        if other == label_field:
            continue
        clash = sorted(set(ours) & set(_all_output_fields(other)))
        if clash:
            raise RunConflictError(
                f"label field {label_field!r} would overwrite field(s) {', '.join(clash)} of the "
                f"LaZSL run on field {other!r}; choose another label field")
    if label_field not in runs:
        schema = dataset.get_field_schema()
        taken = [f for f in ours if f in schema]
        if taken:
            raise RunConflictError(
                f"field(s) {', '.join(taken)} already exist on dataset {dataset.name!r} and were "
                f"not written by a LaZSL run on {label_field!r}; choose another label field "
                "(or delete those fields)")


def check_label_field(dataset: Any, label_field: str) -> None:
    """Check, before anything is written, that a run on ``label_field`` would
    only touch its own outputs (what :func:`run_lazsl` checks first; the
    ``run_lazsl`` operator's form calls it too).

    Raises:
        ConfigError: an empty name.
        RunConflictError: the outputs would overwrite another run's fields or
            fields no LaZSL run wrote.
    """
    _check_label_field(dataset, label_field)


def _check_resumable(dataset: Any, label_field: str, config: dict) -> None:
    """``skip_existing`` keeps earlier outputs: refuse to mix them with outputs
    of different parameters (every output-determining :class:`LaZSLConfig`
    field, plus :data:`_RESUME_KEYS`)."""
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    old = dict(old)
    # Runs recorded before crop_backend existed cut crops with roi_align.
    old.setdefault("crop_backend", "tensor")
    diff = LaZSLConfig.from_dict(config, strict=False).output_diff(old)
    diff += [k for k in _RESUME_KEYS if k in old and k in config
             and _plain(old[k]) != _plain(config[k])]
    if diff:
        raise RunConflictError(
            f"cannot resume the run on field {label_field!r} with different parameters "
            f"({', '.join(diff)} differ from the recorded run); run again without "
            "skip_existing to replace its outputs, or use another label field")


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class OutputOptions:
    """What a run writes besides the prediction (not LaZSL parameters).

    Attributes:
        top_k_crops: keep only the k kept crops with most transport mass as
            detections (None: all kept crops).
        top_attributes: length of ``F_attributes``.
        heatmap: also write ``F_heatmap``.
        write_every: samples per database write.
        num_workers: image-decoding processes (None: automatic; 0: in process).
    """

    top_k_crops: int | None = None
    top_attributes: int = 5
    heatmap: bool = False
    write_every: int = 64
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.top_k_crops is not None and (isinstance(self.top_k_crops, bool)
                                             or int(self.top_k_crops) < 1):
            raise ConfigError(f"top_k_crops must be >= 1 (or None for all kept crops), "
                              f"got {self.top_k_crops}")
        if int(self.top_attributes) < 1:
            raise ConfigError(f"top_attributes must be >= 1, got {self.top_attributes}")
        if int(self.write_every) < 1:
            raise ConfigError(f"write_every must be >= 1, got {self.write_every}")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ConfigError(f"num_workers must be >= 0 (0 = decode in process), "
                              f"got {self.num_workers}")


def run_lazsl(samples: Any, attribute_set: Any, *, config: LaZSLConfig | None = None,
              label_field: str = "lazsl", gt_field: str | None = None,
              restrict_to_set: bool = False, skip_existing: bool = False,
              top_k_crops: int | None = None, top_attributes: int = 5, heatmap: bool = False,
              write_every: int = 64, num_workers: int | None = None,
              classifier: LaZSLClassifier | None = None,
              progress: ProgressFn | bool | None = None, **params: Any) -> RunSummary:
    """Classify every sample of ``samples`` and write labels and evidence.

    Args:
        samples: a FiftyOne dataset or view (e.g. the App's current view or
            selected samples).
        attribute_set: an :class:`AttributeSet`, a dict, a set name stored on the
            dataset, a JSON file path or a published set name (``"cub"``).
        config: the LaZSL parameters (:class:`~fiftyone_lazsl.core.config.LaZSLConfig`;
            default: the paper's). ``**params`` override single fields
            (``model=``, ``pretrained=``, ``method=``, ``n_crops=``, ``theta=``,
            ``eps=``, ``gamma=``, ``seed=``, ``batch_size=``, ``device=``...).
        label_field: prediction field ``F``; also writes ``F_crops``,
            ``F_attributes``, ``F_error`` (see :mod:`fiftyone_lazsl.fo.runs`).
        top_k_crops, top_attributes, heatmap, write_every, num_workers: see
            :class:`OutputOptions`.
        skip_existing: only process samples without a prediction in ``F``
            (resume an interrupted run). Samples that only have an error in
            ``F_error`` are processed again (the file may have been fixed); a
            sample that then succeeds loses its error. The parameters must be
            those of the recorded run on ``F`` (else :class:`RunConflictError`).
            Without it, the view's old outputs in ``F*`` (and ``F_heatmap``)
            are cleared first, so no old and new crops or errors mix.
        gt_field: a Classification field whose labels must all be classes of the
            set (checked before anything is written). Labels are matched with
            :func:`fiftyone_lazsl.core.attributes.class_key`: surrounding/inner
            spaces, unicode normal form and *case* do not matter
            (``" bobolink"`` is the set's ``"Bobolink"``).
        restrict_to_set: with ``gt_field``, process only samples whose label is a
            class of the set instead of failing (samples without a label are
            left out too).
        classifier: a pre-built classifier (then ``config`` and ``**params``
            are ignored).
        progress: ``callable(fraction, stage_label)``, True for a tqdm bar, or None.

    Every parameter is validated before anything is written. Every sample of
    the view ends with exactly one of a prediction in ``F`` or a one-line
    reason in ``F_error`` (unreadable image, non-finite scores, failed
    prediction); the run goes on past failed samples and lists them in
    :attr:`RunSummary.failures`. Each database write sets, per sample, the error
    field first and the prediction last, so a sample that has a prediction also
    has its crops and attributes even if the process is killed mid-write. An
    empty view (e.g. everything already predicted with ``skip_existing``)
    writes nothing at all: no run record, no fields, no model loaded.

    Returns:
        a :class:`RunSummary`.

    Raises:
        fiftyone_lazsl.errors.UserError: a bad parameter (``ConfigError``), gt
            classes missing from the set (``AttributeSetError``), unknown model
            or weights unavailable, a label field that would overwrite other
            fields or resuming with other parameters (``RunConflictError``).
    """
    t0 = time.time()
    cfg = (config or LaZSLConfig()).replace(**params) if params else (config or LaZSLConfig())
    opts = OutputOptions(top_k_crops=top_k_crops, top_attributes=top_attributes,
                         heatmap=heatmap, write_every=write_every, num_workers=num_workers)
    dataset = samples._dataset
    _check_label_field(dataset, label_field)
    aset = _resolve_attribute_set(attribute_set, dataset)
    view = _target_view(samples, dataset, aset, label_field, gt_field, restrict_to_set,
                        skip_existing)
    summary = RunSummary(label_field=label_field, run_key=None, num_samples=len(view))
    if summary.num_samples == 0:
        logger.info("nothing to classify: the view is empty")
        summary.seconds = time.time() - t0
        return summary

    report = _progress_fn(progress, summary.num_samples)
    clf = classifier or _build_classifier(aset, cfg, report)
    summary.random_weights = clf.model.random_weights
    key, config_dict = _start_run(dataset, clf, label_field, opts, skip_existing,
                                  summary.num_samples)
    summary.run_key = key
    ids, paths = view.values(["id", "filepath"])
    if not skip_existing:
        _clear_outputs(view, dataset, label_field, len(ids))
    done = 0
    try:
        done = _classify_and_write(dataset, clf, ids, paths, label_field, opts, summary, report)
    finally:
        summary.seconds = time.time() - t0
        _finish_run(dataset, key, summary, complete=done == len(ids))

    if opts.heatmap and clf.method == "lazsl":
        from fiftyone_lazsl.fo.explain import write_heatmaps
        # (not `view`: with skip_existing it matches only samples without a
        # prediction, which no longer includes the ones just classified)
        write_heatmaps(dataset.select(ids), label_field)
    if summary.failures:
        logger.warning("%d of %d samples failed; their reasons are in field %r",
                       summary.num_failed, len(ids), output_fields(label_field)["error"])
    if summary.random_weights:
        logger.warning("RANDOM WEIGHTS were used for field %r: predictions are meaningless",
                       label_field)
    return summary


def _build_classifier(aset: AttributeSet, cfg: LaZSLConfig,
                      report: Callable[[int, str], None]) -> LaZSLClassifier:
    """Load the model, then encode the prompts, reporting each stage (both
    happen before the first image: they may take most of a small run)."""
    from fiftyone_lazsl.core.models import load_model

    weights = cfg.pretrained if cfg.pretrained is not None else "random weights"
    report(0, f"loading the model {cfg.model} ({weights})")
    loaded = load_model(cfg.model, cfg.pretrained, device=cfg.device)
    n = len(aset) if cfg.method == "clip" else sum(len(aset[c]) for c in aset.classes)
    report(0, f"encoding {n} {'class' if cfg.method == 'clip' else 'attribute'} prompts")
    return LaZSLClassifier(aset, loaded, config=cfg)


def _target_view(samples: Any, dataset: Any, aset: AttributeSet, label_field: str,
                 gt_field: str | None, restrict_to_set: bool, skip_existing: bool) -> Any:
    """The samples to classify: ``samples``, restricted to classes of the set
    (``restrict_to_set``) and to samples without a prediction (``skip_existing``);
    checks that ``gt_field`` exists and its classes are covered.

    Raises:
        ConfigError: ``restrict_to_set`` without ``gt_field``; unknown ``gt_field``.
        AttributeSetError: ground-truth classes missing from the set.
    """
    from fiftyone import ViewField as F

    view = samples
    if restrict_to_set and gt_field is None:
        raise ConfigError("restrict_to_set needs gt_field (the field whose labels select samples)")
    if gt_field is not None:
        if gt_field not in dataset.get_field_schema():
            raise ConfigError(f"dataset {dataset.name!r} has no field {gt_field!r}")
        labels = [x for x in view.distinct(f"{gt_field}.label")]
        if restrict_to_set:
            keep = [lb for lb in labels if aset.resolve(lb) is not None]
            view = view.match(F(f"{gt_field}.label").is_in(keep))
        else:
            aset.validate_classes(labels)
    if skip_existing and label_field in dataset.get_field_schema():
        view = view.match(F(label_field).exists(False))
    return view


def _start_run(dataset: Any, clf: LaZSLClassifier, label_field: str, opts: OutputOptions,
               skip_existing: bool, n: int) -> tuple[str, dict]:
    """Check a resume, record the run (provenance first, so an interrupted run
    is still recorded), set ``dataset.classes[F]`` and create the fields.

    Returns:
        ``(run_key, run_config_dict)``.
    """
    fields = output_fields(label_field)
    key = run_key(label_field)
    config = dict(clf.config(), label_field=label_field, fields=fields,
                  top_k_crops=opts.top_k_crops, top_attributes=opts.top_attributes,
                  attribute_set_warnings=list(clf.attribute_set.warnings),
                  status="running", num_samples=n)
    if skip_existing:
        _check_resumable(dataset, label_field, config)
    for w in clf.attribute_set.warnings:
        logger.warning("attribute set %s: %s", clf.attribute_set.name or "", w)
    dataset.register_run(key, dataset.init_run(**config), overwrite=True)
    dataset.classes[label_field] = list(clf.classes)
    dataset.save()
    _ensure_fields(dataset, fields, clf.method)
    return key, config


def _clear_outputs(view: Any, dataset: Any, label_field: str, n: int) -> None:
    """Clear the view's old outputs of a run on ``label_field`` (so no old and
    new crops or errors mix); called once the run is sure to start."""
    schema = dataset.get_field_schema()
    for f in _all_output_fields(label_field):
        if f in schema:
            view.set_values(f, [None] * n)


def _written_fields(label_field: str, method: str) -> list[str]:
    """Fields ``method`` writes, in write order: error first, prediction last
    (a sample with a prediction then also has the rest)."""
    fields = output_fields(label_field)
    written = [fields["error"]]
    if method == "lazsl":
        written.append(fields["crops"])
    if method in ("lazsl", "dclip"):
        written.append(fields["attributes"])
    written.append(fields["prediction"])
    return written


def _classify_and_write(dataset: Any, clf: LaZSLClassifier, ids: list, paths: list,
                        label_field: str, opts: OutputOptions, summary: RunSummary,
                        report: Callable[[int, str], None]) -> int:
    """Stream predictions for ``paths`` and write them in batches of
    ``opts.write_every`` samples. Returns the number of samples processed."""
    fields = output_fields(label_field)
    written = _written_fields(label_field, clf.method)
    pending: dict[str, dict] = {f: {} for f in written}

    def flush() -> None:
        for f in written:  # error first, prediction last
            vals = pending[f]
            if vals:
                dataset.set_values(f, vals, key_field="id")
                vals.clear()

    done, total = 0, len(paths)
    encoded = {"pending": False}  # a batch was encoded and is not written yet

    def on_stage(name: str) -> None:
        # Per batch: decoding (DataLoader), then encoding and scoring (the
        # classifier). The pipeline says "decoding" again before it yields the
        # batch; that is reported once the batch is handled (below).
        if name == "encoding":
            encoded["pending"] = True
        elif encoded["pending"]:
            return
        if done < total:
            hi = min(done + clf.batch_size, total)
            what = "encoding and scoring" if name == "encoding" else name
            report(done, f"{what} images {done + 1}-{hi}" if hi > done + 1
                   else f"{what} image {hi}")

    try:
        for items in iter_predictions(clf, paths, keys=paths, batch_size=clf.batch_size,
                                      num_workers=opts.num_workers, on_stage=on_stage):
            for it in items:
                sid = ids[it.index]
                if it.prediction is None:
                    reason = it.error or "no prediction"
                    summary.failures.append((sid, it.filepath, reason))
                    logger.warning("sample %s (%s): %s", sid, it.filepath, reason)
                    for f in written:
                        pending[f][sid] = None
                    pending[fields["error"]][sid] = reason
                    continue
                cls, dets, attrs = to_labels(it.prediction, clf, top_k_crops=opts.top_k_crops,
                                             top_attributes=opts.top_attributes)
                pending[fields["error"]][sid] = None
                if fields["crops"] in pending:
                    pending[fields["crops"]][sid] = dets
                if fields["attributes"] in pending:
                    pending[fields["attributes"]][sid] = attrs
                pending[fields["prediction"]][sid] = cls
                summary.num_predicted += 1
            done += len(items)
            if len(pending[fields["error"]]) >= opts.write_every or done >= total:
                report(done, "writing")
                flush()
            encoded["pending"] = False
            on_stage("decoding")
    finally:
        flush()
    return done


def _finish_run(dataset: Any, key: str, summary: RunSummary, *, complete: bool) -> None:
    """Record the outcome on the run: status, counts and wall time."""
    info = dataset.get_run_info(key)
    cfg = info.config
    cfg.status = "completed" if complete else "interrupted"
    cfg.num_predicted = summary.num_predicted
    cfg.num_failed = summary.num_failed
    cfg.seconds = round(summary.seconds, 3)
    dataset.update_run_config(key, cfg)


def _progress_fn(progress: ProgressFn | bool | None, total: int) -> Callable[[int, str], None]:
    if progress is None or progress is False:
        return lambda done, label: None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="img")

        def tick(done, label):
            bar.set_description(label)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
        return tick
    # "<stage> images a-b of N" while a batch is in flight, "<stage> k/N" after
    # (k samples done), the model / prompt stages without a count
    def report(done: int, label: str) -> None:
        if label.startswith(("loading", "encoding ")) and " image" not in label:
            text = label
        elif " image" in label:
            text = f"{label} of {total}"
        else:
            text = f"{label} {done}/{total}"
        progress(done / total, text)
    return report
