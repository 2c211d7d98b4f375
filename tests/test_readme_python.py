"""The Python examples and command-line workflows of README.md and docs/ run
as written (each block marked ``<!-- doc-test: NAME -->``, fetched by name with
``doc_blocks.block``), with two substitutions that only the lack of network forces:
the model (``"ViT-B-32", "openai"`` becomes the tiny test model and a saved
random-weight checkpoint, also where an example relies on the default model)
and the example's file names (``descriptors_cub.json``, ``bird.jpg``) become a
real attribute set and a real photo. The zoo example registers a GitHub source
and is covered offline by tests/test_zoo.py."""

import pytest

import badfiles as bf
from doc_blocks import block, cli_lines
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()


@pytest.fixture
def world(tmp_path, shared_data, monkeypatch):
    # the examples name the published set "cub": its real file (hash-checked)
    # is in ../shared; a clone without it skips these tests
    photo_data = shared_data
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    photos = tiny_clip.some_images(photo_data, "cub", per_class=2, max_classes=4)
    monkeypatch.setenv("FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS", str(photo_data / "attribute_sets"))
    monkeypatch.setenv("FIFTYONE_LAZSL_FEATURES", str(tmp_path / "features"))
    monkeypatch.setenv("FIFTYONE_LAZSL_MODEL_CONFIGS", str(tiny_clip._CONFIG))
    ds = bf.make_dataset("birds", [p for p, _ in photos], gt=[c for _, c in photos])
    yield dict(
        ckpt=ckpt, photos=photos, ds=ds, aset=str(photo_data / "attribute_sets" / "cub.json")
    )
    ds.delete()


def _model(code: str, ckpt: str) -> str:
    tiny = repr(tiny_clip.TINY_MODEL)
    code = code.replace('"ViT-B-32", "openai"', f"{tiny}, {ckpt!r}")
    code = code.replace(
        'model="ViT-B-32", pretrained="openai"', f"model={tiny}, pretrained={ckpt!r}"
    )
    return code


def test_docs_have_the_examples_this_test_runs():
    assert "LaZSLClassifier(" in block("python-api") and "run_lazsl(" in block("python-api")
    assert "fl.run_lazsl(" in block("readme-python")
    assert "fl.rescore(" in block("feature-store-python")


def test_python_api_block_runs(world):
    code = _model(block("python-api"), world["ckpt"])
    code = code.replace('"descriptors_cub.json"', repr(world["aset"]))
    code = code.replace('["bird.jpg"]', repr([world["photos"][0][0]]))
    assert "openai" not in code and "bird.jpg" not in code
    ns: dict = {}
    exec(compile(code, "docs/python.md[python-api]", "exec"), ns)
    s = ns["summary"]
    assert s.num_predicted == len(world["photos"]) and s.num_failed == 0
    pred = ns["pred"]
    assert pred.label in ns["aset"].classes
    assert pred.crops.boxes.shape == (90, 4) and pred.crops.kept.any()
    assert world["ds"].get_run_info("lazsl_lazsl") is not None


def test_output_config_block_runs(world):
    """docs/python.md's OutputConfig example: the options reach the stored outputs."""
    code = _model(block("output-config"), world["ckpt"])
    assert "openai" not in code
    ns: dict = {}
    exec(compile(code, "docs/python.md[output-config]", "exec"), ns)
    ds, n = world["ds"], len(world["photos"])
    assert ns["summary"].num_predicted == n and ds.count("lazsl_60") == n
    rec = ds.get_run_info("lazsl_lazsl_60").config
    assert (rec.top_k_crops, rec.evidence, rec.n_crops, rec.theta) == (3, "full", 60, 0.7)
    assert rec.feature_store["stored"] == n
    for s in ds:
        assert 1 <= len(s["lazsl_60_crops"].detections) <= 3
        assert len(s["lazsl_60"]["attribute_scores"]) == len(rec.classes)  # full evidence


def test_readme_python_quick_start_runs(world):
    code = _model(block("readme-python"), world["ckpt"])
    assert "openai" not in code
    ns: dict = {}
    exec(compile(code, "README.md[readme-python]", "exec"), ns)
    ds = world["ds"]
    n = len(world["photos"])
    assert ns["summary"].num_predicted == n and ds.count("lazsl") == n
    assert ds.get_run_info("lazsl_lazsl") is not None


def test_feature_store_block_runs(world):
    code = block("feature-store-python")
    code = code.replace(
        "store_features=True)",
        f"store_features=True, model={tiny_clip.TINY_MODEL!r}, "
        f"pretrained={world['ckpt']!r}, n_crops=12)",
    )
    ns = {"ds": world["ds"]}
    exec(compile(code, "docs/feature-store.md[feature-store-python]", "exec"), ns)
    rep = ns["rep"]
    ds = world["ds"]
    assert ds.count("lazsl") == len(world["photos"])
    assert rep.pruned_set == "cub-pruned"
    assert ds.count("lazsl_pruned") == len(world["photos"])


def test_feature_store_workflow_cli_runs_as_written(world):
    """docs/feature-store.md's command-line workflow (classify --store-features,
    attributes doctor, rescore with the pruned set, evaluate) as processes, the
    model flags added to the first command (no weights offline)."""
    import os
    import shlex
    import subprocess
    import sys

    from test_robustness_newcomer import _expand_optional

    flow = [_expand_optional(c) for c in cli_lines(block("feature-store-cli"))]
    assert flow[0].endswith("--store-features")
    assert [shlex.split(c)[1] for c in flow] == ["classify", "attributes", "rescore", "evaluate"]
    flow[0] += (
        f" --model {tiny_clip.TINY_MODEL} --pretrained {shlex.quote(world['ckpt'])}"
        " --n-crops 12 --workers 0"
    )
    world["ds"].persistent = True
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    for c in flow:
        r = subprocess.run([exe, *shlex.split(c)[1:]], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (c, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr, c
    ds = world["ds"]
    ds.reload()
    n = len(world["photos"])
    assert ds.count("lazsl") == n and ds.count("lazsl_pruned") == n
    from fiftyone_lazsl.fo.runs import get_run_config

    assert get_run_config(ds, "lazsl_pruned")["attribute_set"] == "cub-pruned"


def test_compare_methods_workflow_cli_runs_as_written(tmp_path, shared_data, monkeypatch):
    """docs/audit.md's "Compare methods and audit labels" block as processes: import a
    DIR/<class>/<image> folder, import the published set, classify with the
    three methods (model flags added), evaluate side by side, audit. (The
    final ``app`` line serves until Ctrl-C; tests/test_robustness_cli.py runs it.)"""
    import os
    import shlex
    import shutil
    import subprocess
    import sys

    import fiftyone as fo

    photo_data = shared_data  # the published "cub" file (hash-checked) is there
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    monkeypatch.setenv("FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS", str(photo_data / "attribute_sets"))
    monkeypatch.setenv("FIFTYONE_LAZSL_MODEL_CONFIGS", str(tiny_clip._CONFIG))
    folder = tmp_path / "birds"
    photos = tiny_clip.some_images(photo_data, "cub", per_class=2, max_classes=4)
    for p, c in photos:
        (folder / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / c / os.path.basename(p))
    cmds = cli_lines(block("compare-methods"))
    assert [shlex.split(c)[1] for c in cmds] == [
        "import-folder",
        "attributes",
        "classify",
        "evaluate",
        "audit",
        "app",
    ]
    flow = [cmds[0].replace("~/data/birds", shlex.quote(str(folder))), cmds[1]]
    model = (
        f" --model {tiny_clip.TINY_MODEL} --pretrained {shlex.quote(ckpt)} --n-crops 12 --workers 0"
    )
    flow += [cmds[2].replace("$m", m) + model for m in ("clip", "dclip", "lazsl")]
    flow += cmds[3:5]
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    try:
        for c in flow:
            r = subprocess.run(
                [exe, *shlex.split(c)[1:]], capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, (c, r.stdout[-2000:], r.stderr[-2000:])
            assert "Traceback" not in r.stderr, c
        ds = fo.load_dataset("birds")
        n = len(photos)
        assert len(ds) == n and all(ds.count(m) == n for m in ("clip", "dclip", "lazsl"))
        assert {"eval_lazsl", "eval_clip", "eval_dclip"} <= set(ds.list_evaluations())
        assert ds.count_sample_tags().get("suspect", 0) >= 1
    finally:
        if fo.dataset_exists("birds"):
            fo.delete_dataset("birds")


def test_readme_cli_quick_start_runs_as_written(tmp_path, shared_data, monkeypatch):
    """README's command-line quick start as processes: import a DIR/<class>/<image>
    folder, import the published set, classify (model flags added: no weights
    offline), evaluate. (The final ``app`` line serves until Ctrl-C;
    tests/test_robustness_cli.py runs it.)"""
    import os
    import shlex
    import shutil
    import subprocess
    import sys

    import fiftyone as fo

    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    monkeypatch.setenv("FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS", str(shared_data / "attribute_sets"))
    monkeypatch.setenv("FIFTYONE_LAZSL_MODEL_CONFIGS", str(tiny_clip._CONFIG))
    folder = tmp_path / "birds"
    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=3)
    for p, c in photos:
        (folder / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / c / os.path.basename(p))
    cmds = cli_lines(block("readme-cli"))
    assert [shlex.split(c)[1] for c in cmds] == [
        "import-folder",
        "attributes",
        "classify",
        "evaluate",
        "app",
    ]
    assert "~/photos/birds" in cmds[0]
    flow = [
        cmds[0].replace("~/photos/birds", shlex.quote(str(folder))),
        cmds[1],
        cmds[2] + f" --model {tiny_clip.TINY_MODEL} --pretrained {shlex.quote(ckpt)}"
        " --n-crops 12 --workers 0",
        cmds[3],
    ]
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    try:
        for c in flow:
            r = subprocess.run(
                [exe, *shlex.split(c)[1:]], capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, (c, r.stdout[-2000:], r.stderr[-2000:])
            assert "Traceback" not in r.stderr, c
        ds = fo.load_dataset("birds")
        assert len(ds) == len(photos) and ds.count("lazsl") == len(photos)
        assert sorted(ds.values("ground_truth.label")) == sorted(c for _, c in photos)
        assert "eval_lazsl" in ds.list_evaluations()
    finally:
        if fo.dataset_exists("birds"):
            fo.delete_dataset("birds")
