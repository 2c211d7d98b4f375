"""Re-scoring in a new process against a fresh run, both of a few samples.

What a user iterating on an attribute set pays per step: ``rescore`` of a
small view from stored features, started in a new Python process (no model
in memory), against ``run_lazsl`` of the same samples with the same edited
set, also in a new process. Both are timed around the call only, with the
imports (torch, open_clip, FiftyOne, the library) done first in each process
(their time is reported separately); the edited set's text features are in
the text-feature cache for both (a first re-scoring, not counted, fills it:
its time is reported as "text cache cold").

Weights: ViT-B-32 with random weights drawn once (seeded) and saved to a
``.safetensors`` file given as ``pretrained=``, so the weights have a stable
identity (random weights loaded with ``pretrained=None`` are never cached
and their stored features cannot be reused by another process); timings do
not depend on the weight values. Also counted in each child:
``open_clip.create_model`` calls that build weights (not the ``meta``
device), and text-tower calls.

Private FiftyOne database (its own mongod, as ``benchmarks/run.py``); each
measured step is its own subprocess; the median of ``--reps`` processes is
reported, the two measures interleaved (rescore, fresh run, rescore, ...)
so that the load of a shared machine hits both alike. Writes
``benchmarks/results/<name>.json`` and ``.md``.

    .venv/bin/python benchmarks/rescore_cold.py            # ViT-B-32, 8 samples, N = 32
    .venv/bin/python benchmarks/rescore_cold.py --quick    # tiny model, 2 samples (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MARKER = "COLD_RESULT"
DATASET = "bench-rescore-cold"
#: The aim: re-scoring a few samples at least this many times faster than a fresh run.
TARGET_SPEEDUP = 30.0


def _log(s: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {s}", flush=True)


# ------------------------------------------------------------------ children
def _child(args: argparse.Namespace) -> None:
    """One measured step in its own process; prints ``COLD_RESULT {json}``."""
    t0 = time.perf_counter()
    import fiftyone as fo
    import open_clip
    import torch  # noqa: F401
    from rescore import _new_set
    from run import _attribute_set, _register_tiny

    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core import models

    _register_tiny()
    t_import = time.perf_counter() - t0
    calls = {"weights_built": 0, "meta_builds": 0, "text_encoder_calls": 0}
    create, encode = open_clip.create_model, models.encode_text_tokens

    def counting_create(*a, **k):
        calls["meta_builds" if str(k.get("device")) == "meta" else "weights_built"] += 1
        return create(*a, **k)

    def counting_encode(*a, **k):
        calls["text_encoder_calls"] += 1
        return encode(*a, **k)

    open_clip.create_model = counting_create
    models.encode_text_tokens = counting_encode
    aset = _attribute_set() if not args.quick else _quick_set()
    new = _new_set(aset)
    kw = dict(model=args.model, pretrained=args.weights, n_crops=args.n_crops, device=args.device)
    out: dict = {"import_s": t_import}
    if args.child == "prepare":
        import glob

        photos = sorted(glob.glob(os.path.join(args.photos, "*")))[: args.images]
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
        ds = fo.Dataset(DATASET, persistent=True)
        ds.add_samples([fo.Sample(filepath=p) for p in photos])
        t = time.perf_counter()
        s = run_lazsl(ds, aset, label_field="first", store_features=True, **kw)
        out.update(
            seconds=time.perf_counter() - t,
            predicted=s.num_predicted,
            stored=s.feature_store["stored"],
        )
    elif args.child == "rescore":
        ds = fo.load_dataset(DATASET)
        t = time.perf_counter()
        s = rescore(ds, new, from_field="first", label_field=args.field)
        out.update(
            seconds=time.perf_counter() - t,
            predicted=s.num_predicted,
            reused=s.feature_store["reused"],
        )
    elif args.child == "fresh":
        ds = fo.load_dataset(DATASET)
        t = time.perf_counter()
        s = run_lazsl(ds, new, label_field=args.field, **kw)
        out.update(seconds=time.perf_counter() - t, predicted=s.num_predicted)
    elif args.child == "compare":
        import numpy as np

        ds = fo.load_dataset(DATASET)
        a, b = ds.values(args.field), ds.values("fresh_0")
        out.update(
            same_labels=all(x.label == y.label for x, y in zip(a, b)),
            max_abs_logit_diff=max(
                float(np.abs(np.array(x.logits) - np.array(y.logits)).max()) for x, y in zip(a, b)
            ),
        )
        ds.delete()
    out.update(calls)
    print(f"{MARKER} {json.dumps(out)}", flush=True)


def _quick_set():
    """--quick: a 4-class set with the photos' classes (tiny model)."""
    from fiftyone_lazsl.core.attributes import AttributeSet

    return AttributeSet.from_dict(
        {c: [f"{c} feathers", "a small beak", "long wings"] for c in ("a", "b", "c", "d")},
        name="quick",
    )


def _run_child(args: argparse.Namespace, role: str, field: str = "") -> dict:
    from run import child_result

    cmd = [
        sys.executable,
        __file__,
        "--child",
        role,
        "--field",
        field,
        "--model",
        args.model,
        "--weights",
        args.weights,
        "--n-crops",
        str(args.n_crops),
        "--device",
        args.device,
        "--images",
        str(args.images),
        "--photos",
        args.photos,
    ]
    if args.quick:
        cmd.append("--quick")
    r = child_result(cmd, MARKER, f"{role} child")
    _log(
        f"{role}{' ' + field if field else ''}: {r.get('seconds', 0):.3f} s "
        f"(imports {r['import_s']:.1f} s; weights built {r['weights_built']}, "
        f"text-encoder calls {r['text_encoder_calls']})"
    )
    return r


# ------------------------------------------------------------------ parent
def _save_weights(model: str, path: str, seed: int = 0) -> str:
    """Random weights of ``model``, drawn from ``seed``, saved as safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = open_clip.create_model(model, pretrained=None, pretrained_text=False)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)
    return path


def _photos(n: int, folder: str) -> str:
    """``n`` distinct real photos linked into ``folder`` (sorted names)."""
    from run import _image_paths

    os.makedirs(folder, exist_ok=True)
    for i, p in enumerate(sorted(set(_image_paths(max(n, 1) * 4)))[:n]):
        os.symlink(p, os.path.join(folder, f"{i:03d}{pathlib.Path(p).suffix}"))
    return folder


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 samples, N = 4, 1 rep")
    ap.add_argument("--model", default=None, help="open_clip model (default ViT-B-32)")
    ap.add_argument("--images", type=int, default=None, help="samples (default 8)")
    ap.add_argument("--n-crops", type=int, default=None, help="N (default 32)")
    ap.add_argument("--reps", type=int, default=None, help="processes per measure (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default=None, help="output basename (default rescore-cold-<device>)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--field", default="", help=argparse.SUPPRESS)
    ap.add_argument("--weights", default="", help=argparse.SUPPRESS)
    ap.add_argument("--photos", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.model = args.model or ("lazsl-tiny-test" if args.quick else "ViT-B-32")
    args.images = args.images or (2 if args.quick else 8)
    args.n_crops = args.n_crops or (4 if args.quick else 32)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.child:
        return _child(args)

    from run import _register_tiny, _setup_env, _start_private_mongod

    import fiftyone_lazsl

    lib = str(pathlib.Path(fiftyone_lazsl.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([lib, os.environ.get("PYTHONPATH", "")])
    tmp = tempfile.mkdtemp(prefix="lazsl-bench-cold-")
    _setup_env(tmp)
    mongod = _start_private_mongod(tmp)
    try:
        _register_tiny()
        args.weights = _save_weights(args.model, os.path.join(tmp, "weights.safetensors"))
        args.photos = _photos(args.images, os.path.join(tmp, "photos"))
        _log(
            f"{args.model} (random weights from a file), {args.images} samples, "
            f"N = {args.n_crops}, {args.reps} process(es) per measure; library {lib}"
        )
        prep = _run_child(args, "prepare")
        cold = _run_child(args, "rescore", "cold")  # fills the text cache for the new set
        warm, fresh = [], []
        for i in range(args.reps):  # interleaved: a shared machine's load hits both alike
            warm.append(_run_child(args, "rescore", f"again_{i}"))
            fresh.append(_run_child(args, "fresh", f"fresh_{i}"))
        cmp = _run_child(args, "compare", "again_0")
    finally:
        from fiftyone_lazsl.testing import mongod as private_mongod

        private_mongod.stop(mongod)
        shutil.rmtree(tmp, ignore_errors=True)
    import torch

    t_rescore = statistics.median(r["seconds"] for r in warm)
    t_fresh = statistics.median(r["seconds"] for r in fresh)
    r = {
        "meta": dict(
            model=args.model,
            random_weights=True,
            device=args.device,
            samples=args.images,
            n_crops=args.n_crops,
            reps=args.reps,
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            torch=torch.__version__,
            when=time.strftime("%Y-%m-%d %H:%M"),
            quick=args.quick,
        ),
        "prepare": prep,
        "rescore_text_cache_cold": cold,
        "rescore": warm,
        "fresh": fresh,
        "rescore_s": t_rescore,
        "fresh_s": t_fresh,
        "speedup": t_fresh / t_rescore,
        "speedup_per_pair": [f["seconds"] / w["seconds"] for w, f in zip(warm, fresh)],
        "import_s": statistics.median(x["import_s"] for x in warm + fresh),
        "rescore_weights_built": max(x["weights_built"] for x in warm),
        "rescore_text_encoder_calls": max(x["text_encoder_calls"] for x in warm),
        "same_labels": cmp["same_labels"],
        "max_abs_logit_diff": cmp["max_abs_logit_diff"],
    }
    r["checks"] = {
        "speedup": r["speedup"] >= TARGET_SPEEDUP,
        "rescore_builds_no_weights": r["rescore_weights_built"] == 0,
    }
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("rescore-cold-quick" if args.quick else f"rescore-cold-{args.device}")
    (out_dir / f"{name}.json").write_text(json.dumps(r, indent=2))
    n = args.images
    lines = [
        f"# Re-scoring in a new process vs a fresh run ({args.device}, {args.model} "
        f"random weights from a file, {n} samples, N = {args.n_crops})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| fresh `run_lazsl`, edited set, new process (median of {args.reps}) | {t_fresh:.2f} s |",
        f"| `rescore`, edited set, new process, text features cached (median of {args.reps}) "
        f"| {t_rescore:.3f} s |",
        f"| speed-up (aim >= {TARGET_SPEEDUP:.0f}x) | {r['speedup']:.1f}x |",
        f"| speed-up of each interleaved pair (rescore, then fresh run) | "
        f"{', '.join(f'{x:.1f}x' for x in r['speedup_per_pair'])} |",
        f"| `rescore`, text cache cold (first re-scoring with the set) | {cold['seconds']:.2f} s |",
        f"| weights built by `rescore` with cached text features (open_clip.create_model "
        f"calls) | {r['rescore_weights_built']} |",
        f"| text-encoder calls of `rescore` with cached text features | "
        f"{r['rescore_text_encoder_calls']} |",
        f"| imports per process (torch, open_clip, FiftyOne, library; not timed above) | "
        f"{r['import_s']:.1f} s |",
        f"| same labels as the fresh run | {r['same_labels']} |",
        f"| max abs logit difference vs the fresh run (float16 store) | "
        f"{r['max_abs_logit_diff']:.4f} |",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    _log(f"wrote {out_dir / name}.json/.md")
    print("\n".join(lines))
    return r


if __name__ == "__main__":
    main()
