"""One run split into shards executed by delegated-operation workers
(fiftyone_lazsl.fo.shards, ``classify --shards``): real ``fiftyone delegated
launch`` processes against the tests' mongod, real photos, the tiny model."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from fiftyone_lazsl.fo.labels import evidence_entries
from fiftyone_lazsl.testing import tiny_clip
from plugin_fixtures import lazsl_plugin  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_CROPS = 3


def _env(plugins):
    return dict(
        os.environ,
        FIFTYONE_PLUGINS_DIR=str(plugins),
        FIFTYONE_LAZSL_MODEL_CONFIGS=str(tiny_clip._CONFIG),
        FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )


def _worker(plugins, log):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    return subprocess.Popen(
        [exe, "delegated", "launch"],
        env=_env(plugins),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)


def _dataset(shared_data, name, per_class, max_classes):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    photos = tiny_clip.some_images(shared_data, "cub", per_class=per_class, max_classes=max_classes)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(
        [fo.Sample(filepath=p, ground_truth=fo.Classification(label=c)) for p, c in photos]
    )
    return ds


def _outcomes(ds, field="lazsl"):
    """{sample id: (prediction label id or None, error or None)}"""
    ids = ds.values("id")
    preds = ds.values(f"{field}._id")
    errs = ds.values(f"{field}_error")
    return {i: (None if p is None else str(p), e) for i, p, e in zip(ids, preds, errs)}


def test_shard_views_disjoint_stable_and_cover(tmp_path):
    import fiftyone as fo

    from fiftyone_lazsl.errors import ConfigError
    from fiftyone_lazsl.fo.shards import shard_views

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/x/{i}.jpg") for i in range(10)])
    views = shard_views(ds, 4)
    parts = [set(v.values("id")) for v, _ in views]
    assert [len(p) for p in parts] == [n for _, n in views] == [2, 3, 2, 3]
    assert set().union(*parts) == set(ds.values("id")) and sum(map(len, parts)) == 10
    assert [set(v.values("id")) for v, _ in shard_views(ds, 4)] == parts  # stable
    assert len(shard_views(ds, 50)) == 10
    with pytest.raises(ConfigError, match="shards"):
        shard_views(ds, 0)
    ds.delete()


def test_two_workers_four_shards_kill_and_requeue(lazsl_plugin, shared_data, tmp_path):  # noqa: F811
    """Two real workers run a 4-shard run; one is killed mid-shard; the shard
    is re-queued and resumes on the other worker; every sample ends with
    exactly one outcome, samples finished before the kill are not redone, and
    the parent run record says completed with per-shard counts."""
    from fiftyone_lazsl.fo import shards
    from fiftyone_lazsl.fo.runs import get_run_config

    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    ds = _dataset(shared_data, "shards-workers", per_class=2, max_classes=8)
    n = len(ds)
    aset = str(shared_data / "attribute_sets" / "cub.json")
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [_worker(lazsl_plugin, logs[0])]
    try:
        run = shards.queue_shards(
            ds,
            aset,
            4,
            model=tiny_clip.TINY_MODEL,
            pretrained=ckpt,
            n_crops=N_CROPS,
            batch_size=1,
            write_every=1,
            gt_field="ground_truth",
            device="cpu",
        )
        assert len(run.operation_ids) == 4 and sum(run.shard_sizes) == n
        assert get_run_config(ds, "lazsl")["status"] == "queued"
        views = [v for v, _ in shards.shard_views(ds, 4)]
        # Worker A alone first: kill it once a shard of it is part-way done.
        killed_pid, partial = None, {}
        deadline = time.time() + 240
        while killed_pid is None:
            assert time.time() < deadline, (tmp_path / "worker0.log").read_text()[-3000:]
            for d in shards._collection().find({"dataset": ds.name, "status": "running"}):
                v = views[d["index"]]
                done = v.exists("lazsl").count()
                if 0 < done < len(v):
                    os.killpg(workers[0].pid, signal.SIGKILL)
                    workers[0].wait(30)
                    killed_pid = d["worker"].rsplit(":", 1)[1]
                    partial = {k: o for k, o in _outcomes(ds).items() if o[0]}
                    break
            time.sleep(0.02)
        assert str(workers[0].pid) == killed_pid
        status = shards.shard_status(ds, "lazsl")
        assert status["status"] == "running"  # the killed shard is still marked running
        # Worker B starts; the killed shard is re-queued and resumed.
        workers.append(_worker(lazsl_plugin, logs[1]))
        new_ids = shards.requeue_shards(ds, "lazsl", stale=True)
        assert new_ids
        agg = shards.wait_for_shards(ds, "lazsl", timeout=300)
        assert agg["status"] == "completed", (agg, (tmp_path / "worker1.log").read_text()[-3000:])

        outcomes = _outcomes(ds)
        assert len(outcomes) == n
        assert all((p is None) != (e is None) for p, e in outcomes.values())  # exactly one
        for sid, (label_id, _) in partial.items():  # finished before the kill: not redone
            assert outcomes[sid][0] == label_id
        cfg = get_run_config(ds, "lazsl")
        assert cfg["status"] == "completed" and cfg["num_shards"] == 4
        assert cfg["num_predicted"] + cfg["num_failed"] == n
        assert [s["num_samples"] for s in cfg["shards"]] == run.shard_sizes
        assert all(s["num_predicted"] + s["num_failed"] == s["num_samples"] for s in cfg["shards"])
        pids = {s["worker"].rsplit(":", 1)[1] for s in cfg["shards"]}
        assert str(workers[1].pid) in pids  # B ran shards
        assert len(partial) > 0  # A ran (part of) a shard before it died
        assert all(len(evidence_entries(s)) >= 1 for s in ds.exists("lazsl").values("lazsl"))
    finally:
        for w in workers:
            _stop(w)
        for f in logs:
            f.close()
        ds.delete()


def test_cli_shards_wait_with_local_workers(lazsl_plugin, shared_data, tmp_path):  # noqa: F811
    """``classify --shards 2 --devices cpu,cpu`` starts two local workers, waits
    and prints the combined summary; ``--devices`` is checked before anything
    is queued."""
    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    ds = _dataset(shared_data, "shards-cli", per_class=1, max_classes=4)
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    base = [
        exe,
        "classify",
        "--dataset",
        ds.name,
        "--attributes",
        str(shared_data / "attribute_sets" / "cub.json"),
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        ckpt,
        "--n-crops",
        str(N_CROPS),
        "--label-field",
        "sh",
    ]
    try:
        bad = subprocess.run(
            base + ["--devices", "gpu0"],
            env=_env(lazsl_plugin),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bad.returncode != 0 and "--devices" in bad.stdout + bad.stderr
        assert "sh" not in ds.get_field_schema()
        p = subprocess.run(
            base + ["--shards", "2", "--devices", "cpu,cpu"],
            env=_env(lazsl_plugin),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "queued 2 shard(s)" in p.stdout and f"completed: {len(ds)}/{len(ds)}" in p.stdout
        ds.reload()
        assert ds.exists("sh").count() == len(ds)
    finally:
        ds.delete()


def test_operator_params_round_trip():
    """What queue_shards hands the run_lazsl operator gives back the same
    config and run options (random weights said explicitly)."""

    from fiftyone_lazsl.core.config import LaZSLConfig
    from fiftyone_lazsl.fo.apply import OutputOptions
    from fiftyone_lazsl.fo.shards import _operator_params
    from test_config import _operator_module

    op = _operator_module()  # imported as FiftyOne imports it (relative sibling imports)
    cfg = LaZSLConfig(pretrained=None, n_crops=5, crop_scale=(0.5, 0.8), theta=0.3, seed=4)
    opts = OutputOptions(evidence="full", runner_ups=2)
    p = _operator_params(cfg, "cub", "x", opts, "ground_truth", True, 1, 3)
    assert op.params_to_config(p) == cfg
    kw = op.params_to_kwargs(p)
    assert kw["shard"] == {"index": 1, "count": 3} and kw["evidence"] == "full"
    assert kw["top_k_crops"] == "all" and kw["runner_ups"] == 2
    assert kw["label_field"] == "x" and kw["gt_field"] == "ground_truth" and kw["restrict_to_set"]
    assert op.params_to_kwargs({"attribute_set": "cub"}).get("shard") is None
