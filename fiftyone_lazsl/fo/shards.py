"""One LaZSL run split across delegated-operation workers (and GPUs).

:func:`queue_shards` records the run once (the parent run record, key
``lazsl_F``, exactly what :func:`~fiftyone_lazsl.fo.apply.run_lazsl` records),
then queues ``K`` delegated operations of the plugin's ``run_lazsl`` operator,
one per *shard*: a disjoint, stable slice of the view made of a contiguous
range of sample ids (sorted ObjectIds, so a shard's samples never change while
the dataset does not). Any number of ``fiftyone delegated launch`` workers
sharing the MongoDB and the media execute them: open-source FiftyOne claims a
queued operation atomically (``required_state=QUEUED``), so each shard runs
once per queueing.

Each shard runs :func:`run_shard` (``shard={"index": i, "count": K}``) on its
slice, the same run (:class:`~fiftyone_lazsl.fo.run.LaZSLRun`) as a classify,
which implies ``skip_existing`` (a re-queued shard resumes: finished samples
are not redone) and, instead of recording a run, records the shard's outcome in
the ``lazsl_shards`` collection (one document per shard, atomic updates) and
aggregates all shards into the parent run record (``status``: ``queued``,
``running``, ``completed`` when every shard completed, ``interrupted`` when one
stopped; ``num_predicted``, ``num_failed`` and per-shard ``shards``).
:func:`shard_status` recomputes that aggregate on demand, :func:`wait_for_shards`
waits for it, :func:`requeue_shards` queues again the shards whose operation
failed (or whose worker died: ``stale=True``).

The operator's URI is :data:`OPERATOR_URI`; the plugin must be installed where
the workers run (``FIFTYONE_PLUGINS_DIR``), and workers need the same MongoDB
(``FIFTYONE_DATABASE_URI``). Open-source delegated execution may need
``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` for ``fiftyone delegated launch``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import fiftyone.core.odm as foodm
import fiftyone.operators as foo
from bson import ObjectId
from fiftyone import ViewField as F
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult

from fiftyone_lazsl.core.classifier import LaZSLClassifier, RunProvenance
from fiftyone_lazsl.core.config import LaZSLConfig, OutputConfig
from fiftyone_lazsl.errors import ConfigError, UserError
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.run import LaZSLRun, ProgressFn, RunSummary, classify, split_overrides
from fiftyone_lazsl.fo.runs import RunRecord, output_fields, run_key

logger = logging.getLogger(__name__)

#: The ``run_lazsl`` operator of this plugin (``fiftyone.yml``).
OPERATOR_URI = "@fiftyone-lazsl/lazsl/run_lazsl"

#: MongoDB collection holding one document per shard.
SHARD_COLLECTION = "lazsl_shards"


@dataclass
class ShardedRun:
    """What :func:`queue_shards` queued.

    Attributes:
        label_field: the run's label field; run_key: its parent run record.
        operation_ids: the delegated operation id of each shard, shard order.
        shard_sizes: samples per shard.
    """

    label_field: str
    run_key: str
    operation_ids: list[str] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)


def _collection() -> Any:
    return foodm.get_db_conn()[SHARD_COLLECTION]


def _doc_id(dataset: Any, label_field: str, index: int) -> str:
    return f"{dataset.name}/{label_field}/{int(index)}"


def shard_views(samples: Any, num_shards: int) -> list[tuple[Any, int]]:
    """Split ``samples`` into ``num_shards`` disjoint, stable slices.

    Sample ids are sorted and cut into contiguous ranges of (nearly) equal
    size; each slice is ``samples`` matched on its id range (``$toString`` of
    ``_id``: hex ObjectIds sort like the ids), a two-bound filter however
    large the shard is.

    Returns:
        ``[(view, num_samples)]``; fewer than ``num_shards`` when the view has
        fewer samples.

    Raises:
        ConfigError: ``num_shards < 1``.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"shards must be an integer >= 1, got {num_shards!r}")
    ids = sorted(samples.values("id"))
    k = min(num_shards, len(ids))
    out = []
    for i in range(k):
        lo, hi = (len(ids) * i) // k, (len(ids) * (i + 1)) // k
        chunk = ids[lo:hi]
        view = samples.match(
            (F("_id").to_string() >= chunk[0]) & (F("_id").to_string() <= chunk[-1])
        )
        out.append((view, len(chunk)))
    return out


def _operator_params(
    cfg: Any,
    spec: str,
    label_field: str,
    opts: Any,
    gt_field: str | None,
    restrict_to_set: bool,
    index: int,
    count: int,
) -> dict:
    """Parameters of the ``run_lazsl`` operator for one shard (the names its
    form uses: :class:`LaZSLConfig` fields, ``crop_min``/``crop_max``)."""
    params = cfg.form_values()  # random weights said explicitly ("none"; None = default)
    params.update(
        attribute_set=spec,
        label_field=label_field,
        gt_field=gt_field,
        restrict_to_set=restrict_to_set,
        heatmap=opts.heatmap,
        evidence=opts.evidence,
        runner_ups=opts.runner_ups,
        top_k_crops=opts.top_k_crops if opts.top_k_crops is not None else "all",
        top_attributes=opts.top_attributes,
        shard_index=index,
        num_shards=count,
        # a shard resumes into the run queue_shards recorded on this field
        skip_existing=True,
        view_target="CURRENT_VIEW",
    )
    return params


def queue_shards(
    samples: Any,
    attribute_set: str,
    num_shards: int,
    *,
    config: LaZSLConfig | None = None,
    output: OutputConfig | None = None,
    label_field: str = "lazsl",
    gt_field: str | None = None,
    restrict_to_set: bool = False,
    skip_existing: bool = False,
    devices: list[str] | None = None,
    **params: Any,
) -> ShardedRun:
    """Queue one LaZSL run over ``samples`` as ``num_shards`` delegated operations.

    Validates everything :func:`~fiftyone_lazsl.fo.apply.run_lazsl` validates,
    records the run (its provenance without loading the model or encoding a
    prompt: :class:`~fiftyone_lazsl.core.classifier.RunProvenance`), clears the
    view's old outputs (unless ``skip_existing``), then queues the shards.

    Args:
        samples: a dataset or view.
        attribute_set: a set name stored on the dataset, a JSON file path or a
            published name (the workers resolve it again; it must be a string).
        num_shards: how many delegated operations.
        config, output, label_field, gt_field, restrict_to_set, skip_existing:
            as for :func:`~fiftyone_lazsl.fo.apply.run_lazsl`.
        devices: e.g. ``["cuda:0", "cuda:1"]``: shard ``i`` runs on
            ``devices[i % len(devices)]`` (default: the config's device).
        **params: overrides of ``config`` or ``output`` fields, as for
            ``run_lazsl``, and ``operator_uri``: the operator to queue
            (default :data:`OPERATOR_URI`).

    Returns:
        a :class:`ShardedRun` (empty ``operation_ids`` when the view is empty).

    Raises:
        fiftyone_lazsl.errors.UserError: bad parameters (as ``run_lazsl``), a
            non-string attribute set, or the operator could not be queued (the
            plugin is not installed, or delegated execution is unavailable).
    """
    operator_uri = params.pop("operator_uri", OPERATOR_URI)
    if not isinstance(attribute_set, (str, os.PathLike)):
        raise ConfigError(
            "a sharded run needs the attribute set as a name or a file path "
            "(the workers load it again); save it on the dataset first"
        )
    spec = str(attribute_set)
    cfg, output = split_overrides(config, output, params)
    run = LaZSLRun(
        samples,
        spec,
        label_field,
        output=output,
        gt_field=gt_field,
        restrict_to_set=restrict_to_set,
        skip_existing=skip_existing,
    )
    dataset = run.dataset
    queued = ShardedRun(label_field=label_field, run_key=run_key(label_field))
    if len(run) == 0:
        return queued
    shards = shard_views(run.view, num_shards)
    # the run record, without loading the model or encoding a prompt: the workers do
    provenance = RunProvenance(run.attribute_set, config=cfg.replace(device="cpu")).config()
    with run.lock():  # no other run may be writing the field now
        run.record(run.check(run.record_values(provenance)))
    coll = _collection()
    coll.delete_many({"dataset": dataset.name, "label_field": label_field})
    for i, (shard_view, n) in enumerate(shards):
        c = cfg.replace(device=devices[i % len(devices)]) if devices else cfg
        p = _operator_params(
            c, spec, label_field, run.output, gt_field, restrict_to_set, i, len(shards)
        )
        p["write_every"] = int(run.output.write_every)
        res = foo.execute_operator(
            operator_uri,
            ctx={"dataset": dataset.name, "view": shard_view, "params": p},
            request_delegation=True,
        )
        if res.error:
            _update_parent(dataset, label_field, status="failed to queue")
            raise UserError(
                f"could not queue shard {i} of {len(shards)} as a delegated "
                f"operation of {operator_uri}: {res.error.strip().splitlines()[-1]}"
            )
        op_id = str(res.result["id"])
        queued.operation_ids.append(op_id)
        queued.shard_sizes.append(n)
        coll.replace_one(
            {"_id": _doc_id(dataset, label_field, i)},
            {
                "dataset": dataset.name,
                "label_field": label_field,
                "index": i,
                "count": len(shards),
                "operation_id": op_id,
                "status": "queued",
                "num_samples": n,
                "num_predicted": 0,
                "num_failed": 0,
                "device": c.device,
                "queued_at": time.time(),
            },
            upsert=True,
        )
    _update_parent(
        dataset,
        label_field,
        status="queued",
        num_shards=len(shards),
        shard_operations=queued.operation_ids,
        device=",".join(sorted(set(devices))) if devices else cfg.device,
    )
    return queued


def run_shard(
    samples: Any,
    attribute_set: Any,
    shard: dict,
    *,
    config: LaZSLConfig | None = None,
    output: OutputConfig | None = None,
    label_field: str = "lazsl",
    gt_field: str | None = None,
    restrict_to_set: bool = False,
    classifier: LaZSLClassifier | None = None,
    progress: ProgressFn | bool | None = None,
    **params: Any,
) -> RunSummary:
    """Run one shard of a run queued by :func:`queue_shards` (what each
    delegated operation does): a resume (``skip_existing``) of the sharded
    run on the shard's samples, checked against the parent run record,
    recording the shard's outcome instead of a run of its own.

    Args:
        samples: the shard's view.
        attribute_set: as for :func:`~fiftyone_lazsl.fo.apply.run_lazsl`.
        shard: ``{"index": i, "count": K}``.
        config, output, label_field, gt_field, restrict_to_set, classifier,
            progress, **params: as for ``run_lazsl`` (``skip_existing`` is
            implied).

    Returns:
        the shard's :class:`~fiftyone_lazsl.fo.run.RunSummary`.

    Raises:
        the errors of ``run_lazsl``; ``RunConflictError`` when the parameters
        differ from the sharded run's.
    """
    params.pop("skip_existing", None)
    config, output = split_overrides(config, output, params)
    dataset = dataset_of(samples)
    start_shard(dataset, label_field, shard)
    run = LaZSLRun(
        samples,
        attribute_set,
        label_field,
        output=output,
        gt_field=gt_field,
        restrict_to_set=restrict_to_set,
        skip_existing=True,
    )

    def on_end(complete: bool) -> None:
        finish_shard(samples, label_field, shard, run.summary, complete=complete)

    if len(run) == 0:
        on_end(True)
        return run.summary
    return classify(
        run, config, classifier=classifier, progress=progress, exclusive=False, on_end=on_end
    )


def _update_parent(dataset: Any, label_field: str, **values: Any) -> None:
    RunRecord.load(dataset, label_field).update(**values)


def start_shard(dataset: Any, label_field: str, shard: dict) -> None:
    """Mark shard ``shard["index"]`` running (called by :func:`run_shard`)."""
    _collection().update_one(
        {"_id": _doc_id(dataset, label_field, shard["index"])},
        {
            "$set": {
                "dataset": dataset.name,
                "label_field": label_field,
                "index": int(shard["index"]),
                "count": int(shard["count"]),
                "status": "running",
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "started_at": time.time(),
            }
        },
        upsert=True,
    )


def finish_shard(
    samples: Any, label_field: str, shard: dict, summary: Any, *, complete: bool
) -> None:
    """Record a shard's outcome, counted over its whole slice (so re-queued
    shards report every sample once), and aggregate into the parent run."""
    dataset = dataset_of(samples)
    fields = output_fields(label_field)
    schema = dataset.get_field_schema()
    n_pred = samples.exists(fields["prediction"]).count() if fields["prediction"] in schema else 0
    n_fail = samples.exists(fields["error"]).count() if fields["error"] in schema else 0
    _collection().update_one(
        {"_id": _doc_id(dataset, label_field, shard["index"])},
        {
            "$set": {
                "status": "completed" if complete else "interrupted",
                "num_samples": len(samples),
                "num_predicted": n_pred,
                "num_failed": n_fail,
                "seconds": round(summary.seconds, 3),
                "finished_at": time.time(),
            }
        },
    )
    shard_status(dataset, label_field)


def shard_status(dataset: Any, label_field: str) -> dict:
    """Aggregate the shards of the run on ``label_field`` and store it in the
    parent run record.

    Returns:
        ``{"status", "num_shards", "num_samples", "num_predicted", "num_failed",
        "shards": [{index, status, operation_id, num_samples, num_predicted,
        num_failed, worker, device}]}``; ``status`` is ``completed`` when every
        shard completed, ``interrupted`` when none is running or queued and one
        did not complete, else ``running`` (``queued`` before any started).

    Raises:
        ValueError: no sharded run on ``label_field``.
    """
    docs = sorted(
        _collection().find({"dataset": dataset.name, "label_field": label_field}),
        key=lambda d: d["index"],
    )
    if not docs:
        raise ValueError(
            f"no sharded LaZSL run on field {label_field!r} of dataset {dataset.name!r}"
        )
    keep = (
        "index",
        "status",
        "operation_id",
        "num_samples",
        "num_predicted",
        "num_failed",
        "worker",
        "device",
    )
    shards = [{k: d.get(k) for k in keep} for d in docs]
    states = [s["status"] for s in shards]
    if all(s == "completed" for s in states):
        status = "completed"
    elif any(s in ("running", "queued") for s in states):
        status = "queued" if all(s == "queued" for s in states) else "running"
    else:
        status = "interrupted"
    agg = dict(
        status=status,
        num_shards=len(shards),
        num_samples=sum(s["num_samples"] or 0 for s in shards),
        num_predicted=sum(s["num_predicted"] or 0 for s in shards),
        num_failed=sum(s["num_failed"] or 0 for s in shards),
        shards=shards,
    )
    try:
        _update_parent(dataset, label_field, **agg)
    except Exception as e:  # the aggregate is recomputed on every call
        logger.warning("could not update the run record of %r: %s", label_field, e)
    return agg


def _operation_states(ids: list[str]) -> dict[str, str]:

    svc = DelegatedOperationService()
    out = {}
    for i in ids:
        op = svc.get(ObjectId(i))
        out[i] = None if op is None else str(op.run_state)
    return out


def requeue_shards(dataset: Any, label_field: str, *, stale: bool = False) -> list[str]:
    """Queue again the shards that did not complete: those whose delegated
    operation failed, and with ``stale=True`` also those still marked running
    or queued (their worker was killed: the caller knows no worker runs them).
    The old operation is marked failed; the new one resumes the shard
    (``skip_existing``: finished samples are not redone).

    Returns:
        the new operation ids.
    """

    svc = DelegatedOperationService()
    coll = _collection()
    docs = list(coll.find({"dataset": dataset.name, "label_field": label_field}))
    states = _operation_states([d["operation_id"] for d in docs])
    new_ids = []
    for d in sorted(docs, key=lambda d: d["index"]):
        if d["status"] == "completed":
            continue
        st = states.get(d["operation_id"])
        if st == "failed" or d["status"] == "interrupted" or stale:
            old = ObjectId(d["operation_id"])
            if st not in ("failed", "completed"):
                svc.set_failed(
                    old,
                    result=ExecutionResult(
                        error="re-queued by fiftyone_lazsl.fo.shards.requeue_shards"
                    ),
                )
            op = svc.rerun_operation(old)
            new_id = str(op.id)
            coll.update_one(
                {"_id": d["_id"]}, {"$set": {"operation_id": new_id, "status": "queued"}}
            )
            new_ids.append(new_id)
    agg = shard_status(dataset, label_field)
    _update_parent(
        dataset, label_field, shard_operations=[s["operation_id"] for s in agg["shards"]]
    )
    return new_ids


def wait_for_shards(
    dataset: Any, label_field: str, *, timeout: float | None = None, poll: float = 2.0
) -> dict:
    """Wait until every shard completed, or none is queued/running any more
    (a failed delegated operation counts as stopped). Returns
    :func:`shard_status`.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    deadline = None if timeout is None else time.time() + timeout
    while True:
        agg = shard_status(dataset, label_field)
        if agg["status"] in ("completed", "interrupted"):
            return agg
        states = _operation_states([s["operation_id"] for s in agg["shards"]])
        pending = [
            s
            for s in agg["shards"]
            if s["status"] != "completed"
            and states.get(s["operation_id"]) not in ("failed", "completed")
        ]
        if not pending:
            return agg
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"{len(pending)} shard(s) of {label_field!r} still pending")
        time.sleep(poll)
