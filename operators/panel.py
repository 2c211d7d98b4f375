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
from fiftyone import ViewField as F

from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.explain import (
    explain_sample,
    matched_attribute_view,
    panel_content,
)
from fiftyone_lazsl.fo.fields import ground_truth_fields
from fiftyone_lazsl.fo.rescore import rescore
from fiftyone_lazsl.fo.runs import get_run_config, latest_lazsl_field, list_lazsl_fields
from fiftyone_lazsl.fo.store import safe_set_name, save_attribute_set
from fiftyone_lazsl.fo.workbench import (
    edit_attribute_set,
    grid_summary,
    rescore_sample,
    run_attribute_set,
)

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
    #
    # How state is kept (and why nothing loops): the App keeps every input's
    # value in the panel state itself, as the user types or picks, and sends
    # that state with each event. The handlers below therefore never write an
    # input's own value back (a late echo of an older value is what overwrote
    # keystrokes and made two values chase each other); they only set inputs
    # when the server must choose a value (the first run shown, a class's
    # attributes when the class or sample changes). ``shown_field`` and
    # ``wb_for`` record what the displayed content was computed for, so an
    # event repeating the current value is a no-op.

    def on_load(self, ctx):
        """Populate the field dropdowns and the current sample's explanation."""
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        """A new dataset: re-read its LaZSL and ground-truth fields."""
        ctx.panel.set_state(
            {
                "label_field": None,
                "gt_field": None,
                "shown_field": None,
                "wb_for": None,
                "wb_edits": {},
                "wb_result": "",
            }
        )
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        """A new sample in the modal (the chosen run stays)."""
        self._refresh(ctx)

    def on_change_view(self, ctx):
        """The view changed (e.g. a matched-attribute button): keep in sync."""
        self._refresh(ctx)

    def on_change_label_field(self, ctx):
        """The LaZSL field dropdown changed: remember the choice for this
        dataset (also for other samples and when the panel is opened again)."""
        value = ctx.params.get("value")
        if not value or value == ctx.panel.get_state("shown_field"):
            return
        _remember(ctx, "label_field", value)
        ctx.panel.set_state({"wb_for": None, "wb_edits": {}, "wb_result": ""})
        self._refresh(ctx, label_field=value)

    def on_change_gt_field(self, ctx):
        """The ground-truth field dropdown changed."""
        value = ctx.params.get("value")
        if not value or value == ctx.panel.get_state("shown_gt_field"):
            return
        _remember(ctx, "gt_field", value)
        self._refresh(ctx, gt_field=value)

    def show_matched(self, ctx):
        """Filter the App to samples whose ranked attributes contain the
        clicked attribute."""
        params = dict(ctx.params or {})
        params.update(getattr(ctx, "event_args", None) or {})
        attribute = params.get("attribute")
        label_field = (
            ctx.panel.get_state("shown_field")
            or ctx.panel.get_state("label_field")
            or latest_lazsl_field(ctx.dataset)
        )
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
        params = dict(ctx.params or {})
        params.update(getattr(ctx, "event_args", None) or {})
        label_field = ctx.panel.get_state("shown_field")
        cls = params.get("class_name")
        if not cls or not label_field:
            return
        ctx.ops.set_view(ctx.dataset.match(F(f"{label_field}.label") == cls))

    # -- attribute workbench ----------------------------------------------------

    def _run_set(self, ctx):
        return run_attribute_set(ctx.dataset, ctx.panel.get_state("shown_field"))

    def _edits(self, ctx, run_set=None) -> dict:
        """``{class: attributes}`` edited so far, the text field included
        (attributed to the class it was loaded for, ``wb_for``, whatever the
        class dropdown says now)."""
        edits = dict(ctx.panel.get_state("wb_edits") or {})
        key = ctx.panel.get_state("wb_for")
        text = ctx.panel.get_state("wb_text")
        if (
            key
            and text is not None
            and key.count("|") == 2
            and key.split("|", 2)[1] == ctx.panel.get_state("shown_field")
        ):
            cls = key.split("|", 2)[2]
            run_set = run_set or self._run_set(ctx)
            attrs = [a.strip() for a in str(text).split(SEP) if a.strip()]
            if cls in run_set.attributes:
                if attrs == list(run_set.attributes[cls]):
                    edits.pop(cls, None)
                else:
                    edits[cls] = attrs
        return edits

    def _edited_set(self, ctx, edits, run_set):
        aset = run_set
        for c, attrs in edits.items():
            aset = edit_attribute_set(aset, c, attrs)
        return aset

    def on_change_wb_class(self, ctx):
        """Another class to edit: keep the text typed for the previous one
        (as its edit) and load this class's attributes."""
        value = ctx.params.get("value")
        key = ctx.panel.get_state("wb_for") or ""
        if not value or key.endswith("|" + value):
            return
        self._refresh(ctx, wb_class=value)

    def wb_rescore_sample(self, ctx):
        """Re-score the open sample with the edited set (nothing written)."""
        label_field = ctx.panel.get_state("shown_field")
        try:
            run_set = self._run_set(ctx)
            edits = self._edits(ctx, run_set)
            ctx.panel.set_state("wb_edits", edits)
            key = ctx.panel.get_state("wb_for") or ""
            cls = key.split("|", 2)[2] if key.count("|") == 2 else None
            sample = ctx.dataset[ctx.current_sample]
            r = rescore_sample(
                sample, label_field, self._edited_set(ctx, edits, run_set), class_name=cls
            )
        except (UserError, KeyError) as e:
            ctx.panel.set_state("wb_result", f"**Cannot re-score:** {e}")
            return
        ctx.panel.set_state("wb_result", workbench_message(r, edits))

    def wb_rescore_view(self, ctx):
        """Re-score the current view with the edited set into the target field."""
        label_field = ctx.panel.get_state("shown_field")
        run_set = self._run_set(ctx)
        edits = self._edits(ctx, run_set)
        ctx.panel.set_state("wb_edits", edits)
        target = (ctx.panel.get_state("wb_target") or f"{label_field}_edited").strip()
        try:
            summary = rescore(
                ctx.view,
                self._edited_set(ctx, edits, run_set),
                from_field=label_field,
                label_field=target,
                missing="skip",
            )
        except UserError as e:
            ctx.panel.set_state("wb_result", f"**Cannot re-score the view:** {e}")
            return
        what = "with the edit of " + ", ".join(edits) if edits else "with the run's set (no edit)"
        ctx.panel.set_state("wb_result", f"**View re-scored** {what}: {summary}")
        ctx.ops.reload_dataset()
        ctx.ops.notify(str(summary), variant="warning" if summary.failures else "success")

    def wb_save(self, ctx):
        """Save the edited set on the dataset (its metadata records parent and edits)."""
        run_set = self._run_set(ctx)
        edits = self._edits(ctx, run_set)
        ctx.panel.set_state("wb_edits", edits)
        if not edits:
            ctx.panel.set_state(
                "wb_result", "**Nothing to save:** no class's attributes differ from the run's set."
            )
            return
        aset = self._edited_set(ctx, edits, run_set)
        name = (
            ctx.panel.get_state("wb_name") or ""
        ).strip() or f"{safe_set_name(aset.metadata.get('parent') or aset.name)}-edited"
        try:
            saved = save_attribute_set(ctx.dataset, aset, name=name)
        except UserError as e:
            ctx.panel.set_state("wb_result", f"**Cannot save:** {e}")
            return
        ctx.panel.set_state(
            "wb_result",
            f"**Saved** attribute set '{saved}' with the edit of "
            f"{', '.join(edits)} (parent: "
            f"{aset.metadata.get('parent')})",
        )
        ctx.ops.notify(f"attribute set '{saved}' saved", variant="success")

    # -- state ------------------------------------------------------------------

    def _refresh(self, ctx, label_field=None, gt_field=None, wb_class=None):
        """Recompute what the panel shows for the current sample / view.

        Inputs are set only when their value must change (see the note on
        events above)."""
        state = ctx.panel.state
        fields = list_lazsl_fields(ctx.dataset) if ctx.dataset is not None else []
        gt_fields = ground_truth_fields(ctx.dataset) if ctx.dataset is not None else []
        label_field = label_field or state.label_field
        if label_field not in fields:
            label_field = _recalled(ctx, "label_field")
        if label_field not in fields:
            label_field = latest_lazsl_field(ctx.dataset) if fields else None
        gt_field = gt_field or state.gt_field
        if gt_field != _NO_GT and gt_field not in gt_fields:
            gt_field = _recalled(ctx, "gt_field")
        if gt_field != _NO_GT and gt_field not in gt_fields:
            gt_field = (
                "ground_truth"
                if "ground_truth" in gt_fields
                else (gt_fields[0] if gt_fields else _NO_GT)
            )

        update = {}
        if state.label_field != label_field:
            update["label_field"] = label_field
        if state.gt_field != gt_field:
            update["gt_field"] = gt_field
        if state.shown_field and state.shown_field != label_field:
            update.update({"wb_for": None, "wb_edits": {}})

        grid = {"params": {}, "rows": []}
        wb = {}
        if not fields:
            content = {"summary": "**No LaZSL run on this dataset.** Run `run_lazsl` first."}
        elif not ctx.current_sample:
            content = {"summary": "Open a sample to see its LaZSL explanation."}
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
                content = {
                    "summary": f"Sample {ctx.current_sample} is not in dataset '{ctx.dataset.name}'."
                }
            else:
                gt = None if gt_field == _NO_GT else gt_field
                expl = explain_sample(sample, label_field, gt)
                content = panel_content(expl)
                wb = self._workbench_state(ctx, sample, label_field, gt, wb_class, update)

        update.update(
            {
                "fields": fields,
                "gt_fields": [_NO_GT] + gt_fields,
                "shown_field": label_field,
                "shown_gt_field": gt_field,
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
            }
        )
        if wb and not state.wb_target:
            update["wb_target"] = f"{label_field}_edited"
        ctx.panel.set_state(update)

    def _workbench_state(self, ctx, sample, label_field, gt_field, wb_class, update):
        """Choices of the workbench for the open sample (predicted and
        ground-truth classes); puts into ``update`` the class and its (edited)
        attributes when the sample, run or class changed."""
        try:
            if not get_run_config(ctx.dataset, label_field).get("feature_store"):
                return {}
        except ValueError:
            return {}

        aset = run_attribute_set(ctx.dataset, label_field)
        classes = []
        pred = sample[label_field].label if sample[label_field] is not None else None
        gt = None
        if gt_field and sample.has_field(gt_field) and sample[gt_field] is not None:
            gt = aset.resolve(sample[gt_field].label)
        for c in (pred, gt):
            if c and c in aset.attributes and c not in classes:
                classes.append(c)
        if not classes:
            return {}
        state = ctx.panel.state
        same_run = state.shown_field == label_field
        cls = wb_class or state.wb_class
        if cls not in classes:
            cls = classes[0]
        key = f"{sample.id}|{label_field}|{cls}"
        if state.wb_for != key:
            # keep what was typed for the class shown until now
            edits = self._edits(ctx, aset) if same_run else {}
            attrs = edits.get(cls, aset.attributes[cls])
            update.update(
                {
                    "wb_edits": edits,
                    "wb_for": key,
                    "wb_text": f"{SEP} ".join(attrs),
                    "wb_result": "",
                }
            )
        if state.wb_class != cls:
            update["wb_class"] = cls
        return {"classes": classes, "class": cls}

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
            panel.enum("label_field", dd.values(), view=dd, on_change=self.on_change_label_field)
            gd = types.DropdownView(label="Ground-truth field")
            for f in gt_fields:
                gd.add_choice(f, label=f)
            panel.enum("gt_field", gd.values(), view=gd, on_change=self.on_change_gt_field)

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
            table = _fitting_table()
            for k, label in (
                ("class", "Predicted class"),
                ("count", "Samples"),
                ("attributes", "Most often ranked first"),
            ):
                table.add_column(k, label=label)
            panel.list("grid_rows", types.Object(), view=table)
            for i, row in enumerate(state.grid_rows):
                panel.btn(
                    f"filter_{i}",
                    label=f"Show {row['class']}",
                    on_click=self.filter_class,
                    params={"class_name": row["class"]},
                    variant="outlined",
                )

        if state.wb_available:
            panel.md("**Attribute workbench** (re-scores from stored features)", name="wb_heading")
            cd = types.DropdownView(label="Class to edit")
            for c in state.wb_classes or []:
                cd.add_choice(c, label=c)
            panel.enum("wb_class", cd.values(), view=cd, on_change=self.on_change_wb_class)
            # no on_change: the App keeps the typed text in the panel state and
            # sends it with the button events
            panel.str("wb_text", label=f"Attributes (separated by '{SEP}')")
            panel.btn(
                "wb_rescore_sample", label="Re-score this sample", on_click=self.wb_rescore_sample
            )
            panel.str("wb_result", view=types.MarkdownView())
            panel.str("wb_target", label="Field for the view")
            panel.btn(
                "wb_rescore_view", label="Re-score the current view", on_click=self.wb_rescore_view
            )
            panel.str("wb_name", label="Save as (attribute set name)")
            panel.btn("wb_save", label="Save edited attribute set", on_click=self.wb_save)

        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1, padding=1))


_STORE = "lazsl_explanations"


def _remember(ctx, key, value) -> None:
    """Remember a choice of the user for this dataset (FiftyOne's execution
    store: kept between samples, panels and App sessions)."""
    try:
        ctx.store(_STORE).set(key, value)
    except Exception:  # noqa: BLE001 -- remembering is a convenience
        pass


def _recalled(ctx, key):
    try:
        return ctx.store(_STORE).get(key)
    except Exception:  # noqa: BLE001
        return None


def workbench_message(r: dict, edits: dict) -> str:
    """The workbench's markdown for :func:`rescore_sample`'s result ``r``;
    ``edits`` are the classes edited (``{class: attributes}``)."""
    if not r["ok"]:
        return f"**Cannot re-score:** {r['message']}"
    tops = ", ".join(f"{a} ({v:.4f})" for a, v in r["top_attributes"][:5])
    head = (
        f"**With the edit of {', '.join(edits)}:**"
        if edits
        else "**No edit yet** (the run's attribute set):"
    )
    lines = [
        f"{head} predicted {r['label']} (confidence {r['confidence']:.3f}); was {r['previous']}."
    ]
    c = r.get("class")
    if c:
        was = ""
        if c["previous_rank"] is not None:
            was = f" (was score {c['previous_score']:.4f}, rank {c['previous_rank']})"
        lines.append(
            f"**{c['name']}:** score {c['score']:.4f}, rank {c['rank']} of "
            f"{c['num_classes']}, probability {c['probability']:.3f}{was}."
        )
    lines.append(f"Top attributes of {r['label']}: {tops}")
    return "  \n".join(lines)


# FiftyOne's TableView gives its table ``minWidth: 650`` (px), wider than a
# panel split beside the sample: the table then scrolls sideways and its last
# column sits under the modal's next-sample arrow (3rem wide, 0.75rem from the
# right edge, drawn over the panel). Its ``componentsProps`` (merged into the
# MUI Table, cells and container) let the table take the panel's width, wrap
# long attribute texts, and keep the last 4rem clear of the arrow.
_FIT_PANEL = {
    "container": {"sx": {"pr": "4rem"}},
    "table": {"sx": {"minWidth": 0, "width": "100%"}},
    "tableHeadCell": {"sx": {"px": 1, "fontSize": "0.875rem", "overflowWrap": "anywhere"}},
    "tableBodyCell": {"sx": {"px": 1, "overflowWrap": "anywhere"}},
}


def _fitting_table():
    """A :class:`fiftyone.operators.types.TableView` that fits a narrow panel."""
    return types.TableView(componentsProps=_FIT_PANEL)


def _attribute_table():
    table = _fitting_table()
    table.add_column("attribute", label="Attribute")
    table.add_column("contribution", label="Contribution")
    table.add_column("crops", label="Crops")
    table.add_column("ranked", label="Top")
    return table


OPERATORS = [LazslExplanationsPanel]
