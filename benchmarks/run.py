"""Throughput benchmark of the LaZSL pipeline against the image-encoder floor.

One command measures, in one run on one machine (see ``--help``):

1. ``encoder_floor``: seconds per image to encode its ``1 + N`` views (views
   pre-built, model forward only) at the chosen batch size;
2. ``pipeline``: the full per-image cost through ``iter_predictions`` (decode in
   DataLoader workers, crops, encode, scoring, evidence) plus ``labels.label_documents``;
   ``run_lazsl``: the same into a real FiftyOne dataset (private mongod);
3. ``scoring``: ``lazsl_scores`` for C = 200 classes (the cub attribute set's
   attribute counts, up to 9), N crops, on the floor run's features, against a
   per-class reference loop written like the official ``OP_d.get_OP_distence``
   (batch size 1, one class at a time, ``.item()`` each Sinkhorn iteration);
4. ``crops``: crop construction, standalone: ``crop_backend="pil"``
   (each box cut from the PIL image and sent through the model's own
   preprocessing; done by the decode workers: images/s per worker) next to
   ``"device"`` (the same views resampled on the model's device from the decoded
   image; values differing from ``"pil"``, expected 0) and ``"tensor"``
   (``roi_align`` on the model's device), each as a fraction of the encoder
   floor, the bytes a worker sends, and the tensor path's deviation from the
   exact views (``benchmarks/backends.py`` compares the backends end to end);
5. ``memory``: peak RSS (and CUDA memory) of ``run_lazsl`` over 100 and 1,000
   images, one subprocess per size (a cheaper configuration, see ``--mem-model``);
6. ``write``: bytes per stored sample (CUB and ImageNet-1k, compact and full
   evidence) and the rate of building + writing 1,000 samples' default outputs
   through the background writer, next to a raw ``insert_many`` of the same
   documents.

Models have random weights (timings do not depend on the weights); the JSON says so.
Writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``.

    .venv/bin/python benchmarks/run.py            # full run (CPU: ViT-B-32, N=90)
    .venv/bin/python benchmarks/run.py --quick    # tiny model, a few images (smoke)
    .venv/bin/python benchmarks/run.py --device cuda   # GPU: ViT-B-16, batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LAZSL_SHARED_DATA") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "benchmarks" / "results"

TARGETS = {
    "pipeline_over_floor": 1.15,  # full pipeline time per image <= 1.15 x floor
    "scoring_fraction_of_floor": 0.03,  # scoring for 200 classes <= 3% of floor
    "scoring_speedup_vs_loop": 20.0,  # >= 20x faster than the per-class loop
    "crops_fraction_of_floor": 0.05,  # crop extraction <= 5% of floor
    "memory_growth_100_to_1000": 1.10,  # peak memory(1000) <= 1.10 x peak memory(100)
    "cuda_images_per_s": 150.0,  # ViT-B-16, N=90, C=200 on one H200
    "cub_bytes_per_sample": 10_000,  # default outputs, C=200, N=90
    "write_samples_per_s": 1000.0,  # default outputs built + written
}


# ---------------------------------------------------------------- environment
def _setup_env(tmp: str) -> None:
    """Isolated FiftyOne database (must run before fiftyone is imported)."""
    os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(tmp, "db")
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["FIFTYONE_LAZSL_CACHE"] = os.path.join(tmp, "cache")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _start_private_mongod(tmp: str):
    """FiftyOne's bundled mongod on a free loopback port
    (:mod:`fiftyone_lazsl.testing.mongod`), so the benchmark never attaches to a
    user's FiftyOne database."""
    from fiftyone_lazsl.testing import mongod as private_mongod

    return private_mongod.start(
        os.environ["FIFTYONE_DATABASE_DIR"], os.path.join(tmp, "mongod.log")
    )


def _register_tiny() -> str:
    from fiftyone_lazsl.testing.tiny_clip import register

    return register()


def _image_paths(n: int) -> list[str]:
    """``n`` real photos from ../shared/data/images, cycled."""
    files = sorted(
        str(p)
        for p in (SHARED / "images").rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not files:
        raise SystemExit(f"no images under {SHARED / 'images'}")
    return [files[i % len(files)] for i in range(n)]


def _attribute_set():
    from fiftyone_lazsl.core.attributes import AttributeSet

    return AttributeSet.from_json(str(SHARED / "attribute_sets" / "cub.json"))


class _Clock:
    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


# -------------------------------------------------------- reference per-class loop
def reference_op_distance(image_features, text_features, *, theta, eps, max_iter, stop_tol, gamma):
    """One (image, class) problem the way the official ``OP_d.get_OP_distence``
    is called by its evaluation script: batch size 1, one class (its real
    attributes ``[A_c, D]``), everything recomputed per call, a host-side
    convergence check (``.item()``) after every Sinkhorn iteration."""
    import torch

    g = image_features[:, :1]  # [1, 1, D]
    x = image_features[:, 1:]  # [1, N, D]
    sim_g = torch.einsum("bmd,ad->bma", g, text_features)  # [1, 1, A]
    sim_l = torch.einsum("bnd,ad->bna", x, text_features)  # [1, N, A]
    sim = (1 - theta) * sim_g + theta * sim_l
    r_n = torch.einsum("bnd,bmd->bn", x, g)
    keep = ~(r_n < r_n.mean(dim=1, keepdim=True) + gamma)
    xx = keep.float() / keep.sum(dim=1, keepdim=True).float()  # crop marginal
    A = text_features.shape[0]
    yy = torch.zeros(1, A, dtype=sim.dtype, device=sim.device).fill_(1.0 / A)
    KK = torch.exp(-(1.0 - sim) / eps)
    r = torch.ones_like(xx)
    c = torch.ones_like(yy)
    for _ in range(max_iter):
        r0 = r
        r = xx / torch.matmul(KK, c.unsqueeze(-1)).squeeze(-1)
        c = yy / torch.matmul(KK.permute(0, 2, 1).contiguous(), r.unsqueeze(-1)).squeeze(-1)
        err = (r - r0).abs().mean()
        if err.item() < stop_tol:
            break
    T = torch.matmul(r.unsqueeze(-1), c.unsqueeze(-2)) * KK
    return torch.sum(T * sim, dim=(1, 2))


def reference_scores(image_features, per_class_text, **kw):
    import torch

    B = image_features.shape[0]
    out = torch.zeros(B, len(per_class_text), device=image_features.device)
    for b in range(B):
        img = image_features[b : b + 1]
        for c, t in enumerate(per_class_text):
            out[b, c] = reference_op_distance(img, t, **kw)[0]
    return out


# ------------------------------------------------------------------ sections
def bench_floor_and_crops(clf, images, keys, batch_size, reps, clock, warmup=True):
    """Encoder floor (model forward on pre-built views) and crop extraction, per
    image. ``images`` are decoded RGB PIL images. Returns (floor batch times,
    crop per-image times, features of the last batch)."""
    import torch

    from fiftyone_lazsl.core.crops import build_views

    m = clf.model
    V, S = 1 + clf.n_crops, m.image_size
    batch = images[:batch_size]
    bkeys = keys[:batch_size]
    pixels = torch.empty(len(batch) * V, 3, S, S, device=m.device)
    crop_times = []
    spec = clf.visual_spec
    for i, (im, k) in enumerate(zip(batch, bkeys)):
        t0 = clock()
        build_views([spec.prepare(im, k)], spec, device=m.device, out=pixels[i * V : (i + 1) * V])
        crop_times.append(clock() - t0)
    feats = m.encode_images(pixels) if warmup else None
    times = []
    for _ in range(reps):
        t0 = clock()
        feats = m.encode_images(pixels)
        times.append((clock() - t0) / len(batch))
    return times, crop_times, feats.view(len(batch), V, -1)


def bench_crops(clf, images, keys, clock, max_images):
    """Crop construction with the classifier's backend, per image: the CPU part
    (``VisualSetSpec.prepare``, what a decode worker does) plus the device part
    (``build_views``)."""
    from fiftyone_lazsl.core.crops import build_views

    spec, dev = clf.visual_spec, clf.model.device
    out = []
    for im, k in list(zip(images, keys))[:max_images]:
        t0 = clock()
        build_views([spec.prepare(im, k)], spec, device=dev)
        out.append(clock() - t0)
    return out


def bench_crop_construction(clf, images, keys, clock, reps=2):
    """Both crop backends on the same images, standalone (see the module docstring).

    Per backend: ``worker_s_per_image`` (``VisualSetSpec.prepare``, single
    thread, as in a DataLoader decode worker; images/s per worker is its
    inverse), ``device_s_per_image`` (``build_views`` on the model's device: the
    normalisation, plus the roi_align crops for ``"tensor"``), and the
    ``ipc_bytes_per_image`` a worker sends. ``tensor_deviation``: |tensor views -
    exact views| over all crops (normalised units), mean and max."""
    import dataclasses

    import torch

    from fiftyone_lazsl.core.crops import build_views

    dev = clf.model.device
    base = clf.visual_spec
    out = {}
    views = {}
    threads = torch.get_num_threads()
    for backend in ("pil", "device", "tensor"):
        spec = dataclasses.replace(base, backend=backend)
        worker, device_t, ipc = [], [], []
        for _ in range(reps):
            for im, k in zip(images, keys):
                torch.set_num_threads(1)  # a decode worker runs single-threaded
                t0 = time.perf_counter()
                prep = spec.prepare(im, k)
                worker.append(time.perf_counter() - t0)
                torch.set_num_threads(threads)
                ipc.append(
                    sum(
                        t.numel() * t.element_size()
                        for t in (prep.pixels, prep.image, prep.decoded)
                        if t is not None
                    )
                )
                t0 = clock()
                v = build_views([prep], spec, device=dev)
                device_t.append(clock() - t0)
                views[(backend, k)] = v
        w = statistics.median(worker)
        out[backend] = dict(
            worker_s_per_image=w,
            worker_images_per_s=1 / w,
            device_s_per_image=statistics.median(device_t),
            s_per_image=w + statistics.median(device_t),
            ipc_bytes_per_image=statistics.median(ipc),
            worker_samples=worker,
            device_samples=device_t,
        )
    diffs = torch.cat(
        [(views[("tensor", k)][1:] - views[("pil", k)][1:]).abs().flatten().cpu() for k in keys]
    )
    glob = max(float((views[("tensor", k)][0] - views[("pil", k)][0]).abs().max()) for k in keys)
    out["tensor_deviation"] = dict(
        mean=float(diffs.mean()),
        max=float(diffs.max()),
        p99=float(diffs.float().kthvalue(max(1, int(0.99 * diffs.numel())))[0]),
        global_view_max=glob,
        images=len(keys),
        crops=clf.n_crops,
        units="normalised (model mean/std) pixel values",
    )
    out["device_values_differing_from_pil"] = sum(
        int((views[("device", k)] != views[("pil", k)]).sum()) for k in keys
    )
    out["images"] = len(keys)
    out["image_sizes"] = [list(im.size) for im in images]
    return out


class StageTimer:
    """Times, inside a pipeline run, the calls the classifier makes to the encoder
    (``encode_images``), to the main process's part of crop construction
    (``build_views``: normalisation, and roi_align crops for ``"tensor"``; CPU
    only: on CUDA a per-batch sync would stall the pipeline; the PIL crops are
    made in the decode workers, see ``bench_crop_construction``) and to scoring (``lazsl_scores``), so
    that every stage is compared with the encoder under the same load at the same
    moment (a shared machine's load drifts by tens of percent within minutes)."""

    def __init__(self, clf, clock, crops=True):
        import fiftyone_lazsl.core.classifier as C

        self.C, self.clf, self.clock = C, clf, clock
        self.t = {"encode": 0.0, "crops": 0.0, "scoring": 0.0}
        self.orig = (clf.model.encode_images, C.build_views, C.lazsl_scores)
        enc, mv, ls = self.orig
        clf.model.encode_images = self._wrap("encode", enc)
        if crops:
            C.build_views = self._wrap("crops", mv)
        C.lazsl_scores = self._wrap("scoring", ls)

    def _wrap(self, key, fn):
        def timed(*a, **k):
            t0 = self.clock()
            out = fn(*a, **k)
            self.t[key] += self.clock() - t0
            return out

        return timed

    def reset(self):
        self.t = dict.fromkeys(self.t, 0.0)

    def close(self):
        del self.clf.model.encode_images
        self.C.build_views, self.C.lazsl_scores = self.orig[1], self.orig[2]


def bench_pipeline(clf, paths, batch_size, num_workers, clock):
    from fiftyone_lazsl.core.pipeline import iter_predictions
    from fiftyone_lazsl.fo.labels import label_documents

    n_labels = 0
    batch_times = []
    preds = []
    t0 = clock()
    last = t0
    for items in iter_predictions(clf, paths, batch_size=batch_size, num_workers=num_workers):
        for it in items:
            if it.prediction is None:
                raise RuntimeError(f"{it.filepath}: {it.error}")
            label_documents(it.prediction, clf.classes, clf.attribute_labels)
            preds.append(it.prediction)
            n_labels += 1
        now = clock()
        batch_times.append((now - last) / len(items))
        last = now
    total = clock() - t0
    return total, batch_times, preds


def bench_run_lazsl(clf, paths, batch_size, num_workers, clock, name="bench-run"):
    import fiftyone as fo

    from fiftyone_lazsl import run_lazsl

    ds = fo.Dataset(name, overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    t0 = clock()
    summary = run_lazsl(
        ds,
        clf.attribute_set,
        classifier=clf,
        batch_size=batch_size,
        num_workers=num_workers,
        label_field="lazsl",
    )
    total = clock() - t0
    if summary.num_predicted != len(paths):
        raise RuntimeError(
            f"run_lazsl predicted {summary.num_predicted}/{len(paths)}: {summary.failures[:3]}"
        )
    ds.delete()
    return total


def bench_scoring(clf, feats, reps, loop_images, clock):
    import torch

    from fiftyone_lazsl.core.scoring import lazsl_scores

    tf, mask = clf.text_features, clf.text_mask
    kw = dict(
        theta=clf.theta, eps=clf.eps, max_iter=clf.max_iter, stop_tol=clf.stop_tol, gamma=clf.gamma
    )
    per_class = [tf[c][mask[c]].contiguous() for c in range(tf.shape[0])]
    B = feats.shape[0]
    L = min(loop_images, B)
    with torch.no_grad():
        out = lazsl_scores(feats, tf, mask, return_plan=True, **kw)  # warm-up
        ref = reference_scores(feats[:L], per_class, **kw)
        max_diff = float((ref - out.scores[:L]).abs().max())
        ours, ours_plan, loop = [], [], []
        for _ in range(reps):  # interleaved, so load changes hit all three alike
            t0 = clock()
            lazsl_scores(feats, tf, mask, **kw)
            ours.append((clock() - t0) / B)
            t0 = clock()
            lazsl_scores(feats, tf, mask, return_plan=True, **kw)
            ours_plan.append((clock() - t0) / B)
            t0 = clock()
            reference_scores(feats[:L], per_class, **kw)
            loop.append((clock() - t0) / L)
    return dict(
        classes=int(tf.shape[0]),
        max_attributes=int(tf.shape[1]),
        attributes_total=int(mask.sum()),
        crops=int(feats.shape[1] - 1),
        batch=B,
        loop_images=L,
        mean_sinkhorn_iterations=float(out.iterations.float().mean()),
        ours_s_per_image=statistics.median(ours),
        ours_min_s_per_image=min(ours),
        ours_with_plan_s_per_image=statistics.median(ours_plan),
        loop_s_per_image=statistics.median(loop),
        loop_min_s_per_image=min(loop),
        max_abs_diff_vs_loop=max_diff,
        reps=reps,
        ours_samples=ours,
        loop_samples=loop,
    )


def _synthetic_prediction(rng, attribute_counts, n_crops):
    """A Prediction with the shapes of a real one (random numbers): for
    document sizes of sets no photo run covers (ImageNet-1k)."""
    import numpy as np

    from fiftyone_lazsl.core.classifier import CropEvidence, Prediction

    C = len(attribute_counts)
    scores = rng.random(C).astype(np.float32)
    logits = (100 * scores).astype(np.float32)
    p = np.exp(logits - logits.max())
    c = int(np.argmax(logits))
    kept = rng.random(n_crops) < 0.6
    xy = rng.random((n_crops, 2)) * 0.4
    boxes_rel = np.concatenate([xy, 0.3 + rng.random((n_crops, 2)) * 0.3], axis=1)
    mass = np.where(kept, 1.0 / max(1, kept.sum()), 0).astype(np.float32)
    crops = CropEvidence(
        boxes=(boxes_rel * 500).astype(np.int64),
        boxes_rel=boxes_rel,
        kept=kept,
        mass=mass,
        attribute=rng.integers(0, attribute_counts[c], n_crops),
        share=rng.random(n_crops).astype(np.float32),
        similarity=rng.random(n_crops).astype(np.float32),
    )
    return Prediction(
        label=str(c),
        label_index=c,
        scores=scores,
        logits=logits,
        probs=p / p.sum(),
        image_size=(500, 375),
        method="lazsl",
        crops=crops,
        attribute_scores=[rng.random(a).astype(np.float32) for a in attribute_counts],
        attribute_crops=[rng.integers(0, 5, a) for a in attribute_counts],
    )


def _doc_sizes(ds, fields):
    """Median BSON bytes per sample document in MongoDB: whole document, and
    the part holding ``fields`` (the LaZSL outputs)."""
    import bson
    import fiftyone as fo

    coll = fo.core.odm.get_db_conn()[ds._sample_collection_name]
    whole, outputs = [], []
    for doc in coll.find():
        whole.append(len(bson.BSON.encode(doc)))
        outputs.append(len(bson.BSON.encode({k: doc[k] for k in fields if k in doc})))
    return dict(
        bytes_per_sample=statistics.median(whole),
        output_bytes_per_sample=statistics.median(outputs),
        max_bytes_per_sample=max(whole),
    )


def bench_write(clf, preds, n, clock, write_every=64):
    """Label documents and database writes, as ``run_lazsl`` does them.

    1. bytes per sample (BSON of the stored document) with default (compact) and
       full evidence, CUB (the run's predictions, C = 200) and ImageNet-1k
       (synthetic predictions with that set's attribute counts, C = 1000);
    2. write rate of default outputs: building the documents
       (``label_documents``) and writing them through the background writer
       (``BackgroundWriter``), ``n`` samples, against a raw ``insert_many`` of
       the same documents into a bare collection (the database's own speed).
    """
    import json as _json

    import fiftyone as fo
    import numpy as np

    from fiftyone_lazsl.fo.labels import DEFAULT_TOP_K_CROPS, label_documents
    from fiftyone_lazsl.fo.run import ensure_fields
    from fiftyone_lazsl.fo.runs import output_fields
    from fiftyone_lazsl.fo.writer import BackgroundWriter

    fields = output_fields("lazsl")
    order = [fields["error"], fields["crops"], fields["attributes"], fields["prediction"]]

    def values(pred, classes, names, **kw):
        cls, dets, attrs = label_documents(pred, classes, names, **kw)
        return {
            fields["error"]: None,
            fields["crops"]: dets,
            fields["attributes"]: attrs,
            fields["prediction"]: cls,
        }

    def dataset(name, m):
        ds = fo.Dataset(name, overwrite=True)
        ds.add_samples([fo.Sample(filepath=f"/data/images/{i:08d}.jpg") for i in range(m)])
        ensure_fields(ds, "lazsl", "lazsl")
        return ds

    # 1. sizes
    inet = _json.loads((SHARED / "attribute_sets" / "imagenet.json").read_text())
    inet_names = [[str(a) for a in v] for v in inet.values()]
    rng = np.random.default_rng(0)
    inet_preds = [
        _synthetic_prediction(rng, [len(a) for a in inet_names], clf.n_crops) for _ in range(8)
    ]
    sizes = {}
    for set_name, ps, classes, names in (
        ("cub", preds, clf.classes, clf.attribute_labels),
        ("imagenet-1k", inet_preds, list(inet), inet_names),
    ):
        for mode in ("compact", "full"):
            ds = dataset("bench-size", len(ps))
            with BackgroundWriter(ds) as w:
                for sid, pr in zip(ds.values("id"), ps):
                    gt = (pr.label_index + 1) % len(classes)  # a wrong ground truth: 3 classes kept
                    w.put(
                        sid,
                        values(
                            pr,
                            classes,
                            names,
                            evidence=mode,
                            gt_index=gt,
                            top_k_crops=None if mode == "full" else DEFAULT_TOP_K_CROPS,
                        ),
                    )
            sizes[f"{set_name}_{mode}"] = dict(
                _doc_sizes(ds, order), classes=len(classes), samples=len(ps)
            )
            ds.delete()

    # 2. write rate of default outputs (CUB), n samples
    ds = dataset("bench-write", n)
    ids = ds.values("id")
    t0 = clock()
    w = BackgroundWriter(ds, batch_size=write_every)
    for i, sid in enumerate(ids):
        w.put(sid, values(preds[i % len(preds)], clf.classes, clf.attribute_labels))
    t_put = clock() - t0
    w.close()
    total = clock() - t0
    assert ds.count(f"{fields['prediction']}.label") == n
    ds.delete()
    # the same documents, built beforehand, inserted raw
    docs = []
    for i in range(n):
        d = values(preds[i % len(preds)], clf.classes, clf.attribute_labels)
        d["filepath"] = f"/data/images/{i:08d}.jpg"
        docs.append(d)
    coll = fo.core.odm.get_db_conn()["bench_raw_insert"]
    coll.drop()
    t0 = clock()
    for s in range(0, n, write_every):
        coll.insert_many(docs[s : s + write_every], ordered=False)
    raw = clock() - t0
    coll.drop()
    return dict(
        samples=n,
        seconds=total,
        s_per_sample=total / n,
        samples_per_s=n / total,
        caller_seconds=t_put,
        caller_samples_per_s=n / t_put,
        writer_seconds_writing=w.seconds_writing,
        writer_seconds_blocked=w.seconds_blocked,
        raw_insert_seconds=raw,
        raw_insert_samples_per_s=n / raw,
        write_every=write_every,
        sizes=sizes,
        what="label_documents + BackgroundWriter (one $set per sample, bulk per batch), "
        "default outputs, CUB; raw = insert_many of the same prebuilt documents",
    )


def memory_child(args) -> None:
    """Runs in a subprocess: run_lazsl over ``--n-images`` images, prints peak memory."""
    import fiftyone as fo
    import torch

    from fiftyone_lazsl import LaZSLClassifier, run_lazsl
    from fiftyone_lazsl.core.models import load_model

    if args.mem_model == "lazsl-tiny-test":
        _register_tiny()
    device = args.device
    model = load_model(args.mem_model, None, device=device)
    clf = LaZSLClassifier(
        _attribute_set(), model, n_crops=args.mem_crops, batch_size=args.batch_size
    )
    paths = _image_paths(args.n_images)
    ds = fo.Dataset(f"bench-mem-{args.n_images}", overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    import gc
    import threading

    import psutil

    gc.collect()
    me = psutil.Process()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_before = me.memory_info().rss / 2**20
    # Reset the kernel's peak-RSS mark (VmHWM) so that the peak is the run's own,
    # not that of start-up (imports, model creation, text encoding).
    hwm_reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        pass
    peaks = {"main": rss_before, "with_workers": rss_before}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.05):
            try:
                main = me.memory_info().rss
                kids = sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peaks["main"] = max(peaks["main"], main / 2**20)
            peaks["with_workers"] = max(peaks["with_workers"], (main + kids) / 2**20)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    s = run_lazsl(
        ds,
        clf.attribute_set,
        classifier=clf,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        label_field="lazsl",
    )
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    hwm = None
    if hwm_reset:
        with open("/proc/self/status") as f:
            hwm = next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    out = dict(
        images=args.n_images,
        predicted=s.num_predicted,
        seconds=secs,
        peak_rss_mb=hwm if hwm is not None else peaks["main"],
        peak_rss_source="VmHWM after reset" if hwm is not None else "sampled every 50 ms",
        sampled_peak_rss_mb=peaks["main"],
        sampled_peak_rss_with_workers_mb=peaks["with_workers"],
        rss_before_run_mb=rss_before,
        rss_after_run_mb=me.memory_info().rss / 2**20,
        startup_peak_rss_mb=setup_peak,
    )
    if torch.device(device).type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    ds.delete()
    print("MEMORY_RESULT " + json.dumps(out), flush=True)


def child_result(cmd, marker, what):
    """Run a benchmark child process (its own interpreter, so its peak RSS is
    its own) and return the JSON it printed after ``marker``."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    line = [ln for ln in p.stdout.splitlines() if ln.startswith(marker + " ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"{what} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(line[-1][len(marker) + 1 :])


def bench_memory(args, sizes):
    res = {}
    for n in sizes:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--n-images",
            str(n),
            "--device",
            args.device,
            "--mem-model",
            args.mem_model,
            "--mem-crops",
            str(args.mem_crops),
            "--batch-size",
            str(args.batch_size),
            "--num-workers",
            str(args.num_workers),
        ]
        res[str(n)] = child_result(cmd, "MEMORY_RESULT", f"memory child ({n} images)")
    return res


# ------------------------------------------------------------------ report
def _ratios(r):
    """Ratios against the encoder. The pipeline and run_lazsl ratios use the
    encoder time measured inside the same run (same load); crops and scoring use
    their in-pipeline time where measured (CPU), else the standalone timings over
    the standalone floor. The standalone ratios are reported as well."""
    floor = r["encoder_floor"]["s_per_image"]
    p, rl, sc = r["pipeline"], r["run_lazsl"], r["scoring"]
    enc = p["encoder_s_per_image"]
    st = p["stages_s_per_image"]
    out = {
        "pipeline_over_floor": p["s_per_image"] / enc,
        "run_lazsl_over_floor": rl["s_per_image"] / rl["encoder_s_per_image"],
        "scoring_fraction_of_floor": st["scoring"] / enc,
        "scoring_speedup_vs_loop": sc["loop_s_per_image"] / sc["ours_s_per_image"],
        # default backend, worker (PIL) + device part, standalone: the worker part
        # runs in other processes, so the main process's stage timer cannot see it
        "crops_fraction_of_floor": r["crop_construction"]["pil"]["s_per_image"] / floor,
        "tensor_crops_fraction_of_floor": r["crop_construction"]["tensor"]["s_per_image"] / floor,
        "device_crops_fraction_of_floor": r["crop_construction"]["device"]["s_per_image"] / floor,
        "device_over_pil_crops": (
            r["crop_construction"]["device"]["s_per_image"]
            / r["crop_construction"]["pil"]["s_per_image"]
        ),
        "decode_worker_crop_images_per_s": r["crop_construction"]["pil"]["worker_images_per_s"],
        "standalone_pipeline_over_floor": p["s_per_image"] / floor,
        "standalone_run_lazsl_over_floor": rl["s_per_image"] / floor,
        "standalone_scoring_fraction_of_floor": sc["ours_with_plan_s_per_image"] / floor,
        "standalone_crops_fraction_of_floor": r["crops"]["s_per_image"] / floor,
        "in_pipeline_encoder_over_standalone_floor": enc / floor,
    }
    sizes = sorted(r["memory"]["runs"], key=int)
    out["memory_growth_100_to_1000"] = (
        r["memory"]["runs"][sizes[-1]]["peak_rss_mb"] / r["memory"]["runs"][sizes[0]]["peak_rss_mb"]
    )
    w = r["write"]
    out["cub_bytes_per_sample"] = w["sizes"]["cub_compact"]["bytes_per_sample"]
    out["imagenet_bytes_per_sample"] = w["sizes"]["imagenet-1k_compact"]["bytes_per_sample"]
    out["write_samples_per_s"] = w["samples_per_s"]
    out["write_over_raw_insert"] = w["raw_insert_samples_per_s"] / w["samples_per_s"]
    checks = {}
    for k, v in out.items():
        if k in TARGETS:
            target = TARGETS[k]
            ok = (
                v >= target
                if k in ("scoring_speedup_vs_loop", "write_samples_per_s")
                else v <= target
            )
            checks[k] = dict(value=v, target=target, met=bool(ok))
    if r["meta"]["device"] == "cuda":
        v = r["run_lazsl"]["images_per_s"]
        checks["cuda_images_per_s"] = dict(
            value=v,
            target=TARGETS["cuda_images_per_s"],
            met=bool(v >= TARGETS["cuda_images_per_s"]),
            note=f"model {r['meta']['model']}",
        )
    return out, checks


def _fmt_s(s):
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def write_markdown(r, path):
    m = r["meta"]
    f = r["encoder_floor"]["s_per_image"]
    sc = r["scoring"]
    lines = [
        f"# LaZSL throughput benchmark ({m['device']}, {m['model']}, N = {m['n_crops']}, "
        f"C = {sc['classes']}, batch {m['batch_size']})",
        "",
        f"{m['when']} - {m['device_name']} - torch {m['torch']} - {m['threads']} threads - "
        f"{'RANDOM WEIGHTS' if m['random_weights'] else m['pretrained']}"
        f"{' - QUICK MODE' if m['quick'] else ''}",
        "",
        "| stage | per image | images/s | vs encoder, same run | vs standalone floor |",
        "|---|---:|---:|---:|---:|",
        f"| encoder floor, standalone ({1 + m['n_crops']} views/image) | {_fmt_s(f)} | {1 / f:.2f} | | 1.00x |",
    ]
    p = r["pipeline"]
    enc = p["encoder_s_per_image"]
    lines.append(
        f"| encoder inside the pipeline run | {_fmt_s(enc)} | {1 / enc:.2f} | 1.00x | {enc / f:.3f}x |"
    )
    for key, label in (
        ("pipeline", "full pipeline (iter_predictions + label_documents)"),
        ("run_lazsl", "run_lazsl into a FiftyOne dataset"),
    ):
        s = r[key]["s_per_image"]
        e = r[key]["encoder_s_per_image"]
        lines.append(
            f"| {label}, {r[key]['images']} images | {_fmt_s(s)} | {1 / s:.2f} | "
            f"{s / e:.3f}x | {s / f:.3f}x |"
        )
    st = p["stages_s_per_image"]
    if st.get("crops"):
        lines.append(
            f"| view normalisation/crops in the main process (build_views) | "
            f"{_fmt_s(st['crops'])} | | {100 * st['crops'] / enc:.2f}% | |"
        )
    lines.append(
        f"| scoring + plans inside the pipeline | {_fmt_s(st['scoring'])} | | "
        f"{100 * st['scoring'] / enc:.3f}% | |"
    )
    cc = r["crop_construction"]
    for backend, label in (
        ("pil", "crops 'pil' (exact, PIL in the worker): worker prepare + build_views"),
        (
            "device",
            "crops 'device' (exact, resampled on the model's device): worker prepare + build_views",
        ),
        ("tensor", "crops 'tensor' (roi_align): worker prepare + build_views"),
    ):
        c = cc[backend]
        lines.append(
            f"| {label} | {_fmt_s(c['s_per_image'])} | {c['worker_images_per_s']:.1f} "
            f"per decode worker | | {100 * c['s_per_image'] / f:.2f}% |"
        )
    lines.append(
        f"| scoring, batched (scores only) | {_fmt_s(sc['ours_s_per_image'])} | | | "
        f"{100 * sc['ours_s_per_image'] / f:.3f}% |"
    )
    lines.append(
        f"| scoring, batched (+ plans for evidence) | {_fmt_s(sc['ours_with_plan_s_per_image'])} | | | "
        f"{100 * sc['ours_with_plan_s_per_image'] / f:.3f}% |"
    )
    lines.append(
        f"| scoring, per-class loop (official style) | {_fmt_s(sc['loop_s_per_image'])} | | | "
        f"{100 * sc['loop_s_per_image'] / f:.2f}% |"
    )
    w = r["write"]
    lines.append(
        f"| build + write default outputs of {w['samples']} samples (background writer) "
        f"| {_fmt_s(w['s_per_sample'])} | {w['samples_per_s']:.0f} | | |"
    )
    lines.append(
        f"| raw insert_many of the same documents | "
        f"{_fmt_s(w['raw_insert_seconds'] / w['samples'])} | "
        f"{w['raw_insert_samples_per_s']:.0f} | | |"
    )
    lines += [
        "",
        "| memory run | images | peak RSS during run | + decode workers | RSS before | seconds |"
        + (" CUDA peak |" if m["device"] == "cuda" else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if m["device"] == "cuda" else ""),
    ]
    for n, v in sorted(r["memory"]["runs"].items(), key=lambda kv: int(kv[0])):
        row = (
            f"| {r['memory']['config']} | {n} | {v['peak_rss_mb']:.0f} MiB | "
            f"{v['sampled_peak_rss_with_workers_mb']:.0f} MiB | {v['rss_before_run_mb']:.0f} MiB | "
            f"{v['seconds']:.1f} |"
        )
        if m["device"] == "cuda":
            row += f" {v.get('cuda_peak_allocated_mb', 0):.0f} MiB |"
        lines.append(row)
    lines += [
        "",
        "| stored document (median BSON bytes per sample) | classes | whole document | "
        "LaZSL outputs |",
        "|---|---:|---:|---:|",
    ]
    for k, v in w["sizes"].items():
        lines.append(
            f"| {k.replace('_', ', ')} evidence | {v['classes']} | "
            f"{v['bytes_per_sample']:.0f} | {v['output_bytes_per_sample']:.0f} |"
        )
    lines += ["", "| ratio | value | target | met |", "|---|---:|---:|:---:|"]
    for k, v in r["checks"].items():
        lines.append(
            f"| {k} | {v['value']:.4g} | {v['target']:g} | {'yes' if v['met'] else 'NO'} |"
        )
    dv = r["crop_construction"]["tensor_deviation"]
    lines += [
        "",
        f"Crop backends on {dv['images']} images x {dv['crops']} crops: the 'tensor' path "
        f"differs from the exact views by {dv['mean']:.4f} on average, {dv['max']:.3f} at most "
        f"(99th percentile {dv['p99']:.3f}) in normalised units; global views identical "
        f"(max {dv['global_view_max']:.1e}). A decode worker sends "
        f"{r['crop_construction']['pil']['ipc_bytes_per_image'] / 2**20:.1f} MiB per image "
        f"('pil', uint8 views) vs "
        f"{r['crop_construction']['device']['ipc_bytes_per_image'] / 2**20:.2f} MiB ('device', "
        f"the decoded image) and "
        f"{r['crop_construction']['tensor']['ipc_bytes_per_image'] / 2**20:.1f} MiB ('tensor'). "
        f"'device' views differing from 'pil': "
        f"{r['crop_construction']['device_values_differing_from_pil']} values; "
        f"'device' / 'pil' crop time {r['ratios']['device_over_pil_crops']:.2f}.",
    ]
    lines += [
        "",
        f"Scoring: {sc['classes']} classes, {sc['attributes_total']} attributes "
        f"(up to {sc['max_attributes']}), {sc['crops']} crops, batch {sc['batch']}; mean "
        f"Sinkhorn iterations {sc['mean_sinkhorn_iterations']:.2f}; max |batched - loop| = "
        f"{sc['max_abs_diff_vs_loop']:.2e}. Timings are medians of interleaved repetitions.",
        "",
        *[f"- {n}" for n in r["notes"]],
    ]
    path.write_text("\n".join(lines) + "\n")


def draw_chart(r, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = r["pipeline"]["encoder_s_per_image"]
    sc = r["scoring"]
    names = [
        "encoder\n(in pipeline)",
        "full pipeline",
        "run_lazsl\n(FiftyOne)",
        "crops\n(pil)",
        "scoring\nbatched",
        "scoring\nper-class loop",
    ]
    vals = [
        f,
        r["pipeline"]["s_per_image"],
        r["run_lazsl"]["s_per_image"],
        r["crop_construction"]["pil"]["s_per_image"],
        sc["ours_with_plan_s_per_image"],
        sc["loop_s_per_image"],
    ]
    colors = ["#888888", "#1f77b4", "#1f77b4", "#2ca02c", "#2ca02c", "#d62728"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1.2]})
    bars = ax.bar(range(len(vals)), vals, color=colors)
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), names, fontsize=8)
    ax.set_ylabel("seconds per image (log)")
    for b, v in zip(bars, vals):
        ax.text(
            b.get_x() + b.get_width() / 2, v, f"{v / f:.3g}x", ha="center", va="bottom", fontsize=8
        )
    m = r["meta"]
    ax.set_title(
        f"{m['model']} ({'random weights' if m['random_weights'] else m['pretrained']}), "
        f"N={m['n_crops']}, C={sc['classes']}, {m['device']}: x = multiple of the encoder time",
        fontsize=9,
    )
    mem = sorted(r["memory"]["runs"].items(), key=lambda kv: int(kv[0]))
    ax2.bar([k for k, _ in mem], [v["peak_rss_mb"] for _, v in mem], color="#9467bd")
    ax2.set_xlabel("images")
    ax2.set_ylabel("peak RSS (MiB)")
    ax2.set_title("run_lazsl peak memory", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny random model, a few images, small memory/write sizes (smoke test)",
    )
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    ap.add_argument(
        "--model", default=None, help="open_clip model (default ViT-B-32 on CPU, ViT-B-16 on CUDA)"
    )
    ap.add_argument("--n-crops", type=int, default=90)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (CPU 4, CUDA 32)"
    )
    ap.add_argument(
        "--num-workers", type=int, default=None, help="decoding workers (library default)"
    )
    ap.add_argument(
        "--images",
        type=int,
        default=None,
        help="images for the pipeline and run_lazsl timings (default 3 batches, CUDA 8)",
    )
    ap.add_argument("--floor-reps", type=int, default=None, help="encoder-floor repetitions")
    ap.add_argument("--score-reps", type=int, default=None)
    ap.add_argument("--memory-sizes", default=None, help="comma-separated (default 100,1000)")
    ap.add_argument(
        "--mem-model",
        default=None,
        help="model of the memory runs (CPU default: the tiny test model; CUDA: --model)",
    )
    ap.add_argument("--mem-crops", type=int, default=None)
    ap.add_argument("--write-samples", type=int, default=None)
    ap.add_argument(
        "--crop-images",
        type=int,
        default=None,
        help="images for the crop-backend comparison (default 10, quick 2)",
    )
    ap.add_argument("--name", default=None, help="output basename in benchmarks/results")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="re-scoring benchmark only (benchmarks/rescore.py): re-scoring a view with "
        "a new attribute set from stored features vs a fresh run, store bytes per "
        "sample, memory 100 -> 1000 samples",
    )
    ap.add_argument(
        "--fresh-images",
        type=int,
        default=None,
        help="--rescore: photos the fresh run is timed on (default 3)",
    )
    ap.add_argument(
        "--encode-all",
        action="store_true",
        help="--rescore: encode every photo instead of replicating the encoded ones' features",
    )
    ap.add_argument("--rescore-memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-images", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.memory_child:  # environment inherited from the parent run
        args.num_workers = (
            None if args.num_workers is None or args.num_workers < 0 else args.num_workers
        )
        return memory_child(args)

    if args.rescore_memory_child:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from rescore import rescore_memory_child

        return rescore_memory_child(args)

    tmp = tempfile.mkdtemp(prefix="lazsl-bench-")
    _setup_env(tmp)
    mongod = _start_private_mongod(tmp)
    try:
        if args.rescore:
            return _main_rescore(args)
        return _main(args, tmp)
    finally:
        from fiftyone_lazsl.testing import mongod as private_mongod

        private_mongod.stop(mongod)
        shutil.rmtree(tmp, ignore_errors=True)


def _main_rescore(args):
    """``--rescore`` mode: writes ``<name>.json`` / ``.md`` (default name ``rescore-<device>``)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rescore import main_rescore

    args.device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    args.batch_size = args.batch_size or (2 if args.quick else 4)
    log = lambda s: print(f"[bench {time.strftime('%H:%M:%S')}] {s}", flush=True)  # noqa: E731
    r = main_rescore(args, log)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("rescore-quick" if args.quick else f"rescore-{args.device}")
    (out_dir / f"{name}.json").write_text(json.dumps(r, indent=2))
    rs, mem = r["rescore"], r["memory"]["runs"]
    lines = [
        f"# Re-scoring benchmark ({r['meta']['device']}, {r['meta']['model']}"
        f"{' random weights' if r['meta']['random_weights'] else ''}, N = {rs['n_crops']}, "
        f"C = {rs['classes']})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| fresh run, new attribute set ({rs['fresh_images']} photos) | {rs['fresh_s_per_image']:.3f} s/img |",
        f"| first run with --store-features ({rs['encoded']} photos) | "
        f"{rs['first_run_with_store_s_per_image']:.3f} s/img |",
        f"| rescore, new attribute set ({rs['samples']} samples; {rs['replicated']} with "
        f"replicated features) | {rs['rescore_s_per_image'] * 1e3:.2f} ms/img |",
        f"| speed-up, end to end (target >= 100x) | {rs['speedup']:.0f}x |",
        f"| store reads + scoring + evidence only (no FiftyOne writes) | "
        f"{rs['scoring_only_s_per_image'] * 1e3:.2f} ms/img ({rs['scoring_only_speedup']:.0f}x) |",
        f"| store bytes per sample ({rs['dtype']}) | {rs['store_bytes_per_sample']:.0f} |",
        f"| same argmax as the fresh run (encoded photos) | {rs['same_argmax_on_encoded']} |",
        f"| max abs logit difference vs fresh | {rs['max_abs_logit_diff_on_encoded']:.4f} |",
    ]
    for k, v in mem.items():
        lines.append(
            f"| peak RSS, rescore of {k} samples ({r['memory']['config'].split(';')[0]}) "
            f"| {v['peak_rss_mb']:.0f} MiB |"
        )
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out_dir / name}.json/.md")
    print("\n".join(lines))
    return r


def _main(args: argparse.Namespace, tmp: str) -> dict:
    """The benchmark run: settings, timings, scoring, write, memory, then the
    result files (``<name>.json/.md/.png``)."""
    from fiftyone_lazsl import LaZSLClassifier
    from fiftyone_lazsl.core.models import load_model

    cfg = _resolve_settings(args)
    model = load_model(cfg["model_name"], None, device=cfg["device"])
    clf = LaZSLClassifier(_attribute_set(), model, n_crops=args.n_crops, batch_size=args.batch_size)
    r = {"meta": _meta(args, cfg, model)}
    _log(
        f"{cfg['model_name']} on {cfg['device']}, N={args.n_crops}, batch {args.batch_size}, "
        f"{cfg['n_images']} images"
    )
    feats, labels = _time_encoder_and_pipeline(args, cfg, clf, r)
    _time_crop_construction(args, cfg, clf, r)
    r["scoring"] = bench_scoring(
        clf, feats, cfg["score_reps"], 1 if args.quick else 2, cfg["clock"]
    )
    _log(
        f"scoring {r['scoring']['ours_s_per_image'] * 1e3:.2f} ms/img, loop "
        f"{r['scoring']['loop_s_per_image'] * 1e3:.2f} ms/img"
    )
    r["write"] = bench_write(clf, labels, cfg["write_n"], cfg["clock"])
    wr = r["write"]
    _log(
        f"write {cfg['write_n']} samples: {wr['samples_per_s']:.0f} samples/s (raw insert "
        f"{wr['raw_insert_samples_per_s']:.0f}/s); bytes/sample CUB "
        f"{wr['sizes']['cub_compact']['bytes_per_sample']:.0f} (full "
        f"{wr['sizes']['cub_full']['bytes_per_sample']:.0f}), ImageNet-1k "
        f"{wr['sizes']['imagenet-1k_compact']['bytes_per_sample']:.0f} (full "
        f"{wr['sizes']['imagenet-1k_full']['bytes_per_sample']:.0f})"
    )
    r["memory"] = dict(
        config=f"run_lazsl, {args.mem_model} (random weights), N={args.mem_crops}, C=200, "
        f"batch {args.batch_size}, {args.num_workers} decode workers",
        runs=bench_memory(args, cfg["sizes"]),
    )
    _log(
        "memory "
        + ", ".join(f"{k}: {v['peak_rss_mb']:.0f} MiB" for k, v in r["memory"]["runs"].items())
    )
    r["ratios"], r["checks"] = _ratios(r)
    r["notes"] = _notes(r, cfg["cuda"])
    _write_results(r, args, cfg)
    return r


def _log(s: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {s}", flush=True)


def _resolve_settings(args: argparse.Namespace) -> dict:
    """Defaults that depend on the device and ``--quick``; also fills ``args``
    (device, batch size, memory model and crops, workers) for the memory children."""
    import torch

    from fiftyone_lazsl.core.pipeline import default_num_workers

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    args.device = device
    cuda = torch.device(device).type == "cuda"
    tiny = (
        _register_tiny()
        if args.quick or "lazsl-tiny-test" in (args.model, args.mem_model)
        else None
    )
    model_name = args.model or (tiny if args.quick else ("ViT-B-16" if cuda else "ViT-B-32"))
    args.batch_size = args.batch_size or (2 if args.quick else (32 if cuda else 4))
    args.mem_model = args.mem_model or (
        tiny if args.quick else (model_name if cuda else _register_tiny())
    )
    args.mem_crops = args.mem_crops or args.n_crops
    args.num_workers = default_num_workers() if args.num_workers is None else args.num_workers
    args.crop_images = args.crop_images or (2 if args.quick else 10)
    return dict(
        device=device,
        cuda=cuda,
        model_name=model_name,
        clock=_Clock(device),
        n_images=args.images or (2 if args.quick else (8 if cuda else 3) * args.batch_size),
        floor_reps=args.floor_reps or (5 if cuda else 1),
        score_reps=args.score_reps or (3 if args.quick else 7),
        sizes=[
            int(s) for s in (args.memory_sizes or ("4,8" if args.quick else "100,1000")).split(",")
        ],
        write_n=args.write_samples or 1000,  # cheap: the write rate needs enough samples
    )


def _meta(args: argparse.Namespace, cfg: dict, model) -> dict:
    """Machine, versions, model and settings of the run."""
    import torch

    return dict(
        device=cfg["device"],
        device_name=(
            torch.cuda.get_device_name()
            if cfg["cuda"]
            else platform.processor() or platform.machine()
        ),
        model=cfg["model_name"],
        random_weights=model.random_weights,
        pretrained=model.pretrained,
        image_size=model.image_size,
        n_crops=args.n_crops,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        python=platform.python_version(),
        quick=args.quick,
        when=time.strftime("%Y-%m-%d %H:%M"),
        images_source=str(SHARED / "images"),
        attribute_set="cub (200 classes)",
        command=" ".join([os.path.basename(sys.executable), "benchmarks/run.py", *sys.argv[1:]]),
    )


def _time_encoder_and_pipeline(args: argparse.Namespace, cfg: dict, clf, r: dict) -> tuple:
    """Encoder floor (before and after), pipeline, ``run_lazsl`` and crop timings
    into ``r``; returns ``(features of one batch, pipeline labels)``."""
    from fiftyone_lazsl.core.imageio import load_image

    n_images, clock, bs = cfg["n_images"], cfg["clock"], args.batch_size
    paths = _image_paths(max(n_images, bs))
    images = [load_image(p) for p in paths[:bs]]
    keys = paths[:bs]
    # Floor before and after the pipeline runs: load changes on a shared machine
    # then affect floor and pipeline alike.
    floor1, crop_times, feats = bench_floor_and_crops(
        clf, images, keys, bs, cfg["floor_reps"], clock
    )
    _log(f"encoder floor {statistics.median(floor1):.3f} s/img")
    timer = StageTimer(clf, clock, crops=not cfg["cuda"])
    try:
        total, batch_times, labels = bench_pipeline(
            clf, paths[:n_images], bs, args.num_workers, clock
        )
        stages_pipeline = dict(timer.t)
        _log(
            f"pipeline {total / n_images:.3f} s/img; in it: "
            + ", ".join(f"{k} {v / n_images:.3f}" for k, v in stages_pipeline.items())
        )
        timer.reset()
        rl = bench_run_lazsl(clf, paths[:n_images], bs, args.num_workers, clock)
        stages_run = dict(timer.t)
        _log(
            f"run_lazsl {rl / n_images:.3f} s/img; encoder in it "
            f"{stages_run['encode'] / n_images:.3f}"
        )
    finally:
        timer.close()
    floor2, _, _ = bench_floor_and_crops(
        clf, images, keys, bs, cfg["floor_reps"], clock, warmup=False
    )
    floor = floor1 + floor2
    crop_times += bench_crops(clf, images, keys, clock, bs)
    _log(f"encoder floor (after) {statistics.median(floor2):.3f} s/img")
    r["encoder_floor"] = dict(
        s_per_image=statistics.median(floor),
        min_s_per_image=min(floor),
        images_per_s=1 / statistics.median(floor),
        batch_size=bs,
        views_per_image=1 + args.n_crops,
        samples=floor,
    )
    r["pipeline"] = dict(
        images=n_images,
        seconds=total,
        s_per_image=total / n_images,
        stages_s_per_image={k: v / n_images for k, v in stages_pipeline.items()},
        encoder_s_per_image=stages_pipeline["encode"] / n_images,
        images_per_s=n_images / total,
        batch_s_per_image=batch_times,
        what="iter_predictions (decode workers, crops, encode, scoring, evidence) "
        "+ labels.label_documents; includes DataLoader start-up",
    )
    r["run_lazsl"] = dict(
        images=n_images,
        seconds=rl,
        s_per_image=rl / n_images,
        stages_s_per_image={k: v / n_images for k, v in stages_run.items()},
        encoder_s_per_image=stages_run["encode"] / n_images,
        images_per_s=n_images / rl,
    )
    r["crops"] = dict(
        s_per_image=statistics.median(crop_times),
        samples=crop_times,
        backend=clf.crop_backend,
        what="VisualSetSpec.prepare (boxes, global view and crops through the model's "
        "preprocessing) + build_views (normalised, on the model device)",
    )
    return feats, labels


def _time_crop_construction(args: argparse.Namespace, cfg: dict, clf, r: dict) -> None:
    """Crop construction of both backends (worker and device time, throughput
    per decode worker, the tensor path's deviation from the exact views) into ``r``."""
    from fiftyone_lazsl.core.imageio import load_image

    cc_paths = _image_paths(args.crop_images)
    r["crop_construction"] = bench_crop_construction(
        clf, [load_image(p) for p in cc_paths], cc_paths, cfg["clock"]
    )
    _log(
        "crop construction per image: "
        + ", ".join(
            f"{b} {r['crop_construction'][b]['s_per_image'] * 1e3:.1f} ms "
            f"({r['crop_construction'][b]['worker_images_per_s']:.1f} img/s per worker)"
            for b in ("pil", "device", "tensor")
        )
        + "; device values differing from pil "
        f"{r['crop_construction']['device_values_differing_from_pil']}; tensor deviation mean "
        f"{r['crop_construction']['tensor_deviation']['mean']:.4f} max "
        f"{r['crop_construction']['tensor_deviation']['max']:.3f}"
    )


def _notes(r: dict, cuda: bool) -> list[str]:
    notes = [
        "Random weights: timings do not depend on the weights, predictions are meaningless.",
        "Encoder floor: model forward on pre-built views only; median over repetitions taken "
        "before and after the pipeline runs.",
        "Per-class loop: official-style reference (batch size 1, one class per call, "
        ".item() after every Sinkhorn iteration), written in benchmarks/run.py.",
        f"Memory: {r['memory']['config']}; each size in its own subprocess; peak RSS of the "
        "main process during run_lazsl (kernel VmHWM, reset after start-up, so imports and "
        "model creation do not mask it); '+ decode workers' adds the DataLoader workers' RSS "
        "(sampled every 50 ms; shared pages counted twice); mongod is not counted.",
    ]
    if not cuda:
        notes.append(
            "CPU: the memory runs use a cheaper model so that 1,000 images fit in "
            "minutes; the memory question is whether RSS grows with the dataset."
        )
    return notes


def _write_results(r: dict, args: argparse.Namespace, cfg: dict) -> None:
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("quick" if args.quick else f"{cfg['device']}-{cfg['model_name']}")
    (out_dir / f"{name}.json").write_text(json.dumps(r, indent=2))
    write_markdown(r, out_dir / f"{name}.md")
    draw_chart(r, out_dir / f"{name}.png")
    _log(f"wrote {out_dir / name}.json/.md/.png")
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
