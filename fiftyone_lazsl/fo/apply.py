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
from typing import Callable

import numpy as np

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier, Prediction
from fiftyone_lazsl.errors import UserError
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


def _resolve_attribute_set(attribute_set, dataset) -> AttributeSet:
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


def _ensure_fields(dataset, fields: dict, method: str) -> None:
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


#: Run-config keys that must match the recorded run for ``skip_existing`` to
#: resume it (anything that changes a sample's outputs).
_RESUME_KEYS = ("model", "weights_id", "random_weights", "method", "n_crops", "crop_scale", "crop_backend",
                "theta", "eps", "gamma", "max_iter", "stop_tol", "seed", "prompt_style",
                "prompt_suffix", "attribute_set_hash", "classes", "top_k_crops", "top_attributes")


def _all_output_fields(label_field: str) -> list[str]:
    """Fields a run on ``label_field`` may write: :func:`output_fields` and
    the default heatmap field ``F_heatmap``."""
    return list(output_fields(label_field).values()) + [f"{label_field}_heatmap"]


def _check_label_field(dataset, label_field: str) -> None:
    """Refuse a label field whose outputs would overwrite fields this run does
    not own: fields of another LaZSL run (``F`` vs ``F_crops``...), or existing
    fields no LaZSL run wrote (``ground_truth``, ``filepath``...)."""
    from fiftyone_lazsl.fo.runs import list_lazsl_fields

    if not isinstance(label_field, str) or not label_field.strip():
        raise UserError("the label field name must be a non-empty string")
    ours = _all_output_fields(label_field)
    runs = list_lazsl_fields(dataset)
    for other in runs:
        if other == label_field:
            continue
        clash = sorted(set(ours) & set(_all_output_fields(other)))
        if clash:
            raise UserError(
                f"label field {label_field!r} would overwrite field(s) {', '.join(clash)} of the "
                f"LaZSL run on field {other!r}; choose another label field")
    if label_field not in runs:
        schema = dataset.get_field_schema()
        taken = [f for f in ours if f in schema]
        if taken:
            raise UserError(
                f"field(s) {', '.join(taken)} already exist on dataset {dataset.name!r} and were "
                f"not written by a LaZSL run on {label_field!r}; choose another label field "
                "(or delete those fields)")


def _check_resumable(dataset, label_field: str, config: dict) -> None:
    """``skip_existing`` keeps earlier outputs: refuse to mix them with outputs
    of different parameters."""
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    diff = [k for k in _RESUME_KEYS if k in old and k in config
            and _plain(old[k]) != _plain(config[k])]
    if diff:
        raise UserError(
            f"cannot resume the run on field {label_field!r} with different parameters "
            f"({', '.join(diff)} differ from the recorded run); run again without "
            "skip_existing to replace its outputs, or use another label field")


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def run_lazsl(samples, attribute_set, *, model: str = "ViT-B-32", pretrained: str | None = "openai",
              method: str = "lazsl", label_field: str = "lazsl", n_crops: int = 90,
              crop_scale=(0.6, 0.9), theta: float = 0.8, eps: float = 0.1, gamma: float = 0.0,
              seed: int = 0, batch_size: int = 4, device=None, num_workers: int | None = None,
              prompt_style: str = "dclip", top_k_crops: int | None = None,
              top_attributes: int = 5, skip_existing: bool = False, gt_field: str | None = None,
              restrict_to_set: bool = False, heatmap: bool = False, write_every: int = 64,
              classifier: LaZSLClassifier | None = None,
              progress: ProgressFn | bool | None = None) -> RunSummary:
    """Classify every sample of ``samples`` and write labels and evidence.

    Args:
        samples: a FiftyOne dataset or view (e.g. the App's current view or
            selected samples).
        attribute_set: an :class:`AttributeSet`, a dict, a set name stored on the
            dataset, a JSON file path or a published set name (``"cub"``).
        model, pretrained, device: see :func:`fiftyone_lazsl.core.models.load_model`.
        method: ``"lazsl"``, ``"dclip"`` or ``"clip"``.
        label_field: prediction field ``F``; also writes ``F_crops``,
            ``F_attributes``, ``F_error`` (see :mod:`fiftyone_lazsl.fo.runs`).
        n_crops, crop_scale, theta, eps, gamma, seed, prompt_style: LaZSL parameters
            (see :class:`LaZSLClassifier`).
        batch_size: images per forward pass; num_workers: decoding processes.
        top_k_crops: keep only the k kept crops with most mass as detections (None: all kept).
        top_attributes: length of ``F_attributes``.
        skip_existing: only process samples without a prediction in ``F``
            (resume an interrupted run). Samples that only have an error in
            ``F_error`` are processed again (the file may have been fixed); a
            sample that then succeeds loses its error. The parameters must be
            those of the recorded run on ``F`` (else :class:`UserError`).
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
        heatmap: also write ``F_heatmap`` (``fo.Heatmap`` of crop evidence).
        write_every: samples per database write. Each write sets, per sample,
            the error field first and the prediction last, so a sample that has a
            prediction also has its crops and attributes even if the process is
            killed mid-write (``skip_existing`` then redoes the others).
        classifier: a pre-built classifier (then model parameters are ignored).
        progress: ``callable(fraction, stage_label)``, True for a tqdm bar, or None.

    Every sample of the view ends with exactly one of a prediction in ``F`` or
    a one-line reason in ``F_error`` (unreadable image, non-finite scores,
    failed prediction); the run goes on past failed samples and lists them in
    :attr:`RunSummary.failures`. An empty view (e.g. everything already
    predicted with ``skip_existing``) writes nothing at all: no run record, no
    fields, no model loaded.

    Returns:
        a :class:`RunSummary`.

    Raises:
        fiftyone_lazsl.core.attributes.AttributeSetError: gt classes missing from the set.
        fiftyone_lazsl.errors.UserError: unknown model / weights unavailable / bad
            input / a label field that would overwrite other fields / resuming
            with other parameters.
    """
    from fiftyone import ViewField as F

    t0 = time.time()
    dataset = samples._dataset
    fields = output_fields(label_field)
    _check_label_field(dataset, label_field)
    if write_every < 1:
        raise UserError(f"write_every must be >= 1, got {write_every}")
    aset = _resolve_attribute_set(attribute_set, dataset)
    view = samples
    if restrict_to_set and gt_field is None:
        raise UserError("restrict_to_set needs gt_field (the field whose labels select samples)")
    if gt_field is not None:
        if gt_field not in dataset.get_field_schema():
            raise UserError(f"dataset {dataset.name!r} has no field {gt_field!r}")
        labels = [x for x in view.distinct(f"{gt_field}.label")]
        if restrict_to_set:
            keep = [l for l in labels if aset.resolve(l) is not None]
            view = view.match(F(f"{gt_field}.label").is_in(keep))
        else:
            aset.validate_classes(labels)
    if skip_existing and label_field in dataset.get_field_schema():
        view = view.match(F(label_field).exists(False))
    summary = RunSummary(label_field=label_field, run_key=None)
    n = len(view)
    summary.num_samples = n
    if n == 0:
        logger.info("nothing to classify: the view is empty")
        summary.seconds = time.time() - t0
        return summary

    clf = classifier or LaZSLClassifier(
        aset, model, pretrained, method=method, device=device, n_crops=n_crops,
        crop_scale=crop_scale, theta=theta, eps=eps, gamma=gamma, seed=seed,
        batch_size=batch_size, prompt_style=prompt_style)
    summary.random_weights = clf.model.random_weights
    method = clf.method

    # Provenance first, so an interrupted run is still recorded.
    key = run_key(label_field)
    config = dict(clf.config(), label_field=label_field, fields=fields,
                  top_k_crops=top_k_crops, top_attributes=top_attributes,
                  attribute_set_warnings=list(clf.attribute_set.warnings),
                  status="running", num_samples=n)
    if skip_existing:
        _check_resumable(dataset, label_field, config)
    for w in clf.attribute_set.warnings:
        logger.warning("attribute set %s: %s", clf.attribute_set.name or "", w)
    dataset.register_run(key, dataset.init_run(**config), overwrite=True)
    summary.run_key = key
    dataset.classes[label_field] = list(clf.classes)
    dataset.save()

    _ensure_fields(dataset, fields, method)
    ids, paths = view.values(["id", "filepath"])
    if not skip_existing:
        schema = dataset.get_field_schema()
        for f in _all_output_fields(label_field):
            if f in schema:
                view.set_values(f, [None] * n)
    # Fields this method writes; every outcome sets all of them for the sample.
    written = [fields["error"]]
    if method == "lazsl":
        written.append(fields["crops"])
    if method in ("lazsl", "dclip"):
        written.append(fields["attributes"])
    written.append(fields["prediction"])  # last: a prediction implies the rest

    report = _progress_fn(progress, n)
    done = 0
    pending: dict[str, dict] = {f: {} for f in written}

    def flush():
        for f in written:  # error first, prediction last
            vals = pending[f]
            if vals:
                dataset.set_values(f, vals, key_field="id")
                vals.clear()

    stage = {"name": "decoding"}
    try:
        for items in iter_predictions(clf, paths, keys=paths, batch_size=clf.batch_size,
                                      num_workers=num_workers,
                                      on_stage=lambda s: stage.__setitem__("name", s)):
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
                cls, dets, attrs = to_labels(it.prediction, clf, top_k_crops=top_k_crops,
                                             top_attributes=top_attributes)
                pending[fields["error"]][sid] = None
                if method == "lazsl":
                    pending[fields["crops"]][sid] = dets
                if fields["attributes"] in pending:
                    pending[fields["attributes"]][sid] = attrs
                pending[fields["prediction"]][sid] = cls
                summary.num_predicted += 1
            done += len(items)
            if len(pending[fields["error"]]) >= write_every:
                report(done, "writing")
                flush()
            report(done, stage["name"])
        flush()
    finally:
        flush()
        summary.seconds = time.time() - t0
        info = dataset.get_run_info(key)
        cfg = info.config
        cfg.status = "completed" if done == n else "interrupted"
        cfg.num_predicted = summary.num_predicted
        cfg.num_failed = summary.num_failed
        cfg.seconds = round(summary.seconds, 3)
        dataset.update_run_config(key, cfg)

    if heatmap and method == "lazsl":
        from fiftyone_lazsl.fo.explain import write_heatmaps
        # (not `view`: with skip_existing it matches only samples without a
        # prediction, which no longer includes the ones just classified)
        write_heatmaps(dataset.select(ids), label_field)
    if summary.failures:
        logger.warning("%d of %d samples failed; their reasons are in field %r",
                       summary.num_failed, n, fields["error"])
    if summary.random_weights:
        logger.warning("RANDOM WEIGHTS were used for field %r: predictions are meaningless",
                       label_field)
    return summary


def _progress_fn(progress, total: int):
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
    return lambda done, label: progress(done / total, f"{label} {done}/{total}")
