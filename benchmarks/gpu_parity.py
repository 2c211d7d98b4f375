"""CUDA parity checks for ``benchmarks/gpu_check.sh`` (also runs on CPU: ``--device cpu``).

1. Golden parity: ``lazsl_scores`` / ``dclip_scores`` on the device, float32, on
   the official scorer's golden features (``shared/data/golden/*.npz``):
   max |ours - official| must be <= 1e-5 and the argmax identical.
2. Autocast path: the golden features rounded through float16 (what the
   encoder's fp16 autocast produces before normalisation) give the same argmax
   as the golden scores.
3. Encoder autocast vs float32 on real photos (``--model``, random weights
   unless cached ones exist): the classifier's predicted class with fp16
   autocast features against fp32 features (agreement fraction, max feature
   difference).

Writes ``parity.json`` into ``--out-dir``; exit status 1 when a golden check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LAZSL_SHARED_DATA") or ROOT.parent / "shared" / "data")


def golden_checks(device: str, data: pathlib.Path) -> list[dict]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fiftyone_lazsl.core.scoring import dclip_scores, lazsl_scores

    out = []
    # LaZSL's golden files (others in the folder, e.g. of other methods, lack its parameters)
    files = [
        f for f in sorted(glob.glob(str(data / "golden" / "*.npz"))) if "theta" in np.load(f).files
    ]
    if not files:
        raise SystemExit(f"no golden files under {data / 'golden'}")
    for f in files:
        d = dict(np.load(f))
        kw = dict(
            theta=float(d["theta"]),
            eps=float(d["eps"]),
            max_iter=int(d["max_iter"]),
            stop_tol=float(d["stop_tol"]),
            gamma=float(d["gamma"]),
        )
        img = torch.from_numpy(d["image_features"]).to(device)
        txt = torch.from_numpy(d["text_features"]).to(device)
        mask = torch.from_numpy(d["text_mask"]).to(device)
        gold = d["scores"]
        t0 = time.perf_counter()
        ours = lazsl_scores(img, txt, mask, **kw).float().cpu().numpy()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        dcl = dclip_scores(img, txt, mask).float().cpu().numpy()
        # autocast path: features as the fp16 encoder would hand them over
        img16 = F.normalize(img.half().float(), dim=-1)
        ours16 = lazsl_scores(img16, txt, mask, **kw).float().cpu().numpy()
        r = dict(
            file=pathlib.Path(f).name,
            images=int(gold.shape[0]),
            classes=int(gold.shape[1]),
            max_abs_diff=float(np.abs(ours - gold).max()),
            argmax_equal=bool((ours.argmax(1) == gold.argmax(1)).all()),
            dclip_max_abs_diff=float(np.abs(dcl - d["dclip_scores"]).max()),
            fp16_features_max_abs_diff=float(np.abs(ours16 - gold).max()),
            fp16_features_argmax_equal=bool((ours16.argmax(1) == gold.argmax(1)).all()),
            seconds=secs,
        )
        r["ok"] = bool(
            r["max_abs_diff"] <= 1e-5
            and r["argmax_equal"]
            and r["dclip_max_abs_diff"] <= 1e-5
            and r["fp16_features_argmax_equal"]
        )
        out.append(r)
    return out


def encoder_autocast_check(device: str, model_name: str, n_images: int, n_crops: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.core.imageio import load_image_tensor
    from fiftyone_lazsl.core.models import load_model
    from fiftyone_lazsl.core.scoring import lazsl_scores

    files = sorted(str(p) for p in (SHARED / "images" / "cub").rglob("*.jpg"))[:n_images]
    aset = AttributeSet.from_json(str(SHARED / "attribute_sets" / "cub.json"))
    model = load_model(model_name, None, device=device)
    clf = LaZSLClassifier(aset, model, n_crops=n_crops, batch_size=8)
    agree, diffs, n = 0, [], 0
    for s in range(0, len(files), 8):
        imgs = [load_image_tensor(f)[0] for f in files[s : s + 8]]
        feats, _ = clf.encode(imgs, files[s : s + 8])  # autocast on CUDA
        B, V, _ = feats.shape
        # the same views, encoded in float32 without autocast
        pix = torch.cat([clf.views(t, k)[0] for t, k in zip(imgs, files[s : s + 8])]).to(device)
        with torch.no_grad():
            f32 = F.normalize(model.model.encode_image(pix.float()).float(), dim=-1)
        f32 = f32.reshape(B, V, -1)
        kw = dict(
            theta=clf.theta,
            eps=clf.eps,
            max_iter=clf.max_iter,
            stop_tol=clf.stop_tol,
            gamma=clf.gamma,
        )
        a = lazsl_scores(
            feats.to(device), clf.text_features.to(device), clf.text_mask.to(device), **kw
        )
        b = lazsl_scores(f32, clf.text_features.to(device), clf.text_mask.to(device), **kw)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += B
        diffs.append(float((feats.to(device) - f32).abs().max()))
    return dict(
        model=model_name,
        random_weights=model.random_weights,
        images=n,
        argmax_agreement=agree / max(n, 1),
        max_feature_abs_diff=max(diffs) if diffs else None,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--n-crops", type=int, default=90)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    res = dict(
        device=args.device,
        torch=torch.__version__,
        device_name=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        golden=golden_checks(args.device, SHARED),
    )
    try:
        res["encoder_autocast"] = encoder_autocast_check(
            args.device, args.model, args.images, args.n_crops
        )
    except Exception as e:  # reported, the golden checks decide the exit status
        res["encoder_autocast"] = dict(error=f"{type(e).__name__}: {e}")
    res["ok"] = all(g["ok"] for g in res["golden"])
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
