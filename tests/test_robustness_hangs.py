"""Nothing hangs.

Decoding: a FIFO, a socket or a device named like an image is refused without
being read (a FIFO without a writer used to block a decode worker forever); a
read or decode that stalls is cut at the per-image deadline, that sample gets
the reason and the others are classified. LLM generation: a server that
trickles bytes or stays silent cannot hold a request past its total deadline,
and Ctrl-C stops at once keeping (caching) what finished."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import badfiles as bf
from badfiles import assert_every_sample_accounted
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1))


@pytest.fixture
def specials(tmp_path):
    """A FIFO and a listening Unix socket, both named like JPEGs."""
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.jpg"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    yield {"fifo": fifo, "socket": sock_path, "chardev": "/dev/zero"}
    sock.close()


def test_special_files_are_refused_without_blocking(specials):
    from fiftyone_lazsl.core.imageio import ImageLoadError, load_image, probe_image

    t0 = time.time()
    for kind, what in (
        ("fifo", "named pipe (FIFO)"),
        ("socket", "socket"),
        ("chardev", "character device"),
    ):
        for fn in (load_image, probe_image):
            with pytest.raises(ImageLoadError, match=re.escape(f"is a {what}, not a regular file")):
                fn(specials[kind])
    assert time.time() - t0 < 5  # nothing waited for a writer


@pytest.mark.parametrize("workers", [0, 1])
def test_fifo_in_a_dataset_fails_its_sample_only(shared_data, checkpoint, specials, workers):
    from fiftyone_lazsl import run_lazsl

    photos = [p for p, _ in tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)]
    files = photos[:1] + [str(specials["fifo"])] + photos[1:]
    ds = bf.make_dataset(f"hang-fifo-{workers}", files)
    s = run_lazsl(
        ds,
        {"A": ["a trait"], "B": ["wings"]},
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=3,
        num_workers=workers,
        batch_size=2,
    )
    assert s.num_predicted == 3 and [f[1] for f in s.failures] == [str(specials["fifo"])]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert "not a regular file" in out[str(specials["fifo"])]


@pytest.mark.parametrize("workers", [0, 1])
def test_stalled_decode_is_cut_at_the_deadline(
    shared_data, checkpoint, monkeypatch, tmp_path, workers
):
    """A read that never returns (simulated in the decode function the
    worker runs, inherited by the forked worker) fails that sample after the
    deadline; the run goes on."""
    import fiftyone_lazsl.core.imageio as imageio
    from fiftyone_lazsl import run_lazsl

    photos = [p for p, _ in tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)]
    stall = tmp_path / "stall.jpg"
    stall.write_bytes(open(photos[0], "rb").read())
    real = imageio.load_image  # what the decode workers call

    def slow(path, *a, **kw):
        if os.fspath(path) == str(stall):
            time.sleep(120)  # like a read on a hung network mount
        return real(path, *a, **kw)

    monkeypatch.setattr(imageio, "load_image", slow)
    monkeypatch.setenv("FIFTYONE_LAZSL_DECODE_TIMEOUT", "1.5")
    ds = bf.make_dataset(f"hang-stall-{workers}", [str(stall)] + photos)
    t0 = time.time()
    s = run_lazsl(
        ds,
        {"A": ["a trait"], "B": ["wings"]},
        model=tiny_clip.TINY_MODEL,
        pretrained=checkpoint,
        device="cpu",
        n_crops=3,
        num_workers=workers,
        batch_size=2,
    )
    assert time.time() - t0 < 60
    assert s.num_predicted == 3 and [f[1] for f in s.failures] == [str(stall)]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert "took longer than 1.5 s" in out[str(stall)]


# ------------------------------------------------------------------- LLM
LLM_CLASSES = ["Quick Bird", "Fast Bird", "Trickle Bird"]


def _llm_script():
    from openai_stub_server import attributes_json, trickle

    return {
        "Quick Bird": [attributes_json(["a red crest", "black wings"])],
        "Fast Bird": [attributes_json(["yellow bill"])],
        "Trickle Bird": [trickle(0.2, attributes_json(["never arrives in time"]))],
    }


def test_trickling_server_cannot_hold_a_request_past_its_deadline(tmp_cache, monkeypatch):
    from fiftyone_lazsl.llm.generate import AttributeGenerator
    from openai_stub_server import StubOpenAI

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with StubOpenAI(_llm_script()) as srv:
        gen = AttributeGenerator("m", base_url=srv.base_url, timeout=0.5, max_retries=0)
        assert gen.request_deadline == 0.5
        t0 = time.time()
        res = {r.class_name: r for r in gen.generate(LLM_CLASSES)}
        elapsed = time.time() - t0
    # the trickled reply is ~300 bytes at 5 bytes/s: a minute without the deadline
    assert elapsed < 10, elapsed
    assert res["Quick Bird"].attributes == ["a red crest", "black wings"]
    assert res["Fast Bird"].attributes == ["yellow bill"]
    assert res["Trickle Bird"].attributes == [] and res["Trickle Bird"].failed
    assert "no complete answer in time" in res["Trickle Bird"].warning


def test_ctrl_c_stops_generation_at_once_and_keeps_finished_classes(
    tmp_cache, tmp_path, monkeypatch
):
    from fiftyone_lazsl.llm.generate import AttributeGenerator
    from openai_stub_server import StubOpenAI, attributes_json, delayed

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    script = _llm_script()
    script["Trickle Bird"] = [delayed(60, attributes_json(["silent for a minute"]))]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(LLM_CLASSES) + "\n")
    out = tmp_path / "set.json"
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    with StubOpenAI(script) as srv:
        proc = subprocess.Popen(
            [
                exe,
                "attributes",
                "generate",
                "--classes",
                str(classes),
                "--out",
                str(out),
                "--llm-model",
                "m",
                "--base-url",
                srv.base_url,
                "--timeout",
                "120",
                "--concurrency",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and srv.counts.get("Trickle Bird", 0) == 0:
            time.sleep(0.05)
        time.sleep(1.0)  # the two quick classes are answered and cached by now
        assert proc.poll() is None
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        stopped_in = time.time() - t0
    assert proc.returncode == 130, err
    assert stopped_in < 5, stopped_in  # not the 60 s the silent request would take
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
    assert not out.exists()
    gen = AttributeGenerator("m", base_url=srv.base_url)
    assert gen.cached("Quick Bird").attributes == ["a red crest", "black wings"]
    assert gen.cached("Fast Bird").attributes == ["yellow bill"]
    assert gen.cached("Trickle Bird") is None
