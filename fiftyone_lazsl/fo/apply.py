"""Run LaZSL (or the DCLIP / CLIP baselines) on a FiftyOne dataset or view.

:func:`run_lazsl` is what the ``run_lazsl`` operator and the ``classify`` CLI
call. It writes the fields described in :mod:`fiftyone_lazsl.fo.runs` in batches
from a background writer (:mod:`fiftyone_lazsl.fo.writer`: one bulk write per
batch, one atomic update per sample, never one save per sample), so a run that is killed leaves
every completed batch intact, and records the run's provenance as a FiftyOne
run (``dataset.list_runs()``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable


from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier, Prediction
from fiftyone_lazsl.core.config import ATTRIBUTE_METHODS, CROP_METHODS, LaZSLConfig
from fiftyone_lazsl.errors import ConfigError, RunConflictError, UserError
from fiftyone_lazsl.core.pipeline import iter_predictions
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.writer import DB_RETRY_WAITS, retry_db as _retry_db  # noqa: F401
from fiftyone_lazsl.fo.labels import (DEFAULT_RUNNER_UPS, DEFAULT_TOP_K_CROPS, EVIDENCE_MODES,
                                      label_documents)
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
    feature_store: dict | None = None

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
        if self.feature_store:
            fs = self.feature_store
            s += (f"; feature store {fs['path']}: {fs.get('stored', 0)} stored, "
                  f"{fs.get('reused', 0)} reused, {_mb(fs.get('bytes_before', 0))} -> "
                  f"{_mb(fs.get('bytes_after', 0))}")
        return s


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _resolve_attribute_set(attribute_set: Any, dataset: Any) -> AttributeSet:
    if isinstance(attribute_set, AttributeSet):
        return attribute_set
    if isinstance(attribute_set, dict):
        return AttributeSet.from_dict(attribute_set)
    from fiftyone_lazsl.fo.store import resolve_attribute_set
    return resolve_attribute_set(str(attribute_set), dataset=dataset)


def to_labels(pred: Prediction, classifier: LaZSLClassifier, *,
              top_k_crops: int | None = DEFAULT_TOP_K_CROPS, top_attributes: int = 5,
              evidence: str = "compact", runner_ups: int = DEFAULT_RUNNER_UPS,
              gt_index: int | None = None):
    """FiftyOne labels for one prediction (what a run stores; see
    :func:`fiftyone_lazsl.fo.labels.label_documents` for the arguments and
    :mod:`fiftyone_lazsl.fo.runs` for the layout).

    Returns:
        ``(classification, detections, attributes)``: an ``fo.Classification``
        (label, confidence = probability, logits in class order and, for the
        attribute methods, ``keywords``, ``words``, ``evidence_summary`` and
        ``evidence_by_class`` of the predicted class, runner-up(s) and
        ground-truth class; with ``evidence="full"`` also every class's
        ``attribute_scores`` and ``attribute_crops``), an ``fo.Detections`` of the
        top ``top_k_crops`` kept crops (None: all; LaZSL and WCA, else None)
        and the predicted class's top attributes (None for CLIP).
    """
    import fiftyone as fo

    cls, dets, attrs = label_documents(pred, classifier.classes, classifier.attribute_labels,
                                       evidence=evidence, runner_ups=runner_ups,
                                       gt_index=gt_index, top_k_crops=top_k_crops,
                                       top_attributes=top_attributes)
    return (fo.Classification.from_dict(cls),
            None if dets is None else fo.Detections.from_dict(dets), attrs)


def _ensure_fields(dataset: Any, fields: dict, method: str) -> None:
    import fiftyone as fo

    schema = dataset.get_field_schema()
    want = {
        fields["prediction"]: dict(ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification),
        fields["error"]: dict(ftype=fo.StringField),
    }
    if method in CROP_METHODS:
        want[fields["crops"]] = dict(ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    if method in ATTRIBUTE_METHODS:
        want[fields["attributes"]] = dict(ftype=fo.ListField, subfield=fo.StringField)
    for name, kw in want.items():
        if name not in schema:
            dataset.add_sample_field(name, **kw)
    if method in ATTRIBUTE_METHODS:
        # Declared, so the App sidebar offers it (prefix search by attribute words).
        for name in ("keywords", "words"):
            kw_field = f"{fields['prediction']}.{name}"
            if not dataset.has_field(kw_field):
                dataset.add_sample_field(kw_field, fo.ListField, subfield=fo.StringField)
    if method in CROP_METHODS:
        from fiftyone_lazsl.fo.appconfig import hide_until_shown

        hide_until_shown(dataset, [fields["crops"]], show=[fields["prediction"]])


#: Run-config keys besides :class:`LaZSLConfig`'s own output parameters that must
#: match the recorded run for ``skip_existing`` to resume it.
_RESUME_KEYS = ("weights_id", "random_weights", "attribute_set_hash", "classes",
                "top_k_crops", "top_attributes", "evidence", "runner_ups")


def _all_output_fields(label_field: str) -> list[str]:
    """Fields a run on ``label_field`` may write: :func:`output_fields` and
    the default heatmap field ``F_heatmap``."""
    return list(output_fields(label_field).values()) + [f"{label_field}_heatmap"]


def check_label_field_name(label_field: Any) -> None:
    """Refuse a label field name that MongoDB / FiftyOne cannot hold as a
    top-level field: empty, with a ``.`` (an embedded path), starting with
    ``$`` or ``_`` (operators and private fields), or with other characters
    than letters, digits and ``_`` (so ``F_crops`` etc. stay plain names too),
    or whose run key ``lazsl_F`` FiftyOne refuses (not a Python identifier:
    ``x½``).

    Raises:
        ConfigError: naming the parameter ``label_field``.
    """
    if not isinstance(label_field, str) or not label_field.strip():
        raise ConfigError("the label field name must be a non-empty string")
    if "." in label_field:
        raise ConfigError(f"label_field {label_field!r} contains '.': give a top-level field "
                          "name (e.g. lazsl_b), not an embedded path")
    if label_field.startswith(("$", "_")):
        raise ConfigError(f"label_field {label_field!r} must not start with '$' or '_'")
    if not all(ch.isalnum() or ch == "_" for ch in label_field):
        bad = sorted({ch for ch in label_field if not (ch.isalnum() or ch == "_")})
        raise ConfigError(f"label_field {label_field!r} may only contain letters, digits and '_' "
                          f"(found {''.join(bad)!r})")
    # FiftyOne's rule for the run key that records the run (fiftyone.core.runs:
    # a valid Python identifier): '½', '²' are alphanumeric, yet not allowed.
    if not run_key(label_field).isidentifier():
        bad = sorted({ch for ch in label_field if not ("a" + ch).isidentifier()})
        raise ConfigError(f"label_field {label_field!r} may only contain letters, digits and '_' "
                          f"as in a Python name (FiftyOne's rule for run keys; found "
                          f"{''.join(bad)!r})")


def _check_label_field(dataset: Any, label_field: str) -> None:
    """Refuse a label field whose outputs would overwrite fields this run does
    not own: fields of another LaZSL run (``F`` vs ``F_crops``...), or existing
    fields no LaZSL run wrote (``ground_truth``, ``filepath``...)."""
    from fiftyone_lazsl.fo.runs import list_lazsl_fields

    check_label_field_name(label_field)
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
            # Deleting is advice only for what looks like a removed run's
            # leftovers (F_crops, F_attributes...), never for the user's own
            # fields (filepath, ground_truth, F itself).
            leftovers = all(f != label_field for f in taken)
            raise RunConflictError(
                f"field(s) {', '.join(taken)} already exist on dataset {dataset.name!r} and were "
                f"not written by a LaZSL run on {label_field!r}; choose another label field"
                + (" (or delete those fields if they are left from a removed run)"
                   if leftovers else ""))


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


def _run_diff(old: dict, config: dict) -> list[str]:
    """Names of what makes ``config`` a different run from the recorded ``old``
    one: every output-determining :class:`LaZSLConfig` field, plus
    :data:`_RESUME_KEYS` (attribute set, classes, weights, output options)."""
    old = dict(old)
    # Runs recorded before crop_backend existed cut crops with roi_align.
    old.setdefault("crop_backend", "tensor")
    diff = LaZSLConfig.from_dict(config, strict=False).output_diff(old)
    diff += [k for k in _RESUME_KEYS if k in old and k in config
             and _plain(old[k]) != _plain(config[k])]
    return diff


def _check_resumable(dataset: Any, label_field: str, config: dict) -> None:
    """``skip_existing`` keeps earlier outputs: refuse to mix them with outputs
    of different parameters (:func:`_run_diff`)."""
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    diff = _run_diff(old, config)
    if diff:
        raise RunConflictError(
            f"cannot resume the run on field {label_field!r} with different parameters "
            f"({', '.join(diff)} differ from the recorded run); run again without "
            "skip_existing to replace its outputs, or use another label field")


def _holding_outputs(samples: Any, label_field: str) -> Any:
    """The samples of ``samples`` holding a prediction or an error in ``F``."""
    from fiftyone import ViewField as F

    fields = output_fields(label_field)
    schema = samples._dataset.get_field_schema()
    held = [f for f in (fields["prediction"], fields["error"]) if f in schema]
    if not held:
        return None
    expr = F(held[0]).exists()
    for f in held[1:]:
        expr = expr | F(f).exists()
    return samples.match(expr)


def check_one_run(dataset: Any, view: Any, label_field: str, config: dict) -> None:
    """The rule for a field's run: **a label field holds the outputs of one
    run, always**. A new run (not a resume) into a field that already holds a
    run's outputs replaces them on the samples it targets; if the field also
    holds outputs on samples *outside* the target view (a rerun on a subset,
    e.g. ``--tag``), the new run must have the recorded run's parameters
    (:func:`_run_diff`: attribute set, classes, model, visual set, transport,
    output options), so the field still holds one run's outputs. Otherwise it
    is refused before anything is written.

    Used by :func:`run_lazsl`, :func:`fiftyone_lazsl.rescore` and sharded runs.

    Raises:
        RunConflictError: naming what differs and the ways out.
    """
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    holding = _holding_outputs(dataset, label_field)
    if holding is None:
        return
    outside = holding.count() - _holding_outputs(view, label_field).count()
    if outside <= 0:
        return
    diff = _run_diff(old, config)
    if diff:
        raise RunConflictError(
            f"field {label_field!r} holds the outputs of another run on {outside} sample(s) "
            f"outside the samples given ({', '.join(diff)} differ); a field holds one run's "
            "outputs: run on every sample of that run, with its parameters, or write to another "
            "label field (--label-field)")


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class OutputOptions:
    """What a run writes besides the prediction (not LaZSL parameters).

    Attributes:
        top_k_crops: keep only the k kept crops that match their attribute best as
            detections (None or ``"all"``: all kept crops; ``"auto"``:
            :data:`~fiftyone_lazsl.fo.labels.DEFAULT_TOP_K_CROPS` with compact
            evidence, all with full evidence).
        top_attributes: length of ``F_attributes``.
        evidence: ``"compact"`` (per-attribute evidence of the predicted class,
            ``runner_ups`` runner-ups and the ground-truth class) or ``"full"``
            (every class's arrays too); see :mod:`fiftyone_lazsl.fo.labels`.
        runner_ups: runner-up classes whose evidence compact outputs keep.
        heatmap: also write ``F_heatmap``.
        write_every: samples per database write.
        num_workers: image-decoding processes (None: automatic; 0: in process).
    """

    top_k_crops: int | str | None = "auto"
    top_attributes: int = 5
    heatmap: bool = False
    write_every: int = 64
    num_workers: int | None = None
    evidence: str = "compact"
    runner_ups: int = DEFAULT_RUNNER_UPS

    def __post_init__(self) -> None:
        if self.evidence not in EVIDENCE_MODES:
            raise ConfigError(f"evidence must be one of {', '.join(EVIDENCE_MODES)}, "
                              f"got {self.evidence!r}")
        if isinstance(self.runner_ups, bool) or not isinstance(self.runner_ups, int) \
                or self.runner_ups < 0:
            raise ConfigError(f"runner_ups must be an integer >= 0, got {self.runner_ups!r}")
        if self.top_k_crops == "auto":
            object.__setattr__(self, "top_k_crops",
                               DEFAULT_TOP_K_CROPS if self.evidence == "compact" else None)
        elif self.top_k_crops == "all":
            object.__setattr__(self, "top_k_crops", None)
        if self.top_k_crops is not None and (isinstance(self.top_k_crops, (bool, str))
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
              top_k_crops: int | str | None = "auto", top_attributes: int = 5,
              heatmap: bool = False, write_every: int = 64, num_workers: int | None = None,
              evidence: str | None = None, runner_ups: int | None = None,
              shard: dict | None = None,
              classifier: LaZSLClassifier | None = None,
              progress: ProgressFn | bool | None = None,
              store_features: "bool | str | Any" = False, feature_dtype: str = "float16",
              **params: Any) -> RunSummary:
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
        top_k_crops, top_attributes, heatmap, write_every, num_workers,
            evidence, runner_ups: see :class:`OutputOptions` (``evidence``
            default ``"compact"``, ``runner_ups`` default 1). With
            ``skip_existing``, ``evidence``, ``runner_ups`` and
            ``top_k_crops="auto"`` default to the recorded run's.
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
        shard: ``{"index": i, "count": K}`` when ``samples`` is one shard of a
            run queued by :func:`fiftyone_lazsl.fo.shards.queue_shards` (which
            recorded the run): implies ``skip_existing``, records the shard's
            outcome and aggregates it into the run record instead of
            recording a run of its own.
        store_features: keep each sample's view embeddings and crop boxes in a
            :class:`~fiftyone_lazsl.core.features.FeatureStore` so that
            :func:`fiftyone_lazsl.rescore` can re-score with other attribute sets
            or parameters without encoding again: True (default location,
            ``$FIFTYONE_LAZSL_FEATURES`` or ``<cache root>/features``), a
            directory, or a ``FeatureStore``. Default False (about 93 KB per
            sample at N = 90, D = 512, float16). Features already stored for
            the same model and visual set are reused instead of encoding. The
            run record's ``feature_store`` names the store, its fingerprint and
            its size before and after the run.
        feature_dtype: ``"float16"`` (default) or ``"float32"`` storage.

    Every parameter is validated before anything is written. Every sample of
    the view ends with exactly one of a prediction in ``F`` or a one-line
    reason in ``F_error`` (unreadable image, non-finite scores, failed
    prediction); the run goes on past failed samples and lists them in
    :attr:`RunSummary.failures`. Writes run in a background thread
    (:mod:`fiftyone_lazsl.fo.writer`) and set all of a sample's fields in one
    atomic update, so a sample that has a prediction also has its crops and
    attributes even if the process is killed mid-write. An
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
    from fiftyone_lazsl.fo.datasets import check_sample_view

    check_sample_view(samples)  # a patches / frames / clips view: one line, nothing written
    dataset = dataset_of(samples)
    if shard is not None:
        from fiftyone_lazsl.fo import shards as _shards
        skip_existing = True
        _shards.start_shard(dataset, label_field, shard)
    if skip_existing:
        top_k_crops, evidence, runner_ups = _recorded_output_options(
            dataset, label_field, top_k_crops, evidence, runner_ups)
    opts = OutputOptions(top_k_crops=top_k_crops, top_attributes=top_attributes,
                         heatmap=heatmap, write_every=write_every, num_workers=num_workers,
                         evidence=evidence or "compact",
                         runner_ups=DEFAULT_RUNNER_UPS if runner_ups is None else runner_ups)
    _check_label_field(dataset, label_field)
    if classifier is None:
        from fiftyone_lazsl.core.models import check_device
        check_device(cfg.device)  # a missing GPU fails here, before anything is written
    aset = _resolve_attribute_set(attribute_set, dataset)
    view = _target_view(samples, dataset, aset, label_field, gt_field, restrict_to_set,
                        skip_existing)
    summary = RunSummary(label_field=label_field, run_key=None, num_samples=len(view))
    if summary.num_samples == 0:
        logger.info("nothing to classify: the view is empty")
        summary.seconds = time.time() - t0
        if shard is not None:
            _shards.finish_shard(samples, label_field, shard, summary, complete=True)
        return summary

    from fiftyone_lazsl.fo.locks import acquire

    # One writer per label field (RunConflictError); shards of one run share
    # the field by design and coordinate through fiftyone_lazsl.fo.shards.
    lock = acquire(dataset, label_field) if shard is None else None
    try:
        store = _open_feature_store(store_features, feature_dtype)
        report = _progress_fn(progress, summary.num_samples)
        clf = classifier or _build_classifier(aset, cfg, report)
        summary.random_weights = clf.model.random_weights
        worker, extra = clf, None
        if store is not None:
            from fiftyone_lazsl.core.features import StoringClassifier

            worker = StoringClassifier(clf, store)
            extra = {"feature_store": dict(store.describe(), fingerprint=worker.fingerprint,
                                           bytes_before=store.size_bytes())}
            summary.feature_store = dict(extra["feature_store"])
        from fiftyone_lazsl.core.memory import check_visual_set_fits

        check_visual_set_fits(clf)  # an N that cannot fit is refused before anything is written
        ids, paths = view.values(["id", "filepath"])
        gt_index = _gt_indices(view, clf, gt_field) if gt_field else None

        def start() -> None:
            key, _ = _start_run(dataset, clf, label_field, opts, skip_existing,
                                summary.num_samples, register=shard is None, extra=extra,
                                owner=lock.owner if lock is not None else None, view=view)
            summary.run_key = key
            if not skip_existing:
                _clear_outputs(view, dataset, label_field, len(ids))

        # A rerun replacing earlier outputs records itself and clears them only
        # once a sample succeeded (checked now, started then); else at once.
        earlier = _holding_outputs(view, label_field)
        replacing = (shard is None and not skip_existing and earlier is not None
                     and earlier.count() > 0)
        if replacing:
            _start_run(dataset, clf, label_field, opts, skip_existing, summary.num_samples,
                       register=False, view=view)
        else:
            start()
        done = 0
        try:
            done = _classify_and_write(dataset, worker, ids, paths, label_field, opts, summary,
                                       report, gt_index=gt_index,
                                       start=start if replacing else None)
        finally:
            summary.seconds = time.time() - t0
            key = summary.run_key
            if key is None:
                pass  # nothing was started (a rerun in which no sample succeeded)
            elif shard is None:
                _finish_run(dataset, key, summary, complete=done == len(ids))
            else:
                _shards.finish_shard(samples, label_field, shard, summary,
                                     complete=done == len(ids))
            if store is not None and key is not None:
                _record_feature_store(dataset, key, summary, worker, store)
    except Exception as e:  # noqa: BLE001 -- re-raised, as one line if the dataset is gone
        from fiftyone_lazsl.fo.writer import note_database_error

        note_database_error(e)  # a lost database: the clean-up below does not wait on it
        raise_if_dataset_deleted(dataset, e)
        raise
    finally:
        if lock is not None:
            lock.release()

    if opts.heatmap and clf.method == "lazsl":
        from fiftyone_lazsl.fo.heatmaps import write_heatmaps
        # (not `view`: with skip_existing it matches only samples without a
        # prediction, which no longer includes the ones just classified)
        write_heatmaps(dataset.select(ids), label_field)
    if summary.failures:
        logger.warning("%d of %d samples failed; their reasons are in field %r",
                       summary.num_failed, len(ids), output_fields(label_field)["error"])
    # (random weights: load_model warned once; the summary and the run record say so)
    return summary


def _recorded_output_options(dataset: Any, label_field: str, top_k_crops: Any,
                             evidence: str | None, runner_ups: int | None) -> tuple:
    """With ``skip_existing``: output options left at their defaults take the
    recorded run's values (runs recorded before compact outputs existed wrote
    full evidence and every kept crop), so a resumed run writes what the
    interrupted one did."""
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return top_k_crops, evidence, runner_ups
    old_evidence = old.get("evidence", "full")
    if evidence is None:
        evidence = old_evidence
    if runner_ups is None and "runner_ups" in old:
        runner_ups = old["runner_ups"]
    if top_k_crops == "auto" and evidence == old_evidence:
        top_k_crops = old.get("top_k_crops")
    return top_k_crops, evidence, runner_ups


def _gt_indices(view: Any, clf: LaZSLClassifier, gt_field: str) -> list[int | None]:
    """Per sample of ``view`` (in ``view.values`` order), the class index of its
    ground-truth label in ``clf.classes`` (matched with the set's
    :meth:`~fiftyone_lazsl.core.attributes.AttributeSet.resolve`), or None."""
    index = {c: i for i, c in enumerate(clf.classes)}
    cache: dict = {}
    out = []
    for lb in view.values(f"{gt_field}.label"):
        if lb not in cache:
            cache[lb] = index.get(clf.attribute_set.resolve(lb)) if lb is not None else None
        out.append(cache[lb])
    return out


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
        schema = dataset.get_field_schema()
        if gt_field not in schema:
            raise ConfigError(f"dataset {dataset.name!r} has no field {gt_field!r}")
        _check_gt_field_type(dataset, gt_field, schema[gt_field])
        labels = [x for x in view.distinct(f"{gt_field}.label")]
        if restrict_to_set:
            keep = [lb for lb in labels if aset.resolve(lb) is not None]
            view = view.match(F(f"{gt_field}.label").is_in(keep))
        else:
            aset.validate_classes(labels)
    if skip_existing and label_field in dataset.get_field_schema():
        view = view.match(F(label_field).exists(False))
    return view


def _check_gt_field_type(dataset: Any, gt_field: str, field: Any) -> None:
    """``gt_field`` must be a ``Classification`` field (``filepath``, a tag
    list or a Detections field hold no class label to check).

    Raises:
        ConfigError: naming ``gt_field`` and the field's actual type.
    """
    import fiftyone as fo

    doc_type = getattr(field, "document_type", None)
    if not (isinstance(field, fo.EmbeddedDocumentField) and doc_type is not None
            and issubclass(doc_type, fo.Classification)):
        what = doc_type.__name__ if doc_type is not None else type(field).__name__
        raise ConfigError(f"gt_field {gt_field!r} on dataset {dataset.name!r} is a {what}, not a "
                          "Classification field; give the field holding the ground-truth labels")


def _open_feature_store(store_features: Any, dtype: str) -> Any:
    """The :class:`FeatureStore` ``store_features`` asks for (None when off)."""
    from fiftyone_lazsl.core.features import FeatureStore

    if store_features is None or store_features is False:
        return None
    if isinstance(store_features, FeatureStore):
        return store_features
    if store_features is True:
        return FeatureStore(dtype=dtype)
    if isinstance(store_features, (str, os.PathLike)) and str(store_features).strip():
        return FeatureStore(store_features, dtype=dtype)
    raise ConfigError(f"store_features must be True/False, a directory or a FeatureStore, "
                      f"got {store_features!r}")


def _record_feature_store(dataset: Any, key: str, summary: "RunSummary", worker: Any,
                          store: Any) -> None:
    """Add the store's counts and size after the run to the run record and summary."""
    from fiftyone_lazsl.fo.writer import database_lost

    if database_lost():
        return  # (the run record is not reachable)
    fs = summary.feature_store
    fs.update(bytes_after=store.size_bytes(), stored=worker.stored, reused=worker.reused,
              store_errors=worker.store_errors)
    info = dataset.get_run_info(key)
    cfg = info.config
    cfg.feature_store = dict(fs)
    dataset.update_run_config(key, cfg)


def _start_run(dataset: Any, clf: LaZSLClassifier, label_field: str, opts: OutputOptions,
               skip_existing: bool, n: int, register: bool = True,
               extra: dict | None = None, *, owner: str | None = None,
               view: Any = None) -> tuple[str, dict]:
    """Check a resume, record the run (provenance first, so an interrupted run
    is still recorded), set ``dataset.classes[F]`` and create the fields
    (``register=False``, for shards: only check against the recorded run).

    ``owner`` is the write lock's id (:mod:`fiftyone_lazsl.fo.locks`): while it
    beats, readers see ``status="running"``; once it stops, ``"interrupted"``.
    A resume keeps the whole run's ``num_samples`` and earlier ``seconds`` and
    counts ``resumed``. With ``view`` (the samples the run targets), a new run
    is checked against :func:`check_one_run` first.

    Returns:
        ``(run_key, run_config_dict)``.
    """
    fields = output_fields(label_field)
    key = run_key(label_field)
    config = dict(clf.config(), label_field=label_field, fields=fields,
                  top_k_crops=opts.top_k_crops, top_attributes=opts.top_attributes,
                  evidence=opts.evidence, runner_ups=opts.runner_ups,
                  attribute_set_warnings=list(clf.attribute_set.warnings),
                  status="running", num_samples=n, owner=owner, **(extra or {}))
    if skip_existing:
        _check_resumable(dataset, label_field, config)
        if key in dataset.list_runs():
            old = dataset.get_run_info(key).config
            config["num_samples"] = max(int(getattr(old, "num_samples", 0) or 0), n)
            # ``seconds`` is written when a (resumed) run ends and is then the
            # cumulative total; a killed run has only what came before it.
            prior = getattr(old, "seconds", None)
            if prior is None:
                prior = getattr(old, "seconds_before", 0)
            config["seconds_before"] = float(prior or 0)
            config["resumed"] = int(getattr(old, "resumed", 0) or 0) + 1
    elif view is not None:
        check_one_run(dataset, view, label_field, config)
    if not register:
        return key, config
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
            _retry_db(lambda: view.set_values(f, [None] * n))


def _written_fields(label_field: str, method: str) -> list[str]:
    """Fields ``method`` writes, in write order: error first, prediction last
    (a sample with a prediction then also has the rest)."""
    fields = output_fields(label_field)
    written = [fields["error"]]
    if method in CROP_METHODS:
        written.append(fields["crops"])
    if method in ATTRIBUTE_METHODS:
        written.append(fields["attributes"])
    written.append(fields["prediction"])
    return written


def _classify_and_write(dataset: Any, clf: LaZSLClassifier, ids: list, paths: list,
                        label_field: str, opts: OutputOptions, summary: RunSummary,
                        report: Callable[[int, str], None],
                        gt_index: list | None = None, items: Any = None,
                        start: Callable[[], None] | None = None) -> int:
    """Stream predictions for ``paths`` and hand their outputs to a
    :class:`~fiftyone_lazsl.fo.writer.BackgroundWriter` (batches of
    ``opts.write_every`` samples, one atomic update per sample; label documents
    built directly as BSON-ready dicts by
    :func:`~fiftyone_lazsl.fo.labels.label_documents`). Returns the number of
    samples processed (all of them written when it returns). ``items``: an
    iterable of ``list[pipeline.Item]`` to write instead of classifying the
    images (re-scoring from stored features).

    ``start``: for a run replacing earlier outputs, called (to record the run
    and clear the old outputs) once the first batch holding a prediction
    arrives; batches of failures before it are held back. A run in which no
    sample succeeds then writes nothing and the earlier outputs and record
    stay as they were (:class:`NothingWrittenError`).

    Raises:
        fiftyone_lazsl.fo.writer.WriterError: a database write failed.
        NothingWrittenError: with ``start``, no sample got a prediction.
    """
    from fiftyone_lazsl.fo.writer import BackgroundWriter

    fields = output_fields(label_field)
    written = _written_fields(label_field, clf.method)
    err_f, pred_f = fields["error"], fields["prediction"]
    crops_f = fields["crops"] if fields["crops"] in written else None
    attrs_f = fields["attributes"] if fields["attributes"] in written else None
    failed = dict.fromkeys(written)  # every output None ...
    classes, names = clf.classes, clf.attribute_labels

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

    with BackgroundWriter(dataset, batch_size=opts.write_every) as writer:
        if items is None:
            items = iter_predictions(clf, paths, keys=paths, batch_size=clf.batch_size,
                                     num_workers=opts.num_workers, on_stage=on_stage)
        held: list = []
        for batch in _after_first_success(items, start, held):
            for it in batch:
                sid = ids[it.index]
                if it.prediction is None:
                    reason = it.error or "no prediction"
                    summary.failures.append((sid, it.filepath, reason))
                    logger.warning("sample %s (%s): %s", sid, it.filepath, reason)
                    writer.put(sid, dict(failed, **{err_f: reason}))  # ... but the reason
                    continue
                cls, dets, attrs = label_documents(
                    it.prediction, classes, names, evidence=opts.evidence,
                    runner_ups=opts.runner_ups,
                    gt_index=gt_index[it.index] if gt_index is not None else None,
                    top_k_crops=opts.top_k_crops, top_attributes=opts.top_attributes)
                values = {err_f: None}
                if crops_f:
                    values[crops_f] = dets
                if attrs_f:
                    values[attrs_f] = attrs
                values[pred_f] = cls
                writer.put(sid, values)
                summary.num_predicted += 1
            before = done
            done += len(batch)
            # the writer flushes every write_every samples (and at the end)
            if done // opts.write_every > before // opts.write_every or done >= total:
                report(done, "writing")
            encoded["pending"] = False
            on_stage("decoding")
    if held:  # nothing succeeded: nothing was written
        fails = [(ids[it.index], it.filepath, it.error or "no prediction")
                 for b in held for it in b]
        summary.failures.extend(fails)
        _, path, reason = fails[0]
        raise NothingWrittenError(
            f"every one of the {len(fails)} samples failed (first: {path}: {reason}); nothing "
            f"was written: field {label_field!r} keeps its earlier outputs and run record")
    return done


class NothingWrittenError(UserError):
    """A run replacing a field's earlier outputs had no sample succeed; it
    wrote nothing, so the earlier outputs and run record are unchanged."""


def _after_first_success(items: Any, start: Callable[[], None] | None, held: list) -> Any:
    """``items``' batches; with ``start``, batches without any prediction are
    kept in ``held`` until one with a prediction arrives, then ``start()`` is
    called and the held batches are yielded before it. If none arrives,
    ``held`` keeps them all (and ``start`` is never called)."""
    if start is None:
        yield from items
        return
    it = iter(items)
    for batch in it:
        if not any(x.prediction is not None for x in batch):
            held.append(batch)
            continue
        start()
        earlier = list(held)
        held.clear()
        yield from earlier
        yield batch
        break
    yield from it


def raise_if_dataset_deleted(dataset: Any, error: BaseException) -> None:
    """Turn ``error`` into one line when it came from ``dataset`` having been
    deleted (by another process) while a run was writing.

    Raises:
        UserError: the dataset no longer exists (``error`` as its cause).
    """
    import fiftyone as fo

    from fiftyone_lazsl.fo.writer import cleanup_budget

    try:
        with cleanup_budget():
            gone = not fo.dataset_exists(dataset.name)
    except Exception:  # noqa: BLE001 -- the database itself is away: keep the error
        return
    if gone:
        raise UserError(f"dataset {dataset.name!r} was deleted (by another process?) while the "
                        "run was writing to it; nothing more was written") from error


def _finish_run(dataset: Any, key: str, summary: RunSummary, *, complete: bool) -> None:
    """Record the outcome on the run: status, counts and wall time.

    Raises:
        UserError: the dataset was deleted while the run wrote to it.
    """
    import fiftyone as fo

    from fiftyone_lazsl.fo.writer import cleanup_budget, database_lost

    if database_lost():
        try:
            with cleanup_budget():  # the database was lost: try briefly
                _finish_run_now(dataset, key, summary, complete=complete)
        except Exception as e:  # noqa: BLE001 -- the record stays "running"; its lock goes
            logger.warning("could not record the end of the run (%s)", type(e).__name__)
        return  # stale, so readers see "interrupted"
    if not fo.dataset_exists(dataset.name):
        raise_if_dataset_deleted(dataset, RuntimeError("dataset deleted"))
    _finish_run_now(dataset, key, summary, complete=complete)


def _finish_run_now(dataset: Any, key: str, summary: RunSummary, *, complete: bool) -> None:
    info = dataset.get_run_info(key)
    cfg = info.config
    cfg.status = "completed" if complete else "interrupted"
    if getattr(cfg, "resumed", 0):
        # totals of the whole run, not of this resumed part
        fields = output_fields(cfg.label_field)
        cfg.num_predicted = dataset.count(fields["prediction"])
        cfg.num_failed = dataset.count(fields["error"])
        cfg.seconds = round(summary.seconds + float(getattr(cfg, "seconds_before", 0) or 0), 3)
    else:
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
