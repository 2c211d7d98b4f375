"""One writer per label field, and run records that
tell the truth.

A real ``fiftyone-lazsl classify`` process holds the write lock of its label
field: a second run on that field (in process, and through the CLI) is refused
with a message naming the running process, and the first run ends complete
and unmixed. A run killed with SIGKILL reads as ``"interrupted"`` (its process
is gone), its lock is taken over by the next run, and the ``--skip-existing``
resume records the totals of the whole run. Locks of another host are honoured
while their heartbeat is fresh and taken over once stale."""

import datetime as dt
import os
import signal
import subprocess
import threading
import time

import pytest

import badfiles as bf
from badfiles import assert_every_sample_accounted
from cli_helpers import ENV, EXE
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture(scope="module")
def setup(shared_data, checkpoint):
    photos = [p for p, _ in tiny_clip.some_images(shared_data, "cub", per_class=1)]
    assert len(photos) >= 10
    ds = bf.make_dataset("locks", photos[:10])
    ds.persistent = True
    aset = str(shared_data / "attribute_sets" / "cub.json")
    yield ds, aset, checkpoint
    ds.delete()


def _args(ds, aset, checkpoint, field):
    return [
        "classify",
        "--dataset",
        ds.name,
        "--attributes",
        aset,
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--n-crops",
        "16",
        "--batch-size",
        "1",
        "--write-every",
        "1",
        "--workers",
        "0",
        "--label-field",
        field,
        "--device",
        "cpu",
        "--seed",
        "3",
    ]


def _start(args):
    return subprocess.Popen(
        [EXE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **ENV),
    )


def _wait_for_writes(proc, ds, field, n=2, timeout=240):
    from fiftyone_lazsl.fo import locks

    coll = ds._sample_collection
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (
            locks.current(ds, field) is not None
            and coll.count_documents({field: {"$ne": None}}) >= n
        ):
            ds.reload()
            return
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
    pytest.fail(f"the run did not start writing in time: {err}")


def test_second_writer_is_refused_while_the_first_runs(setup):
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.errors import RunConflictError
    from fiftyone_lazsl.fo import locks
    from fiftyone_lazsl.fo.runs import get_run_config, run_status

    ds, aset, ckpt = setup
    proc = _start(_args(ds, aset, ckpt, "busy"))
    try:
        _wait_for_writes(proc, ds, "busy")
        # Pause the first run (a slow run, deterministically): it still holds
        # the lock, its process is alive and its heartbeat younger than 60 s.
        os.kill(proc.pid, signal.SIGSTOP)
        assert run_status(ds, "busy") == "running"
        with pytest.raises(RunConflictError, match=rf"'busy' .* another run \(pid {proc.pid} on "):
            run_lazsl(
                ds,
                aset,
                model=tiny_clip.TINY_MODEL,
                pretrained=ckpt,
                n_crops=2,
                label_field="busy",
                num_workers=0,
                device="cpu",
            )
        r = subprocess.run(
            [EXE, *_args(ds, aset, ckpt, "busy"), "--n-crops", "2"],
            capture_output=True,
            text=True,
            env=dict(os.environ, **ENV),
            timeout=120,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = [l for l in r.stderr.splitlines() if "error:" in l]
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0], r.stderr
        # another label field is not blocked
        s = run_lazsl(
            ds.limit(2),
            aset,
            model=tiny_clip.TINY_MODEL,
            pretrained=ckpt,
            n_crops=2,
            label_field="other",
            num_workers=0,
            device="cpu",
        )
        assert s.num_predicted == 2
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    ds.reload()
    assert "10/10 samples classified into field 'busy'" in out
    assert_every_sample_accounted(ds, "busy")
    cfg = get_run_config(ds, "busy")
    assert (cfg["status"], cfg["n_crops"], cfg["num_predicted"]) == ("completed", 16, 10)
    assert ds.classes["busy"] == cfg["classes"]
    assert {len(s.busy.logits) for s in ds} == {len(cfg["classes"])}
    assert all(len(s.busy_crops.detections) > 2 for s in ds)  # no 2-crop run mixed in
    assert locks.current(ds, "busy") is None  # released


def test_killed_run_reads_interrupted_and_resume_keeps_whole_run_totals(setup):
    from fiftyone_lazsl.fo import locks
    from fiftyone_lazsl.fo.runs import get_run_config, run_status

    ds, aset, ckpt = setup
    args = _args(ds, aset, ckpt, "killed")
    proc = _start(args)
    try:
        _wait_for_writes(proc, ds, "killed", n=3)
        os.kill(proc.pid, signal.SIGSTOP)  # (so it cannot finish before the kill)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ds.reload()
    n_done = ds.count("killed")
    assert 3 <= n_done < 10
    assert ds.get_run_info("lazsl_killed").config.status == "running"  # as stored
    assert locks.current(ds, "killed") is not None  # never released
    assert run_status(ds, "killed") == "interrupted"  # its process is gone
    assert get_run_config(ds, "killed")["status"] == "interrupted"

    r = subprocess.run(
        [EXE, *args, "--skip-existing"],
        capture_output=True,
        text=True,
        env=dict(os.environ, **ENV),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rest = 10 - n_done
    assert f"{rest}/{rest} samples classified into field 'killed'" in r.stdout
    ds.reload()
    assert_every_sample_accounted(ds, "killed")
    cfg = get_run_config(ds, "killed")
    assert cfg["status"] == "completed" and cfg["resumed"] == 1
    assert (cfg["num_samples"], cfg["num_predicted"], cfg["num_failed"]) == (10, 10, 0)
    assert locks.current(ds, "killed") is None


def test_lock_of_another_host_is_honoured_until_stale(setup):
    from fiftyone_lazsl.errors import RunConflictError
    from fiftyone_lazsl.fo import locks

    ds, _, _ = setup
    coll = locks._collection()
    now = locks._now()
    foreign = {
        "_id": locks.lock_id(ds, "far"),
        "owner": "elsewhere:77:abc",
        "host": "elsewhere",
        "pid": 77,
        "dataset": ds.name,
        "label_field": "far",
        "started": now,
        "heartbeat": now,
    }
    coll.insert_one(foreign)
    try:
        with pytest.raises(RunConflictError, match="pid 77 on elsewhere"):
            locks.acquire(ds, "far", stale_s=60)
        old = now - dt.timedelta(seconds=120)
        coll.update_one({"_id": foreign["_id"]}, {"$set": {"heartbeat": old}})
        lock = locks.acquire(ds, "far", stale_s=60)
        assert lock.stolen_from["owner"] == "elsewhere:77:abc"
        assert locks.current(ds, "far")["owner"] == lock.owner
        with pytest.raises(RunConflictError, match=f"pid {os.getpid()}"):
            locks.acquire(ds, "far")  # our own live lock is honoured too
        lock.release()
        assert locks.current(ds, "far") is None
    finally:
        coll.delete_one({"_id": foreign["_id"]})


def test_heartbeat_keeps_a_long_run_alive(setup):
    from fiftyone_lazsl.fo import locks

    ds, _, _ = setup
    lock = locks.acquire(ds, "beat", heartbeat_s=0.2)
    try:
        first = locks.current(ds, "beat")["heartbeat"]
        time.sleep(1.0)
        later = locks.current(ds, "beat")["heartbeat"]
        assert later > first
        assert locks.is_alive(locks.current(ds, "beat"), stale_s=0.6)
    finally:
        lock.release()


def test_database_hiccup_is_retried_then_a_lost_database_is_one_error(setup, monkeypatch):
    """A write that fails with pymongo's AutoReconnect (a restarted or stalled
    mongod) is retried; a database that stays away ends the run with the
    connection error after the bounded retries, every earlier batch kept and
    the record not left 'running'."""
    import fiftyone.core.dataset as fod
    import pymongo.errors as pe

    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.fo import writer
    from fiftyone_lazsl.fo.runs import get_run_config

    ds, aset, ckpt = setup
    monkeypatch.setattr(writer, "DB_RETRY_WAITS", (0.05, 0.05))
    real = fod.Dataset._bulk_write
    calls = {"n": 0, "fail": {2, 3}}

    def flaky(self, *a, **kw):  # the write path of the background writer
        if threading.current_thread().name != "lazsl-writer":
            return real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] in calls["fail"]:
            raise pe.AutoReconnect("connection reset by the database")
        return real(self, *a, **kw)

    monkeypatch.setattr(fod.Dataset, "_bulk_write", flaky)
    kw = dict(
        model=tiny_clip.TINY_MODEL,
        pretrained=ckpt,
        n_crops=2,
        num_workers=0,
        device="cpu",
        write_every=2,
        batch_size=2,
    )
    s = run_lazsl(ds, aset, label_field="hiccup", **kw)
    assert s.num_predicted == 10
    assert_every_sample_accounted(ds, "hiccup")

    calls.update(n=0, fail=set(range(3, 1000)))  # the database goes away after 2 batches
    with pytest.raises(writer.WriterError) as err:
        run_lazsl(ds, aset, label_field="lost", **kw)
    assert isinstance(err.value.__cause__, pe.AutoReconnect)
    monkeypatch.setattr(fod.Dataset, "_bulk_write", real)
    ds.reload()
    assert 2 <= ds.count("lost") < 10
    for smp in ds.exists("lost"):
        assert smp.lost.label and smp.lost_error is None
    assert get_run_config(ds, "lost")["status"] == "interrupted"
