"""``attributes doctor``: per-attribute diagnostics from stored features."""

from __future__ import annotations

import argparse
import json

from fiftyone_lazsl.cli import argtypes
from fiftyone_lazsl.cli.datasets import load_dataset


def _doctor(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo.doctor import attribute_doctor

    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.tag) if args.tag else ds
    rep = attribute_doctor(
        view,
        from_field=args.from_field,
        gt_field=args.gt_field,
        attribute_set=args.attributes,
        dup_threshold=args.dup_threshold,
        min_auc=args.min_auc,
        save_views=not args.no_views,
        save_pruned_as=None if args.no_pruned else (args.pruned_name or ""),
        all_classes=args.all_classes,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "attributes": [a.to_dict() for a in rep.attributes],
                    "degenerate": rep.degenerate,
                    "num_samples": rep.num_samples,
                    "skipped": rep.skipped,
                    "pruned_set": rep.pruned_set,
                    "removed": rep.removed,
                },
                indent=1,
            )
        )
        return 0
    print(
        f"{rep.num_samples} samples with stored features"
        + (f" ({len(rep.skipped)} without: not used)" if rep.skipped else "")
    )
    print(rep.table(only_flagged=not args.all))
    print(f"{len(rep.flagged)} of {len(rep.attributes)} attributes flagged")
    views = [a.saved_view for a in rep.flagged if a.saved_view]
    if views:
        print(f"saved views: {', '.join(views)}")
    if rep.pruned_set:
        print(
            f"proposed pruned set saved as {rep.pruned_set!r} ({len(rep.removed)} attributes "
            "removed); re-score with: fiftyone-lazsl rescore --attributes " + rep.pruned_set
        )
    return 0


def add_doctor(attr_sub: argparse._SubParsersAction) -> None:
    """Add ``doctor`` to the ``attributes`` command group."""
    d = attr_sub.add_parser("doctor", help="diagnose an attribute set from a run's stored features")
    d.add_argument("--dataset", required=True)
    d.add_argument(
        "--from-field",
        required=True,
        metavar="F",
        help="label field of a run made with --store-features",
    )
    d.add_argument(
        "--gt-field",
        default=None,
        metavar="G",
        help="ground-truth classes for the AUC (default: the run's predictions)",
    )
    d.add_argument(
        "--attributes",
        default=None,
        metavar="SET_OR_FILE",
        help="set to diagnose (default: the run's)",
    )
    d.add_argument(
        "--dup-threshold",
        type=float,
        default=0.95,
        help="text-embedding cosine for near-duplicates (default 0.95)",
    )
    d.add_argument("--min-auc", type=float, default=0.55, help="flag attributes below this AUC")
    d.add_argument("--tag", default=None, type=argtypes.tag, help="only samples with this tag")
    d.add_argument("--all", action="store_true", help="show every attribute, not only flagged ones")
    d.add_argument(
        "--all-classes",
        action="store_true",
        help="diagnose every class of the set (default: only the classes present "
        "in the samples, by --gt-field or the run's predictions)",
    )
    d.add_argument("--json", action="store_true")
    d.add_argument(
        "--no-views", action="store_true", help="do not save a view per flagged attribute"
    )
    d.add_argument("--no-pruned", action="store_true", help="do not save the proposed pruned set")
    d.add_argument(
        "--pruned-name",
        default=None,
        help="name of the pruned set (default <set>-pruned; past 64 characters the "
        "set name is cut and an 8-digit digest of it added)",
    )
    d.set_defaults(func=_doctor)
