"""Operators ``rescore_lazsl`` (re-score the target view from the features a
run stored: any method, attribute set or parameters, no encoding) and
``attribute_doctor`` (per-attribute diagnostics, table in the App). Thin
shells over :func:`fiftyone_lazsl.rescore` and
:func:`fiftyone_lazsl.attribute_doctor`."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.config import METHODS, LaZSLConfig
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.doctor import attribute_doctor
from fiftyone_lazsl.fo.rescore import rescore
from fiftyone_lazsl.fo.runs import get_run_config, list_lazsl_fields

from ._forms import fail_delegated, invalid, label_field_problem, plain, stream_progress


def stored_feature_fields(dataset) -> list:
    """Label fields of LaZSL runs that stored features."""
    out = []
    for f in list_lazsl_fields(dataset):
        try:
            if get_run_config(dataset, f).get("feature_store"):
                out.append(f)
        except ValueError:
            pass
    return out


def _set_choices(dataset):
    view = types.AutocompleteView(allow_user_input=True)
    for rec in store.list_attribute_sets(dataset):
        view.add_choice(rec["name"], label=rec["name"])
    return view


def _from_field_input(inputs, ctx) -> bool:
    fields = stored_feature_fields(ctx.dataset)
    if not fields:
        inputs.view(
            "none",
            types.Warning(
                label="No run stored features",
                description="Classify with 'Store view embeddings' (CLI: --store-features) first",
            ),
        )
        return False
    inputs.enum(
        "from_field",
        fields,
        default=fields[0],
        required=True,
        label="Run with stored features",
        view=types.DropdownView(),
    )
    return True


def _float_or_none(v):
    return None if v is None or v == "" else float(v)


class RescoreLaZSL(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="rescore_lazsl",
            label="LaZSL: re-score from stored features",
            description="Score the view with another method, attribute set or parameters "
            "without encoding images again",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        if _from_field_input(inputs, ctx):
            set_prop = inputs.str(
                "attribute_set",
                required=True,
                label="Attribute set",
                view=_set_choices(ctx.dataset),
            )
            spec = ctx.params.get("attribute_set")
            if spec:
                spec = str(spec).strip()
                try:  # a published set is checked on Execute (it may need a download)
                    if store.has_attribute_set(ctx.dataset, spec) or not published.is_published(
                        spec
                    ):
                        store.resolve_attribute_set(spec, ctx.dataset)
                except UserError as e:
                    invalid(set_prop, plain(e))
            label_prop = inputs.str(
                "label_field",
                required=True,
                default="lazsl_rescored",
                label="Label field",
                description="Field written (also F_crops, F_attributes, "
                "F_error); a run's field is replaced",
            )
            problem = label_field_problem(
                ctx.dataset, ctx.params.get("label_field", "lazsl_rescored")
            )
            if problem:
                invalid(label_prop, problem)
            inputs.enum(
                "method",
                list(METHODS),
                default="lazsl",
                label="Method",
                description="any method, scored on the run's stored visual set",
                view=types.DropdownView(),
            )
            if (ctx.params.get("method") or "lazsl") == "lazsl":
                inputs.float("theta", required=False, label="theta (empty: the run's)")
                inputs.float("eps", required=False, label="eps (empty: the run's)")
                inputs.float("gamma", required=False, label="gamma (empty: the run's)")
            for f in LaZSLConfig.fields_for(ctx.params.get("method") or "lazsl"):
                if f.metadata["group"] == "weighting":  # WCA's temperatures
                    inputs.float(
                        f.name, default=f.default, label=f.name, description=f.metadata["help"]
                    )
            inputs.enum(
                "missing",
                ["encode", "skip"],
                default="encode",
                label="Samples without stored features",
                view=types.DropdownView(),
            )
        return types.Property(inputs, view=types.View(label="Re-score from stored features"))

    def execute(self, ctx):
        # Not a generator itself: a delegated run returns its result dict.
        if ctx.delegated:
            try:
                summary = self._rescore(ctx, lambda f, label: ctx.set_progress(f, label))
            except UserError as e:
                return fail_delegated(ctx, plain(e))
            return {"summary": str(summary), "num_predicted": summary.num_predicted}
        return self._execute_immediate(ctx)

    def _rescore(self, ctx, progress):
        p = ctx.params
        problem = label_field_problem(ctx.dataset, p.get("label_field"))
        if problem:
            raise UserError(problem)
        return rescore(
            ctx.target_view(),
            p["attribute_set"],
            from_field=p["from_field"],
            label_field=p["label_field"],
            method=p.get("method") or "lazsl",
            theta=_float_or_none(p.get("theta")),
            eps=_float_or_none(p.get("eps")),
            gamma=_float_or_none(p.get("gamma")),
            missing=p.get("missing") or "encode",
            progress=progress,
            **{
                k: float(p[k])
                for k in ("image_scale_log", "text_scale_log")
                if p.get(k) not in (None, "")
            },
        )

    def _execute_immediate(self, ctx):
        try:
            summary = yield from stream_progress(ctx, lambda progress: self._rescore(ctx, progress))
        except UserError as e:
            yield ctx.ops.reload_dataset()
            yield ctx.ops.notify(plain(e), variant="error")
            return
        yield ctx.ops.reload_dataset()
        yield ctx.ops.notify(str(summary), variant="warning" if summary.failures else "success")


class AttributeDoctor(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="attribute_doctor",
            label="LaZSL: attribute doctor",
            description="Which attributes never win a crop, do not discriminate, or duplicate others",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        if _from_field_input(inputs, ctx):
            inputs.str(
                "gt_field", required=False, label="Ground-truth field (default: predictions)"
            )
            inputs.float("dup_threshold", default=0.95, label="Near-duplicate cosine")
            inputs.float("min_auc", default=0.55, label="Flag attributes below this AUC")
            inputs.bool("save_pruned", default=True, label="Save a proposed pruned attribute set")
            inputs.bool(
                "all_classes",
                default=False,
                label="Every class of the set",
                description="Otherwise only the classes present in the view (by the "
                "ground-truth field, else the run's predictions)",
            )
        return types.Property(inputs, view=types.View(label="Attribute doctor"))

    def execute(self, ctx):
        if ctx.delegated:
            try:
                return self._doctor(ctx, lambda f, label: ctx.set_progress(f, label))
            except UserError as e:
                return fail_delegated(ctx, plain(e))
        return self._execute_immediate(ctx)

    def _execute_immediate(self, ctx):
        try:
            result = yield from stream_progress(ctx, lambda progress: self._doctor(ctx, progress))
        except UserError as e:
            yield ctx.ops.notify(plain(e), variant="error")
            return
        # a generator's return value is not shown as the operator's output: show it
        yield ctx.ops.show_output(_doctor_outputs().to_json(), result)
        yield ctx.ops.notify(f"{result['flagged']} attributes flagged", variant="success")

    def _doctor(self, ctx, progress):
        p = ctx.params
        rep = attribute_doctor(
            ctx.target_view(),
            from_field=p["from_field"],
            gt_field=p.get("gt_field") or None,
            dup_threshold=float(p.get("dup_threshold") or 0.95),
            min_auc=float(p.get("min_auc") if p.get("min_auc") is not None else 0.55),
            save_pruned_as="" if p.get("save_pruned", True) else None,
            all_classes=bool(p.get("all_classes")),
            progress=progress,
        )
        rows = [
            {
                "class": a.class_name,
                "attribute": a.attribute,
                "top_rate": round(a.top_rate, 3),
                "auc": None if a.auc is None else round(a.auc, 3),
                "flags": ", ".join(a.flags),
                "view": a.saved_view or "",
            }
            for a in rep.attributes
        ]
        return {
            "rows": rows,
            "flagged": len(rep.flagged),
            "pruned_set": rep.pruned_set or "",
            "degenerate": "; ".join(f"{c}: {w}" for c, w in rep.degenerate.items()),
        }

    def resolve_output(self, ctx):
        return _doctor_outputs()


def _doctor_outputs():
    outputs = types.Object()
    outputs.int("flagged", label="Flagged attributes")
    outputs.str("pruned_set", label="Proposed pruned set (saved)")
    outputs.str("degenerate", label="Degenerate classes")
    table = types.TableView()
    for k in ("class", "attribute", "top_rate", "auc", "flags", "view"):
        table.add_column(k, label=k)
    outputs.list("rows", types.Object(), label="Attributes", view=table)
    return types.Property(outputs)


OPERATORS = [RescoreLaZSL, AttributeDoctor]
