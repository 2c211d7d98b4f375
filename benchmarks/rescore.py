"""Re-scoring benchmark, a separate mode of ``benchmarks/run.py``
(``--rescore``): re-scoring a view with a new attribute set from stored
features vs a fresh run per image, store bytes per sample, and peak memory of
re-scoring 100 vs 1,000 samples.

Fresh runs cost ~8 s per image on a shared 2-core CPU (ViT-B-32, N = 90), so
the fresh run is timed on ``--fresh-images`` photos, and those photos' stored
features are *replicated* to the keys of the other photos of the view (with
each photo's own crop boxes and file signature): re-scoring cost does not
depend on the values of the features. ``--encode-all`` encodes every photo
instead. Both are reported in the result.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _new_set(aset):
    """An edited attribute set: every class's attributes reversed, the first
    dropped, and one added (what a user iterating on attributes does)."""
    from fiftyone_lazsl.core.attributes import AttributeSet

    return AttributeSet.from_dict(
        {
            c: list(reversed(a))[1:] + [f"a photo showing a typical {c}"]
            for c, a in aset.attributes.items()
        },
        name="edited",
    )


def _fill_store(clf, store, fp, paths, encoded):
    """Store, for every path not in ``encoded``, the features of an encoded
    photo (cycled) with the path's own crop boxes and size."""
    from PIL import Image

    from fiftyone_lazsl.core.features import FeatureEntry

    src = list(encoded.values())
    entries = []
    for i, p in enumerate(paths):
        if p in encoded:
            continue
        with Image.open(p) as im:
            w, h = im.size
        e = src[i % len(src)]
        entries.append(
            FeatureEntry(
                key=p,
                features=e.features,
                boxes=clf.crop_boxes(w, h, p),
                image_size=(w, h),
                original_size=(w, h),
                crop_global=e.crop_global,
            )
        )
    for s in range(0, len(entries), 64):
        store.put_many(fp, entries[s : s + 64])
    return len(entries)


def bench_rescore(clf, aset, paths, fresh_n, encode_all, log, dtype="float16"):
    """Timings of a fresh run vs re-scoring (see module docstring)."""
    import fiftyone as fo

    from fiftyone_lazsl import rescore, run_lazsl
    from fiftyone_lazsl.core.features import FeatureStore

    new = _new_set(aset)
    store = FeatureStore(
        os.path.join(os.environ["FIFTYONE_LAZSL_CACHE"], "bench-features"), dtype=dtype
    )
    ds = fo.Dataset("bench-rescore", overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    first = ds.select(ds.values("id")[: len(paths) if encode_all else fresh_n])
    size0 = store.size_bytes()
    t0 = time.perf_counter()
    s1 = run_lazsl(
        first, aset, classifier=clf, label_field="first", store_features=store, num_workers=0
    )
    t_store = time.perf_counter() - t0
    log(f"first run with --store-features: {t_store / len(first):.2f} s/img")
    fp = s1.feature_store["fingerprint"]
    clf_new = type(clf)(new, clf.model, config=clf.lazsl_config)
    few = ds.select(ds.values("id")[:fresh_n])
    t0 = time.perf_counter()
    type(clf)(new, clf.model, config=clf.lazsl_config)
    t_text = time.perf_counter() - t0
    log(
        f"encoding the new set's prompts (once per set; cached on disk for pretrained weights): "
        f"{t_text:.2f} s"
    )
    t0 = time.perf_counter()
    run_lazsl(few, new, classifier=clf_new, label_field="fresh", num_workers=0)
    t_fresh = (time.perf_counter() - t0) / fresh_n
    log(f"fresh run, new set: {t_fresh:.2f} s/img ({fresh_n} photos)")
    replicated = 0
    if not encode_all:
        found, _ = store.get_many(fp, first.values("filepath"))
        replicated = _fill_store(clf, store, fp, paths, found)
    # warm (text features of the new set cached by the fresh run; as a user's second edit)
    t0 = time.perf_counter()
    s2 = rescore(
        ds,
        new,
        from_field="first",
        label_field="again",
        classifier=clf_new,
        missing="skip",
        feature_store=store,
    )
    t_rescore = (time.perf_counter() - t0) / len(paths)
    assert s2.num_predicted == len(paths), s2.failures[:3]
    log(f"rescore, new set: {t_rescore * 1e3:.1f} ms/img ({len(paths)} samples)")
    # the same without FiftyOne: store reads + scoring + evidence (predict_entries)
    from fiftyone_lazsl.core.features import predict_entries

    t0 = time.perf_counter()
    for s in range(0, len(paths), 64):
        found, _ = store.get_many(fp, paths[s : s + 64])
        predict_entries(clf_new, list(found.values()))
    t_score = (time.perf_counter() - t0) / len(paths)
    log(f"store reads + scoring only: {t_score * 1e3:.1f} ms/img")
    # agreement on the encoded photos
    fresh = dict(zip(few.values("filepath"), few.values("fresh")))
    again = dict(zip(ds.values("filepath"), ds.values("again")))
    diffs = [
        float(np.abs(np.array(fresh[p].logits) - np.array(again[p].logits)).max()) for p in fresh
    ]
    same = all(fresh[p].label == again[p].label for p in fresh)
    info = store.info()
    fpinfo = next(f for f in info["fingerprints"] if f["fingerprint"] == fp)
    n_first = len(first)
    ds.delete()
    return dict(
        samples=len(paths),
        fresh_images=fresh_n,
        encoded=n_first,
        replicated=replicated,
        text_encoding_s=t_text,
        dtype=dtype,
        first_run_with_store_s_per_image=t_store / n_first,
        fresh_s_per_image=t_fresh,
        rescore_s_per_image=t_rescore,
        speedup=t_fresh / t_rescore,
        scoring_only_s_per_image=t_score,
        scoring_only_speedup=t_fresh / t_score,
        same_argmax_on_encoded=same,
        max_abs_logit_diff_on_encoded=max(diffs),
        store_bytes_per_sample=fpinfo["bytes_per_sample"],
        store_bytes_on_disk=info["bytes"],
        store_bytes_before=size0,
        classes=len(new.classes),
        n_crops=clf.n_crops,
    )


def rescore_memory_child(args) -> None:
    """Subprocess: store features of ``--n-images`` samples (tiny model; photos
    cycled, so the store holds each distinct photo once), then re-score them
    with a new set and print the peak RSS of the re-scoring."""
    import fiftyone as fo

    from fiftyone_lazsl import LaZSLClassifier, rescore, run_lazsl
    from fiftyone_lazsl.core.models import load_model

    sys.path.insert(0, os.path.dirname(__file__))
    from run import _attribute_set, _image_paths, _register_tiny

    _register_tiny()
    model = load_model(args.mem_model, None, device=args.device)
    aset = _attribute_set()
    clf = LaZSLClassifier(aset, model, n_crops=args.mem_crops, batch_size=args.batch_size)
    paths = _image_paths(args.n_images)
    ds = fo.Dataset(f"bench-rmem-{args.n_images}", overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    # the run record from one sample, then every distinct photo encoded and
    # stored directly (a fresh run over 1,000 samples would mostly time writes)
    s1 = run_lazsl(
        ds.limit(1), aset, classifier=clf, label_field="first", num_workers=0, store_features=True
    )
    from fiftyone_lazsl.core.features import FeatureEntry, FeatureStore
    from fiftyone_lazsl.core.imageio import load_image_tensor
    from fiftyone_lazsl.core.scoring import crop_global_similarity

    store = FeatureStore()
    fp = s1.feature_store["fingerprint"]
    todo = sorted(set(paths))
    for s in range(0, len(todo), 16):
        ims = [load_image_tensor(p)[0] for p in todo[s : s + 16]]
        f, b = clf.encode(ims, todo[s : s + 16])
        r = crop_global_similarity(f)
        store.put_many(
            fp,
            [
                FeatureEntry(
                    key=k,
                    features=f[j].numpy(),
                    boxes=b[j],
                    image_size=(im.shape[-1], im.shape[-2]),
                    original_size=(im.shape[-1], im.shape[-2]),
                    crop_global=r[j].numpy(),
                )
                for j, (k, im) in enumerate(zip(todo[s : s + 16], ims))
            ],
        )
    new = _new_set(aset)
    clf_new = LaZSLClassifier(new, model, n_crops=args.mem_crops, batch_size=64)
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    s = rescore(
        ds, new, from_field="first", label_field="again", classifier=clf_new, missing="skip"
    )
    secs = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        hwm = next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    ds.delete()
    print(
        "RMEM_RESULT "
        + json.dumps(
            dict(samples=args.n_images, predicted=s.num_predicted, seconds=secs, peak_rss_mb=hwm)
        ),
        flush=True,
    )


def bench_rescore_memory(args, sizes):
    from run import child_result

    res = {}
    for n in sizes:
        cmd = [
            sys.executable,
            os.path.join(os.path.dirname(__file__), "run.py"),
            "--rescore-memory-child",
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
        ]
        res[str(n)] = child_result(cmd, "RMEM_RESULT", f"rescore memory child ({n})")
    return res


def main_rescore(args, log) -> dict:
    import torch
    from run import _attribute_set, _image_paths, _register_tiny

    from fiftyone_lazsl import LaZSLClassifier
    from fiftyone_lazsl.core.models import load_model

    tiny = _register_tiny()
    model_name = args.model or (tiny if args.quick else "ViT-B-32")
    n = args.images or (4 if args.quick else 50)
    fresh_n = args.fresh_images or (2 if args.quick else 3)
    model = load_model(model_name, None, device=args.device)
    aset = _attribute_set()
    clf = LaZSLClassifier(aset, model, n_crops=args.n_crops, batch_size=args.batch_size)
    paths = _image_paths(n)
    if len(set(paths)) < n:
        raise SystemExit(f"only {len(set(paths))} distinct photos for {n} samples")
    r = {
        "meta": dict(
            model=model_name,
            random_weights=model.random_weights,
            device=args.device,
            n_crops=args.n_crops,
            classes=len(aset.classes),
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            when=time.strftime("%Y-%m-%d %H:%M"),
            quick=args.quick,
        )
    }
    r["rescore"] = bench_rescore(clf, aset, paths, fresh_n, args.encode_all, log)
    sizes = [
        int(s) for s in (args.memory_sizes or ("4,8" if args.quick else "100,1000")).split(",")
    ]
    args.mem_model = args.mem_model or tiny
    args.mem_crops = args.mem_crops or args.n_crops
    r["memory"] = dict(
        config=f"rescore, {args.mem_model} (random weights), N={args.mem_crops}, "
        f"C={len(aset.classes)}; each size in its own subprocess; "
        "VmHWM reset before the re-scoring",
        runs=bench_rescore_memory(args, sizes),
    )
    runs = r["memory"]["runs"]
    lo, hi = runs[str(sizes[0])], runs[str(sizes[-1])]
    r["ratios"] = {
        "rescore_speedup_vs_fresh": r["rescore"]["speedup"],
        "scoring_only_speedup_vs_fresh": r["rescore"]["scoring_only_speedup"],
        f"memory_growth_{sizes[0]}_to_{sizes[-1]}": hi["peak_rss_mb"] / lo["peak_rss_mb"],
    }
    r["checks"] = {
        "rescore_speedup_vs_fresh": r["rescore"]["speedup"] >= 100,
        "memory_flat": hi["peak_rss_mb"] <= 1.10 * lo["peak_rss_mb"],
    }
    return r
