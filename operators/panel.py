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
from fiftyone_lazsl.fo.runs import list_lazsl_fields

_NO_GT = "(none)"


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

        if not fields:
            content = {"summary": "**No LaZSL run on this dataset.** Run `run_lazsl` first."}
        elif not ctx.current_sample:
            content = {"summary": "Open a sample to see its LaZSL explanation."}
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
            }
        )

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

        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1, padding=1))


def _attribute_table():
    table = types.TableView()
    table.add_column("attribute", label="Attribute")
    table.add_column("contribution", label="Contribution")
    table.add_column("crops", label="Crops")
    table.add_column("ranked", label="Top")
    return table


OPERATORS = [LazslExplanationsPanel]
