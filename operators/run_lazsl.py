"""Operator ``run_lazsl``: classify the target view with LaZSL, WCA, DCLIP or CLIP.

A thin shell over :func:`fiftyone_lazsl.fo.apply.run_lazsl`. Immediate and
delegated execution are both allowed; delegation is the default choice for
views larger than :data:`DELEGATE_ABOVE` samples (``ExecutionOptions``).

* Immediate ("Execute"): a generator operator (``execute_as_generator``, as
  FiftyOne requires for progress while it runs): it yields ``set_progress``
  with the stage ("loading the model ...", "encoding N attribute prompts",
  "decoding / encoding and scoring images a-b of N", "writing k/N"), then
  reloads the App and notifies the summary.
* Delegated ("Schedule"; open-source FiftyOne needs
  ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` and a ``fiftyone delegated
  launch`` worker): ``ctx.set_progress`` with the same labels; the summary
  dict is the operation's result.
* A :class:`~fiftyone_lazsl.errors.UserError` reaches the user as one line (a
  notification; a delegated run fails with it as its error message); any
  other exception keeps its traceback.
* The form checks before Execute: the attribute set exists (and a published
  one is on this machine), the ground-truth field's classes are covered, the
  label field would not replace another run without an explicit choice, and
  the weights can be loaded here (a warning otherwise). The last values used
  on the dataset are remembered (``ctx.store``).
"""

import os
import time
from collections.abc import Generator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.config import LaZSLConfig, normalize_pretrained
from fiftyone_lazsl.core.models import check_weights
from fiftyone_lazsl.errors import RunConflictError, UserError
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.apply import run_lazsl
from fiftyone_lazsl.fo.runs import list_lazsl_fields
from fiftyone_lazsl.fo.shards import run_shard

from ._forms import (
    DELEGATION_HELP,
    class_label_fields,
    fail_delegated,
    invalid,
    label_field_problem,
    notice,
    plain,
    stream_progress,
)

#: Views with more samples than this default to delegated execution.
DELEGATE_ABOVE = 200

METHODS = {
    "lazsl": "LaZSL: crops aligned to attributes by optimal transport",
    "wca": "WCA: crops weighted by their likeness to the image, against label-weighted sentences",
    "dclip": "DCLIP: mean similarity of the whole image to each attribute",
    "clip": "CLIP: one 'a photo of a {class}.' prompt per class",
}


def _attribute_set_choices(dataset):
    """Sets stored on the dataset, then published sets not stored under the
    same name (a name appears once: the stored set wins, as in
    :func:`~fiftyone_lazsl.fo.store.resolve_attribute_set`)."""
    view = types.AutocompleteView(allow_user_input=True)
    stored = store.list_attribute_sets(dataset)
    for rec in stored:
        view.add_choice(
            rec["name"], label=f"{rec['name']} (on this dataset, {rec['num_classes']} classes)"
        )
    names = {rec["name"] for rec in stored}
    for e in published.list_published():
        if e["name"] not in names:
            view.add_choice(e["name"], label=f"{e['name']} (published, {e['num_classes']} classes)")
    return view


def params_to_config(params: dict) -> LaZSLConfig:
    """Operator parameters -> :class:`LaZSLConfig` (every form input named after
    a config field; ``crop_min`` / ``crop_max`` form ``crop_scale``:
    :meth:`LaZSLConfig.from_form`).

    Raises:
        fiftyone_lazsl.errors.ConfigError: a value out of its domain.
    """
    return LaZSLConfig.from_form(params)


def params_to_kwargs(params: dict) -> dict:
    """Operator parameters -> keyword arguments of ``run_lazsl`` (``config=``
    plus the run options)."""
    return dict(
        config=params_to_config(params),
        label_field=params.get("label_field") or "lazsl",
        gt_field=params.get("gt_field") or None,
        restrict_to_set=bool(params.get("restrict_to_set", False)) and bool(params.get("gt_field")),
        skip_existing=bool(params.get("skip_existing", False)),
        heatmap=bool(params.get("heatmap", False)),
        evidence=params.get("evidence") or None,
        **_sharding_kwargs(params),
        store_features=bool(params.get("store_features", False)),
    )


def _sharding_kwargs(params: dict) -> dict:
    """Run options set by :func:`fiftyone_lazsl.fo.shards.queue_shards` (not
    in the form): the shard this operation runs and its output options."""
    if params.get("shard_index") is None:
        return {}
    out = dict(shard={"index": int(params["shard_index"]), "count": int(params["num_shards"])})
    for k in ("top_k_crops", "top_attributes", "runner_ups", "write_every"):
        if params.get(k) is not None:
            out[k] = params[k]
    return out


def _config_inputs(inputs: types.Object, method: str) -> None:
    """One form input per :class:`LaZSLConfig` field the chosen method uses,
    with the field's help text and the method's default (``crop_scale`` as two
    numbers)."""
    defaults = LaZSLConfig(method=method)
    for f in LaZSLConfig.fields_for(method):
        if f.name == "method":
            continue
        m, label = f.metadata, f.name.replace("_", " ").capitalize()
        default = getattr(defaults, f.name)
        if f.name == "crop_scale":
            inputs.float(
                "crop_min",
                default=default[0],
                label="Smallest crop (alpha)",
                description="smallest crop side / min(H, W)",
                min=0.01,
                max=1,
            )
            inputs.float(
                "crop_max",
                default=default[1],
                label="Largest crop (beta)",
                description="largest crop side / min(H, W)",
                min=0.01,
                max=1,
            )
        elif m["choices"]:
            inputs.enum(
                f.name,
                list(m["choices"]),
                default=default,
                label=label,
                description=m["help"],
                view=types.DropdownView(),
            )
        elif isinstance(default, bool):
            inputs.bool(f.name, default=default, label=label, description=m["help"])
        elif isinstance(default, int):
            inputs.int(f.name, default=default, label=label, description=m["help"])
        elif isinstance(default, float):
            inputs.float(f.name, default=default, label=label, description=m["help"])
        else:
            inputs.str(f.name, default=default, required=False, label=label, description=m["help"])


#: Form values remembered per dataset (``ctx.store``) between runs.
_REMEMBERED = (
    "attribute_set",
    "method",
    "label_field",
    "gt_field",
    "model",
    "pretrained",
    "device",
    "batch_size",
)
_STORE = "lazsl_run_form"

#: ``check_weights`` results per (model, pretrained): (time, message or None).
_WEIGHTS_CHECKS: dict = {}
_WEIGHTS_TTL_S = 120.0


def _weights_problem(model: str, pretrained) -> str | None:
    """Why the weights cannot be loaded here (None if they can), cached for
    :data:`_WEIGHTS_TTL_S` seconds (the check may wait for the network)."""
    key = (model, pretrained)
    hit = _WEIGHTS_CHECKS.get(key)
    if hit and time.time() - hit[0] < _WEIGHTS_TTL_S:
        return hit[1]
    try:
        check_weights(model, pretrained)
        msg = None
    except UserError as e:
        msg = plain(e)
    _WEIGHTS_CHECKS[key] = (time.time(), msg)
    return msg


def _resolve_set(spec: str, dataset: Any) -> tuple[Any, str | None, str | None]:
    """``(attribute set or None, problem or None, note or None)`` for what the
    user typed, without downloading: a published set that is not on this
    machine is reported as a note (Execute downloads it)."""
    spec = str(spec).strip()
    if store.has_attribute_set(dataset, spec):
        try:
            return store.load_attribute_set(dataset, spec), None, None
        except UserError as e:
            return None, plain(e), None
    if published.is_published(spec):
        if not os.path.isfile(os.path.expanduser(spec)):
            try:
                path = published.find_local_copy(spec)
            except UserError as e:
                return None, plain(e), None
            if path is None:
                entry = published.get_published_entry(spec)
                return (
                    None,
                    None,
                    (
                        f"published set {entry['name']!r} is not on this machine: Execute downloads it "
                        f"from {entry['url']} (needs network); offline, put the file in "
                        "$FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS or import it first"
                    ),
                )
    try:
        return store.resolve_attribute_set(spec, dataset), None, None
    except UserError as e:
        return None, plain(e), None


def _remembered(ctx: Any) -> dict:
    try:
        return dict(ctx.store(_STORE).get("last") or {})
    except Exception:  # no execution store (e.g. no dataset): nothing remembered
        return {}


def _remember(ctx: Any) -> None:
    try:
        ctx.store(_STORE).set(
            "last",
            {k: ctx.params.get(k) for k in _REMEMBERED if ctx.params.get(k) not in (None, "")},
        )
    except Exception:  # remembering is a convenience, never a failure
        pass


def _check_gt(ctx: Any, aset: Any, gt_field: str, restrict: bool) -> str | None:
    """Why the ground-truth field does not fit the set (None if it does)."""
    if restrict:
        return None
    labels = [lb for lb in ctx.target_view().distinct(f"{gt_field}.label") if lb is not None]
    missing = sorted(lb for lb in labels if aset.resolve(lb) is None)
    if not missing:
        return None
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"{len(missing)} of the {len(labels)} classes of {gt_field!r} are not in the attribute "
        f"set ({shown}); tick 'Only samples whose ground-truth class is in the set' to leave "
        "them out, or use a set that covers them"
    )


class RunLaZSL(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_lazsl",
            label="LaZSL: classify samples",
            description="Zero-shot classification with attribute evidence (LaZSL, WCA, DCLIP or CLIP)",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            # FiftyOne Enterprise may split the operation across workers (one
            # view per task); open source runs it in one process. Sharded runs
            # (fiftyone_lazsl.fo.shards) queue one operation per shard instead.
            allow_distributed_execution=True,
        )

    def resolve_execution_options(self, ctx):
        try:
            large = len(ctx.target_view()) > DELEGATE_ABOVE
        except Exception:
            large = False
        return ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=large,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()  # adds the dataset / current view / selected samples choice
        last = _remembered(ctx)
        p = ctx.params
        set_prop = inputs.str(
            "attribute_set",
            required=True,
            label="Attribute set",
            default=last.get("attribute_set"),
            description="A set stored on the dataset, a published name, or a "
            "JSON file path on the server",
            view=_attribute_set_choices(ctx.dataset),
        )
        aset = None
        spec = p.get("attribute_set")
        if spec:
            aset, problem, note = _resolve_set(spec, ctx.dataset)
            if problem:
                invalid(set_prop, problem)
            elif note:
                notice(inputs, "set_note", note)
        methods = types.RadioGroup()
        for k, v in METHODS.items():
            methods.add_choice(k, label=k, description=v)
        inputs.enum(
            "method",
            methods.values(),
            default=last.get("method", "lazsl"),
            label="Method",
            view=methods,
        )

        label_field = p.get("label_field") or last.get("label_field") or "lazsl"
        label_prop = inputs.str(
            "label_field",
            default=last.get("label_field", "lazsl"),
            label="Label field",
            description="Prediction field F (also F_crops, F_attributes, F_error)",
        )
        if ctx.dataset is not None and label_field in list_lazsl_fields(ctx.dataset):
            inputs.bool(
                "overwrite",
                default=False,
                label=f"Replace the outputs of the earlier run on {label_field!r}",
                description="Otherwise choose another label field (or resume with "
                "'Skip samples that already have a prediction')",
            )
            if not p.get("overwrite") and not p.get("skip_existing"):
                invalid(
                    label_prop,
                    f"field {label_field!r} holds an earlier LaZSL run: tick "
                    "'Replace the outputs...' below, or choose another label "
                    "field",
                )
        else:
            problem = label_field_problem(ctx.dataset, label_field)
            if problem:
                invalid(label_prop, problem)

        _config_inputs(inputs, p.get("method") or last.get("method") or "lazsl")
        for k in ("model", "pretrained", "device", "batch_size"):
            if k in last and k in inputs.properties:
                inputs.properties[k].default = last[k]
        model = p.get("model") or last.get("model") or LaZSLConfig().model
        pretrained = (
            p["pretrained"]
            if "pretrained" in p
            else last.get("pretrained", LaZSLConfig().pretrained)
        )
        try:
            weights_msg = _weights_problem(model, normalize_pretrained(pretrained))
        except UserError as e:
            weights_msg = plain(e)
        if weights_msg:
            notice(inputs, "weights_note", "Weights: " + weights_msg)

        gts = class_label_fields(ctx.dataset)
        gt_view = types.DropdownView()
        for f in gts:
            gt_view.add_choice(f, label=f)
        gt_prop = inputs.enum(
            "gt_field",
            gts,
            required=False,
            default=last.get("gt_field") if last.get("gt_field") in gts else None,
            label="Ground-truth field (checked against the set)",
            view=gt_view,
        )
        inputs.bool(
            "restrict_to_set",
            default=False,
            label="Only samples whose ground-truth class is in the set",
            description="Otherwise classes missing from the set are an error",
        )
        gt = p.get("gt_field")
        if gt and aset is not None and gt in gts:
            problem = _check_gt(ctx, aset, gt, bool(p.get("restrict_to_set")))
            if problem:
                invalid(gt_prop, problem)
        inputs.bool(
            "skip_existing", default=False, label="Skip samples that already have a prediction"
        )
        inputs.bool("heatmap", default=False, label="Write an evidence heatmap per sample")
        inputs.enum(
            "evidence",
            ["compact", "full"],
            default="compact",
            label="Evidence stored",
            description="compact: attributes of the predicted class, runner-up and "
            "ground-truth class, top 5 crops; full: every class, all crops",
            view=types.DropdownView(),
        )
        inputs.bool(
            "store_features",
            default=False,
            label="Store view embeddings",
            description="Keep each sample's view embeddings (feature store) so the view can "
            "be re-scored with edited attribute sets without encoding again",
        )
        notice(inputs, "delegation_note", DELEGATION_HELP, kind="notice")
        return types.Property(inputs, view=types.View(label="Run LaZSL"))

    def execute(self, ctx):
        # Not a generator function itself: a delegated run returns its summary
        # (FiftyOne stores a returned dict as the result, but not a generator's).
        if ctx.delegated:
            return self._execute_delegated(ctx)
        return self._execute_immediate(ctx)

    def _prepare(self, ctx: Any) -> tuple[Any, str, dict]:
        p = ctx.params
        kwargs = params_to_kwargs(p)
        if (p.get("label_field") or "lazsl") in list_lazsl_fields(ctx.dataset) and not (
            p.get("overwrite") or p.get("skip_existing")
        ):
            raise RunConflictError(
                f"field {kwargs['label_field']!r} holds an earlier LaZSL run; pass overwrite=True "
                "to replace it, or choose another label field"
            )
        return ctx.target_view(), str(p["attribute_set"]).strip(), kwargs

    def _execute_delegated(self, ctx: Any) -> dict:
        try:
            view, spec, kwargs = self._prepare(ctx)
            summary = _run(view, spec, lambda f, label: ctx.set_progress(f, label), kwargs)
        except UserError as e:
            return fail_delegated(ctx, plain(e))
        _remember(ctx)
        ctx.log(str(summary))
        return _summary_dict(summary)

    def _execute_immediate(self, ctx: Any) -> Generator[Any, None, None]:
        try:
            view, spec, kwargs = self._prepare(ctx)
        except UserError as e:
            yield ctx.ops.notify(plain(e), variant="error")
            return
        _remember(ctx)
        try:
            summary = yield from stream_progress(
                ctx, lambda progress: _run(view, spec, progress, dict(kwargs, num_workers=0))
            )
        except UserError as e:
            yield ctx.ops.reload_dataset()  # the run record may have changed
            yield ctx.ops.notify(plain(e), variant="error")
            return
        yield ctx.ops.reload_dataset()
        yield ctx.ops.notify(str(summary), variant="warning" if summary.failures else "success")
        ctx.log(str(summary))


def _run(view: Any, spec: str, progress: Any, kwargs: dict) -> Any:
    """``run_lazsl`` with the form's keyword arguments, or, for a shard queued
    by :func:`fiftyone_lazsl.fo.shards.queue_shards`, ``run_shard``."""
    kwargs = dict(kwargs)
    shard = kwargs.pop("shard", None)
    if shard is not None:
        return run_shard(view, spec, shard, progress=progress, **kwargs)
    return run_lazsl(view, spec, progress=progress, **kwargs)


def _summary_dict(summary: Any) -> dict:
    """A :class:`~fiftyone_lazsl.fo.apply.RunSummary` as a JSON-able dict
    (the delegated operation's result)."""
    return {
        "summary": str(summary),
        "label_field": summary.label_field,
        "run_key": summary.run_key,
        "num_samples": summary.num_samples,
        "num_predicted": summary.num_predicted,
        "num_failed": summary.num_failed,
        "failures": [list(map(str, f)) for f in summary.failures[:100]],
        "random_weights": bool(summary.random_weights),
        "seconds": round(float(summary.seconds), 3),
    }


OPERATORS = [RunLaZSL]
