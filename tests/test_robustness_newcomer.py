"""Import-folder takes images only (by
content) and says what it skipped; the CLI turns expected failures (database
unavailable, disk full, missing folders) into one line and exit status 2,
keeps tracebacks for bugs (``--debug`` shows them for expected failures too),
has ``--version``, a ``--help`` that imports neither torch nor FiftyOne and
shows defaults; the demo prints progress lines when piped, counts only images,
gives one random-weights warning and registers the published set it used so
``--attributes cub`` then works offline; the README's CLI examples parse."""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from cli_helpers import ENV, EXE
from cli_helpers import one_error_line as _one_error_line
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, env=None, timeout=300):
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **ENV, **(env or {})),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def messy_tree(shared_data, tmp_path_factory):
    """3 CUB classes x 2 photos, plus what real folders hold: README.txt,
    Thumbs.db, .DS_Store, a PDF, an MP4 header, an extension-less JPEG, an
    empty file, a FIFO named like a JPEG, a nested folder and a loose file."""
    root = tmp_path_factory.mktemp("messy")
    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=3)
    for p, c in photos:
        (root / c).mkdir(exist_ok=True)
        shutil.copy(p, root / c / os.path.basename(p))
    c0 = photos[0][1]
    (root / c0 / "README.txt").write_text("photos of birds\n")
    (root / c0 / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
    (root / c0 / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (root / c0 / "paper.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    (root / c0 / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    shutil.copy(photos[0][0], root / c0 / "no_extension")
    (root / c0 / "empty.jpg").write_bytes(b"")
    os.mkfifo(root / c0 / "pipe.jpg")
    (root / c0 / "nested").mkdir()
    (root / "loose.jpg").write_bytes(open(photos[0][0], "rb").read())
    return root, photos


def test_import_folder_takes_images_by_content_and_reports_the_rest(messy_tree):
    import fiftyone as fo

    root, photos = messy_tree
    r = _cli("import-folder", str(root), "--dataset", "messy", "--overwrite", timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        # 6 photos + the extension-less JPEG; 9 entries skipped, each with its reason
        assert "dataset 'messy': 7 images in 3 classes" in r.stdout
        assert "9 non-image entries skipped" in r.stdout
        skipped = {
            pathlib.Path(l.split(": ")[0].removeprefix("skipped ")).name: l
            for l in r.stderr.splitlines()
            if l.startswith("skipped ")
        }
        assert set(skipped) == {
            "README.txt",
            "Thumbs.db",
            ".DS_Store",
            "paper.pdf",
            "clip.mp4",
            "empty.jpg",
            "pipe.jpg",
            "nested",
            "loose.jpg",
        }
        assert "not a regular file" in skipped["pipe.jpg"] and "empty" in skipped["empty.jpg"]
        ds = fo.load_dataset("messy")
        assert ds.media_type == "image" and len(ds) == 7
        assert sorted(ds.distinct("ground_truth.label")) == sorted({c for _, c in photos})
        assert any(p.endswith("no_extension") for p in ds.values("filepath"))
        assert all(m.width > 0 for m in ds.values("metadata"))
    finally:
        if fo.dataset_exists("messy"):
            fo.delete_dataset("messy")


def test_import_folder_of_only_non_images_is_refused(tmp_path):
    import fiftyone as fo

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "README.txt").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00" * 10)
    from fiftyone_lazsl.cli import main

    rc = main(["import-folder", str(tmp_path), "--dataset", "only-junk"])
    assert rc == 2 and not fo.dataset_exists("only-junk")


def test_database_unavailable_is_one_line_and_debug_shows_the_traceback():
    env = {"FIFTYONE_DATABASE_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1500"}
    r = _cli("classify", "--dataset", "x", "--attributes", "cub", env=env, timeout=180)
    assert r.returncode == 2, r.stderr
    assert "database is unavailable" in _one_error_line(r.stderr, "classify")
    r = _cli("--debug", "classify", "--dataset", "x", "--attributes", "cub", env=env, timeout=180)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_disk_full_and_bad_folder_on_out(tmp_path, tmp_cache, monkeypatch, capsys):
    from fiftyone_lazsl.cli import main
    from openai_stub_server import StubOpenAI, attributes_json

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    classes = tmp_path / "classes.txt"
    classes.write_text("Cardinal\n")
    with StubOpenAI({"Cardinal": [attributes_json(["a red crest"])]}) as srv:
        for out, what in (
            ("/dev/full", "No space left on device"),
            (str(classes / "s.json"), "File exists"),
        ):
            rc = main(
                [
                    "attributes",
                    "generate",
                    "--classes",
                    str(classes),
                    "--out",
                    out,
                    "--llm-model",
                    "m",
                    "--base-url",
                    srv.base_url,
                ]
            )
            err = capsys.readouterr().err
            assert rc == 2 and what in _one_error_line(err, "attributes")


def test_bugs_keep_their_traceback(monkeypatch):
    from fiftyone_lazsl import cli
    from fiftyone_lazsl.cli import main

    def boom(args):
        raise ZeroDivisionError("a bug")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["app"].set_defaults(func=boom)
    with pytest.raises(ZeroDivisionError):
        main(["app", "--dataset", "x"])


def test_help_is_lazy_shows_defaults_and_version():
    code = (
        "import sys, fiftyone_lazsl.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'fiftyone', 'open_clip', 'pymongo') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    r = _cli("classify", "--help", timeout=120)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag, default in (
        ("--n-crops", "90"),
        ("--theta", "0.8"),
        ("--label-field", "lazsl"),
        ("--write-every", "64"),
    ):
        assert re.search(rf"{flag} .*?default: {default}\b", text), flag
    from fiftyone_lazsl import __version__

    r = _cli("--version", timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"fiftyone-lazsl {__version__}"


def test_demo_piped_progress_one_warning_and_offline_published_set(
    messy_tree, tmp_path, shared_data
):
    import fiftyone as fo

    from fiftyone_lazsl.core import published

    root, photos = messy_tree
    cache = published.default_cache_dir()
    if (cache / "cub.json").exists():
        (cache / "cub.json").unlink()
    env = {"FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS": ""}
    # images by flag, the attribute set by variable (both point the demo anywhere)
    r = _cli(
        "demo",
        "--images",
        str(root),
        "--dataset",
        "demo-test",
        "--model",
        tiny_clip.TINY_MODEL,
        "--pretrained",
        "none",
        "--per-class",
        "2",
        "--n-crops",
        "3",
        env=dict(env, DEMO_ATTRIBUTES="cub"),
        timeout=600,
    )
    try:
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert "dataset 'demo-test': 6 images, 3 classes" in out
        assert "attribute set 'cub' (" in out  # no .DS_Store or README
        prog = [l for l in out.splitlines() if l.startswith("progress: ")]
        assert prog and prog[-1].startswith("progress: 100%"), out
        assert out.index(prog[-1]) < out.index("samples classified into field 'lazsl'")
        warnings = [l for l in r.stderr.splitlines() if re.search(r"random(ly)?\b", l, re.I)]
        assert len(warnings) == 1, r.stderr
        assert (cache / "cub.json").is_file() and "--attributes cub now works offline" in out
        # ...and it does: a published name resolves with no local folders and no network
        r2 = _cli(
            "classify",
            "--dataset",
            "demo-test",
            "--attributes",
            "cub",
            "--model",
            tiny_clip.TINY_MODEL,
            "--pretrained",
            "none",
            "--n-crops",
            "2",
            "--label-field",
            "again",
            "--workers",
            "0",
            env=env,
            timeout=300,
        )
        assert r2.returncode == 0, r2.stderr
        assert "6/6 samples classified into field 'again'" in r2.stdout
    finally:
        if fo.dataset_exists("demo-test"):
            fo.delete_dataset("demo-test")


def _readme_examples() -> list[str]:
    """``fiftyone-lazsl ...`` command lines of the shell blocks of README.md and
    docs/*.md that are not marked ``doc-test: skip`` (see tests/doc_blocks.py)."""
    from doc_blocks import CHECKED_LANGS, blocks, cli_lines

    return [
        c
        for b in blocks()
        if b.lang in CHECKED_LANGS[1:] and b.marker != "skip"
        for c in cli_lines(b.text)
    ]


def _expand_optional(cmd: str) -> str:
    """``[--method lazsl|dclip|clip]`` -> ``--method lazsl``; ``$m`` -> lazsl."""
    cmd = re.sub(
        r"\[([^\]]*)\]", lambda m: re.sub(r"([^\s|]+)(\|[^\s|]+)+", r"\1", m.group(1)), cmd
    )
    return cmd.replace("$m", "lazsl")


def test_readme_cli_examples_parse():
    from fiftyone_lazsl.cli import build_parser

    cmds = _readme_examples()
    assert len(cmds) >= 8, cmds
    parser = build_parser()
    for cmd in cmds:
        argv = shlex.split(_expand_optional(cmd))[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"documented example does not parse: {cmd}")
        assert callable(args.func), cmd


def test_progress_lines_name_the_current_stage_while_it_lasts():
    """Piped progress prints the latest state on a timer: a long encoding
    stage (no new report for many seconds) is shown as encoding, repeatedly,
    not as the decoding that preceded it; 100 % prints at once and stops the
    timer; close() stops it too."""
    import io
    import time

    from fiftyone_lazsl.cli import progress_lines

    out = io.StringIO()
    prog = progress_lines(out, every_s=0.2)
    prog(0.25, "decoding images 5-8")
    prog(0.25, "encoding and scoring images 5-8")  # within every_s: not printed yet
    time.sleep(0.9)  # a long encoding stage, no reports
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress:  25% decoding images 5-8")
    later = lines[1:]
    assert len(later) >= 2 and all("encoding and scoring images 5-8" in l for l in later), lines
    prog(1.0, "writing")
    n = len(out.getvalue().splitlines())
    assert out.getvalue().splitlines()[-1].startswith("progress: 100% writing")
    time.sleep(0.5)
    assert len(out.getvalue().splitlines()) == n  # the timer stopped at 100 %

    out2 = io.StringIO()
    with progress_lines(out2, every_s=0.1) as p2:
        p2(0.5, "encoding")
    m = len(out2.getvalue().splitlines())
    time.sleep(0.4)
    assert len(out2.getvalue().splitlines()) == m  # closed: silent
