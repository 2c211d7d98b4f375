"""The ``lazsl_explanations`` panel: why LaZSL predicted what it did for the
sample open in the App.

A thin shell over :mod:`fiftyone_lazsl.fo.explain`: it picks the LaZSL label field
and ground-truth field from dropdowns, asks
:func:`~fiftyone_lazsl.fo.explain.explain_sample` /
:func:`~fiftyone_lazsl.fo.explain.panel_content` for the sample in
``ctx.current_sample``, and renders the result; its buttons load
:func:`~fiftyone_lazsl.fo.explain.matched_attribute_view` with ``ctx.ops.set_view``.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_lazsl.fo.fields import ground_truth_fields
from fiftyone_lazsl.fo.explain import (
    explain_sample,
    matched_attribute_view,
    panel_content,
)
from fiftyone_lazsl.fo.runs import get_run_config, list_lazsl_fields

_NO_GT = "(none)"
#: Separator of attributes in the workbench's text field.
SEP = ";"


class LazslExplanationsPanel(foo.Panel):
    """Predicted class, runner-up, and the attributes whose transported
    similarity made up the class score for the current sample; buttons show
    samples sharing a matched attribute."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="lazsl_explanations",
            label="LaZSL explanations",
            icon="psychology",
            surfaces="grid modal",
            help_markdown=(
                "Open a sample to see its LaZSL prediction, the runner-up, and the "
                "attributes of the predicted (and ground-truth) class with each "
                "one's contribution to the class score (transport-weighted "
                "similarity) and the number of crops that matched it."
            ),
        )

    # -- events ---------------------------------------------------------------

    def on_load(self, ctx):
        """Populate the field dropdowns and the current sample's explanation."""
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        """A new dataset: re-read its LaZSL and ground-truth fields."""
        ctx.panel.set_state("label_field", None)
        ctx.panel.set_state("gt_field", None)
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        """A new sample in the modal."""
        self._refresh(ctx)

    def on_change_view(self, ctx):
        """The view changed (e.g. a matched-attribute button): keep in sync."""
        self._refresh(ctx)

    def on_change_label_field(self, ctx):
        """The LaZSL field dropdown changed."""
        value = ctx.params.get("value") or ctx.panel.get_state("label_field")
        ctx.panel.set_state("label_field", value)
        self._refresh(ctx)

    def on_change_gt_field(self, ctx):
        """The ground-truth field dropdown changed."""
        value = ctx.params.get("value") or ctx.panel.get_state("gt_field")
        ctx.panel.set_state("gt_field", value)
        self._refresh(ctx)

    def show_matched(self, ctx):
        """Filter the App to samples whose ranked attributes contain the
        clicked attribute."""
        params = dict(ctx.params or {})
        params.update(getattr(ctx, "event_args", None) or {})
        attribute = params.get("attribute")
        label_field = ctx.panel.get_state("label_field")
        if not label_field:
            fields = list_lazsl_fields(ctx.dataset)
            label_field = fields[0] if fields else None
        if not attribute or not label_field:
            return
        view = matched_attribute_view(ctx.dataset, label_field, attribute)
        ctx.ops.set_view(view)
        ctx.ops.notify(
            f"{view.count()} samples whose '{label_field}' attributes include: {attribute}",
            variant="info",
        )

    def clear_filter(self, ctx):
        """Back to the whole dataset."""
        ctx.ops.clear_view()

    # -- grid mode --------------------------------------------------------------

    def filter_class(self, ctx):
        """Grid mode: show the samples predicted as the clicked class."""
        from fiftyone import ViewField as F

        params = dict(ctx.params or {})
        params.update(getattr(ctx, "event_args", None) or {})
        label_field = ctx.panel.get_state("label_field")
        cls = params.get("class_name")
        if not cls or not label_field:
            return
        ctx.ops.set_view(ctx.dataset.match(F(f"{label_field}.label") == cls))

    # -- attribute workbench ----------------------------------------------------

    def _edited_set(self, ctx):
        from fiftyone_lazsl.fo.workbench import edit_attribute_set, run_attribute_set

        label_field = ctx.panel.get_state("label_field")
        aset = run_attribute_set(ctx.dataset, label_field)
        for c, attrs in (ctx.panel.get_state("wb_edits") or {}).items():
            aset = edit_attribute_set(aset, c, attrs)
        return aset

    def _take_text(self, ctx):
        """Apply the text field to the edited class (edits kept in panel state)."""
        params = dict(ctx.params or {})
        text = params.get("wb_text")
        if text is None:
            text = ctx.panel.get_state("wb_text")
        cls = ctx.panel.get_state("wb_class")
        if cls and text is not None:
            edits = dict(ctx.panel.get_state("wb_edits") or {})
            edits[cls] = [a.strip() for a in str(text).split(SEP) if a.strip()]
            ctx.panel.set_state("wb_edits", edits)
            ctx.panel.set_state("wb_text", str(text))

    def on_change_wb_class(self, ctx):
        value = ctx.params.get("value") or ctx.panel.get_state("wb_class")
        ctx.panel.set_state("wb_class", value)
        self._refresh(ctx)

    def on_change_wb_text(self, ctx):
        ctx.panel.set_state("wb_text", ctx.params.get("value"))

    def wb_rescore_sample(self, ctx):
        """Re-score the open sample with the edited set (nothing written)."""
        from fiftyone_lazsl.errors import UserError
        from fiftyone_lazsl.fo.workbench import rescore_sample

        self._take_text(ctx)
        try:
            sample = ctx.dataset[ctx.current_sample]
            r = rescore_sample(sample, ctx.panel.get_state("label_field"), self._edited_set(ctx))
        except (UserError, KeyError) as e:
            ctx.panel.set_state("wb_result", f"**Cannot re-score:** {e}")
            return
        if not r["ok"]:
            msg = f"**Cannot re-score:** {r['message']}"
        else:
            tops = ", ".join(f"{a} ({v:.4f})" for a, v in r["top_attributes"][:5])
            msg = (f"**With the edit:** {r['label']} (confidence {r['confidence']:.3f}); "
                   f"was {r['previous']}. Top attributes: {tops}")
        ctx.panel.set_state("wb_result", msg)

    def wb_rescore_view(self, ctx):
        """Re-score the current view with the edited set into the target field."""
        from fiftyone_lazsl.fo.rescore import rescore

        self._take_text(ctx)
        label_field = ctx.panel.get_state("label_field")
        target = (ctx.panel.get_state("wb_target") or f"{label_field}_edited").strip()
        summary = rescore(ctx.view, self._edited_set(ctx), from_field=label_field,
                          label_field=target, missing="skip")
        ctx.panel.set_state("wb_result", f"**View re-scored:** {summary}")
        ctx.ops.reload_dataset()
        ctx.ops.notify(str(summary), variant="warning" if summary.failures else "success")

    def on_change_wb_target(self, ctx):
        ctx.panel.set_state("wb_target", ctx.params.get("value"))

    def on_change_wb_name(self, ctx):
        ctx.panel.set_state("wb_name", ctx.params.get("value"))

    def wb_save(self, ctx):
        """Save the edited set on the dataset (its metadata records parent and edits)."""
        from fiftyone_lazsl.fo.store import safe_set_name, save_attribute_set

        self._take_text(ctx)
        aset = self._edited_set(ctx)
        name = (ctx.panel.get_state("wb_name") or "").strip() or \
            f"{safe_set_name(aset.metadata.get('parent') or aset.name)}-edited"
        saved = save_attribute_set(ctx.dataset, aset, name=name)
        ctx.panel.set_state("wb_result", f"**Saved** attribute set '{saved}' "
                                         f"(parent: {aset.metadata.get('parent')})")
        ctx.ops.notify(f"attribute set '{saved}' saved", variant="success")

    # -- state ------------------------------------------------------------------

    def _refresh(self, ctx):
        fields = list_lazsl_fields(ctx.dataset) if ctx.dataset is not None else []
        gt_fields = ground_truth_fields(ctx.dataset) if ctx.dataset is not None else []
        label_field = ctx.panel.get_state("label_field")
        if label_field not in fields:
            label_field = fields[0] if fields else None
        gt_field = ctx.panel.get_state("gt_field")
        if gt_field != _NO_GT and gt_field not in gt_fields:
            gt_field = "ground_truth" if "ground_truth" in gt_fields else (gt_fields[0] if gt_fields else _NO_GT)

        grid = {"params": {}, "rows": []}
        wb = {}
        if not fields:
            content = {"summary": "**No LaZSL run on this dataset.** Run `run_lazsl` first."}
        elif not ctx.current_sample:
            content = {"summary": "Open a sample to see its LaZSL explanation."}
            from fiftyone_lazsl.fo.workbench import grid_summary
            try:
                grid = grid_summary(ctx.view if ctx.view is not None else ctx.dataset, label_field)
            except Exception:  # noqa: BLE001 -- the grid summary is optional
                grid = {"params": {}, "rows": []}
        else:
            try:
                sample = ctx.dataset[ctx.current_sample]
            except KeyError:
                sample = None
            if sample is None:
                content = {"summary": f"Sample {ctx.current_sample} is not in dataset '{ctx.dataset.name}'."}
            else:
                expl = explain_sample(sample, label_field, None if gt_field == _NO_GT else gt_field)
                content = panel_content(expl)
                wb = self._workbench_state(ctx, sample, label_field,
                                           None if gt_field == _NO_GT else gt_field)

        ctx.panel.set_state(
            {
                "fields": fields,
                "gt_fields": [_NO_GT] + gt_fields,
                "label_field": label_field,
                "gt_field": gt_field,
                "summary": content.get("summary", ""),
                "predicted_title": content.get("predicted_title", ""),
                "predicted_table": content.get("predicted_table", []),
                "gt_title": content.get("gt_title", ""),
                "gt_table": content.get("gt_table", []),
                "matched_attributes": content.get("matched_attributes", []),
                "grid_params": "  \n".join(f"**{k}**: {v}" for k, v in grid["params"].items()),
                "grid_rows": grid["rows"],
                "wb_available": bool(wb),
                "wb_classes": wb.get("classes", []),
                "wb_class": wb.get("class"),
                "wb_text": wb.get("text", ""),
            }
        )

    def _workbench_state(self, ctx, sample, label_field, gt_field):
        """Choices of the workbench for the open sample: predicted and
        ground-truth classes, and the (edited) attributes of the chosen one."""
        try:
            if not get_run_config(ctx.dataset, label_field).get("feature_store"):
                return {}
        except ValueError:
            return {}
        from fiftyone_lazsl.fo.workbench import run_attribute_set

        aset = run_attribute_set(ctx.dataset, label_field)
        classes = []
        pred = sample[label_field].label if sample[label_field] is not None else None
        gt = None
        if gt_field and sample.has_field(gt_field) and sample[gt_field] is not None:
            gt = aset.resolve(sample[gt_field].label)
        for c in (pred, gt):
            if c and c not in classes:
                classes.append(c)
        if not classes:
            return {}
        cls = ctx.panel.get_state("wb_class")
        if cls not in classes:
            cls = classes[0]
        edits = ctx.panel.get_state("wb_edits") or {}
        attrs = edits.get(cls, aset.attributes[cls])
        return {"classes": classes, "class": cls, "text": f"{SEP} ".join(attrs)}

    # -- layout -----------------------------------------------------------------

    def render(self, ctx):
        """Dropdowns, summary, attribute tables and matched-attribute buttons."""
        panel = types.Object()
        state = ctx.panel.state
        fields = state.fields or []
        gt_fields = state.gt_fields or [_NO_GT]

        if fields:
            dd = types.DropdownView(label="LaZSL field")
            for f in fields:
                dd.add_choice(f, label=f)
            panel.enum("label_field", dd.values(), view=dd, default=state.label_field, on_change=self.on_change_label_field)
            gd = types.DropdownView(label="Ground-truth field")
            for f in gt_fields:
                gd.add_choice(f, label=f)
            panel.enum("gt_field", gd.values(), view=gd, default=state.gt_field, on_change=self.on_change_gt_field)

        panel.str("summary", view=types.MarkdownView())

        if state.predicted_table:
            panel.md(f"**{state.predicted_title}**", name="predicted_heading")
            panel.list("predicted_table", types.Object(), view=_attribute_table())
        if state.gt_table:
            panel.md(f"**{state.gt_title}**", name="gt_heading")
            panel.list("gt_table", types.Object(), view=_attribute_table())

        matched = state.matched_attributes or []
        if matched:
            panel.md("**Show samples sharing a matched attribute**", name="matched_heading")
            for i, attr in enumerate(matched):
                panel.btn(
                    f"matched_{i}",
                    label=attr,
                    on_click=self.show_matched,
                    params={"attribute": attr},
                    variant="outlined",
                )
            panel.btn("clear_filter", label="Show all samples", on_click=self.clear_filter)

        if state.grid_rows:
            panel.md("**Run parameters**  \n" + (state.grid_params or ""), name="grid_params_md")
            table = types.TableView()
            for k, label in (("class", "Predicted class"), ("count", "Samples"),
                             ("attributes", "Most often ranked first")):
                table.add_column(k, label=label)
            panel.list("grid_rows", types.Object(), view=table)
            for i, row in enumerate(state.grid_rows):
                panel.btn(f"filter_{i}", label=f"Show {row['class']}", on_click=self.filter_class,
                          params={"class_name": row["class"]}, variant="outlined")

        if state.wb_available:
            panel.md("**Attribute workbench** (re-scores from stored features)", name="wb_heading")
            cd = types.DropdownView(label="Class to edit")
            for c in state.wb_classes or []:
                cd.add_choice(c, label=c)
            panel.enum("wb_class", cd.values(), view=cd, default=state.wb_class,
                       on_change=self.on_change_wb_class)
            panel.str("wb_text", default=state.wb_text, label=f"Attributes (separated by '{SEP}')",
                      on_change=self.on_change_wb_text)
            panel.btn("wb_rescore_sample", label="Re-score this sample", on_click=self.wb_rescore_sample)
            panel.str("wb_target", default=f"{state.label_field}_edited", label="Field for the view",
                      on_change=self.on_change_wb_target)
            panel.btn("wb_rescore_view", label="Re-score the current view", on_click=self.wb_rescore_view)
            panel.str("wb_name", default="", label="Save as (attribute set name)",
                      on_change=self.on_change_wb_name)
            panel.btn("wb_save", label="Save edited attribute set", on_click=self.wb_save)
            panel.str("wb_result", view=types.MarkdownView())

        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1, padding=1))


def _attribute_table():
    table = types.TableView()
    table.add_column("attribute", label="Attribute")
    table.add_column("contribution", label="Contribution")
    table.add_column("crops", label="Crops")
    table.add_column("ranked", label="Top")
    return table


OPERATORS = [LazslExplanationsPanel]
