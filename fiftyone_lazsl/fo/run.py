"""One run's life: every operation that writes LaZSL outputs composes :class:`LaZSLRun`.

A classify run (:func:`fiftyone_lazsl.fo.apply.run_lazsl`), a re-score
(:func:`fiftyone_lazsl.fo.rescore.rescore`), a sharded run and each of its
shards (:mod:`fiftyone_lazsl.fo.shards`) go through the same steps::

    LaZSLRun(samples, attribute_set, label_field, output=...)   # resolve, validate; no write
        .lock()                   # one writer per label field (fo.locks)
        .write(worker, ...)       # record the run (provenance first), clear old outputs,
                                  # stream predictions to the background writer, finish
    or  .record(provenance)       # record only (a sharded run: the shards write)

Resolving happens once, in the constructor: the dataset, the sample view
check, the label field checks, the output options (a resume takes the recorded
run's), the attribute set and the target view (``gt_field``,
``restrict_to_set``, ``skip_existing``). Nothing is written before every check
passed. The run record is a :class:`~fiftyone_lazsl.fo.runs.RunRecord`
(FiftyOne's run API, ``fiftyone/core/runs.py``); a run that replaces a
field's earlier outputs records itself and clears them only once one sample
succeeded, so a run in which every sample fails leaves the field as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
from fiftyone import ViewField as F
from tqdm.auto import tqdm

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.config import ATTRIBUTE_METHODS, CROP_METHODS, LaZSLConfig, OutputConfig
from fiftyone_lazsl.core.features import FeatureStore, StoringClassifier
from fiftyone_lazsl.core.memory import check_visual_set_fits
from fiftyone_lazsl.core.models import check_device, load_model
from fiftyone_lazsl.core.pipeline import iter_predictions
from fiftyone_lazsl.errors import ConfigError, RunConflictError, UserError
from fiftyone_lazsl.fo import locks
from fiftyone_lazsl.fo.appconfig import hide_until_shown
from fiftyone_lazsl.fo.datasets import check_sample_view, dataset_of
from fiftyone_lazsl.fo.heatmaps import write_heatmaps
from fiftyone_lazsl.fo.labels import label_documents
from fiftyone_lazsl.fo.runs import (
    RunRecord,
    get_run_config,
    list_lazsl_fields,
    output_fields,
    run_key,
)
from fiftyone_lazsl.fo.store import resolve_attribute_set
from fiftyone_lazsl.fo.writer import (
    BackgroundWriter,
    cleanup_budget,
    database_lost,
    note_database_error,
    retry_db,
)

logger = logging.getLogger(__name__)

#: ``callable(fraction, stage_label)``: how a run reports progress.
ProgressFn = Callable[[float, str], None]

#: Run-config keys besides :class:`LaZSLConfig`'s own output parameters that must
#: match the recorded run for a resume (or a rerun on a subset) to continue it.
RESUME_KEYS = (
    "weights_id",
    "random_weights",
    "attribute_set_hash",
    "classes",
    "top_k_crops",
    "top_attributes",
    "evidence",
    "runner_ups",
)


@dataclass
class RunSummary:
    """What a run (classify, re-score, shard) did.

    Attributes:
        label_field: the field written.
        run_key: the FiftyOne run key recording it (None: nothing was recorded).
        num_samples: samples in the target view (after ``skip_existing``).
        num_predicted: samples that got a prediction.
        failures: ``[(sample_id, filepath, reason)]`` for samples that got an error.
        random_weights: True if the model had random weights.
        seconds: wall time of the run.
        feature_store: the feature store's path, fingerprint, sizes and counts
            (runs that stored or read features).
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
        s = (
            f"{self.num_predicted}/{self.num_samples} samples classified into field "
            f"{self.label_field!r}"
        )
        if self.failures:
            s += f"; {self.num_failed} failed (see field {self.label_field}_error)"
        if self.random_weights:
            s += "; RANDOM WEIGHTS (meaningless predictions)"
        if self.feature_store:
            fs = self.feature_store
            s += (
                f"; feature store {fs['path']}: {fs.get('stored', 0)} stored, "
                f"{fs.get('reused', 0)} reused, {_mb(fs.get('bytes_before', 0))} -> "
                f"{_mb(fs.get('bytes_after', 0))}"
            )
        return s


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class NothingWrittenError(UserError):
    """A run replacing a field's earlier outputs had no sample succeed; it
    wrote nothing, so the earlier outputs and run record are unchanged."""


def split_overrides(
    config: LaZSLConfig | None, output: OutputConfig | None, params: dict
) -> tuple[LaZSLConfig, OutputConfig]:
    """``(config, output)`` with the keyword overrides of an entry point
    applied: names of :class:`OutputConfig` options change ``output``, every
    other name changes ``config`` (defaults: ``LaZSLConfig()`` and
    ``OutputConfig()``).

    Raises:
        ConfigError: an unknown name or a bad value, naming it.
    """
    out_names = set(OutputConfig.field_names())
    out_changes = {k: v for k, v in params.items() if k in out_names}
    cfg_changes = {k: v for k, v in params.items() if k not in out_names}
    config = config or LaZSLConfig()
    output = output or OutputConfig()
    if not isinstance(config, LaZSLConfig):
        raise ConfigError(f"config must be a LaZSLConfig, got {type(config).__name__}")
    if not isinstance(output, OutputConfig):
        raise ConfigError(f"output must be an OutputConfig, got {type(output).__name__}")
    return (
        config.replace(**cfg_changes) if cfg_changes else config,
        output.replace(**out_changes) if out_changes else output,
    )


# --------------------------------------------------------------------- checks
def all_output_fields(label_field: str) -> list[str]:
    """Fields a run on ``label_field`` may write: :func:`output_fields` and
    the heatmap field ``F_heatmap``."""
    return list(output_fields(label_field).values()) + [f"{label_field}_heatmap"]


def written_fields(label_field: str, method: str) -> list[str]:
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
        raise ConfigError(
            f"label_field {label_field!r} contains '.': give a top-level field "
            "name (e.g. lazsl_b), not an embedded path"
        )
    if label_field.startswith(("$", "_")):
        raise ConfigError(f"label_field {label_field!r} must not start with '$' or '_'")
    if not all(ch.isalnum() or ch == "_" for ch in label_field):
        bad = sorted({ch for ch in label_field if not (ch.isalnum() or ch == "_")})
        raise ConfigError(
            f"label_field {label_field!r} may only contain letters, digits and '_' "
            f"(found {''.join(bad)!r})"
        )
    # FiftyOne's rule for the run key that records the run (fiftyone.core.runs:
    # a valid Python identifier): '½', '²' are alphanumeric, yet not allowed.
    if not run_key(label_field).isidentifier():
        bad = sorted({ch for ch in label_field if not ("a" + ch).isidentifier()})
        raise ConfigError(
            f"label_field {label_field!r} may only contain letters, digits and '_' "
            f"as in a Python name (FiftyOne's rule for run keys; found "
            f"{''.join(bad)!r})"
        )


def check_label_field(dataset: Any, label_field: str) -> None:
    """Check, before anything is written, that a run on ``label_field`` would
    only touch its own outputs: not the fields of another LaZSL run (``F``
    vs ``F_crops``...), nor existing fields no LaZSL run wrote
    (``ground_truth``, ``filepath``...). The ``run_lazsl`` operator's form
    calls it too.

    Raises:
        ConfigError: a name FiftyOne cannot hold (:func:`check_label_field_name`).
        RunConflictError: the outputs would overwrite another run's fields or
            fields no LaZSL run wrote.
    """
    check_label_field_name(label_field)
    ours = all_output_fields(label_field)
    runs = list_lazsl_fields(dataset)
    for other in runs:
        if other == label_field:
            continue
        clash = sorted(set(ours) & set(all_output_fields(other)))
        if clash:
            raise RunConflictError(
                f"label field {label_field!r} would overwrite field(s) {', '.join(clash)} of the "
                f"LaZSL run on field {other!r}; choose another label field"
            )
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
                + (
                    " (or delete those fields if they are left from a removed run)"
                    if leftovers
                    else ""
                )
            )


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def run_diff(old: dict, config: dict) -> list[str]:
    """Names of what makes ``config`` a different run from the recorded ``old``
    one: every output-determining :class:`LaZSLConfig` field, plus
    :data:`RESUME_KEYS` (attribute set, classes, weights, output options)."""
    old = dict(old)
    # Runs recorded before crop_backend existed cut crops with roi_align.
    old.setdefault("crop_backend", "tensor")
    diff = LaZSLConfig.from_dict(config, strict=False).output_diff(old)
    diff += [
        k for k in RESUME_KEYS if k in old and k in config and _plain(old[k]) != _plain(config[k])
    ]
    return diff


def holding_outputs(samples: Any, label_field: str) -> Any:
    """The samples of ``samples`` holding a prediction or an error in ``F``
    (None when neither field exists)."""
    fields = output_fields(label_field)
    schema = dataset_of(samples).get_field_schema()
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
    (:func:`run_diff`: attribute set, classes, model, visual set, transport,
    output options), so the field still holds one run's outputs. Otherwise it
    is refused before anything is written.

    Raises:
        RunConflictError: naming what differs and the ways out.
    """
    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    holding = holding_outputs(dataset, label_field)
    if holding is None:
        return
    outside = holding.count() - holding_outputs(view, label_field).count()
    if outside <= 0:
        return
    diff = run_diff(old, config)
    if diff:
        raise RunConflictError(
            f"field {label_field!r} holds the outputs of another run on {outside} sample(s) "
            f"outside the samples given ({', '.join(diff)} differ); a field holds one run's "
            "outputs: run on every sample of that run, with its parameters, or write to another "
            "label field (--label-field)"
        )


def check_resumable(dataset: Any, label_field: str, config: dict) -> None:
    """A resume keeps earlier outputs: refuse to mix them with outputs of
    different parameters (:func:`run_diff`).

    Raises:
        RunConflictError: naming what differs.
    """
    try:
        old = get_run_config(dataset, label_field)
    except ValueError:
        return
    diff = run_diff(old, config)
    if diff:
        raise RunConflictError(
            f"cannot resume the run on field {label_field!r} with different parameters "
            f"({', '.join(diff)} differ from the recorded run); run again without "
            "skip_existing to replace its outputs, or use another label field"
        )


def check_gt_field_type(dataset: Any, gt_field: str, schema_field: Any) -> None:
    """``gt_field`` must be a ``Classification`` field (``filepath``, a tag
    list or a Detections field hold no class label to check).

    Raises:
        ConfigError: naming ``gt_field`` and the field's actual type.
    """
    doc_type = getattr(schema_field, "document_type", None)
    if not (
        isinstance(schema_field, fo.EmbeddedDocumentField)
        and doc_type is not None
        and issubclass(doc_type, fo.Classification)
    ):
        what = doc_type.__name__ if doc_type is not None else type(schema_field).__name__
        raise ConfigError(
            f"gt_field {gt_field!r} on dataset {dataset.name!r} is a {what}, not a "
            "Classification field; give the field holding the ground-truth labels"
        )


def to_attribute_set(attribute_set: Any, dataset: Any) -> AttributeSet:
    """An :class:`AttributeSet` from what a caller gave: the set itself, a
    dict ``{class: [attributes]}``, or a name / path / published name
    (:func:`fiftyone_lazsl.fo.store.resolve_attribute_set`, searching
    ``dataset``'s stored sets first).

    Raises:
        AttributeSetError: the name or file does not give a set.
    """
    if isinstance(attribute_set, AttributeSet):
        return attribute_set
    if isinstance(attribute_set, dict):
        return AttributeSet.from_dict(attribute_set)
    return resolve_attribute_set(str(attribute_set), dataset=dataset)


def raise_if_dataset_deleted(dataset: Any, error: BaseException) -> None:
    """Turn ``error`` into one line when it came from ``dataset`` having been
    deleted (by another process) while a run was writing.

    Raises:
        UserError: the dataset no longer exists (``error`` as its cause).
    """
    try:
        with cleanup_budget():
            gone = not fo.dataset_exists(dataset.name)
    except Exception:  # noqa: BLE001 -- the database itself is away: keep the error
        return
    if gone:
        raise UserError(
            f"dataset {dataset.name!r} was deleted (by another process?) while the "
            "run was writing to it; nothing more was written"
        ) from error


def progress_reporter(progress: ProgressFn | bool | None, total: int) -> Callable[[int, str], None]:
    """``report(done, label)`` for a run over ``total`` samples: nothing
    (None/False), a tqdm bar (True), or ``progress(fraction, text)`` with
    "<stage> images a-b of N" while a batch is in flight, "<stage> k/N" after
    it, and the model / prompt stages without a count."""
    if progress is None or progress is False:
        return lambda done, label: None
    if progress is True:
        bar = tqdm(total=total, unit="img")

        def tick(done: int, label: str) -> None:
            bar.set_description(label)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return tick

    def report(done: int, label: str) -> None:
        if label.startswith(("loading", "encoding ")) and " image" not in label:
            text = label
        elif " image" in label:
            text = f"{label} of {total}"
        else:
            text = f"{label} {done}/{total}"
        progress(done / total, text)

    return report


def open_feature_store(store_features: Any, dtype: str) -> FeatureStore | None:
    """The :class:`FeatureStore` ``store_features`` asks for (None when off).

    Raises:
        ConfigError: a value that names no store.
    """
    if store_features is None or store_features is False:
        return None
    if isinstance(store_features, FeatureStore):
        return store_features
    if store_features is True:
        return FeatureStore(dtype=dtype)
    if isinstance(store_features, (str, os.PathLike)) and str(store_features).strip():
        return FeatureStore(store_features, dtype=dtype)
    raise ConfigError(
        f"store_features must be True/False, a directory or a FeatureStore, got {store_features!r}"
    )


def after_first_success(items: Iterable, start: Callable[[], None] | None, held: list) -> Iterator:
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


def ensure_fields(dataset: Any, label_field: str, method: str) -> None:
    """Declare the fields a ``method`` run on ``label_field`` writes (and the
    label's ``keywords`` / ``words``, so the App's sidebar search offers them);
    crop detections are hidden in the App until shown.

    Each ``add_sample_field`` reloads the dataset document (and with it every
    run record), so the label and its two list attributes are declared in one
    call (``fields=``, FiftyOne's ``Dataset.add_sample_field``)."""
    fields = output_fields(label_field)
    schema = dataset.get_field_schema()
    subfields = ("keywords", "words") if method in ATTRIBUTE_METHODS else ()

    def listed(name: str) -> Any:
        f = fo.ListField(fo.StringField())
        f.name = name
        return f

    want = {
        fields["prediction"]: dict(
            ftype=fo.EmbeddedDocumentField,
            embedded_doc_type=fo.Classification,
            fields=[listed(n) for n in subfields] or None,
        ),
        fields["error"]: dict(ftype=fo.StringField),
    }
    if method in CROP_METHODS:
        want[fields["crops"]] = dict(
            ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections
        )
    if method in ATTRIBUTE_METHODS:
        want[fields["attributes"]] = dict(ftype=fo.ListField, subfield=fo.StringField)
    for name, kw in want.items():
        if name not in schema:
            dataset.add_sample_field(name, **kw)
    for name in subfields:  # a field declared by an earlier run (or another method)
        kw_field = f"{fields['prediction']}.{name}"
        if not dataset.has_field(kw_field):
            dataset.add_sample_field(kw_field, fo.ListField, subfield=fo.StringField)
    if method in CROP_METHODS:
        hide_until_shown(dataset, [fields["crops"]], show=[fields["prediction"]])


# ------------------------------------------------------------------ the run
class LaZSLRun:
    """One operation that writes LaZSL outputs to ``label_field`` of the
    dataset of ``samples``.

    The constructor resolves and validates everything (no write): the view
    is a sample view; the label field's outputs touch nothing else; the
    output options (a resume takes the recorded run's defaults); the
    attribute set; the target view and its ground-truth classes.

    Args:
        samples: a FiftyOne dataset or view.
        attribute_set: an :class:`AttributeSet`, a dict, a set name stored on
            the dataset, a JSON file path or a published set name.
        label_field: the prediction field ``F`` (see :mod:`fiftyone_lazsl.fo.runs`).
        output: what to write (:class:`~fiftyone_lazsl.core.config.OutputConfig`).
        gt_field: a Classification field whose labels must all be classes of
            the set (or, with ``restrict_to_set``, select the samples).
        restrict_to_set: with ``gt_field``, only samples whose label is a class
            of the set.
        skip_existing: a resume: only samples without a prediction, earlier
            outputs kept, parameters checked against the recorded run.

    Raises:
        ConfigError, AttributeSetError, RunConflictError: as
        :func:`fiftyone_lazsl.fo.apply.run_lazsl` documents.
    """

    def __init__(
        self,
        samples: Any,
        attribute_set: Any,
        label_field: str,
        *,
        output: OutputConfig,
        gt_field: str | None = None,
        restrict_to_set: bool = False,
        skip_existing: bool = False,
    ) -> None:
        self.t0 = time.time()
        check_sample_view(samples)  # patches / frames / clips: one line, nothing written
        self.samples = samples
        self.dataset = dataset_of(samples)
        self.label_field = label_field
        self.gt_field = gt_field
        self.skip_existing = skip_existing
        check_label_field(self.dataset, label_field)
        recorded = None
        if skip_existing:
            rec = RunRecord.load(self.dataset, label_field)
            recorded = rec.values if rec is not None else None
        self.output = output.resolved(recorded)
        self.attribute_set = to_attribute_set(attribute_set, self.dataset)
        self.view = self._target_view(restrict_to_set)
        self.summary = RunSummary(label_field=label_field, run_key=None, num_samples=len(self.view))
        self.record_: RunRecord | None = None
        self.owner: str | None = None
        self.ids: list[str] = []

    def _target_view(self, restrict_to_set: bool) -> Any:
        view, gt_field, dataset = self.samples, self.gt_field, self.dataset
        if restrict_to_set and gt_field is None:
            raise ConfigError(
                "restrict_to_set needs gt_field (the field whose labels select samples)"
            )
        if gt_field is not None:
            schema = dataset.get_field_schema()
            if gt_field not in schema:
                raise ConfigError(f"dataset {dataset.name!r} has no field {gt_field!r}")
            check_gt_field_type(dataset, gt_field, schema[gt_field])
            labels = list(view.distinct(f"{gt_field}.label"))
            if restrict_to_set:
                keep = [lb for lb in labels if self.attribute_set.resolve(lb) is not None]
                view = view.match(F(f"{gt_field}.label").is_in(keep))
            else:
                self.attribute_set.validate_classes(labels)
        if self.skip_existing and self.label_field in dataset.get_field_schema():
            view = view.match(F(self.label_field).exists(False))
        return view

    def __len__(self) -> int:
        return self.summary.num_samples

    # ---------------------------------------------------------- lifecycle
    @contextlib.contextmanager
    def lock(self, *, exclusive: bool = True) -> Iterator[LaZSLRun]:
        """Hold the label field's write lock (one writer per field,
        :mod:`fiftyone_lazsl.fo.locks`) while the block runs; ``exclusive=False``
        (a shard of a sharded run, which shares the field by design) holds
        none. A failure in the block is reported as one line when the dataset
        was deleted meanwhile.

        Raises:
            RunConflictError: another live run writes the field.
        """
        held = locks.acquire(self.dataset, self.label_field) if exclusive else None
        self.owner = held.owner if held is not None else None
        try:
            yield self
        except Exception as e:  # noqa: BLE001 -- re-raised, as one line if the dataset is gone
            note_database_error(e)  # a lost database: the clean-up does not wait on it
            raise_if_dataset_deleted(self.dataset, e)
            raise
        finally:
            if held is not None:
                held.release()

    def record_values(self, provenance: dict, extra: dict | None = None) -> dict:
        """The run record for ``provenance`` (a classifier's ``config()``:
        every parameter, the model, the attribute set, ``classes``): plus the
        label field, output fields and options, status and owner."""
        return dict(
            provenance,
            label_field=self.label_field,
            fields=output_fields(self.label_field),
            **self.output.record(),
            attribute_set_warnings=list(self.attribute_set.warnings),
            status="running",
            num_samples=len(self),
            owner=self.owner,
            **(extra or {}),
        )

    def check(self, values: dict) -> dict:
        """Check a run record against the field's recorded run (a resume must
        have its parameters; a new run must keep the field one run's,
        :func:`check_one_run`); a resume keeps the whole run's
        ``num_samples`` and earlier ``seconds`` and counts ``resumed``.

        Returns:
            ``values``, completed for a resume.

        Raises:
            RunConflictError: naming what differs.
        """
        if not self.skip_existing:
            check_one_run(self.dataset, self.view, self.label_field, values)
            return values
        check_resumable(self.dataset, self.label_field, values)
        old = RunRecord.load(self.dataset, self.label_field)
        if old is not None:
            values["num_samples"] = max(old.num_samples, len(self))
            values["seconds_before"] = old.seconds_so_far
            values["resumed"] = old.resumed + 1
        return values

    def record(self, values: dict) -> RunRecord:
        """Record the run (provenance first, so an interrupted run is still
        recorded), set ``dataset.classes[F]``, declare the fields and, unless
        resuming, clear the view's old outputs (so no old and new crops or
        errors mix)."""
        for w in self.attribute_set.warnings:
            logger.warning("attribute set %s: %s", self.attribute_set.name or "", w)
        self.record_ = RunRecord.create(self.dataset, self.label_field, values)
        self.summary.run_key = self.record_.key
        self.dataset.classes[self.label_field] = list(values["classes"])
        self.dataset.save()
        ensure_fields(self.dataset, self.label_field, values["method"])
        if not self.skip_existing:
            self.clear_outputs()
        return self.record_

    def clear_outputs(self) -> None:
        """Clear the view's outputs of a run on the label field."""
        schema = self.dataset.get_field_schema()
        n = len(self)
        for f in all_output_fields(self.label_field):
            if f in schema:
                retry_db(lambda f=f: self.view.set_values(f, [None] * n))

    def write(
        self,
        worker: Any,
        provenance: dict,
        *,
        items: Iterable | None = None,
        extra: dict | None = None,
        progress: Callable[[int, str], None] | None = None,
        register: bool = True,
        on_end: Callable[[bool], None] | None = None,
        outcome: Callable[[], dict] | None = None,
    ) -> RunSummary:
        """Record the run and stream its predictions into the label field.

        Args:
            worker: what predicts (a
                :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier` or a
                wrapper with its ``classes``, ``attribute_labels``, ``method``,
                ``batch_size``); with ``items`` only its classes are read.
            provenance: the classifier's ``config()`` (see :meth:`record_values`).
            items: batches of :class:`~fiftyone_lazsl.core.pipeline.Item` to
                write instead of classifying the view's images (re-scoring).
            extra: more keys for the run record.
            progress: ``report(done, label)`` (:func:`progress_reporter`).
            register: False for a shard: the sharded run's record exists; the
                shard only checks against it.
            on_end: called with ``complete`` after the last write instead of
                finishing the run record (a shard records its own outcome).
            outcome: called after the last write for more outcome values of
                the run record (e.g. the feature store's counts).

        A run that replaces earlier outputs in the field records itself and
        clears them only when the first sample succeeds; if none does it
        writes nothing (:class:`NothingWrittenError`).

        Returns:
            the run's :class:`RunSummary`.

        Raises:
            NothingWrittenError, fiftyone_lazsl.fo.writer.WriterError, the
            checks of :meth:`check`.
        """
        report = progress or (lambda done, label: None)
        values = self.check(self.record_values(provenance, extra))
        ids, paths = self.view.values(["id", "filepath"])
        self.ids = ids
        if not register:
            self.summary.run_key = run_key(self.label_field)
        earlier = holding_outputs(self.view, self.label_field)
        replacing = (
            register and not self.skip_existing and earlier is not None and earlier.count() > 0
        )
        start = (lambda: self.record(values)) if register else None
        if start is not None and not replacing:
            start()
        done = 0
        try:
            done = self._stream(
                worker, ids, paths, report, items=items, start=start if replacing else None
            )
        finally:
            self.summary.seconds = time.time() - self.t0
            more = outcome() if outcome is not None else {}
            if on_end is not None:
                on_end(done == len(ids))
            elif self.record_ is not None:
                self.finish(complete=done == len(ids), **more)
        if self.summary.failures:
            logger.warning(
                "%d of %d samples failed; their reasons are in field %r",
                self.summary.num_failed,
                len(ids),
                output_fields(self.label_field)["error"],
            )
        return self.summary

    def finish(self, *, complete: bool, **values: Any) -> None:
        """Record the outcome: status, counts and wall time (of the whole
        run when resumed), and ``values``.

        Raises:
            UserError: the dataset was deleted while the run wrote to it.
        """
        if database_lost():
            try:
                with cleanup_budget():  # the database was lost: try briefly
                    self._finish_now(complete, values)
            except Exception as e:  # noqa: BLE001 -- the record stays "running"; its lock goes
                logger.warning("could not record the end of the run (%s)", type(e).__name__)
            return  # stale, so readers see "interrupted"
        if not fo.dataset_exists(self.dataset.name):
            raise_if_dataset_deleted(self.dataset, RuntimeError("dataset deleted"))
        self._finish_now(complete, values)

    def _finish_now(self, complete: bool, values: dict) -> None:
        rec, s = self.record_, self.summary
        out = dict(values, status="completed" if complete else "interrupted")
        if rec.resumed:
            # totals of the whole run, not of this resumed part
            fields = output_fields(self.label_field)
            out.update(
                num_predicted=self.dataset.count(fields["prediction"]),
                num_failed=self.dataset.count(fields["error"]),
                seconds=round(s.seconds + float(rec.get("seconds_before")), 3),
            )
        else:
            out.update(
                num_predicted=s.num_predicted, num_failed=s.num_failed, seconds=round(s.seconds, 3)
            )
        rec.update(**out)

    def gt_indices(self, classes: list[str]) -> list[int | None] | None:
        """Per sample of the view (``values`` order), the index in ``classes``
        of its ground-truth label (matched with
        :meth:`~fiftyone_lazsl.core.attributes.AttributeSet.resolve`), or
        None; None without ``gt_field``."""
        if self.gt_field is None:
            return None
        index = {c: i for i, c in enumerate(classes)}
        cache: dict = {}
        out = []
        for lb in self.view.values(f"{self.gt_field}.label"):
            if lb not in cache:
                cache[lb] = index.get(self.attribute_set.resolve(lb)) if lb is not None else None
            out.append(cache[lb])
        return out

    def _stream(
        self,
        clf: Any,
        ids: list,
        paths: list,
        report: Callable[[int, str], None],
        *,
        items: Iterable | None,
        start: Callable[[], Any] | None,
    ) -> int:
        """Stream predictions for ``paths`` to a
        :class:`~fiftyone_lazsl.fo.writer.BackgroundWriter` (batches of
        ``write_every`` samples, one atomic update per sample; label documents
        built directly as BSON-ready dicts by
        :func:`~fiftyone_lazsl.fo.labels.label_documents`). Returns the number
        of samples processed (all written when it returns)."""
        opts, summary = self.output, self.summary
        fields = output_fields(self.label_field)
        written = written_fields(self.label_field, clf.method)
        err_f, pred_f = fields["error"], fields["prediction"]
        crops_f = fields["crops"] if fields["crops"] in written else None
        attrs_f = fields["attributes"] if fields["attributes"] in written else None
        failed = dict.fromkeys(written)  # every output None ...
        classes, names = clf.classes, clf.attribute_labels
        gt_index = self.gt_indices(classes)
        top_k = opts.top_k_crops

        done, total = 0, len(paths)
        encoded = {"pending": False}  # a batch was encoded and is not written yet

        def on_stage(name: str) -> None:
            # Per batch: decoding (DataLoader), then encoding and scoring (the
            # classifier). The pipeline says "decoding" again before it yields
            # the batch; that is reported once the batch is handled (below).
            if name == "encoding":
                encoded["pending"] = True
            elif encoded["pending"]:
                return
            if done < total:
                hi = min(done + clf.batch_size, total)
                what = "encoding and scoring" if name == "encoding" else name
                report(
                    done,
                    f"{what} images {done + 1}-{hi}" if hi > done + 1 else f"{what} image {hi}",
                )

        with BackgroundWriter(self.dataset, batch_size=opts.write_every) as writer:
            if items is None:
                items = iter_predictions(
                    clf,
                    paths,
                    keys=paths,
                    batch_size=clf.batch_size,
                    num_workers=opts.num_workers,
                    on_stage=on_stage,
                )
            held: list = []
            for batch in after_first_success(items, start, held):
                for it in batch:
                    sid = ids[it.index]
                    if it.prediction is None:
                        reason = it.error or "no prediction"
                        summary.failures.append((sid, it.filepath, reason))
                        logger.warning("sample %s (%s): %s", sid, it.filepath, reason)
                        writer.put(sid, dict(failed, **{err_f: reason}))  # ... but the reason
                        continue
                    cls, dets, attrs = label_documents(
                        it.prediction,
                        classes,
                        names,
                        evidence=opts.evidence,
                        runner_ups=opts.runner_ups,
                        gt_index=gt_index[it.index] if gt_index is not None else None,
                        top_k_crops=top_k,
                        top_attributes=opts.top_attributes,
                    )
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
            fails = [
                (ids[it.index], it.filepath, it.error or "no prediction") for b in held for it in b
            ]
            summary.failures.extend(fails)
            _, path, reason = fails[0]
            raise NothingWrittenError(
                f"every one of the {len(fails)} samples failed (first: {path}: {reason}); "
                f"nothing was written: field {self.label_field!r} keeps its earlier outputs "
                "and run record"
            )
        return done


# -------------------------------------------------------------- classifying
def build_classifier(
    attribute_set: AttributeSet, config: LaZSLConfig, report: Callable[[int, str], None]
) -> LaZSLClassifier:
    """Load the model, then encode the prompts, reporting each stage (both
    happen before the first image: they may take most of a small run).

    Raises:
        the errors of :func:`fiftyone_lazsl.core.models.load_model`.
    """
    weights = config.pretrained if config.pretrained is not None else "random weights"
    report(0, f"loading the model {config.model} ({weights})")
    loaded = load_model(config.model, config.pretrained, device=config.device)
    n = (
        len(attribute_set)
        if config.method == "clip"
        else sum(len(attribute_set[c]) for c in attribute_set.classes)
    )
    report(0, f"encoding {n} {'class' if config.method == 'clip' else 'attribute'} prompts")
    return LaZSLClassifier(attribute_set, loaded, config=config)


def classify(
    run: LaZSLRun,
    config: LaZSLConfig,
    *,
    classifier: LaZSLClassifier | None = None,
    progress: ProgressFn | bool | None = None,
    exclusive: bool = True,
    on_end: Callable[[bool], None] | None = None,
) -> RunSummary:
    """Encode and score the images of ``run``'s view and write the outputs:
    the classify step of :func:`fiftyone_lazsl.fo.apply.run_lazsl` and of
    each shard of a sharded run.

    Args:
        run: the resolved run (not empty).
        config: the LaZSL parameters (ignored with ``classifier``).
        classifier: a pre-built classifier for ``run.attribute_set``.
        progress: as :func:`progress_reporter`.
        exclusive, on_end: a shard's: no write lock of its own (the sharded
            run's shards share the field) and its own outcome record.

    With ``run.output.store_features`` each sample's view embeddings go to
    (or come from) the feature store, and the run record's
    ``feature_store`` names it with its size before and after and the counts.

    Returns:
        ``run.summary``.
    """
    if classifier is None:
        check_device(config.device)  # a missing GPU fails here, before anything is written
    opts = run.output
    with run.lock(exclusive=exclusive):
        store = open_feature_store(opts.store_features, opts.feature_dtype)
        report = progress_reporter(progress, len(run))
        clf = classifier or build_classifier(run.attribute_set, config, report)
        run.summary.random_weights = clf.model.random_weights
        worker, extra, outcome = clf, None, None
        if store is not None:
            worker = StoringClassifier(clf, store)
            fs = dict(
                store.describe(), fingerprint=worker.fingerprint, bytes_before=store.size_bytes()
            )
            extra = {"feature_store": fs}
            run.summary.feature_store = dict(fs)

            def outcome() -> dict:
                fs_now = run.summary.feature_store
                fs_now.update(
                    bytes_after=store.size_bytes(),
                    stored=worker.stored,
                    reused=worker.reused,
                    store_errors=worker.store_errors,
                )
                return {"feature_store": dict(fs_now)}

        check_visual_set_fits(clf)  # an N that cannot fit is refused before anything is written
        run.write(
            worker,
            clf.config(),
            extra=extra,
            progress=report,
            register=exclusive,
            on_end=on_end,
            outcome=outcome,
        )
    if opts.heatmap and clf.method == "lazsl":
        write_heatmaps(run.dataset.select(run.ids), run.label_field)
    return run.summary
