"""Run LaZSL (or WCA, or the DCLIP / CLIP baselines) on a FiftyOne dataset or view.

:func:`run_lazsl` is what the ``run_lazsl`` operator and the ``classify`` CLI
call: a thin composition of :class:`~fiftyone_lazsl.fo.run.LaZSLRun` (resolve
and validate, record, write through the background writer, finish) and
:func:`~fiftyone_lazsl.fo.run.classify` (load the model, encode, score). It
writes the fields described in :mod:`fiftyone_lazsl.fo.runs` and records the
run's provenance as a FiftyOne run (``dataset.list_runs()``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import fiftyone as fo

from fiftyone_lazsl.core.classifier import LaZSLClassifier, Prediction
from fiftyone_lazsl.core.config import (
    DEFAULT_RUNNER_UPS,
    DEFAULT_TOP_K_CROPS,
    LaZSLConfig,
    OutputConfig,
)
from fiftyone_lazsl.fo import shards
from fiftyone_lazsl.fo.labels import label_documents
from fiftyone_lazsl.fo.run import (
    LaZSLRun,
    NothingWrittenError,
    ProgressFn,
    RunSummary,
    check_label_field,
    check_label_field_name,
    check_one_run,
    classify,
    raise_if_dataset_deleted,
    split_overrides,
)

__all__ = [
    "run_lazsl",
    "to_labels",
    "RunSummary",
    "NothingWrittenError",
    "check_label_field",
    "check_label_field_name",
    "check_one_run",
    "raise_if_dataset_deleted",
]

logger = logging.getLogger(__name__)


def run_lazsl(
    samples: Any,
    attribute_set: Any,
    *,
    config: LaZSLConfig | None = None,
    output: OutputConfig | None = None,
    label_field: str = "lazsl",
    gt_field: str | None = None,
    restrict_to_set: bool = False,
    skip_existing: bool = False,
    classifier: LaZSLClassifier | None = None,
    progress: ProgressFn | bool | None = None,
    **params: Any,
) -> RunSummary:
    """Classify every sample of ``samples`` and write labels and evidence.

    Args:
        samples: a FiftyOne dataset or view (e.g. the App's current view or
            selected samples).
        attribute_set: an :class:`AttributeSet`, a dict, a set name stored on the
            dataset, a JSON file path or a published set name (``"cub"``).
        config: the LaZSL parameters (:class:`~fiftyone_lazsl.core.config.LaZSLConfig`;
            default: the paper's).
        output: what the run writes besides the prediction
            (:class:`~fiftyone_lazsl.core.config.OutputConfig`: ``top_k_crops``,
            ``top_attributes``, ``evidence``, ``runner_ups``, ``heatmap``,
            ``write_every``, ``num_workers``, ``store_features``,
            ``feature_dtype``; default: its defaults).
        **params: override single fields of ``config`` (``model=``,
            ``pretrained=``, ``method=``, ``n_crops=``, ``theta=``, ``eps=``,
            ``seed=``, ``batch_size=``, ``device=``...) or of ``output``
            (``top_k_crops=3``, ``evidence="full"``, ``store_features=True``...).
            ``shard=`` (a shard of a sharded run) still works and warns:
            :func:`fiftyone_lazsl.fo.shards.run_shard` runs one.
        label_field: prediction field ``F``; also writes ``F_crops``,
            ``F_attributes``, ``F_error`` (see :mod:`fiftyone_lazsl.fo.runs`).
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

    With ``skip_existing``, ``evidence``, ``runner_ups`` and
    ``top_k_crops="auto"`` left at their defaults take the recorded run's.
    ``store_features`` (an :class:`OutputConfig` option) keeps each
    sample's view embeddings and crop boxes in a
    :class:`~fiftyone_lazsl.core.features.FeatureStore` so that
    :func:`fiftyone_lazsl.rescore` can re-score with other attribute sets
    or parameters without encoding again: True (default location,
    ``$FIFTYONE_LAZSL_FEATURES`` or ``<cache root>/features``), a
    directory, or a ``FeatureStore`` (about 93 KB per sample at N = 90,
    D = 512, float16). Features already stored for the same model and
    visual set are reused instead of encoding. The run record's
    ``feature_store`` names the store, its fingerprint and its size
    before and after the run.

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
    shard = params.pop("shard", None)
    config, output = split_overrides(config, output, params)
    if shard is not None:
        warnings.warn(
            "run_lazsl(shard=...) is deprecated; use fiftyone_lazsl.fo.shards.run_shard",
            DeprecationWarning,
            stacklevel=2,
        )
        return shards.run_shard(
            samples,
            attribute_set,
            shard,
            config=config,
            output=output,
            label_field=label_field,
            gt_field=gt_field,
            restrict_to_set=restrict_to_set,
            classifier=classifier,
            progress=progress,
        )
    run = LaZSLRun(
        samples,
        attribute_set,
        label_field,
        output=output,
        gt_field=gt_field,
        restrict_to_set=restrict_to_set,
        skip_existing=skip_existing,
    )
    if len(run) == 0:
        logger.info("nothing to classify: the view is empty")
        return run.summary
    # (random weights: load_model warned once; the summary and the run record say so)
    return classify(run, config, classifier=classifier, progress=progress)


def to_labels(
    pred: Prediction,
    classifier: LaZSLClassifier,
    *,
    top_k_crops: int | None = DEFAULT_TOP_K_CROPS,
    top_attributes: int = 5,
    evidence: str = "compact",
    runner_ups: int = DEFAULT_RUNNER_UPS,
    gt_index: int | None = None,
) -> tuple:
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
    cls, dets, attrs = label_documents(
        pred,
        classifier.classes,
        classifier.attribute_labels,
        evidence=evidence,
        runner_ups=runner_ups,
        gt_index=gt_index,
        top_k_crops=top_k_crops,
        top_attributes=top_attributes,
    )
    return (
        fo.Classification.from_dict(cls),
        None if dets is None else fo.Detections.from_dict(dets),
        attrs,
    )


def _output_options(**options: Any) -> OutputConfig:
    """What the deprecated ``OutputOptions(...)`` gave: the options resolved."""
    return OutputConfig(**options).resolved()


def __getattr__(name: str) -> Any:
    if name == "OutputOptions":
        warnings.warn(
            "fiftyone_lazsl.fo.apply.OutputOptions is deprecated; use "
            "fiftyone_lazsl.OutputConfig (OutputOptions(...) is "
            "OutputConfig(...).resolved())",
            DeprecationWarning,
            stacklevel=2,
        )
        return _output_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
