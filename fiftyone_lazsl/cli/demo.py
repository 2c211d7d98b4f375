"""``demo`` sub-command: the main job end to end on real photos.

Builds a dataset from a folder of class sub-folders (``--images`` /
``$DEMO_IMAGES``; default the Oxford-IIIT Pet photos packaged with this project
in ``fiftyone_lazsl/data/demo/pets``, see ``fiftyone_lazsl/data/demo/ATTRIBUTION.md``),
imports the matching attribute set (``--attributes`` / ``$DEMO_ATTRIBUTES``;
default the published ``pets`` set, packaged alongside), runs LaZSL with
ViT-B-32 — pretrained ``openai`` weights when they are cached or the hub is
reachable, otherwise random weights behind a loud banner, recorded in the run's
provenance — and prints accuracy, matched attributes, the command that opens
the App and how to run it on your own folder.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from fiftyone_lazsl import env
from fiftyone_lazsl.cli import progress_lines
from fiftyone_lazsl.cli.datasets import import_folder
from fiftyone_lazsl.core import published
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.config import normalize_pretrained
from fiftyone_lazsl.core.published import load_published
from fiftyone_lazsl.errors import UserError, WeightsUnavailableError

if TYPE_CHECKING:
    from fiftyone_lazsl.core.models import LoadedModel

_REPO = pathlib.Path(__file__).resolve().parents[2]
#: Demo data shipped as package data (works after a non-editable install).
DEMO_DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "demo"
DEFAULT_IMAGES = DEMO_DATA / "pets"
DEFAULT_ATTRIBUTES = "pets"
# Verified local copies of published sets: the packaged demo set, then the
# development data folder next to a checkout (CUB and others), when present.
DEFAULT_ATTRIBUTE_DIRS = [DEMO_DATA, _REPO.parent / "shared" / "data" / "attribute_sets"]

BANNER = """
##############################################################################
#  RANDOM WEIGHTS: pretrained {model} '{tag}' weights are not available here  #
#  (offline, nothing cached). The demo runs the full pipeline with RANDOM     #
#  weights: predictions and accuracy below are MEANINGLESS. The run records   #
#  random_weights=True. On a machine with network access (or a cached /       #
#  local checkpoint: DEMO_PRETRAINED=/path/to/weights) it uses real weights.  #
##############################################################################
"""


def _subset(directory: pathlib.Path, per_class: int, out: pathlib.Path) -> pathlib.Path:
    """A folder of symlinks with at most ``per_class`` images per class (sorted;
    images by content, so ``.DS_Store``, ``Thumbs.db`` or text files are not
    counted as images)."""
    from fiftyone_lazsl.fo.import_folder import scan_image_folder

    out.mkdir(parents=True, exist_ok=True)
    images, _ = scan_image_folder(directory)
    taken: dict[str, int] = {}
    for path, cls in images:
        if taken.get(cls, 0) >= per_class:
            continue
        taken[cls] = taken.get(cls, 0) + 1
        (out / cls).mkdir(exist_ok=True)
        link = out / cls / os.path.basename(path)
        if not link.exists():
            link.symlink_to(os.path.realpath(path))
    return out


def _choose_weights(model: str, tag: str | None) -> tuple[LoadedModel, bool]:
    from fiftyone_lazsl.core.models import load_model

    if normalize_pretrained(tag) is None:
        return load_model(model, None), False
    try:
        return load_model(model, tag), True
    except WeightsUnavailableError:
        # the banner is the one random-weights warning of the demo
        print(BANNER.format(model=model, tag=tag), file=sys.stderr)
        return load_model(model, None, warn_random=False), False


def _register_published_copy(name: str, local_dirs: list[str]) -> str | None:
    """Copy the verified local copy of published set ``name`` that the demo
    used into the published-set cache, so ``--attributes <name>`` works
    afterwards without network or ``$FIFTYONE_LAZSL_ATTRIBUTE_SETS_DIRS``.
    Returns the cached path, or None when ``name`` is not a published set."""
    if not published.is_published(name):
        return None
    found = published.find_local_copy(name, local_dirs=local_dirs)
    if found is None:
        return None
    cache = published.default_cache_dir()
    dest = cache / f"{name}.json"
    if pathlib.Path(found).resolve() != dest.resolve():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(found, tmp)
        os.replace(tmp, dest)
    return str(dest)


def run_demo(
    images: str | os.PathLike | None = None,
    *,
    dataset_name: str = "lazsl-demo",
    attributes: str | None = None,
    model: str = "ViT-B-32",
    pretrained: str | None = "openai",
    per_class: int = 2,
    n_crops: int = 90,
    batch_size: int = 4,
    seed: int = 0,
    out=sys.stdout,
) -> dict:
    """Run the demo; returns the summary numbers it prints.

    Args:
        images: folder with one sub-folder per class (default ``$DEMO_IMAGES``,
            else the packaged pet photos).
        dataset_name: persistent dataset created (replaced if it exists).
        attributes: attribute-set JSON file or published name (default
            ``$DEMO_ATTRIBUTES``, else ``pets``, packaged).
        per_class: images per class taken from ``images`` (0 = all).

    Raises:
        UserError: missing image folder, or an attribute set that lacks classes.
    """
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.fo.apply import run_lazsl
    from fiftyone_lazsl.fo.store import save_attribute_set

    images = pathlib.Path(images or env.get("DEMO_IMAGES") or DEFAULT_IMAGES)
    if not images.is_dir():
        raise UserError(
            f"demo images not found at {images}; set DEMO_IMAGES=/path/to/<class>/<image> folders"
        )
    attributes = attributes or env.get("DEMO_ATTRIBUTES") or DEFAULT_ATTRIBUTES
    if os.path.isfile(attributes):
        aset = AttributeSet.from_json(attributes)
    else:
        local = [str(d) for d in DEFAULT_ATTRIBUTE_DIRS]
        aset = load_published(attributes, local_dirs=local)
        cached = _register_published_copy(attributes, local)
        if cached:
            print(
                f"published attribute set {attributes!r} registered at {cached} "
                f"(--attributes {attributes} now works offline)",
                file=out,
            )

    source = images
    if per_class:
        source = _subset(images, per_class, pathlib.Path(tempfile.mkdtemp(prefix="lazsl-demo-")))
    ds = import_folder(str(source), dataset_name, overwrite=True)
    # Point samples at the real files rather than the temporary links.
    ds.set_values("filepath", [os.path.realpath(p) for p in ds.values("filepath")])
    save_attribute_set(ds, aset, name=aset.name or "demo")
    print(
        f"dataset {dataset_name!r}: {len(ds)} images, {len(ds.distinct('ground_truth.label'))} classes; "
        f"attribute set {aset.name!r} ({len(aset)} classes)",
        file=out,
    )

    loaded, real = _choose_weights(model, pretrained)
    clf = LaZSLClassifier(aset, loaded, n_crops=n_crops, seed=seed, batch_size=batch_size)

    progress = True if sys.stderr.isatty() else progress_lines(out, every_s=5.0)
    try:
        summary = run_lazsl(
            ds,
            aset,
            classifier=clf,
            label_field="lazsl",
            gt_field="ground_truth",
            progress=progress,
        )
    finally:
        if progress is not True:
            progress.close()
    print(summary, file=out)
    for _, path, reason in summary.failures[:3]:
        print(f"  not classified: {os.path.basename(path)}: {reason}", file=out)

    gts, preds, attrs, paths = ds.values(
        ["ground_truth.label", "lazsl.label", "lazsl_attributes", "filepath"]
    )
    n_ok = sum(g == p for g, p in zip(gts, preds) if p is not None)
    n = sum(p is not None for p in preds)
    acc = n_ok / n if n else 0.0
    print(
        f"top-1 accuracy vs ground truth: {acc:.1%} ({n_ok}/{n}) over {len(aset)} candidate classes"
        + ("" if real else "  [RANDOM WEIGHTS: meaningless]"),
        file=out,
    )
    print("matched attributes (top 3 by contribution to the score):", file=out)
    for g, p, a, f in list(zip(gts, preds, attrs, paths))[:: max(1, len(paths) // 5)][:5]:
        print(
            f"  {os.path.basename(f)}: true {g!r}, predicted {p!r}: {'; '.join((a or [])[:3])}",
            file=out,
        )
    cli = cli_command()
    print("", file=out)
    print(f"open the App on the result:\n  {cli} app --dataset {dataset_name}", file=out)
    print(
        "run it on your own photos (one sub-folder per class; an attribute-set JSON "
        "{class: [attribute, ...]} or a published name, e.g. cub, imagenet):\n"
        f"  {cli} demo --images /path/to/folder --attributes my_attributes.json "
        "--dataset my-photos --per-class 0",
        file=out,
    )
    return {
        "accuracy": acc,
        "num_samples": len(ds),
        "num_predicted": summary.num_predicted,
        "random_weights": not real,
    }


def cli_command() -> str:
    """How to call ``fiftyone-lazsl`` from a shell here: the bare name when it
    is on ``PATH``, else the full path of the script next to this interpreter,
    else ``<python> -m fiftyone_lazsl.cli``."""
    if shutil.which("fiftyone-lazsl"):
        return "fiftyone-lazsl"
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")
    if os.path.isfile(exe):
        return exe
    return f"{sys.executable} -m fiftyone_lazsl.cli"


def _demo(args) -> int:
    pretrained = env.get("DEMO_PRETRAINED") if args.pretrained is None else args.pretrained
    per_class = env.get("DEMO_PER_CLASS") if args.per_class is None else args.per_class
    run_demo(
        args.images,
        dataset_name=args.dataset,
        attributes=args.attributes,
        model=args.model,
        pretrained=pretrained,
        per_class=per_class,
        n_crops=args.n_crops,
        batch_size=args.batch_size,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="classify real photos end to end and print a summary")
    p.add_argument(
        "--images",
        default=None,
        help="folder of class sub-folders (default $DEMO_IMAGES, else the packaged pet photos)",
    )
    p.add_argument("--dataset", default="lazsl-demo")
    p.add_argument(
        "--attributes",
        default=None,
        help="attribute-set file or published name (default $DEMO_ATTRIBUTES, else pets)",
    )
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument(
        "--pretrained",
        default=None,
        help="pretrained weights tag or file (default $DEMO_PRETRAINED or openai)",
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="images per class (0 = all; default $DEMO_PER_CLASS or 2, which keeps "
        "the CPU demo within minutes)",
    )
    p.add_argument("--n-crops", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_demo)
