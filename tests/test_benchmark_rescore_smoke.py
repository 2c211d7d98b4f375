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
    env.pop("FIFTYONE_DATABASE_URI", None)   # the benchmark starts its own mongod
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--rescore", "--quick",
           "--device", "cpu", "--out-dir", str(tmp_path), "--name", "smoke",
           "--images", "3", "--fresh-images", "1", "--memory-sizes", "2,3"]
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
