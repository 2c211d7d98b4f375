"""Issue 14, items 4 and 5: nothing hangs.

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
    for kind, what in (("fifo", "named pipe (FIFO)"), ("socket", "socket"),
                       ("chardev", "character device")):
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
    s = run_lazsl(ds, {"A": ["a trait"], "B": ["wings"]}, model=tiny_clip.TINY_MODEL,
                  pretrained=checkpoint, device="cpu", n_crops=3, num_workers=workers,
                  batch_size=2)
    assert s.num_predicted == 3 and [f[1] for f in s.failures] == [str(specials["fifo"])]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert "not a regular file" in out[str(specials["fifo"])]


@pytest.mark.parametrize("workers", [0, 1])
def test_stalled_decode_is_cut_at_the_deadline(shared_data, checkpoint, monkeypatch, tmp_path,
                                               workers):
    """A read that never returns (simulated in the decode function the
    worker runs, inherited by the forked worker) fails that sample after the
    deadline; the run goes on."""
    import fiftyone_lazsl.core.imageio as imageio
    from fiftyone_lazsl import run_lazsl

    photos = [p for p, _ in tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)]
    stall = tmp_path / "stall.jpg"
    stall.write_bytes(open(photos[0], "rb").read())
    real = imageio.load_image_tensor

    def slow(path, max_pixels=None):
        if os.fspath(path) == str(stall):
            time.sleep(120)  # like a read on a hung network mount
        return real(path, max_pixels=max_pixels)

    monkeypatch.setattr(imageio, "load_image_tensor", slow)
    monkeypatch.setenv("FIFTYONE_LAZSL_DECODE_TIMEOUT", "1.5")
    ds = bf.make_dataset(f"hang-stall-{workers}", [str(stall)] + photos)
    t0 = time.time()
    s = run_lazsl(ds, {"A": ["a trait"], "B": ["wings"]}, model=tiny_clip.TINY_MODEL,
                  pretrained=checkpoint, device="cpu", n_crops=3, num_workers=workers,
                  batch_size=2)
    assert time.time() - t0 < 60
    assert s.num_predicted == 3 and [f[1] for f in s.failures] == [str(stall)]
    out = assert_every_sample_accounted(ds, "lazsl")
    assert "took longer than 1.5 s" in out[str(stall)]
