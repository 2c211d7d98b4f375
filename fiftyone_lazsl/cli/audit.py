"""``audit`` and ``evaluate`` sub-commands.

fiftyone-lazsl audit --dataset NAME --pred-field F --gt-field G [--top-k K] [--tag T]
fiftyone-lazsl evaluate --dataset NAME --gt-field G --pred-fields F1,F2,... [--top-k 5]
"""

from __future__ import annotations

import sys

from fiftyone_lazsl.cli.argtypes import int_range, tag


def _audit(args) -> int:
    from fiftyone_lazsl.fo.audit import audit_labels
    from fiftyone_lazsl.fo.store import load_dataset

    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.only_tag) if args.only_tag else ds
    res = audit_labels(
        view,
        args.pred_field,
        args.gt_field,
        top_k=args.top_k,
        tag=args.tag or None,
        n_evidence=args.n_evidence,
        min_suspicion=None if args.tag_all else 0.0,
    )
    print(res.summary())
    print(f"fields: {', '.join(res.fields.values())}")
    if res.saved_view:
        print(f"saved view: {res.saved_view!r}")
    print()
    print(res.table(args.show if args.show is not None else args.top_k))
    return 0


def _evaluate(args) -> int:
    from fiftyone_lazsl.fo.evaluate import evaluate_methods
    from fiftyone_lazsl.fo.store import load_dataset

    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.only_tag) if args.only_tag else ds
    rep = evaluate_methods(
        view,
        args.gt_field,
        args.pred_fields,
        k=args.top_k,
        worst=args.worst,
        save_views=not args.no_views,
        progress=None if sys.stderr.isatty() else False,
    )
    keys = [k for m in rep.methods for k in (m.eval_key, m.topk_eval_key) if k]
    print(rep.table())
    print()
    print(f"eval keys: {', '.join(keys)}")
    return 0


def register(sub) -> None:
    """Add the ``audit`` and ``evaluate`` commands to the CLI's sub-parsers."""
    p = sub.add_parser(
        "audit",
        help="rank likely label errors and write attribute evidence",
        description="Score every sample by max_{c != label} p(c) - p(label) (softmax of the "
        "stored logits) into F_suspicion, write the label's weakest and the "
        "prediction's strongest attributes (F_evidence_gt, F_evidence_pred, "
        "F_evidence), and tag the most suspicious samples.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument(
        "--pred-field", required=True, metavar="F", help="prediction field written by 'classify'"
    )
    p.add_argument("--gt-field", required=True, metavar="G", help="Classification field to audit")
    p.add_argument(
        "--top-k", type=int_range(0), default=20, metavar="K", help="samples to tag (20)"
    )
    p.add_argument(
        "--tag", default="suspect", help="sample tag for the suspects ('suspect'; '' tags nothing)"
    )
    p.add_argument(
        "--tag-all",
        action="store_true",
        help="tag the top K even if the prediction agrees with the label",
    )
    p.add_argument(
        "--n-evidence", type=int_range(0), default=3, help="attributes listed per class (3)"
    )
    p.add_argument("--show", type=int_range(0), default=None, help="rows printed (default K)")
    p.add_argument(
        "--only-tag", default=None, type=tag, metavar="TAG", help="only samples with this tag"
    )
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "evaluate",
        help="compare prediction fields (clip, dclip, lazsl...) side by side",
        description="Run FiftyOne's evaluate_classifications (top-1 'simple' and 'top-k' from "
        "the stored logits) for each field, keep eval keys eval_F and eval_F_topK, "
        "print one table and save 'A right, B wrong' views.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--gt-field", required=True, metavar="G")
    p.add_argument(
        "--pred-fields",
        required=True,
        metavar="F1,F2,...",
        help="comma-separated prediction fields",
    )
    p.add_argument(
        "--top-k", type=int_range(1), default=5, metavar="K", help="k of top-k accuracy (5)"
    )
    p.add_argument(
        "--worst", type=int_range(0), default=10, help="classes in the worst-classes table (10)"
    )
    p.add_argument("--no-views", action="store_true", help="do not save comparison views")
    p.add_argument(
        "--only-tag", default=None, type=tag, metavar="TAG", help="only samples with this tag"
    )
    p.set_defaults(func=_evaluate)
