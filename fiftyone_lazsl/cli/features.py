"""``features info|prune`` (manage the feature store) and ``rescore``
(re-score a view from the features a run stored)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fiftyone_lazsl.cli import argtypes
from fiftyone_lazsl.cli.classify import print_summary
from fiftyone_lazsl.cli.datasets import load_dataset
from fiftyone_lazsl.core.config import METHODS, LaZSLConfig, OutputConfig


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _info(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.core.features import FeatureStore

    with FeatureStore(args.store, create=False) as st:
        info = st.info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"feature store {info['path']}: {info['entries']} entries, {_mb(info['bytes'])} on disk "
        f"({_mb(info['live_bytes'])} referenced)"
    )
    for f in info["fingerprints"]:
        sp = f["spec"]
        print(
            f"  {f['fingerprint']}  {sp.get('model')} weights={sp.get('weights_id')} "
            f"N={sp.get('n_crops')} seed={sp.get('seed')}: {f['entries']} samples, "
            f"{_mb(f['bytes'])} ({f['bytes_per_sample'] / 1e3:.1f} KB/sample)"
        )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.core.features import FeatureStore

    days = args.older_than_days
    with FeatureStore(args.store, create=False) as st:
        r = st.prune(
            fingerprint=args.fingerprint,
            everything=args.all,
            stale=not args.keep_stale,
            older_than_s=None if days is None else days * 86400,
        )
    print(
        f"pruned {r['deleted_entries']} entries: {_mb(r['bytes_before'])} -> {_mb(r['bytes_after'])}"
    )
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo.rescore import rescore

    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.tag) if args.tag else ds
    wca = {k: getattr(args, k) for k in _WCA_FLAGS if getattr(args, k, None) is not None}
    output = OutputConfig.from_cli_args(args)
    summary = rescore(
        view,
        args.attributes,
        from_field=args.from_field,
        label_field=args.label_field,
        output=output,
        missing=args.missing,
        gt_field=args.gt_field,
        restrict_to_set=args.restrict_to_set,
        progress=True if sys.stderr.isatty() else None,
        theta=args.theta,
        eps=args.eps,
        gamma=args.gamma,
        method=args.method,
        feature_store=args.store,
        **wca,
    )
    if summary.num_samples == 0:
        print("nothing to re-score: the view is empty")
        return 0

    print_summary(summary)
    return 0


#: WCA parameters ``rescore`` takes as flags (``--image-scale-log`` ...).
_WCA_FLAGS = ("image_scale_log", "text_scale_log")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="manage the feature store (info, prune)")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION")
    fsub.required = True
    i = fsub.add_parser("info", help="size and contents of the feature store")
    i.add_argument(
        "--store",
        default=None,
        metavar="DIR",
        help="store directory (default: $FIFTYONE_LAZSL_FEATURES or <cache>/features)",
    )
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)
    pr = fsub.add_parser(
        "prune", help="delete stale (or all / one model's) entries and reclaim space"
    )
    pr.add_argument("--store", default=None, metavar="DIR")
    pr.add_argument("--all", action="store_true", help="delete every entry")
    pr.add_argument("--fingerprint", default=None, help="delete the entries of this fingerprint")
    pr.add_argument(
        "--older-than-days",
        type=argtypes.float_range(0),
        default=None,
        metavar="D",
        help="delete entries stored more than D days ago (0: every entry stored before now)",
    )
    pr.add_argument(
        "--keep-stale",
        action="store_true",
        help="keep entries whose image file is missing or changed (default: delete them)",
    )
    pr.set_defaults(func=_prune)

    r = sub.add_parser(
        "rescore",
        help="re-score a view from the features a run stored "
        "(another method, attribute set or parameters; no "
        "encoding)",
    )
    r.add_argument("--dataset", required=True, metavar="NAME")
    r.add_argument("--attributes", required=True, metavar="SET_OR_FILE")
    r.add_argument(
        "--from-field",
        required=True,
        metavar="F",
        help="label field of a run made with --store-features",
    )
    r.add_argument("--label-field", required=True, metavar="G", help="field to write")
    r.add_argument(
        "--method",
        choices=METHODS,
        default="lazsl",
        help="scoring method, any of them on the stored visual set (default: lazsl)",
    )
    r.add_argument("--theta", type=float, default=None)
    r.add_argument("--eps", type=float, default=None)
    r.add_argument("--gamma", type=float, default=None)
    fields = {f.name: f for f in LaZSLConfig.fields_for("wca")}
    for name in _WCA_FLAGS:
        r.add_argument(
            LaZSLConfig.cli_flag(name),
            type=float,
            default=None,
            help=f"{fields[name].metadata['help']} (default: {fields[name].default})",
        )
    r.add_argument(
        "--missing",
        choices=("encode", "skip"),
        default="encode",
        help="samples without stored features: encode (and store) them, or skip them "
        "with the reason in G_error (default: encode)",
    )
    r.add_argument(
        "--store",
        default=None,
        metavar="DIR",
        help="feature store (default: the one the run on --from-field names)",
    )
    r.add_argument("--tag", default=None, type=argtypes.tag, help="only samples with this tag")
    r.add_argument("--gt-field", default=None)
    r.add_argument("--restrict-to-set", action="store_true")
    OutputConfig.add_cli_arguments(
        r.add_argument_group("what to write (see OutputConfig)"), scope="all"
    )
    r.set_defaults(func=_rescore)
    logging.getLogger("fiftyone_lazsl").setLevel(logging.INFO)
