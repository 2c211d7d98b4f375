"""Operator ``run_lazsl``: classify the target view with LaZSL, DCLIP or CLIP.

A thin shell over :func:`fiftyone_lazsl.fo.apply.run_lazsl`. Immediate and
delegated execution are both allowed; delegation is the default choice for
views larger than :data:`DELEGATE_ABOVE` samples (``ExecutionOptions``).
Progress carries a stage label ("decoding 12/100", "encoding ...") in both
modes, and the App reloads the dataset at the end.
"""

import queue
import threading

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.config import LaZSLConfig
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.apply import run_lazsl

#: Views with more samples than this default to delegated execution.
DELEGATE_ABOVE = 200

METHODS = {
    "lazsl": "LaZSL: crops aligned to attributes by optimal transport",
    "dclip": "DCLIP: mean similarity of the whole image to each attribute",
    "clip": "CLIP: one 'a photo of a {class}.' prompt per class",
}


def _attribute_set_choices(dataset):
    view = types.AutocompleteView(allow_user_input=True)
    for rec in store.list_attribute_sets(dataset):
        view.add_choice(rec["name"], label=f"{rec['name']} (on this dataset, {rec['num_classes']} classes)")
    for e in published.list_published():
        view.add_choice(e["name"], label=f"{e['name']} (published, {e['num_classes']} classes)")
    return view


#: Form inputs that are not LaZSLConfig fields under the same name.
_CROP_INPUTS = ("crop_min", "crop_max")


def params_to_config(params: dict) -> LaZSLConfig:
    """Operator parameters -> :class:`LaZSLConfig` (every form input named after
    a config field; ``crop_min`` / ``crop_max`` form ``crop_scale``).

    Raises:
        fiftyone_lazsl.errors.ConfigError: a value out of its domain.
    """
    d = {k: params[k] for k in LaZSLConfig.field_names()
         if k in params and params[k] is not None and params[k] != ""}
    lo, hi = LaZSLConfig.crop_scale_default()
    if "crop_min" in params or "crop_max" in params:
        d["crop_scale"] = (params.get("crop_min", lo) if params.get("crop_min") is not None else lo,
                           params.get("crop_max", hi) if params.get("crop_max") is not None else hi)
    return LaZSLConfig.from_dict(d)


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
    with the field's help text and default (``crop_scale`` as two numbers)."""
    defaults = LaZSLConfig()
    for f in LaZSLConfig.fields_for(method):
        if f.name == "method":
            continue
        m, label = f.metadata, f.name.replace("_", " ").capitalize()
        default = getattr(defaults, f.name)
        if f.name == "crop_scale":
            inputs.float("crop_min", default=default[0], label="Smallest crop (alpha)",
                         description="smallest crop side / min(H, W)", min=0.01, max=1)
            inputs.float("crop_max", default=default[1], label="Largest crop (beta)",
                         description="largest crop side / min(H, W)", min=0.01, max=1)
        elif m["choices"]:
            inputs.enum(f.name, list(m["choices"]), default=default, label=label,
                        description=m["help"], view=types.DropdownView())
        elif isinstance(default, bool):
            inputs.bool(f.name, default=default, label=label, description=m["help"])
        elif isinstance(default, int):
            inputs.int(f.name, default=default, label=label, description=m["help"])
        elif isinstance(default, float):
            inputs.float(f.name, default=default, label=label, description=m["help"])
        else:
            inputs.str(f.name, default=default, required=False, label=label,
                       description=m["help"])


class RunLaZSL(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_lazsl",
            label="LaZSL: classify samples",
            description="Zero-shot classification with attribute evidence (LaZSL, DCLIP or CLIP)",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            # FiftyOne Enterprise may split the operation across workers (one
            # view per task); open source runs it in one process. Sharded runs
            # (fiftyone_lazsl.fo.shards) queue one operation per shard instead.
            allow_distributed_execution=True,
        )

    def resolve_execution_options(self, ctx):
        from fiftyone.operators.executor import ExecutionOptions

        try:
            large = len(ctx.target_view()) > DELEGATE_ABOVE
        except Exception:
            large = False
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                default_choice_to_delegated=large)

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()  # adds the dataset / current view / selected samples choice
        inputs.str("attribute_set", required=True, label="Attribute set",
                   description="A set stored on the dataset, a published name, or a JSON file path",
                   view=_attribute_set_choices(ctx.dataset))
        methods = types.RadioGroup()
        for k, v in METHODS.items():
            methods.add_choice(k, label=k, description=v)
        inputs.enum("method", methods.values(), default="lazsl", label="Method", view=methods)
        inputs.str("label_field", default="lazsl", label="Label field")
        _config_inputs(inputs, ctx.params.get("method") or "lazsl")
        inputs.str("gt_field", required=False, label="Ground-truth field (checked against the set)")
        inputs.bool("restrict_to_set", default=False,
                    label="Only samples whose ground-truth class is in the set",
                    description="Otherwise classes missing from the set are an error")
        inputs.bool("skip_existing", default=False, label="Skip samples that already have a prediction")
        inputs.bool("heatmap", default=False, label="Write an evidence heatmap per sample")
        inputs.enum("evidence", ["compact", "full"], default="compact", label="Evidence stored",
                    description="compact: attributes of the predicted class, runner-up and "
                                "ground-truth class, top 10 crops; full: every class, all crops",
                    view=types.DropdownView())
        inputs.bool("store_features", default=False, label="Store view embeddings",
                    description="Keep each sample's view embeddings (feature store) so the view can "
                                "be re-scored with edited attribute sets without encoding again")
        return types.Property(inputs, view=types.View(label="Run LaZSL"))

    def execute(self, ctx):
        view = ctx.target_view()
        kwargs = params_to_kwargs(ctx.params)
        spec = ctx.params["attribute_set"]
        if ctx.delegated:
            summary = run_lazsl(view, spec, progress=lambda f, label: ctx.set_progress(f, label), **kwargs)
        else:
            # Immediate runs report progress by yielding triggers; the work runs in
            # a thread so that the generator can yield while it goes on.
            events, out = queue.Queue(), {}

            def work():
                try:
                    out["summary"] = run_lazsl(view, spec, num_workers=0,
                                               progress=lambda f, label: events.put((f, label)),
                                               **kwargs)
                except BaseException as e:  # re-raised below in the operator's thread
                    out["error"] = e
                finally:
                    events.put(None)

            threading.Thread(target=work, daemon=True).start()
            while (ev := events.get()) is not None:
                yield ctx.trigger("set_progress", {"progress": ev[0], "label": ev[1]})
            if "error" in out:
                raise out["error"]
            summary = out["summary"]
            yield ctx.ops.reload_dataset()
            yield ctx.ops.notify(str(summary), variant="warning" if summary.failures else "success")
        ctx.log(str(summary))


OPERATORS = [RunLaZSL]
