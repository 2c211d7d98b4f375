"""Operators ``audit_labels`` and ``evaluate_methods``.

Thin shells over :func:`fiftyone_lazsl.fo.audit.audit_labels` (rank likely label
errors, write attribute evidence, tag the suspects) and
:func:`fiftyone_lazsl.fo.evaluate.evaluate_methods` (FiftyOne top-1 / top-k
evaluations of several prediction fields, one comparison table, saved views).
Both act on the target view (dataset, current view or selected samples).
"""

from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_lazsl.fo.audit import EVIDENCE_NOTE, audit_labels
from fiftyone_lazsl.fo.evaluate import evaluate_methods
from fiftyone_lazsl.fo.runs import list_lazsl_fields

from ._forms import class_label_fields, error_output, field_problem, invalid, user_errors


def _dropdown(choices):
    view = types.DropdownView()
    for c in choices:
        view.add_choice(c, label=c)
    return view


def _add_gt_input(inputs: types.Object, ctx: Any) -> None:
    """The ground-truth dropdown (Classification fields that are not LaZSL
    outputs); a typed name that is not one is invalid with the reason."""
    gts = class_label_fields(ctx.dataset)
    prop = inputs.str(
        "gt_field",
        required=True,
        default="ground_truth" if "ground_truth" in gts else (gts[0] if gts else None),
        label="Ground-truth field",
        view=_dropdown(gts),
    )
    gt = ctx.params.get("gt_field")
    if gt and gt not in gts:
        problem = field_problem(ctx.dataset, gt, (fo.Classification,), "a Classification field")
        invalid(prop, problem or f"field {gt!r} is the output of a LaZSL run, not ground truth")


class AuditLabels(foo.Operator):
    """Rank likely label errors with attribute evidence and tag the suspects."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="audit_labels",
            label="LaZSL: audit labels",
            description="Rank samples by how strongly the prediction contradicts the label; "
            "write the attribute evidence; tag the most suspicious",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        runs = list_lazsl_fields(ctx.dataset)
        if not runs:
            inputs.view(
                "none",
                types.Notice(
                    label="No LaZSL/DCLIP/CLIP run on this dataset yet: "
                    "run 'LaZSL: classify samples' first"
                ),
            )
        pred = inputs.str(
            "pred_field",
            required=True,
            default="lazsl" if "lazsl" in runs else (runs[0] if runs else None),
            label="Prediction field",
            view=_dropdown(runs),
        )
        chosen = ctx.params.get("pred_field")
        if chosen and chosen not in runs:
            invalid(
                pred,
                f"no LaZSL run wrote field {chosen!r} on this dataset; runs: "
                + (", ".join(runs) or "none"),
            )
        _add_gt_input(inputs, ctx)
        inputs.int("top_k", default=20, min=0, label="Samples to tag")
        inputs.str("tag", default="suspect", label="Tag")
        inputs.bool(
            "tag_agreeing",
            default=False,
            label="Also tag samples whose prediction agrees with the label",
        )
        inputs.bool("show_suspects", default=True, label="Show the tagged samples afterwards")
        return types.Property(inputs, view=types.View(label="Audit labels"))

    @user_errors
    def execute(self, ctx):
        view = ctx.target_view()
        res = audit_labels(
            view,
            ctx.params["pred_field"],
            ctx.params["gt_field"],
            top_k=int(ctx.params.get("top_k", 20)),
            tag=ctx.params.get("tag") or "suspect",
            min_suspicion=None if ctx.params.get("tag_agreeing") else 0.0,
        )
        ctx.ops.reload_dataset()
        if ctx.params.get("show_suspects", True) and res.saved_view:
            # By its stages, not by name: the App looks a name up in the saved
            # views it knows, and the reload that would tell it about a view
            # saved just now has not arrived yet ("Saved view ... does not exist").
            ctx.ops.set_view(view=ctx.dataset.load_saved_view(res.saved_view))
        return {
            "summary": res.summary(),
            "num_samples": res.num_samples,
            "num_tagged": len(res.tagged),
            "tag": res.tag,
            "saved_view": res.saved_view,
            "fields": list(res.fields.values()),
            "table": "```\n" + res.table(min(len(res.tagged) or 10, 50)) + "\n```",
            "note": EVIDENCE_NOTE if res.has_evidence else "",
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        if error_output(ctx, outputs):
            return types.Property(outputs, view=types.View(label="Label audit failed"))
        outputs.str("summary", label="Audit")
        outputs.str("saved_view", label="Saved view of the suspects")
        outputs.list("fields", types.String(), label="Fields written")
        outputs.str("table", label="Most suspicious", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="Label audit"))


class EvaluateMethods(foo.Operator):
    """Evaluate several prediction fields side by side."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_methods",
            label="LaZSL: compare methods",
            description="Top-1 and top-k evaluation of CLIP / DCLIP / LaZSL fields with "
            "FiftyOne, one comparison table, and 'A right, B wrong' views",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        _add_gt_input(inputs, ctx)
        runs = list_lazsl_fields(ctx.dataset)
        choices = types.AutocompleteView(multiple=True)
        for f in runs:
            choices.add_choice(f, label=f)
        preds = inputs.list(
            "pred_fields",
            types.String(),
            required=True,
            default=runs,
            label="Prediction fields",
            view=choices,
        )

        for f in ctx.params.get("pred_fields") or []:
            problem = field_problem(ctx.dataset, f, (fo.Classification,), "a Classification field")
            if problem:
                invalid(preds, problem)
                break
        inputs.int("k", default=5, min=1, label="k of top-k accuracy")
        inputs.int("worst", default=10, min=0, label="Worst classes shown")
        inputs.bool("save_views", default=True, label="Save 'A right, B wrong' views")
        return types.Property(inputs, view=types.View(label="Compare methods"))

    @user_errors
    def execute(self, ctx):
        rep = evaluate_methods(
            ctx.target_view(),
            ctx.params["gt_field"],
            list(ctx.params["pred_fields"]),
            k=int(ctx.params.get("k", 5)),
            worst=int(ctx.params.get("worst", 10)),
            save_views=bool(ctx.params.get("save_views", True)),
        )
        ctx.ops.reload_dataset()
        return {
            "table": "```\n" + rep.table() + "\n```",
            "accuracy": {m.field: m.accuracy for m in rep.methods},
            "topk_accuracy": {m.field: m.topk_accuracy for m in rep.methods},
            "eval_keys": [k for m in rep.methods for k in (m.eval_key, m.topk_eval_key) if k],
            "saved_views": list(rep.saved_views),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        if error_output(ctx, outputs):
            return types.Property(outputs, view=types.View(label="Comparison failed"))
        outputs.str("table", label="Comparison", view=types.MarkdownView())
        outputs.list("eval_keys", types.String(), label="Evaluation keys")
        outputs.list("saved_views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="Methods compared"))


OPERATORS = [AuditLabels, EvaluateMethods]
