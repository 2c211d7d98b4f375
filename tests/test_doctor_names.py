"""The doctor's pruned copy of a set whose name has the maximum 64
characters: a valid, deterministic derived name (``attributes doctor`` run as
a process)."""

import hashlib
import os
import subprocess

import badfiles as bf
from fiftyone_lazsl.testing import tiny_clip

tiny_clip.register()
from cli_helpers import ENV, EXE  # noqa: E402


def test_derived_names_are_valid_and_deterministic():
    from fiftyone_lazsl.fo.store import derived_set_name, validate_set_name

    assert derived_set_name("cub", "-pruned") == "cub-pruned"
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    da, db = derived_set_name(long_a, "-pruned"), derived_set_name(long_b, "-pruned")
    for d, parent in ((da, long_a), (db, long_b)):
        # the documented rule, computed here
        digest = hashlib.sha1(parent.encode()).hexdigest()[:8]
        assert d == parent[: 64 - len("-pruned") - 9] + f"-{digest}-pruned"
        assert len(d) == 64 and validate_set_name(d) == d
    assert da != db and derived_set_name(long_a, "-pruned") == da


def test_doctor_on_a_64_character_set_name_saves_its_pruned_copy(tmp_path, shared_data):
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.fo.store import list_attribute_sets, load_attribute_set, save_attribute_set

    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=3)
    c = sorted({k for _, k in photos})
    name = "birds_" + "x" * 54 + "_v01"
    assert len(name) == 64
    aset = AttributeSet.from_dict(
        {
            c[0]: ["red wings", "red wings", "a long beak"],
            c[1]: ["grey feathers", "short legs"],
            c[2]: ["plain brown", "a white belly"],
        },
        name=name,
    )
    ds = bf.make_dataset("doctor-names", [p for p, _ in photos], gt=[k for _, k in photos])
    ds.persistent = True
    try:
        save_attribute_set(ds, aset, name)
        ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=3))
        run_lazsl(
            ds,
            name,
            label_field="run",
            model=tiny_clip.TINY_MODEL,
            pretrained=ckpt,
            device="cpu",
            n_crops=4,
            seed=1,
            num_workers=0,
            store_features=str(tmp_path / "store"),
            feature_dtype="float32",
        )
        r = subprocess.run(
            [
                EXE,
                "attributes",
                "doctor",
                "--dataset",
                ds.name,
                "--from-field",
                "run",
                "--gt-field",
                "ground_truth",
                "--no-views",
                "--min-auc",
                "0",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, **ENV),
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        want = f"{name[:48]}-{digest}-pruned"
        assert f"saved as {want!r}" in r.stdout, r.stdout
        assert want in [s["name"] for s in list_attribute_sets(ds)]
        assert load_attribute_set(ds, want)[c[0]].count("red wings") == 1
    finally:
        ds.delete()
