"""``classify`` sub-command: run LaZSL / DCLIP / CLIP on a dataset."""

from __future__ import annotations

import logging
import sys

from fiftyone_lazsl.cli.datasets import load_dataset


def add_model_arguments(p) -> None:
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name (default ViT-B-32)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip tag, hf-hub:ID, checkpoint path, or 'none' for random weights")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")


def _classify(args) -> int:
    from fiftyone_lazsl.fo.apply import run_lazsl

    ds = load_dataset(args.dataset)
    view = ds
    if args.tag:
        view = ds.match_tags(args.tag)
    pretrained = None if str(args.pretrained).lower() in ("none", "random", "") else args.pretrained
    summary = run_lazsl(
        view, args.attributes, model=args.model, pretrained=pretrained, method=args.method,
        label_field=args.label_field, n_crops=args.n_crops,
        crop_scale=(args.crop_min, args.crop_max), theta=args.theta, seed=args.seed,
        batch_size=args.batch_size, device=args.device, num_workers=args.workers,
        skip_existing=args.skip_existing, gt_field=args.gt_field,
        restrict_to_set=args.restrict_to_set, top_k_crops=args.top_k_crops,
        heatmap=args.heatmap, prompt_style=args.prompt_style, write_every=args.write_every,
        progress=True if sys.stderr.isatty() else None)
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


def register(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot classify a dataset with LaZSL (or dclip/clip)")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--attributes", required=True, metavar="SET_OR_FILE",
                   help="attribute set stored on the dataset, JSON file, or published name (cub, ...)")
    p.add_argument("--label-field", default="lazsl")
    p.add_argument("--method", choices=("lazsl", "dclip", "clip"), default="lazsl")
    add_model_arguments(p)
    p.add_argument("--n-crops", type=int, default=90)
    p.add_argument("--crop-min", type=float, default=0.6, help="alpha: smallest crop side / min(H, W)")
    p.add_argument("--crop-max", type=float, default=0.9, help="beta: largest crop side / min(H, W)")
    p.add_argument("--theta", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="image decoding processes")
    p.add_argument("--tag", default=None, help="only samples with this tag")
    p.add_argument("--gt-field", default=None,
                   help="Classification field whose classes must all be in the attribute set")
    p.add_argument("--restrict-to-set", action="store_true",
                   help="with --gt-field: skip samples whose class is not in the set instead of failing")
    p.add_argument("--skip-existing", action="store_true",
                   help="only samples without a prediction yet (resume an interrupted run with "
                        "the same parameters); samples with only an error are retried")
    p.add_argument("--top-k-crops", type=int, default=None,
                   help="store only the k crops with most transport mass as detections")
    p.add_argument("--write-every", type=int, default=64, metavar="N",
                   help="samples per database write (a killed run keeps every written batch)")
    p.add_argument("--heatmap", action="store_true", help="also write an evidence heatmap per sample")
    p.add_argument("--prompt-style", choices=("dclip", "legacy"), default="dclip")
    p.set_defaults(func=_classify)
    logging.getLogger("fiftyone_lazsl").setLevel(logging.INFO)
