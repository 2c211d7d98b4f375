"""Operators that import and delete the attribute sets stored with a dataset.

Thin shells over :mod:`fiftyone_lazsl.fo.store` and :mod:`fiftyone_lazsl.core.published`:

* ``import_attribute_set``: a published name (``cub``, ``imagenet``...) or the
  path of a DCLIP/LaZSL/CuPL JSON file, stored on the current dataset under a
  name; optionally checked against a classification field first.
* ``delete_attribute_set``: removes a stored set.
"""

import os
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import FORMATS, AttributeSet
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo import store
from fiftyone_lazsl.fo.fields import validate_for_field

from ._forms import class_label_fields, error_output, invalid, plain, user_errors

_FORMAT_HELP = {
    "descriptors": "DCLIP/LaZSL attributes, turned into '<class>, which has <attribute>' prompts",
    "cupl": "CuPL sentences, used verbatim as prompts",
}


def _default_name(source):
    if not source:
        return None
    src = str(source).strip()
    if published.is_published(src):
        return src.lower()
    stem = src.replace("\\", "/").rsplit("/", 1)[-1]
    if stem.lower().endswith(".json"):
        stem = stem[:-5]
    return store.safe_set_name(stem)


def _source_set(ctx: Any) -> AttributeSet:
    """The attribute set the import form names (a published set is read from
    this machine or downloaded; a file is parsed).

    Raises:
        UserError: nothing of that name, a malformed file, a failed download.
    """
    source = str(ctx.params["source"]).strip()
    fmt = ctx.params.get("format") or "auto"
    return store.resolve_attribute_set(source, None, format=None if fmt == "auto" else fmt)


class ImportAttributeSet(foo.Operator):
    """Store a published or file attribute set on the current dataset."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="import_attribute_set",
            label="LaZSL: import attribute set",
            description="Store a published (cub, imagenet, ...) or JSON-file attribute set "
            "on the dataset",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        chooser = types.AutocompleteView(allow_user_input=True)
        for e in published.list_published():
            chooser.add_choice(
                e["name"],
                label=f"{e['name']} - {e.get('title', '')} ({e['num_classes']} classes)",
            )
        inputs.str(
            "source",
            required=True,
            label="Published set or JSON file",
            description="A published name, or the path of a JSON file {class: [attribute, ...]} "
            "on the server's file system",
            view=chooser,
        )
        source = ctx.params.get("source")
        name_prop = inputs.str(
            "name",
            required=False,
            default=_default_name(source),
            label="Name on the dataset",
            description="Letters, digits, '_' and '-' (default: the published name or file stem)",
        )
        fmt = types.RadioGroup()
        fmt.add_choice(
            "auto",
            label="auto",
            description="a file: its sidecar's format, else detected (CuPL sentences "
            "or DCLIP attributes); a published set: the registry's",
        )
        for f in FORMATS:
            fmt.add_choice(f, label=f, description=_FORMAT_HELP.get(f, ""))
        inputs.enum("format", fmt.values(), default="auto", label="Format", view=fmt)

        fields = class_label_fields(ctx.dataset)
        field_prop = None
        if fields:
            pick = types.Dropdown()
            for f in fields:
                pick.add_choice(f, label=f)
            field_prop = inputs.enum(
                "label_field",
                pick.values(),
                required=False,
                label="Check against label field",
                description="Optional: refuse the set if a label of this field has no "
                "attributes in it",
                view=pick,
            )
        overwrite = inputs.bool(
            "overwrite",
            default=False,
            label="Replace an existing set of that name",
        )

        src = str(source or "").strip()
        if src and published.is_published(src) and not os.path.isfile(os.path.expanduser(src)):
            try:
                if published.find_local_copy(src) is None:
                    entry = published.get_published_entry(src)
                    inputs.view(
                        "download_note",
                        types.Notice(
                            label=f"{entry['name']!r} is not on this machine yet: Execute downloads it "
                            f"from {entry['url']} (needs network)"
                        ),
                    )
                    src = ""  # not parsed here: the form never downloads
            except UserError as e:
                invalid(inputs.properties["source"], plain(e))
                src = ""
        if src:
            try:
                aset = _source_set(ctx)
            except UserError as e:
                invalid(inputs.properties["source"], plain(e))
            else:
                if field_prop is not None and ctx.params.get("label_field"):
                    try:
                        store.validate_for_field(ctx.dataset, aset, ctx.params["label_field"])
                    except UserError as e:
                        invalid(field_prop, plain(e))
        name = ctx.params.get("name") or _default_name(source)
        if name:
            try:
                store.validate_set_name(name)
            except UserError as e:
                name_prop.invalid = True
                name_prop.error_message = str(e)
            else:
                if store.has_attribute_set(ctx.dataset, name) and not ctx.params.get("overwrite"):
                    overwrite.invalid = True
                    overwrite.error_message = (
                        f"the dataset already has an attribute set named {name!r}; "
                        "tick this box to replace it, or choose another name"
                    )
        return types.Property(inputs, view=types.View(label="Import attribute set"))

    @user_errors
    def execute(self, ctx):
        aset = _source_set(ctx)
        label_field = ctx.params.get("label_field")
        if label_field:
            validate_for_field(ctx.dataset, aset, label_field)
        name = ctx.params.get("name") or store.safe_set_name(aset.name)
        name = store.save_attribute_set(
            ctx.dataset,
            aset,
            name=name,
            overwrite=bool(ctx.params.get("overwrite", False)),
        )
        ctx.trigger("reload_dataset")
        return {
            "name": name,
            "num_classes": len(aset),
            "num_attributes": sum(len(aset[c]) for c in aset.classes),
            "source": aset.source,
            "hash": aset.content_hash,
            "warnings": list(aset.warnings),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        if error_output(ctx, outputs):
            return types.Property(outputs, view=types.View(label="Import failed"))
        outputs.str("name", label="Stored as")
        outputs.int("num_classes", label="Classes")
        outputs.int("num_attributes", label="Attributes")
        outputs.str("source", label="Source")
        outputs.str("hash", label="Content hash")
        outputs.list("warnings", types.String(), label="Warnings")
        return types.Property(outputs, view=types.View(label="Attribute set imported"))


class DeleteAttributeSet(foo.Operator):
    """Remove an attribute set stored on the current dataset."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_attribute_set",
            label="LaZSL: delete attribute set",
            description="Remove an attribute set stored on the dataset",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        rows = store.list_attribute_sets(ctx.dataset)
        if not rows:
            inputs.view("none", types.Notice(label="This dataset has no attribute sets"))
        pick = types.Dropdown()
        for r in rows:
            pick.add_choice(
                r["name"],
                label=f"{r['name']} ({r['num_classes']} classes)",
                description=r["source"] or "",
            )
        inputs.enum("name", pick.values(), required=True, label="Attribute set", view=pick)
        name = ctx.params.get("name")
        confirm = inputs.bool(
            "confirm",
            default=False,
            required=True,
            label=f"Yes, delete {name!r} from this dataset" if name else "Yes, delete it",
            description="Runs that used it keep their outputs and its hash",
        )
        if name and not ctx.params.get("confirm"):
            invalid(confirm, f"tick the box to confirm deleting attribute set {name!r}")
        return types.Property(inputs, view=types.View(label="Delete attribute set"))

    @user_errors
    def execute(self, ctx):
        name = ctx.params["name"]
        store.delete_attribute_set(ctx.dataset, name)
        ctx.trigger("reload_dataset")
        return {"deleted": name}


OPERATORS = [ImportAttributeSet, DeleteAttributeSet]
