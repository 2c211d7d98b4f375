"""Smoke test of the throughput benchmark (``benchmarks/run.py --quick``): the
tiny random test model on two real photos; checks that every section is in the
JSON and that the Markdown table and chart are written. No timing assertions."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SECTIONS = (
    "meta",
    "encoder_floor",
    "pipeline",
    "run_lazsl",
    "scoring",
    "crops",
    "crop_construction",
    "memory",
    "write",
    "ratios",
    "checks",
    "notes",
)


def test_benchmark_quick_mode(tmp_path, shared_data):
    env = dict(os.environ)
    env.pop("FIFTYONE_DATABASE_URI", None)  # the benchmark starts its own mongod
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--quick",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
        "--name",
        "smoke",
        "--memory-sizes",
        "2,3",
        "--write-samples",
        "10",
        "--score-reps",
        "1",
        "--floor-reps",
        "1",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "smoke.json").read_text())
    for s in SECTIONS:
        assert s in r, f"missing section {s}"
    assert r["meta"]["random_weights"] is True and r["meta"]["quick"] is True
    assert r["meta"]["model"] == "lazsl-tiny-test"
    assert r["encoder_floor"]["s_per_image"] > 0
    assert r["pipeline"]["images"] == 2 and r["run_lazsl"]["images"] == 2
    sc = r["scoring"]
    assert sc["classes"] == 200 and sc["max_attributes"] == 9 and sc["crops"] == 90
    assert sc["max_abs_diff_vs_loop"] < 1e-5  # the reference loop agrees with us
    assert set(r["memory"]["runs"]) == {"2", "3"}
    assert all(v["peak_rss_mb"] > 0 for v in r["memory"]["runs"].values())
    assert r["write"]["samples"] == 10
    cc = r["crop_construction"]
    assert cc["images"] == 2 and r["crops"]["backend"] == "pil"
    for b in ("pil", "device", "tensor"):
        assert cc[b]["worker_images_per_s"] > 0 and cc[b]["s_per_image"] > 0
    # uint8 views: 1 byte per value, (1 + N) views of 64 x 64 x 3 from each worker
    assert cc["pil"]["ipc_bytes_per_image"] == 91 * 64 * 64 * 3
    # "device": the same views, from the decoded image (W x H x 3 bytes) sent by the worker
    assert cc["device_values_differing_from_pil"] == 0
    decoded = [w * h * 3 for w, h in cc["image_sizes"]]
    assert min(decoded) <= cc["device"]["ipc_bytes_per_image"] <= max(decoded)
    assert "device_over_pil_crops" in r["ratios"]
    dv = cc["tensor_deviation"]
    assert dv["global_view_max"] == 0 and 0 < dv["mean"] < dv["max"]
    sizes = r["write"]["sizes"]
    assert (
        sizes["cub_compact"]["classes"] == 200 and sizes["imagenet-1k_compact"]["classes"] == 1000
    )
    # compact outputs are smaller than full ones (measured from the stored documents)
    assert sizes["cub_compact"]["bytes_per_sample"] < sizes["cub_full"]["bytes_per_sample"]
    assert r["write"]["raw_insert_samples_per_s"] > 0
    for k in (
        "pipeline_over_floor",
        "scoring_fraction_of_floor",
        "scoring_speedup_vs_loop",
        "crops_fraction_of_floor",
        "memory_growth_100_to_1000",
        "cub_bytes_per_sample",
        "write_samples_per_s",
    ):
        assert k in r["ratios"] and k in r["checks"]
    assert "tensor_crops_fraction_of_floor" in r["ratios"]
    md = (tmp_path / "smoke.md").read_text()
    assert "encoder floor" in md and "per-class loop" in md and "crops 'pil'" in md
    assert (tmp_path / "smoke.png").stat().st_size > 1000
