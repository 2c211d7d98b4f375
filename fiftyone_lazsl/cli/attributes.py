"""``fiftyone-lazsl attributes``: import, list, show, delete attribute sets
stored with a dataset, and list the published ones.

    fiftyone-lazsl attributes import FILE_OR_PUBLISHED_NAME --dataset NAME [--name SET] [--format descriptors|cupl]
    fiftyone-lazsl attributes list --dataset NAME
    fiftyone-lazsl attributes show SET --dataset NAME [--class C]
    fiftyone-lazsl attributes delete SET --dataset NAME
    fiftyone-lazsl attributes published
"""

from __future__ import annotations

import argparse
import difflib

from fiftyone_lazsl.cli import attributes_generate
from fiftyone_lazsl.cli.doctor import add_doctor
from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import FORMATS, class_key
from fiftyone_lazsl.errors import UserError


def register(subparsers) -> None:
    """Add the ``attributes`` command group to the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "attributes",
        help="manage the attribute sets stored with a dataset",
        description="Import, list, show and delete the attribute sets stored with a dataset; "
        "list the published sets that can be imported by name.",
    )
    attr_sub = p.add_subparsers(dest="attributes_command", metavar="ACTION")
    attr_sub.required = True

    add_doctor(attr_sub)

    imp = attr_sub.add_parser(
        "import",
        help="store an attribute set (JSON file or published name) on a dataset",
        description="Store an attribute set on a dataset. SOURCE is a DCLIP/LaZSL (or CuPL) JSON "
        "file or the name of a published set (see 'attributes published').",
    )
    imp.add_argument("source", metavar="FILE_OR_PUBLISHED_NAME")
    imp.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    imp.add_argument(
        "--name", help="name to store it under (default: the published name or file stem)"
    )
    imp.add_argument(
        "--format",
        choices=FORMATS + ("auto",),
        default="auto",
        help="descriptors: attributes turned into DCLIP prompts; "
        "cupl: sentences used verbatim; auto (default): a file's sidecar "
        "format, else detected from its texts; a published set's registry format",
    )
    imp.add_argument(
        "--label-field",
        help="check that every label of this Classification field has attributes in the set",
    )
    imp.add_argument(
        "--no-overwrite",
        action="store_true",
        help="fail if the dataset already has a set of that name",
    )
    imp.set_defaults(func=_import)

    ls = attr_sub.add_parser("list", help="list the attribute sets stored on a dataset")
    ls.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    ls.set_defaults(func=_list)

    show = attr_sub.add_parser("show", help="print a stored attribute set")
    show.add_argument("set_name", metavar="SET")
    show.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    show.add_argument(
        "--class", dest="class_name", metavar="C", help="only this class's attributes"
    )
    show.set_defaults(func=_show)

    delete = attr_sub.add_parser("delete", help="remove a stored attribute set from a dataset")
    delete.add_argument("set_name", metavar="SET")
    delete.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    delete.set_defaults(func=_delete)

    pub = attr_sub.add_parser("published", help="list the published attribute sets")
    pub.set_defaults(func=_published)

    attributes_generate.register(attr_sub)


def _summary(aset, name: str, dataset_name: str, replaced: bool) -> str:
    n_attr = sum(len(aset[c]) for c in aset.classes)
    line = (
        f"{'replaced' if replaced else 'imported'} attribute set {name!r} on dataset "
        f"{dataset_name!r}: {len(aset)} classes, {n_attr} attributes, format {aset.format}, "
        f"hash {aset.content_hash[:12]}, source {aset.source}"
    )
    if aset.warnings:
        line += f"; {len(aset.warnings)} warning(s): " + " | ".join(aset.warnings)
    return line


def _import(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo import store
    from fiftyone_lazsl.fo.datasets import load_dataset
    from fiftyone_lazsl.fo.fields import validate_for_field

    dataset = load_dataset(args.dataset)
    aset = store.resolve_attribute_set(args.source, None, format=args.format)
    if args.label_field:
        validate_for_field(dataset, aset, args.label_field)
    name = args.name if args.name is not None else store.safe_set_name(aset.name)
    replaced = store.has_attribute_set(dataset, name)
    name = store.save_attribute_set(dataset, aset, name=name, overwrite=not args.no_overwrite)
    print(_summary(aset, name, dataset.name, replaced))
    return 0


def _list(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo import store
    from fiftyone_lazsl.fo.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    rows = store.list_attribute_sets(dataset)
    if not rows:
        print(
            f"dataset {dataset.name!r} has no attribute sets "
            "(import one with 'fiftyone-lazsl attributes import')"
        )
        return 0
    header = ("name", "classes", "attributes", "warnings", "format", "hash", "source")
    table = [header] + [
        (
            r["name"],
            str(r["num_classes"]),
            str(r["num_attributes"]),
            str(r["num_warnings"]),
            r["format"],
            (r["hash"] or "")[:12],
            r["source"] or "",
        )
        for r in rows
    ]
    _print_table(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo import store
    from fiftyone_lazsl.fo.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    aset = store.load_attribute_set(dataset, args.set_name)
    if args.class_name is not None:
        cls = aset.resolve(args.class_name)
        if cls is None:
            by_key = {class_key(c): c for c in aset.classes}
            close = difflib.get_close_matches(class_key(args.class_name), list(by_key), n=3)
            hint = (
                " (did you mean " + ", ".join(repr(by_key[k]) for k in close) + "?)"
                if close
                else ""
            )
            raise UserError(f"attribute set {aset.name!r} has no class {args.class_name!r}{hint}")
        print(f"{cls} ({aset.classes.index(cls)}):")
        for a in aset[cls] or ["(no attributes: class-name-only prompt)"]:
            print(f"  - {a}")
        return 0
    print(f"attribute set {aset.name!r} on dataset {dataset.name!r}")
    print(f"  source: {aset.source}")
    print(f"  format: {aset.format}")
    print(f"  hash:   {aset.content_hash}")
    print(f"  classes: {len(aset)}, attributes: {sum(len(aset[c]) for c in aset.classes)}")
    for w in aset.warnings:
        print(f"  warning: {w}")
    for i, c in enumerate(aset.classes):
        print(f"{i:4d} {c}: " + ("; ".join(aset[c]) if aset[c] else "(no attributes)"))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo import store
    from fiftyone_lazsl.fo.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    store.delete_attribute_set(dataset, args.set_name)
    print(f"deleted attribute set {args.set_name!r} from dataset {dataset.name!r}")
    return 0


def _published(args: argparse.Namespace) -> int:
    rows = [("name", "classes", "empty", "origin", "local copy", "url")]
    for e in published.list_published():
        try:
            local = published.find_local_copy(e["name"])
        except UserError:  # a local copy with the wrong hash
            note = "wrong hash (see 'attributes import')"
        else:
            note = str(local) if local else "-"
        rows.append(
            (
                e["name"],
                str(e["num_classes"]),
                str(e.get("empty_classes", 0)),
                e.get("origin", ""),
                note,
                e["url"],
            )
        )
    _print_table(rows)
    return 0


def _print_table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
