"""``classify`` sub-command: run LaZSL / DCLIP / CLIP on a dataset.

Every LaZSL parameter is a flag derived from
:class:`~fiftyone_lazsl.core.config.LaZSLConfig` (``n_crops`` -> ``--n-crops``),
so the CLI, Python and the operator accept the same parameters.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

from fiftyone_lazsl.cli import argtypes, progress_lines
from fiftyone_lazsl.cli.datasets import load_dataset
from fiftyone_lazsl.core.config import LaZSLConfig, OutputConfig
from fiftyone_lazsl.errors import ConfigError


def _classify(args: argparse.Namespace) -> int:
    from fiftyone_lazsl.fo.apply import run_lazsl

    config = LaZSLConfig.from_cli_args(args)  # validated before anything is touched
    output = OutputConfig.from_cli_args(args)
    devices = _parse_devices(args.devices) if args.devices else None
    if devices and not args.shards:
        args.shards = len(devices)
    ds = load_dataset(args.dataset)
    view = ds.match_tags(args.tag) if args.tag else ds
    if args.shards:
        return _classify_sharded(args, config, output, ds, view, devices)
    progress = True if sys.stderr.isatty() else progress_lines()
    try:
        summary = run_lazsl(
            view,
            args.attributes,
            config=config,
            output=output,
            label_field=args.label_field,
            skip_existing=args.skip_existing,
            gt_field=args.gt_field,
            restrict_to_set=args.restrict_to_set,
            progress=progress,
        )
    finally:
        if progress is not True:
            progress.close()
    if summary.num_samples == 0:
        print(
            "nothing to classify: the view is empty"
            + (" (every sample already has a prediction)" if args.skip_existing else "")
        )
        return 0
    print_summary(summary)
    return 0


def _parse_devices(text: str) -> list[str]:
    """``--devices cuda:0,cuda:1`` (or ``cpu,cpu``): one worker per entry."""
    devs = [d.strip() for d in text.split(",") if d.strip()]
    kinds = {d.split(":")[0] for d in devs}
    if not devs or not kinds <= {"cuda", "cpu"} or len(kinds) > 1:
        raise ConfigError(
            f"--devices: expected a comma-separated list of cuda:N (or cpu) "
            f"entries of one kind, got {text!r}"
        )
    for d in devs:
        if d.startswith("cuda") and not d.partition(":")[2].isdigit():
            raise ConfigError(f"--devices: {d!r} must name a GPU index, e.g. cuda:0")
    return devs


def _launch_workers(devices: list[str]) -> list:
    """One ``fiftyone delegated launch`` process per device; a CUDA worker
    sees only its GPU (``CUDA_VISIBLE_DEVICES``)."""
    exe = shutil.which("fiftyone") or os.path.join(os.path.dirname(sys.executable), "fiftyone")
    procs = []
    for d in devices:
        env = dict(os.environ, FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true")
        env["CUDA_VISIBLE_DEVICES"] = d.partition(":")[2] if d.startswith("cuda") else ""
        procs.append(
            subprocess.Popen(
                [exe, "delegated", "launch"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    return procs


def _classify_sharded(
    args: argparse.Namespace,
    config: LaZSLConfig,
    output: OutputConfig,
    ds: Any,
    view: Any,
    devices: list[str] | None,
) -> int:
    from fiftyone_lazsl.fo import shards

    shard_devices = None
    if devices:  # each worker sees one GPU, as "cuda"
        shard_devices = ["cuda" if d.startswith("cuda") else "cpu" for d in devices]
    run = shards.queue_shards(
        view,
        args.attributes,
        args.shards,
        config=config,
        output=output,
        label_field=args.label_field,
        skip_existing=args.skip_existing,
        gt_field=args.gt_field,
        restrict_to_set=args.restrict_to_set,
        devices=shard_devices,
    )
    if not run.operation_ids:
        print("nothing to classify: the view is empty")
        return 0
    print(
        f"queued {len(run.operation_ids)} shard(s) of the run on field {args.label_field!r} "
        f"(run record {run.run_key}):"
    )
    for op_id, n in zip(run.operation_ids, run.shard_sizes):
        print(f"  {op_id}  {n} samples")
    if not (args.wait or devices):
        print(
            "run them with one or more `fiftyone delegated launch` workers; "
            f"`fiftyone-lazsl classify ... --shards {args.shards} --wait` waits"
        )
        return 0
    workers = _launch_workers(devices) if devices else []
    try:
        agg = shards.wait_for_shards(ds, args.label_field)
    finally:
        for p in workers:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
    print(
        f"{agg['status']}: {agg['num_predicted']}/{agg['num_samples']} samples classified "
        f"into field {args.label_field!r}, {agg['num_failed']} failed, "
        f"{agg['num_shards']} shards"
    )
    for s in agg["shards"]:
        print(
            f"  shard {s['index']}: {s['status']}, {s['num_predicted']}/{s['num_samples']} "
            f"predicted, {s['num_failed']} failed ({s['worker'] or 'no worker'})"
        )
    return 0 if agg["status"] == "completed" else 1


def print_summary(summary) -> None:
    """Print a :class:`~fiftyone_lazsl.fo.apply.RunSummary` and its first 20 failures."""
    print(summary)
    for _sid, path, reason in summary.failures[:20]:
        print(f"  failed: {path}: {reason}")
    if summary.num_failed > 20:
        print(f"  ... and {summary.num_failed - 20} more")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="zero-shot classify a dataset with LaZSL (or wca/dclip/clip)"
    )
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument(
        "--attributes",
        required=True,
        metavar="SET_OR_FILE",
        help="attribute set stored on the dataset, JSON file, or published name (cub, ...)",
    )
    p.add_argument(
        "--label-field",
        default="lazsl",
        help="prediction field F; also F_crops, F_attributes, F_error (default: lazsl)",
    )
    LaZSLConfig.add_cli_arguments(p)
    out = p.add_argument_group("what to classify and write")
    out.add_argument("--tag", default=None, type=argtypes.tag, help="only samples with this tag")
    out.add_argument(
        "--gt-field",
        default=None,
        help="Classification field whose classes must all be in the attribute set",
    )
    out.add_argument(
        "--restrict-to-set",
        action="store_true",
        help="with --gt-field: skip samples whose class is not in the set instead of failing",
    )
    out.add_argument(
        "--skip-existing",
        action="store_true",
        help="only samples without a prediction yet (resume an interrupted run with "
        "the same parameters); samples with only an error are retried",
    )
    OutputConfig.add_cli_arguments(out)  # --top-k-crops, --evidence, ... (see OutputConfig)
    sh = p.add_argument_group("one run across several workers")
    sh.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="K",
        help="queue K delegated operations over disjoint slices of the view (by "
        "sample id) and print their ids; `fiftyone delegated launch` workers "
        "run them",
    )
    sh.add_argument(
        "--wait",
        action="store_true",
        help="with --shards: wait for the shards and print the combined summary",
    )
    sh.add_argument(
        "--devices",
        default=None,
        metavar="cuda:0,cuda:1",
        help="start one local worker per device and wait (implies --shards "
        "<number of devices> unless given)",
    )
    p.set_defaults(func=_classify)
    logging.getLogger("fiftyone_lazsl").setLevel(logging.INFO)
