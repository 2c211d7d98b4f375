"""Third round of faults, mistakes and hostile input (part B): nothing a user
wrote is lost, a field holds one run, bad numbers and names are one line.

Every case is run the way the user meets it: ``fiftyone-lazsl`` processes on a
private mongod, real photos copied into a temporary folder (so a test may
delete or break them), the tiny open_clip test model with a saved checkpoint.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import time

import pytest

import badfiles as bf
from cli_helpers import ENV, EXE, one_error_line
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=2))


@pytest.fixture(scope="module")
def sets(photo_data, tmp_path_factory):
    """Two attribute-set files over the photos' classes: ``a`` (4 classes),
    ``b`` (2 of them, other attributes)."""
    d = tmp_path_factory.mktemp("sets")
    classes = sorted({c for _, c in tiny_clip.some_images(photo_data, "cub", 1, 4)})
    a = {
        c: [f"{c} feathers", "a small beak", f"a bird with trait {i}"]
        for i, c in enumerate(classes)
    }
    b = {c: ["a long tail", "a red crown"] for c in classes[:2]}
    pa, pb = d / "a.json", d / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    return str(pa), str(pb)


def _copy_photos(photo_data, dest, n=6):
    """``n`` real photos copied into ``dest`` (the test may break them)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p, c in tiny_clip.some_images(photo_data, "cub", per_class=2, max_classes=4)[:n]:
        q = dest / f"{c}-{os.path.basename(p)}"
        shutil.copy(p, q)
        out.append(str(q))
    return out


def _cli(*args, timeout=300, preexec_fn=None, env=None):
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **ENV, **(env or {})),
        preexec_fn=preexec_fn,
    )


def _classify(ds, aset, ckpt, field, *extra):
    return [
        "classify",
        "--dataset",
        ds.name,
        "--attributes",
        aset,
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        ckpt,
        "--n-crops",
        "4",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--label-field",
        field,
        "--device",
        "cpu",
        "--seed",
        "1",
        *extra,
    ]


def _snapshot(ds, field):
    """Everything a run wrote on ``field``, per sample, plus its run record."""
    ds.reload()
    fields = [
        f
        for f in (field, f"{field}_crops", f"{field}_attributes", f"{field}_error")
        if f in ds.get_field_schema()
    ]
    rows = list(
        zip(*([v.to_dict() if hasattr(v, "to_dict") else v for v in ds.values(f)] for f in fields))
    )
    rec = ds.get_run_info(f"lazsl_{field}").config.serialize()
    rec = {k: v for k, v in rec.items() if not k.startswith("_")}
    return rows, rec


# --------------------------------------------------------------- data loss
def test_rescore_is_refused_while_classify_writes_the_field(photo_data, sets, checkpoint, tmp_path):
    """One writer per label field holds for re-scoring too: a ``rescore`` into
    a field a ``classify`` process is writing is one line (exit 2), and the
    classify ends complete, its field unmixed."""
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.fo import locks
    from fiftyone_lazsl.fo.runs import get_run_config

    files = _copy_photos(photo_data, tmp_path / "img")
    ds = bf.make_dataset("r3-mix", files)
    ds.persistent = True
    aset_a, aset_b = sets
    try:
        run_lazsl(
            ds,
            aset_a,
            model=tiny_clip.TINY_MODEL,
            pretrained=checkpoint,
            n_crops=4,
            seed=1,
            num_workers=0,
            device="cpu",
            label_field="src",
            store_features=str(tmp_path / "store"),
        )
        proc = subprocess.Popen(
            [
                EXE,
                *_classify(
                    ds, aset_a, checkpoint, "mix", "--batch-size", "1", "--write-every", "1"
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **ENV),
        )
        try:
            deadline = time.time() + 240
            while locks.current(ds, "mix") is None and time.time() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGSTOP)  # hold it mid-run, lock held and alive
            r = _cli(
                "rescore",
                "--dataset",
                ds.name,
                "--attributes",
                aset_b,
                "--from-field",
                "src",
                "--label-field",
                "mix",
            )
            os.kill(proc.pid, signal.SIGCONT)
            assert r.returncode == 2, (r.stdout, r.stderr)
            line = one_error_line(r.stderr, "rescore")
            assert "'mix'" in line and f"pid {proc.pid}" in line, line
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
        ds.reload()
        cfg = get_run_config(ds, "mix")
        assert cfg["status"] == "completed" and "rescored_from" not in cfg
        assert {len(s.mix.logits) for s in ds} == {len(cfg["classes"])} == {4}
    finally:
        ds.delete()


def test_rerun_in_which_every_sample_fails_keeps_the_earlier_outputs(
    photo_data, sets, checkpoint, tmp_path
):
    """A rerun into a field holding 6 predictions in which every sample fails
    (here: the image files became unreadable) writes nothing: one line, exit 2,
    the 6 predictions, crops and the run record exactly as before."""
    files = _copy_photos(photo_data, tmp_path / "img")
    ds = bf.make_dataset("r3-keep", files)
    ds.persistent = True
    aset_a, _ = sets
    try:
        r = _cli(*_classify(ds, aset_a, checkpoint, "keep"))
        assert r.returncode == 0, r.stderr
        before = _snapshot(ds, "keep")
        assert sum(v is not None for v, *_ in before[0]) == 6
        for f in files:
            with open(f, "wb") as fh:
                fh.write(b"not an image any more")
        r = _cli(*_classify(ds, aset_a, checkpoint, "keep"))
        assert r.returncode == 2, (r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert "every one of the 6 samples failed" in line and "'keep'" in line, line
        assert _snapshot(ds, "keep") == before
    finally:
        ds.delete()


def _limit_memory(nbytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))

    return limit


def test_n_crops_that_cannot_fit_in_memory_is_refused_and_keeps_outputs(
    photo_data, sets, checkpoint, tmp_path
):
    """``--n-crops 200000`` (a typo) under an 8 GB address-space limit: before
    anything is written, one line naming ``--n-crops``; the field's earlier
    predictions stay."""
    files = _copy_photos(photo_data, tmp_path / "img", n=3)
    ds = bf.make_dataset("r3-mem", files)
    ds.persistent = True
    aset_a, _ = sets
    try:
        r = _cli(*_classify(ds, aset_a, checkpoint, "m"))
        assert r.returncode == 0, r.stderr
        before = _snapshot(ds, "m")
        args = _classify(
            ds,
            aset_a,
            checkpoint,
            "m",
            "--n-crops",
            "200000",
            "--batch-size",
            "1",
            "--crop-backend",
            "tensor",
        )
        r = _cli(*args, preexec_fn=_limit_memory(8 << 30))
        assert r.returncode == 2, (r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert "--n-crops" in line and "200000" in line, line
        assert _snapshot(ds, "m") == before
    finally:
        ds.delete()


# ------------------------------------------------------- one run per field
def test_rerun_on_a_subset_with_another_set_is_refused(photo_data, sets, checkpoint, tmp_path):
    """A field holds one run's outputs: rerunning on a tagged subset with
    another attribute set is refused (one line naming --label-field; nothing
    written); with the same parameters the subset rerun is allowed."""
    files = _copy_photos(photo_data, tmp_path / "img")
    ds = bf.make_dataset("r3-sub", files)
    ds.persistent = True
    aset_a, aset_b = sets
    try:
        r = _cli(*_classify(ds, aset_a, checkpoint, "f"))
        assert r.returncode == 0, r.stderr
        ds.take(2, seed=0).tag_samples("sub")
        before = _snapshot(ds, "f")
        r = _cli(*_classify(ds, aset_b, checkpoint, "f", "--tag", "sub"))
        assert r.returncode == 2, (r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert "--label-field" in line and "4 sample(s)" in line, line
        assert "attribute_set_hash" in line or "classes" in line, line
        assert _snapshot(ds, "f") == before
        # the same run's parameters on the subset: one run still
        r = _cli(*_classify(ds, aset_a, checkpoint, "f", "--tag", "sub"))
        assert r.returncode == 0, r.stderr
        ds.reload()
        assert {len(s.f.logits) for s in ds} == {4}
        # on every sample, another set replaces the whole run
        r = _cli(*_classify(ds, aset_b, checkpoint, "f"))
        assert r.returncode == 0, r.stderr
        ds.reload()
        assert {len(s.f.logits) for s in ds} == {2}
    finally:
        ds.delete()


def test_empty_tag_is_refused(photo_data, sets, checkpoint, tmp_path):
    """``--tag ''`` (an empty shell variable) is one line, not the whole dataset."""
    files = _copy_photos(photo_data, tmp_path / "img", n=2)
    ds = bf.make_dataset("r3-tag", files)
    ds.persistent = True
    aset_a, _ = sets
    try:
        r = _cli(*_classify(ds, aset_a, checkpoint, "t", "--tag", ""))
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "--tag" in one_error_line(r.stderr)
        r = _cli(*_classify(ds, aset_a, checkpoint, "t", "--tag", "   "))
        assert r.returncode == 2, (r.stdout, r.stderr)
        ds.reload()
        assert "t" not in ds.get_field_schema()
    finally:
        ds.delete()


# ------------------------------------------------------------ import-folder
def _class_tree(photo_data, root, copies=1):
    """``root/<class>/<image>`` of symbolic links to the real photos
    (``copies`` links per photo, so an import takes a while)."""
    n = 0
    for p, c in tiny_clip.some_images(photo_data, "cub", per_class=100):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            os.symlink(p, root / c / f"{k}-{os.path.basename(p)}")
            n += 1
    return n


def test_interrupted_import_overwrite_keeps_the_old_dataset(photo_data, tmp_path):
    """Ctrl-C during ``import-folder --overwrite`` (while the new dataset is
    being filled) leaves the old dataset whole and no half-built one."""
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    small, big = tmp_path / "small", tmp_path / "big"
    n_small = _class_tree(photo_data, small)
    _class_tree(photo_data, big, copies=8)
    r = _cli("import-folder", str(small), "--dataset", "r3-imp")
    assert r.returncode == 0, r.stderr
    old = fo.load_dataset("r3-imp")
    before = sorted(old.values("filepath"))
    assert len(before) == n_small
    conn = fodb.get_db_conn()
    seen = {d["_id"] for d in conn.datasets.find({}, {"_id": 1})}
    proc = subprocess.Popen(
        [EXE, "import-folder", str(big), "--dataset", "r3-imp", "--overwrite"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **ENV),
    )
    try:
        deadline = time.time() + 120
        new = None
        while new is None and time.time() < deadline and proc.poll() is None:
            new = next(
                (d for d in conn.datasets.find({}, {"_id": 1, "name": 1}) if d["_id"] not in seen),
                None,
            )
            time.sleep(0.005)
        assert new is not None, proc.communicate()
        time.sleep(0.2)  # samples are being added
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err, err
    ds = fo.load_dataset("r3-imp", reload=True)
    assert sorted(ds.values("filepath")) == before
    assert not [n for n in fo.list_datasets() if "importing" in n]
    ds.delete()


def test_import_over_symbolic_link_loops_skips_them(photo_data, tmp_path):
    root = tmp_path / "tree"
    n = _class_tree(photo_data, root)
    os.symlink("c2", root / "c1")
    os.symlink("c1", root / "c2")
    first_class = sorted(os.listdir(root))[0]
    os.symlink("self", root / first_class / "self")
    os.symlink("..", root / first_class / "up")
    r = _cli("import-folder", str(root), "--dataset", "r3-loops")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{n} images" in r.stdout, r.stdout
    assert "c1: cannot follow (Too many levels of symbolic links)" in r.stderr, r.stderr
    import fiftyone as fo

    fo.delete_dataset("r3-loops")


@pytest.mark.parametrize("name,other", [("鳥 データ ✓", None), ("b slug", "b-slug")])
def test_dataset_names_fiftyone_cannot_use_are_one_line(photo_data, tmp_path, name, other):
    import fiftyone as fo

    root = tmp_path / "tree"
    _class_tree(photo_data, root)
    if other:
        fo.Dataset(other).persistent = True
    try:
        for extra in ([], ["--overwrite"]):
            r = _cli("import-folder", str(root), "--dataset", name, *extra)
            assert r.returncode == 2, (r.stdout, r.stderr)
            line = one_error_line(r.stderr, "import-folder")
            assert repr(name) in line and ("slug" in line), line
        assert not fo.dataset_exists(name)
    finally:
        if other:
            fo.delete_dataset(other)


# ------------------------------------------------------------ feature store
@pytest.fixture
def stored(photo_data, sets, checkpoint, tmp_path):
    """A dataset of 4 copied photos classified with ``--store-features`` into
    ``tmp_path/store``."""
    from fiftyone_lazsl import run_lazsl

    files = _copy_photos(photo_data, tmp_path / "img", n=4)
    ds = bf.make_dataset("r3-store", files)
    ds.persistent = True
    store = tmp_path / "store"
    run_lazsl(
        ds,
        sets[0],
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        n_crops=4,
        seed=1,
        num_workers=0,
        device="cpu",
        label_field="src",
        store_features=str(store),
    )
    yield ds, store
    ds.delete()


def _entries(store):
    import sqlite3

    with sqlite3.connect(store / "index.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def test_prune_never_follows_links_and_skips_stray_files(stored, tmp_path):
    _, store = stored
    user = tmp_path / "user"
    user.mkdir()
    for i in range(3):
        (user / f"precious-{i}.bin").write_bytes(b"mine")
    shards = store / "shards"
    os.symlink(user, shards / "photos")
    os.symlink(user, shards / ("ab" * 16))  # named like a fingerprint folder
    fpdir = next(p for p in shards.iterdir() if p.is_dir() and not p.is_symlink())
    os.symlink(user / "precious-0.bin", fpdir / "123-0123456789ab.bin")  # named like a shard
    r = _cli("features", "prune", "--all", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(user)) == [f"precious-{i}.bin" for i in range(3)]
    assert _entries(store) == 0
    (shards / "README.txt").write_text("notes")
    r = _cli("features", "prune", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert (shards / "README.txt").read_text() == "notes"
    assert sorted(os.listdir(user)) == [f"precious-{i}.bin" for i in range(3)]


def test_prune_older_than_days_negative_refused_zero_prunes_all(stored):
    _, store = stored
    n = _entries(store)
    assert n == 4
    r = _cli("features", "prune", "--older-than-days", "-1", "--store", str(store))
    assert r.returncode == 2, r.stderr
    assert "--older-than-days" in one_error_line(r.stderr, "features prune")
    assert _entries(store) == n
    r = _cli("features", "prune", "--older-than-days", "0", "--keep-stale", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert f"pruned {n} entries" in r.stdout, r.stdout
    assert _entries(store) == 0


def test_features_info_on_a_missing_store_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "store"
    for action in ("info", "prune"):
        r = _cli("features", action, "--store", str(missing))
        assert r.returncode == 2, r.stderr
        assert "no feature store" in one_error_line(r.stderr, "features")
    assert not (tmp_path / "no").exists()


def test_index_that_is_not_sqlite_is_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "index.sqlite").write_bytes(b"this is not a database, just text " * 50)
    r = _cli("features", "info", "--store", str(store))
    assert r.returncode == 2, r.stderr
    assert "not a feature-store index" in one_error_line(r.stderr, "features")


def test_corrupt_index_rows_are_per_sample_errors(stored, sets):
    import sqlite3

    ds, store = stored
    keys = ds.values("filepath")
    with sqlite3.connect(store / "index.sqlite") as db:
        db.execute("UPDATE entries SET dtype = 'float99' WHERE key = ?", (keys[0],))
        db.execute("UPDATE entries SET dim = -5 WHERE key = ?", (keys[1],))
        db.execute("UPDATE entries SET boxes = x'0001' WHERE key = ?", (keys[2],))
    r = _cli(
        "rescore",
        "--dataset",
        ds.name,
        "--attributes",
        sets[0],
        "--from-field",
        "src",
        "--label-field",
        "re",
        "--missing",
        "skip",
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    ds.reload()
    errs = dict(zip(ds.values("filepath"), ds.values("re_error")))
    for k in keys[:3]:
        assert errs[k].startswith("skipped: stored features corrupt"), errs[k]
    assert errs[keys[3]] is None and ds[keys[3]].re is not None


def test_rescore_from_a_store_on_a_read_only_mount(stored, sets, tmp_path):
    ds, store = stored
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        import sqlite3

        with sqlite3.connect(store / "index.sqlite") as db:  # as a finished run leaves it
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copytree(store, mnt / "store", ignore=shutil.ignore_patterns("*-wal", "*-shm"))
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        r = _cli(
            "rescore",
            "--dataset",
            ds.name,
            "--attributes",
            sets[0],
            "--from-field",
            "src",
            "--label-field",
            "ro",
            "--store",
            str(mnt / "store"),
        )
        assert r.returncode == 0, r.stderr
        assert "4/4 samples classified into field 'ro'" in r.stdout, r.stdout
        r = _cli("features", "info", "--store", str(mnt / "store"))
        assert r.returncode == 0 and "4 entries" in r.stdout, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# ------------------------------------------------------------------ numbers
@pytest.fixture(scope="module")
def predicted(photo_data, sets, checkpoint, tmp_path_factory):
    """4 copied photos with ground truth, classified into ``p``."""
    from fiftyone_lazsl import run_lazsl

    imgs = tiny_clip.some_images(photo_data, "cub", per_class=1, max_classes=4)
    files = _copy_photos(photo_data, tmp_path_factory.mktemp("num"), n=4)
    ds = bf.make_dataset("r3-num", files, gt=[c for _, c in imgs])
    ds.persistent = True
    run_lazsl(
        ds,
        sets[0],
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        n_crops=4,
        seed=1,
        num_workers=0,
        device="cpu",
        label_field="p",
    )
    yield ds
    ds.delete()


_AUDIT = ["audit", "--pred-field", "p", "--gt-field", "ground_truth"]


@pytest.mark.parametrize(
    "args,cmd,name",
    [
        (_AUDIT + ["--n-evidence", "-1"], "audit", "--n-evidence"),
        (_AUDIT + ["--show", "-5"], "audit", "--show"),
        (
            ["evaluate", "--gt-field", "ground_truth", "--pred-fields", "p", "--top-k", "-3"],
            "evaluate",
            "--top-k",
        ),
        (["app", "--port", "70000", "--no-wait"], "app", "--port"),
        (["--seed", "18446744073709551616"], "classify", "seed"),
        (["--max-iter", "10000000000000000000"], "classify", "max_iter"),
    ],
    ids=["n-evidence", "show", "top-k", "port", "seed", "max-iter"],
)
def test_numbers_out_of_range_are_one_line(predicted, sets, checkpoint, args, cmd, name):
    ds = predicted
    if cmd == "classify":
        args = _classify(ds, sets[0], checkpoint, "big", *args)
    else:
        args = [args[0], "--dataset", ds.name, *args[1:]]
    r = _cli(*args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert name in one_error_line(r.stderr, cmd)
    ds.reload()
    assert "big" not in ds.get_field_schema() and "lazsl_big" not in ds.list_runs()


# ------------------------------------------------------------------- images
def _exif_orientation(typ, count, payload):
    """Raw EXIF (``Exif\\0\\0`` + little-endian TIFF) holding one Orientation
    entry of TIFF type ``typ``."""
    import struct

    head = b"II*\x00" + struct.pack("<I", 8)
    if len(payload) <= 4:
        entry = struct.pack("<HHI", 0x0112, typ, count) + payload.ljust(4, b"\x00")
        return b"Exif\x00\x00" + head + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    entry = struct.pack("<HHII", 0x0112, typ, count, 8 + 2 + 12 + 4)
    return b"Exif\x00\x00" + head + struct.pack("<H", 1) + entry + struct.pack("<I", 0) + payload


def test_malformed_orientation_as_pil_and_float_tiff_with_nan_is_scored(
    photo_data, sets, checkpoint, tmp_path
):
    """An Orientation tag written as text ``"6"`` or as the rational 13/2 does
    not rotate in ``PIL.ImageOps.exif_transpose``, and must not here: each
    such JPEG scores exactly as a PNG of what ``exif_transpose`` shows (CLIP
    scores the whole image, so the logits compare pixels); a rational 12/2
    (= 6) rotates in both. A float TIFF with NaN and inf pixels is scored."""
    import struct

    import numpy as np
    from PIL import Image, ImageOps

    photo, _ = tiny_clip.some_images(photo_data, "cub", 1, 1)[0]
    im = Image.open(photo).convert("RGB")
    files = []
    for name, (typ, cnt, payload) in {
        "text6": (2, 2, b"6\x00"),
        "half": (5, 1, struct.pack("<II", 13, 2)),
        "six": (5, 1, struct.pack("<II", 12, 2)),
    }.items():
        jpg = tmp_path / f"{name}.jpg"
        im.save(jpg, exif=_exif_orientation(typ, cnt, payload), quality=95)
        ref = tmp_path / f"{name}-shown.png"
        ImageOps.exif_transpose(Image.open(jpg)).convert("RGB").save(ref)
        files += [str(jpg), str(ref)]
    rng = np.random.default_rng(0)
    a = (rng.random((120, 160)) * 0.8 + 0.1).astype(np.float32)
    a[:10, :10], a[20, 20:40], a[50, :] = np.nan, np.inf, -np.inf
    tif = tmp_path / "nan.tif"
    Image.fromarray(a, mode="F").save(tif)
    files.append(str(tif))
    ds = bf.make_dataset("r3-img", files)
    ds.persistent = True
    try:
        r = _cli(*_classify(ds, sets[0], checkpoint, "c", "--method", "clip"))
        assert r.returncode == 0, r.stderr
        ds.reload()
        by = {os.path.basename(s.filepath): s for s in ds}
        for name in ("text6", "half", "six"):
            got, want = by[f"{name}.jpg"].c, by[f"{name}-shown.png"].c
            assert got is not None and want is not None, name
            np.testing.assert_allclose(got.logits, want.logits, atol=1e-5, err_msg=name)
        assert by["nan.tif"].c is not None and by["nan.tif"].c_error is None, by["nan.tif"]
    finally:
        ds.delete()


# ------------------------------------------------------- datasets and views
def test_patches_view_is_refused_before_any_record(photo_data, sets, checkpoint, tmp_path):
    import fiftyone as fo

    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.errors import ConfigError

    files = _copy_photos(photo_data, tmp_path / "img", n=2)
    ds = bf.make_dataset("r3-patches", files)
    for s in ds:
        s["boxes"] = fo.Detections(
            detections=[fo.Detection(label="bird", bounding_box=[0.1, 0.1, 0.5, 0.5])]
        )
        s.save()
    with pytest.raises(ConfigError, match="a patches view of dataset 'r3-patches'"):
        run_lazsl(
            ds.to_patches("boxes"),
            sets[0],
            model=tiny_clip.TINY_MODEL,
            pretrained=checkpoint,
            n_crops=4,
            num_workers=0,
            device="cpu",
            label_field="pp",
        )
    assert "lazsl_pp" not in ds.list_runs() and "pp" not in ds.get_field_schema()
    ds.delete()


def test_label_field_fiftyone_cannot_key_is_one_line(photo_data, sets, checkpoint, tmp_path):
    files = _copy_photos(photo_data, tmp_path / "img", n=2)
    ds = bf.make_dataset("r3-half", files)
    ds.persistent = True
    try:
        r = _cli(*_classify(ds, sets[0], checkpoint, "x½"))
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "'x½'" in one_error_line(r.stderr)
        ds.reload()
        assert not ds.list_runs() and "x½" not in ds.get_field_schema()
    finally:
        ds.delete()


def test_dataset_deleted_while_a_run_writes_is_one_line(photo_data, sets, checkpoint, tmp_path):
    import fiftyone as fo

    from fiftyone_lazsl.fo import locks

    files = _copy_photos(photo_data, tmp_path / "img", n=8)
    ds = bf.make_dataset("r3-gone", files)
    ds.persistent = True
    proc = subprocess.Popen(
        [EXE, *_classify(ds, sets[0], checkpoint, "g", "--batch-size", "1", "--write-every", "1")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **ENV),
    )
    try:
        coll = ds._sample_collection
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if locks.current(ds, "g") and coll.count_documents({"g": {"$ne": None}}) >= 2:
                break
            time.sleep(0.05)
        fo.delete_dataset("r3-gone")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (out, err)
    assert "was deleted" in one_error_line(err)


# ------------------------------------------------------------------ weights
class _RunsCode:
    """Unpickling this creates the file ``path`` (what a hostile checkpoint
    could do); ``torch.load(weights_only=True)`` must refuse it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["pt", "bin", "safetensors", "folder", "hub"])
def test_unloadable_weights_are_one_line_and_run_no_code(photo_data, sets, tmp_path, kind):
    import torch

    files = _copy_photos(photo_data, tmp_path / "img", n=1)
    ds = bf.make_dataset(f"r3-w-{kind}", files)
    ds.persistent = True
    marker = tmp_path / "code-ran"
    evil = {"state_dict": _RunsCode(marker)}
    if kind == "folder":
        folder = tiny_clip.make_local_dir(tmp_path / "oc", {"size": 64})
        for f in folder.glob("*.bin"):
            f.unlink()
        torch.save(evil, folder / "open_clip_model.safetensors")
        pretrained = str(folder)
    elif kind == "hub":
        pretrained = "hf-hub:../../.."
    else:
        pretrained = str(tmp_path / f"evil.{kind}")
        torch.save(evil, pretrained)
    try:
        args = _classify(ds, sets[0], pretrained, "w")
        if kind == "folder":
            i = args.index("--model")
            args[i + 1] = f"local-dir:{pretrained}"
        r = _cli(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert ("../../.." if kind == "hub" else pretrained) in line, line
        assert not marker.exists()
    finally:
        ds.delete()


# -------------------------------------------------------------- environment
def test_read_only_cache_folder_warns_once_and_the_run_goes_on(
    photo_data, sets, checkpoint, tmp_path
):
    files = _copy_photos(photo_data, tmp_path / "img", n=2)
    ds = bf.make_dataset("r3-rocache", files)
    ds.persistent = True
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro", "none", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a read-only tmpfs here (not root?)")
    try:
        r = _cli(
            *_classify(ds, sets[0], checkpoint, "c"),
            env={"FIFTYONE_LAZSL_CACHE": str(mnt / "cache"), "HOME": str(mnt)},
        )
        assert r.returncode == 0, r.stderr
        assert "2/2 samples classified" in r.stdout, r.stdout
        assert r.stderr.count("cannot be written") == 1, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
        ds.delete()


def test_database_dying_mid_run_is_one_line_within_the_retry_budget(
    photo_data, sets, checkpoint, tmp_path
):
    """MongoDB killed while a classify writes: the one line comes within the
    write retry budget (30 s, plus the batch in flight), not after every
    clean-up step waited pymongo's 30 s server selection (~230 s before)."""
    from fiftyone_lazsl.testing import mongod

    saved = {
        k: os.environ.get(k) for k in ("FIFTYONE_DATABASE_URI", "FIFTYONE_DATABASE_VALIDATION")
    }
    try:
        proc_db = mongod.start(str(tmp_path / "db2"), str(tmp_path / "db2.log"))
        env = {"FIFTYONE_DATABASE_URI": os.environ["FIFTYONE_DATABASE_URI"]}
    finally:
        for k, v in saved.items():
            os.environ[k] = v
    try:
        root = tmp_path / "tree"
        (root / "c").mkdir(parents=True)
        for i, p in enumerate(_copy_photos(photo_data, tmp_path / "img", n=8) * 6):
            shutil.copy(p, root / "c" / f"{i}.jpg")
        r = _cli("import-folder", str(root), "--dataset", "dying", env=env)
        assert r.returncode == 0, r.stderr
        args = [
            "classify",
            "--dataset",
            "dying",
            "--attributes",
            sets[0],
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            checkpoint,
            "--n-crops",
            "4",
            "--batch-size",
            "1",
            "--write-every",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--label-field",
            "d",
        ]
        proc = subprocess.Popen(
            [EXE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **ENV, **env),
        )
        try:
            deadline = time.time() + 240
            line = ""
            while "writing" not in line and time.time() < deadline:  # writes began
                line = proc.stderr.readline()
                assert line or proc.poll() is None, proc.communicate()
            proc_db.kill()
            proc_db.wait()
            t0 = time.time()
            out, err = proc.communicate(timeout=400)
            took = time.time() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 2, (out, err)
        assert "database is unavailable" in one_error_line(err)
        assert took < 75, f"the error took {took:.0f} s: {err}"
    finally:
        if proc_db.poll() is None:
            proc_db.kill()
