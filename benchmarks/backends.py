"""The crop backends compared in one run, without FiftyOne (core of ``benchmarks/gpu_check.sh``).

For each backend (``--backends``, default ``pil,device``) on the same model,
images and device:

1. ``crop_stage``: the visual set of one image made standalone, per image: the
   decode worker's part (``VisualSetSpec.prepare``, single-threaded as in a
   DataLoader worker: the PIL crops for ``"pil"``, only the decoded pixels for
   ``"device"``), the main process's part (``build_views`` on the model's
   device: normalisation for ``"pil"``, resampling + normalisation for
   ``"device"``; a batch of ``--batch-size`` images at once, synchronised), and
   the bytes a worker sends per image;
2. ``exact``: the backend's views against ``"pil"``'s on those images (number
   of differing values; 0 means bit for bit);
3. ``pipeline``: ``iter_predictions`` over ``--images`` files (decode workers,
   views, encoder, LaZSL scoring for the 200 CUB classes, evidence): images/s,
   seconds per image after the first batch, and the share of the main
   process's time spent in ``build_views`` (the crop stage) and in the encoder
   (each timed with a device synchronisation around it);
4. ``encoder_floor``: the model's forward on pre-built views, per image, at the
   batch size, measured before and after the pipelines.

Ratios in one run: ``pipeline_over_floor`` per backend and
``device_over_pil_crop_stage`` (worker part + main-process part per image).
Random weights (timings do not depend on them). Writes ``<out-dir>/<name>.json``
and ``.md``; needs torch, torchvision, open_clip, Pillow and NumPy only.

    python benchmarks/backends.py --device cpu --model ViT-B-32 --images 12 --batch-size 4
    python benchmarks/backends.py --device cuda --model ViT-B-16 --images 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = pathlib.Path(os.environ.get("LAZSL_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _clock(device):
    def now():
        _sync(device)
        return time.perf_counter()

    return now


def _images(n: int) -> list[str]:
    files = sorted(glob.glob(str(SHARED / "images" / "cub" / "*" / "*")))
    if not files:
        raise SystemExit(f"no photos under {SHARED / 'images' / 'cub'} (set LAZSL_SHARED_DATA)")
    step = max(1, len(files) // n)
    return (files[::step] * (1 + n // max(1, len(files))))[:n]


def crop_stage(clf, backends, paths, batch_size, clock, reps):
    """Standalone crop stage of each backend on the same decoded images."""
    import torch

    from fiftyone_lazsl.core.crops import build_views
    from fiftyone_lazsl.core.imageio import load_image

    images = [load_image(p) for p in paths]
    dev = clf.model.device
    threads = torch.get_num_threads()
    out, views = {}, {}
    for backend in backends:
        spec = dataclasses.replace(clf.visual_spec, backend=backend)
        worker, main, sent = [], [], []
        for rep in range(reps + 1):  # the first repetition warms up
            for s in range(0, len(images), batch_size):
                chunk = list(zip(images[s : s + batch_size], paths[s : s + batch_size]))
                torch.set_num_threads(1)  # a decode worker runs single-threaded
                prepared = []
                for im, k in chunk:
                    t0 = time.perf_counter()
                    prepared.append(spec.prepare(im, k))
                    worker.append(time.perf_counter() - t0)
                    sent.append(
                        sum(
                            t.numel() * t.element_size()
                            for t in (
                                prepared[-1].pixels,
                                prepared[-1].image,
                                prepared[-1].decoded,
                                prepared[-1].normalized,
                            )
                            if t is not None
                        )
                    )
                torch.set_num_threads(threads)
                t0 = clock()
                v = build_views(prepared, spec, device=dev)
                main.append((clock() - t0) / len(chunk))
                if rep == 0:
                    worker.clear(), main.clear(), sent.clear()
                views[(backend, s)] = v.cpu()
        w, m = statistics.median(worker), statistics.median(main)
        out[backend] = dict(
            worker_s_per_image=w,
            main_s_per_image=m,
            s_per_image=w + m,
            worker_images_per_s=1 / w,
            bytes_sent_per_image=statistics.median(sent),
        )
    for backend in backends:
        diff = [
            int((views[(backend, s)] != views[("pil", s)]).sum())
            for s in range(0, len(images), batch_size)
            if ("pil", s) in views
        ]
        out[backend]["values_differing_from_pil"] = sum(diff) if diff else None
    out["images"] = len(images)
    return out


def floor(clf, paths, batch_size, clock, reps):
    """Encoder forward on pre-built views: seconds per image (median)."""
    import torch

    from fiftyone_lazsl.core.crops import build_views
    from fiftyone_lazsl.core.imageio import load_image

    spec = clf.visual_spec
    prepared = [spec.prepare(load_image(p), p) for p in paths[:batch_size]]
    px = build_views(prepared, spec, device=clf.model.device)
    with torch.inference_mode():
        clf.model.encode_images(px)
        times = []
        for _ in range(reps):
            t0 = clock()
            clf.model.encode_images(px)
            times.append((clock() - t0) / len(prepared))
    return statistics.median(times)


def pipeline(clf, paths, batch_size, num_workers, clock):
    """``iter_predictions`` end to end, with the main process's crop stage
    (``build_views``) and encoder timed inside it."""
    import fiftyone_lazsl.core.classifier as C
    from fiftyone_lazsl.core.pipeline import iter_predictions

    t = {"crops": 0.0, "encode": 0.0}
    orig_bv, orig_enc = C.build_views, clf.model.encode_images

    def wrap(key, fn):
        def timed(*a, **k):
            t0 = clock()
            r = fn(*a, **k)
            t[key] += clock() - t0
            return r

        return timed

    C.build_views = wrap("crops", orig_bv)
    clf.model.encode_images = wrap("encode", orig_enc)
    try:
        t0 = clock()
        first, n = None, 0
        for items in iter_predictions(clf, paths, batch_size=batch_size, num_workers=num_workers):
            bad = [it for it in items if it.prediction is None]
            if bad:
                raise RuntimeError(f"{bad[0].filepath}: {bad[0].error}")
            n += len(items)
            if first is None:
                first, n_first = clock(), n
        total = clock() - t0
    finally:
        C.build_views = orig_bv
        del clf.model.encode_images
    steady = (total - (first - t0)) / max(1, n - n_first)
    return dict(
        images=n,
        seconds=total,
        images_per_s=n / total,
        s_per_image=total / n,
        steady_s_per_image=steady,
        steady_images_per_s=1 / steady if steady else None,
        crop_stage_s_per_image=t["crops"] / n,
        encoder_s_per_image=t["encode"] / n,
        crop_stage_share=t["crops"] / total,
        encoder_share=t["encode"] / total,
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--model", default=None, help="open_clip model (default ViT-B-16 on CUDA, ViT-B-32 on CPU)"
    )
    ap.add_argument("--n-crops", type=int, default=90)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--images", type=int, default=None, help="pipeline images per backend")
    ap.add_argument(
        "--crop-images", type=int, default=None, help="images for the standalone crop stage"
    )
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--backends", default="pil,device")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)

    import torch

    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.core.models import load_model
    from fiftyone_lazsl.core.pipeline import default_num_workers

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = torch.device(device).type == "cuda"
    model_name = args.model or ("ViT-B-16" if cuda else "ViT-B-32")
    bs = args.batch_size or (32 if cuda else 4)
    n_images = args.images or (8 * bs if cuda else 3 * bs)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    backends = args.backends.split(",")
    if "pil" not in backends:
        backends.insert(0, "pil")
    clock = _clock(device)
    log = lambda s: print(f"[backends {time.strftime('%H:%M:%S')}] {s}", flush=True)  # noqa: E731

    aset = AttributeSet.from_json(str(SHARED / "attribute_sets" / "cub.json"))
    model = load_model(model_name, None, device=device)
    paths = _images(n_images)
    crop_paths = paths[: args.crop_images or bs]
    r = {
        "meta": dict(
            device=device,
            device_name=torch.cuda.get_device_name()
            if cuda
            else (platform.processor() or platform.machine()),
            model=model_name,
            image_size=model.image_size,
            n_crops=args.n_crops,
            classes=len(aset.classes),
            batch_size=bs,
            num_workers=workers,
            images=n_images,
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            torch=torch.__version__,
            python=platform.python_version(),
            load_average=list(os.getloadavg()),
            when=time.strftime("%Y-%m-%d %H:%M %Z"),
            random_weights=True,
        )
    }
    clfs = {
        b: LaZSLClassifier(aset, model, n_crops=args.n_crops, batch_size=bs, crop_backend=b)
        for b in backends
    }
    log(
        f"{model_name} on {device}, N={args.n_crops}, C={len(aset.classes)}, batch {bs}, "
        f"{n_images} images, {workers} decode workers, backends {backends}"
    )
    f1 = floor(clfs["pil"], paths, bs, clock, max(1, args.reps))
    r["crop_stage"] = crop_stage(clfs["pil"], backends, crop_paths, bs, clock, args.reps)
    for b in backends:
        c = r["crop_stage"][b]
        log(
            f"crop stage {b}: worker {c['worker_s_per_image'] * 1e3:.1f} ms + main "
            f"{c['main_s_per_image'] * 1e3:.1f} ms per image, {c['bytes_sent_per_image'] / 2**20:.2f} MiB "
            f"sent per image, {c['values_differing_from_pil']} values differ from pil"
        )
    r["pipeline"] = {}
    for b in backends:
        r["pipeline"][b] = pipeline(clfs[b], paths, bs, workers, clock)
        p = r["pipeline"][b]
        log(
            f"pipeline {b}: {p['images_per_s']:.2f} images/s ({p['steady_images_per_s']:.2f} after the "
            f"first batch); crop stage {100 * p['crop_stage_share']:.1f}% of the time, encoder "
            f"{100 * p['encoder_share']:.1f}%"
        )
    f2 = floor(clfs["pil"], paths, bs, clock, max(1, args.reps))
    fl = (f1 + f2) / 2
    r["encoder_floor"] = dict(s_per_image=fl, images_per_s=1 / fl, before=f1, after=f2)
    r["ratios"] = {
        f"pipeline_over_floor_{b}": r["pipeline"][b]["steady_s_per_image"] / fl for b in backends
    }
    if "device" in backends:
        r["ratios"]["device_over_pil_crop_stage"] = (
            r["crop_stage"]["device"]["s_per_image"] / r["crop_stage"]["pil"]["s_per_image"]
        )
        r["ratios"]["device_over_pil_bytes_sent"] = (
            r["crop_stage"]["device"]["bytes_sent_per_image"]
            / r["crop_stage"]["pil"]["bytes_sent_per_image"]
        )
    r["meta"]["load_average_end"] = list(os.getloadavg())
    log(
        f"encoder floor {fl * 1e3:.1f} ms/image ({1 / fl:.1f} images/s); ratios "
        + ", ".join(f"{k} {v:.3f}" for k, v in r["ratios"].items())
    )

    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"backends-{device}-{model_name}"
    (out / f"{name}.json").write_text(json.dumps(r, indent=2))
    m = r["meta"]
    lines = [
        f"# Crop backends ({m['device_name']}, {m['model']} random weights, N = {m['n_crops']}, "
        f"C = {m['classes']}, batch {m['batch_size']}, {m['num_workers']} decode workers, {m['when']}; "
        f"load average {m['load_average'][0]:.1f} at start)",
        "",
        "| backend | worker ms/img | main ms/img | crop stage ms/img | MiB sent/img | "
        "differing values vs pil | pipeline images/s | after 1st batch | crop stage share | "
        "pipeline / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in backends:
        c, p = r["crop_stage"][b], r["pipeline"][b]
        lines.append(
            f"| {b} | {c['worker_s_per_image'] * 1e3:.1f} | {c['main_s_per_image'] * 1e3:.1f} | "
            f"{c['s_per_image'] * 1e3:.1f} | {c['bytes_sent_per_image'] / 2**20:.2f} | "
            f"{c['values_differing_from_pil']} | {p['images_per_s']:.2f} | "
            f"{p['steady_images_per_s']:.2f} | {100 * p['crop_stage_share']:.1f}% | "
            f"{r['ratios'][f'pipeline_over_floor_{b}']:.2f} |"
        )
    lines += ["", f"Encoder floor: {fl * 1e3:.1f} ms/image ({1 / fl:.1f} images/s)."]
    if "device_over_pil_crop_stage" in r["ratios"]:
        lines.append(
            f"device / pil crop stage: {r['ratios']['device_over_pil_crop_stage']:.2f}; "
            f"bytes sent: {r['ratios']['device_over_pil_bytes_sent']:.3f}."
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return r


if __name__ == "__main__":
    main()
