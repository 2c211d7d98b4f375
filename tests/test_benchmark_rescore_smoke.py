"""Smoke test of the re-scoring benchmark (``benchmarks/run.py --rescore
--quick``): tiny random model, a few real photos; checks the sections and the
agreement figures, never timings."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rescore_benchmark_quick_mode(tmp_path, shared_data):
    env = dict(os.environ)
    env.pop("FIFTYONE_DATABASE_URI", None)  # the benchmark starts its own mongod
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--rescore",
        "--quick",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
        "--name",
        "smoke",
        "--images",
        "3",
        "--fresh-images",
        "1",
        "--memory-sizes",
        "2,3",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "smoke.json").read_text())
    rs = r["rescore"]
    assert (rs["samples"], rs["encoded"], rs["replicated"]) == (3, 1, 2)
    assert rs["same_argmax_on_encoded"] is True and rs["max_abs_logit_diff_on_encoded"] < 0.1
    # 1 + N views, D = 32, float16; plus N float32 crop-to-global cosines
    assert rs["store_bytes_per_sample"] == 91 * 32 * 2 + 90 * 4
    assert set(r["memory"]["runs"]) == {"2", "3"}
    assert all(v["predicted"] == int(k) for k, v in r["memory"]["runs"].items())
    assert "rescore_speedup_vs_fresh" in r["ratios"] and "memory_flat" in r["checks"]
    assert "speed-up, end to end" in (tmp_path / "smoke.md").read_text()


def test_rescore_cold_benchmark_quick_mode(tmp_path, shared_data):
    """``benchmarks/rescore_cold.py --quick``: every step in its own process;
    the re-scoring with cached text features builds no weights and encodes
    no prompt (counted in its process); its labels equal the fresh run's."""
    env = dict(os.environ)
    env.pop("FIFTYONE_DATABASE_URI", None)  # the benchmark starts its own mongod
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "rescore_cold.py"),
        "--quick",
        "--out-dir",
        str(tmp_path),
        "--name",
        "cold",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "cold.json").read_text())
    assert r["rescore_weights_built"] == 0 and r["rescore_text_encoder_calls"] == 0
    assert r["rescore_text_cache_cold"]["weights_built"] == 0  # the text tower alone
    assert r["rescore_text_cache_cold"]["text_encoder_calls"] >= 1
    assert all(f["weights_built"] == 1 for f in r["fresh"])
    assert r["same_labels"] is True and r["max_abs_logit_diff"] < 0.1
    assert r["rescore"][0]["reused"] == r["meta"]["samples"] == 2
    assert "speed-up" in (tmp_path / "cold.md").read_text()
