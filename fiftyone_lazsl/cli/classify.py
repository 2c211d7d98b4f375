"""``classify`` sub-command: run LaZSL / DCLIP / CLIP on a dataset.

Every LaZSL parameter is a flag derived from
:class:`~fiftyone_lazsl.core.config.LaZSLConfig` (``n_crops`` -> ``--n-crops``),
so the CLI, Python and the operator accept the same parameters.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _classify(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.core.config import LaZSLConfig
    from fiftyone_lazsl.fo.apply import run_lazsl
    from fiftyone_lazsl.cli import progress_lines
    from fiftyone_lazsl.cli.datasets import load_dataset

    config = LaZSLConfig.from_cli_args(args)  # validated before anything is touched
    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.tag) if args.tag else ds
    summary = run_lazsl(
        view, args.attributes, config=config, label_field=args.label_field,
        num_workers=args.workers, skip_existing=args.skip_existing, gt_field=args.gt_field,
        restrict_to_set=args.restrict_to_set, top_k_crops=args.top_k_crops,
        heatmap=args.heatmap, write_every=args.write_every,
        progress=True if sys.stderr.isatty() else progress_lines())
    if summary.num_samples == 0:
        print("nothing to classify: the view is empty"
              + (" (every sample already has a prediction)" if args.skip_existing else ""))
        return 0
    print(summary)
    for sid, path, reason in summary.failures[:20]:
        print(f"  failed: {path}: {reason}")
    if summary.num_failed > 20:
        print(f"  ... and {summary.num_failed - 20} more")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from fiftyone_lazsl.core.config import LaZSLConfig

    p = sub.add_parser("classify", help="zero-shot classify a dataset with LaZSL (or dclip/clip)")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--attributes", required=True, metavar="SET_OR_FILE",
                   help="attribute set stored on the dataset, JSON file, or published name (cub, ...)")
    p.add_argument("--label-field", default="lazsl",
                   help="prediction field F; also F_crops, F_attributes, F_error (default: lazsl)")
    LaZSLConfig.add_cli_arguments(p)
    out = p.add_argument_group("what to classify and write")
    out.add_argument("--workers", type=int, default=None, help="image decoding processes (default: auto)")
    out.add_argument("--tag", default=None, help="only samples with this tag")
    out.add_argument("--gt-field", default=None,
                     help="Classification field whose classes must all be in the attribute set")
    out.add_argument("--restrict-to-set", action="store_true",
                     help="with --gt-field: skip samples whose class is not in the set instead of failing")
    out.add_argument("--skip-existing", action="store_true",
                     help="only samples without a prediction yet (resume an interrupted run with "
                          "the same parameters); samples with only an error are retried")
    out.add_argument("--top-k-crops", type=int, default=None,
                     help="store only the k crops with most transport mass as detections (default: all kept)")
    out.add_argument("--write-every", type=int, default=64, metavar="N",
                     help="samples per database write (a killed run keeps every written batch; default: 64)")
    out.add_argument("--heatmap", action="store_true", help="also write an evidence heatmap per sample")
    p.set_defaults(func=_classify)
    logging.getLogger("fiftyone_lazsl").setLevel(logging.INFO)
