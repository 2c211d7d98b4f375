"""Where a LaZSL run's outputs live on a dataset, and its provenance.

For a label field ``F`` (default ``"lazsl"``) a run writes:

* ``F``: ``fo.Classification(label, confidence, logits)`` with logits in the
  attribute set's class order, plus custom attributes on the label
  (:mod:`fiftyone_lazsl.fo.labels` builds them):

  - ``evidence_by_class`` (LaZSL and DCLIP): a dict keyed by class index (a
    string), one entry per class people look at, in this order: the predicted class (``role`` ``"predicted"``), the
    ``runner_ups`` best other classes (``"runner_up"``, default 1) and, when the
    run was given ``gt_field``, the sample's ground-truth class
    (``"ground_truth"``). Each has ``class``, ``index`` (logit order),
    ``attributes`` (the class's attribute texts, set order), ``scores`` (each
    attribute's contribution ``sum_n T[n, a] * S[n, a]`` to the class score
    ``psi``; they sum to ``psi``; DCLIP: the global view's cosine with it) and,
    for LaZSL, ``crops`` (kept crops whose largest share of mass, within that
    class, goes to the attribute). Balanced optimal transport gives every
    attribute exactly ``1 / A_c`` of the mass, so *received mass* cannot rank
    attributes; their contribution to the score can, and is what "evidence"
    means throughout this project. Outputs written before this layout hold the
    same entries as a list named ``evidence`` (which the App's label tooltip
    cannot render); :func:`fiftyone_lazsl.fo.labels.evidence_entries` reads
    either;
  - ``evidence_summary``: the same classes' top attributes as one readable
    line (what the App's label tooltip shows);
  - ``keywords``: ``F_attributes`` without a leading article (``"white head"``),
    and ``words``: their distinct words (``"white"``, ``"head"``), both
    declared on the dataset so the App sidebar's search (which matches the
    start of a value) finds an attribute by any of its words;
  - with ``evidence="full"`` only (and on datasets written before compact
    outputs): ``attribute_scores`` (``[C][A_c]`` floats) and ``attribute_crops``
    (``[C][A_c]`` ints), the same numbers for every class.

  ``clip`` runs have neither evidence nor keywords;
  the crop detections are hidden in the App until shown (the dataset's App
  config, :mod:`fiftyone_lazsl.fo.appconfig`);
* ``F_crops``: ``fo.Detections``, the ``top_k_crops`` kept crops with most
  transport mass (default 5 with compact evidence; every kept crop with
  ``evidence="full"`` or ``top_k_crops="all"``):
  relative ``bounding_box``, ``label`` = the predicted class's attribute the crop
  sends most mass to, ``confidence`` = that share of the crop's mass, and custom
  attributes ``similarity`` (hybrid similarity of crop and attribute),
  ``mass`` (the crop's total mass), ``crop_index``, ``attribute_index``;
* ``F_attributes``: list of the predicted class's attributes ranked by
  their contribution to the score (top few; LaZSL and DCLIP runs);
* ``F_error``: a string, only for samples that failed (missing/corrupt image).

Provenance is a FiftyOne run with key :func:`run_key` whose config holds the
model, weights, every parameter, ``classes`` (logit order), ``attribute_labels``
(``[C][A_c]`` attribute texts), attribute-set name and hash,
``random_weights``, the output options (``evidence``, ``runner_ups``,
``top_k_crops``, ``top_attributes``); and the run's outcome: ``status``
(``"running"``, ``"completed"`` or ``"interrupted"``), ``num_samples``,
``num_predicted``, ``num_failed``, ``seconds`` and ``owner`` (the id of the
process's write lock, :mod:`fiftyone_lazsl.fo.locks`). A resumed run
(``skip_existing``) keeps the totals of the whole run: ``num_samples`` of the
first start, ``num_predicted`` / ``num_failed`` counted over the dataset,
``seconds`` summed, and ``resumed`` (how many times it was resumed).

A record that says ``"running"`` whose owner no longer holds a live lock (the
process was killed, its machine or database connection died) is reported as
``"interrupted"`` by :func:`get_run_config` and :func:`run_status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fiftyone_lazsl.fo import locks
from fiftyone_lazsl.fo.datasets import dataset_of

RUN_PREFIX = "lazsl_"


def run_key(label_field: str) -> str:
    """The FiftyOne run key recording the run that wrote ``label_field``."""
    return RUN_PREFIX + label_field.replace(".", "_")


def output_fields(label_field: str) -> dict[str, str]:
    """Names of the fields a run on ``label_field`` writes."""
    return {
        "prediction": label_field,
        "crops": f"{label_field}_crops",
        "attributes": f"{label_field}_attributes",
        "error": f"{label_field}_error",
    }


def get_run_config(samples, label_field: str) -> dict:
    """The recorded config of the LaZSL run that wrote ``label_field``, as a dict.

    Raises:
        ValueError: if no LaZSL run wrote that field.
    """
    dataset = dataset_of(samples)
    key = run_key(label_field)
    if key not in dataset.list_runs():
        raise ValueError(f"no LaZSL run wrote field {label_field!r} on dataset {dataset.name!r}")
    cfg = dataset.get_run_info(key).config
    out = {k: v for k, v in cfg.serialize().items() if not k.startswith("_")}
    if out.get("status") == "running" and not _owner_alive(dataset, label_field, out):
        out["status"] = "interrupted"
    return out


def _owner_alive(dataset: Any, label_field: str, config: dict) -> bool:
    """Whether the run recorded in ``config`` still holds a live write lock."""
    doc = locks.current(dataset, label_field)
    if doc is None or (config.get("owner") and doc.get("owner") != config["owner"]):
        return False
    return locks.is_alive(doc)


def run_status(samples, label_field: str) -> str:
    """``"running"``, ``"completed"`` or ``"interrupted"`` for the LaZSL run
    that wrote ``label_field``; a ``"running"`` record whose process is gone
    (no fresh heartbeat, see :mod:`fiftyone_lazsl.fo.locks`) is
    ``"interrupted"``.

    Raises:
        ValueError: if no LaZSL run wrote that field.
    """
    return str(get_run_config(samples, label_field).get("status", "completed"))


def list_lazsl_fields(samples) -> list[str]:
    """Label fields on ``samples`` written by a LaZSL run (any method)."""
    out = []
    for key in samples.list_runs():
        if key.startswith(RUN_PREFIX):
            cfg = samples.get_run_info(key).config
            field = getattr(cfg, "label_field", None)
            if field:
                out.append(field)
    return out


def latest_lazsl_field(samples) -> str | None:
    """The label field of the most recently recorded LaZSL run on ``samples``
    (the run record's timestamp: when the run was started or last replaced), or
    None when no LaZSL run wrote any field."""
    best, when = None, None
    for key in samples.list_runs():
        if key.startswith(RUN_PREFIX):
            info = samples.get_run_info(key)
            field = getattr(info.config, "label_field", None)
            ts = info.timestamp
            if field and (best is None or (ts is not None and (when is None or ts >= when))):
                best, when = field, ts
    return best


#: The outcome fields of a run record, with the value a record without them means.
OUTCOME_DEFAULTS: dict[str, Any] = {
    "status": "completed",
    "num_samples": 0,
    "num_predicted": 0,
    "num_failed": 0,
    "seconds": None,
    "seconds_before": 0.0,
    "resumed": 0,
    "owner": None,
    "feature_store": None,
}


@dataclass
class RunRecord:
    """The FiftyOne run that records a LaZSL run on a label field: its
    provenance (every parameter, the model, the attribute set) and its
    outcome, read and written as typed values.

    Stored with FiftyOne's run API (``dataset.register_run`` /
    ``get_run_info`` / ``update_run_config``, ``fiftyone/core/runs.py``) under
    :func:`run_key`; :attr:`values` is the run config as a dict.

    Attributes:
        dataset: the ``fo.Dataset``.
        label_field: the label field the run writes.
        values: every recorded key (provenance and outcome).
    """

    dataset: Any
    label_field: str
    values: dict

    @property
    def key(self) -> str:
        """The FiftyOne run key."""
        return run_key(self.label_field)

    @classmethod
    def load(cls, samples: Any, label_field: str) -> RunRecord | None:
        """The record of the run on ``label_field`` (None when there is none).
        The stored ``status`` is returned as written (see :func:`run_status`
        for a live reading)."""
        dataset = dataset_of(samples)
        key = run_key(label_field)
        if key not in dataset.list_runs():
            return None
        cfg = dataset.get_run_info(key).config
        values = {k: v for k, v in cfg.serialize().items() if not k.startswith("_")}
        return cls(dataset, label_field, values)

    @classmethod
    def create(cls, dataset: Any, label_field: str, values: dict) -> RunRecord:
        """Record a new run on ``label_field`` (replacing any earlier record)."""
        record = cls(dataset, label_field, dict(values))
        dataset.register_run(record.key, dataset.init_run(**record.values), overwrite=True)
        return record

    def get(self, name: str) -> Any:
        """A recorded value; outcome fields a record lacks take
        :data:`OUTCOME_DEFAULTS`; other missing keys are None."""
        v = self.values.get(name)
        return OUTCOME_DEFAULTS.get(name) if v is None else v

    @property
    def status(self) -> str:
        return str(self.get("status"))

    @property
    def num_samples(self) -> int:
        return int(self.get("num_samples"))

    @property
    def resumed(self) -> int:
        return int(self.get("resumed"))

    @property
    def seconds_so_far(self) -> float:
        """Wall time of the run before this part (``seconds`` once it ended,
        else what came before it)."""
        s = self.values.get("seconds")
        return float(self.get("seconds_before") if s is None else s)

    def update(self, **values: Any) -> None:
        """Set some values and write the record (one ``update_run_config``)."""
        info = self.dataset.get_run_info(self.key)
        cfg = info.config
        for k, v in values.items():
            setattr(cfg, k, v)
        self.dataset.update_run_config(self.key, cfg)
        self.values.update(values)
