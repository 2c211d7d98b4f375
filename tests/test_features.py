"""The feature store. Round trips (float16 / float32), stale files
not served, SIGKILL while writing leaves it consistent, two writer processes
corrupt nothing, info/prune, and ``LaZSLClassifier.predict_features`` on
stored features equals ``predict_tensors`` on the images."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fiftyone_lazsl.core.features import FeatureStore, default_store_path
from fiftyone_lazsl.errors import ConfigError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import feature_writer as fw  # noqa: E402

WRITER = str(pathlib.Path(__file__).parent / "feature_writer.py")
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    ),
)


def _all_valid(path):
    """Every indexed entry reads back exactly as its writer made it."""
    with FeatureStore(path, dtype="float32", check="none") as st:
        fp = st.register(fw.SPEC)
        keys = [k for (k,) in st._db.execute("SELECT key FROM entries")]
        found, missing = st.get_many(fp, keys)
        assert missing == {}
        for k, e in found.items():
            want = fw.entry(k)
            np.testing.assert_array_equal(e.features, want.features)
            np.testing.assert_array_equal(e.boxes, want.boxes)
        return keys


def test_round_trip_float16_float32_and_stale(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x" * 10)
    e = fw.entry(str(img))
    for dtype, tol in (("float32", 0.0), ("float16", 1e-3)):
        with FeatureStore(tmp_path / dtype, dtype=dtype) as st:
            fp = st.register(fw.SPEC)
            st.put_many(fp, [e])
            found, missing = st.get_many(fp, [str(img), "nope"])
            assert missing == {"nope": "no stored features for this model and visual set"}
            got = found[str(img)]
            assert got.features.dtype == np.float32
            assert np.abs(got.features - e.features).max() <= tol
            np.testing.assert_array_equal(got.boxes, e.boxes)
            assert (got.image_size, got.original_size) == ((100, 80), (100, 80))
            # the crop-to-global cosines are kept in float32 whatever the dtype,
            # computed from the unrounded embeddings (None on write)
            f32 = e.features.astype(np.float32)
            assert got.crop_global.dtype == np.float32
            np.testing.assert_allclose(got.crop_global, f32[1:] @ f32[0], rtol=0, atol=1e-6)
            info = st.info()
            assert info["entries"] == 1
            n_views = e.features.shape[0]
            assert info["live_bytes"] == e.features.size * (2 if dtype == "float16" else 4) + 4 * (
                n_views - 1
            )
    # a changed file is not served (size change; then mtime only)
    with FeatureStore(tmp_path / "float32", dtype="float32") as st:
        fp = st.register(fw.SPEC)
        img.write_bytes(b"y" * 11)
        found, missing = st.get_many(fp, [str(img)])
        assert found == {} and "changed" in missing[str(img)]
        st.put_many(fp, [e])
        assert str(img) in st.get_many(fp, [str(img)])[0]
        st_ = os.stat(img)
        os.utime(img, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1000))
        assert "changed" in st.get_many(fp, [str(img)])[1][str(img)]
        # pruning stale entries removes them and reclaims the shard
        r = st.prune()
        assert r["deleted_entries"] == 1 and st.count() == 0
        assert r["bytes_after"] < r["bytes_before"]
    # hash check: same size and mtime but other content is detected
    with FeatureStore(tmp_path / "h", dtype="float32", check="hash") as st:
        fp = st.register(fw.SPEC)
        img.write_bytes(b"a" * 11)
        t = os.stat(img).st_mtime_ns
        st.put_many(fp, [e])
        img.write_bytes(b"b" * 11)
        os.utime(img, ns=(t, t))
        assert "changed" in st.get_many(fp, [str(img)])[1][str(img)]


def test_bad_options_and_location(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="dtype"):
        FeatureStore(tmp_path / "s", dtype="int8")
    with pytest.raises(ConfigError, match="check"):
        FeatureStore(tmp_path / "s", check="md5")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        FeatureStore(tmp_path / "file")
    monkeypatch.setenv("FIFTYONE_LAZSL_FEATURES", str(tmp_path / "env"))
    assert default_store_path() == str(tmp_path / "env")
    monkeypatch.delenv("FIFTYONE_LAZSL_FEATURES")
    monkeypatch.setenv("FIFTYONE_LAZSL_CACHE", str(tmp_path / "c"))
    assert default_store_path() == str(tmp_path / "c" / "features")


def test_corrupted_bytes_not_served(tmp_path):
    with FeatureStore(tmp_path, dtype="float32", check="none") as st:
        fp = st.register(fw.SPEC)
        st.put_many(fp, [fw.entry("k1"), fw.entry("k2")])
        shard = st._shard
    p = tmp_path / "shards" / shard
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF  # flip a byte of k1
    p.write_bytes(bytes(data))
    with FeatureStore(tmp_path, dtype="float32", check="none") as st:
        found, missing = st.get_many(st.register(fw.SPEC), ["k1", "k2"])
        assert list(found) == ["k2"] and "checksum" in missing["k1"]


def test_sigkill_while_writing_leaves_store_consistent(tmp_path):
    """A writer is SIGKILLed at several moments while appending and
    committing; afterwards every indexed entry is whole and exact, and a new
    writer appends after the torn bytes."""
    path = str(tmp_path / "store")
    seen = 0
    for delay in (0.3, 0.45, 0.6, 0.8):
        p = subprocess.Popen(
            [sys.executable, WRITER, path, f"kill{delay}:", "0", "8"],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout.readline().strip()  # at least one batch committed
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        keys = _all_valid(path)
        assert len(keys) > seen
        seen = len(keys)
    # torn tails were left behind (bytes beyond what the index references) or
    # not; either way pruning keeps every entry readable
    with FeatureStore(path, dtype="float32", check="none") as st:
        st.prune(stale=False)
    assert len(_all_valid(path)) == seen


def test_two_writer_processes_corrupt_nothing(tmp_path):
    path = str(tmp_path / "store")
    # both write 'shared' keys 0..199 (same values) and their own keys
    procs = [
        subprocess.Popen(
            [sys.executable, WRITER, path, prefix, "200", "5"], env=ENV, stdout=subprocess.DEVNULL
        )
        for prefix in ("shared:", "shared:", "a:", "b:")
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    keys = _all_valid(path)
    assert sorted(keys) == sorted([f"{p}{i}" for p in ("shared:", "a:", "b:") for i in range(200)])
    with FeatureStore(path, check="none") as st:
        # both shared writers' shards hold bytes; one is now half dead and the
        # other's entries live -> pruning compacts without losing anything
        before = st.info()
        assert before["entries"] == 600
        st.prune(stale=False)
    assert len(_all_valid(path)) == 600
