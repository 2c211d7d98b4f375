"""A tiny open_clip architecture with random weights for tests.

``register()`` adds the config ``lazsl-tiny-test`` (64 px input, 2-layer ViT and
text transformer, 32-d embeddings) to open_clip's registry, so the production
loading code (`open_clip.create_model`) builds it like any built-in model.
``save_checkpoint()`` writes its random weights to a file, to exercise loading
a local checkpoint through ``pretrained=<path>``; ``make_hub_cache()`` lays out
an offline Hugging Face cache for an ``hf-hub:`` id.
"""

import json
import os
import pathlib

import torch

TINY_MODEL = "lazsl-tiny-test"
_CONFIG = pathlib.Path(__file__).parent / f"{TINY_MODEL}.json"


def register() -> str:
    import open_clip

    if open_clip.get_model_config(TINY_MODEL) is None:
        open_clip.add_model_config(_CONFIG)
    return TINY_MODEL


def save_checkpoint(path, seed: int = 0) -> pathlib.Path:
    """Create the tiny model with weights drawn from ``seed`` and save its
    state dict to ``path`` (a ``.pt`` file)."""
    import open_clip

    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    # A learnable temperature like CLIP's (exp(4.6) ~ 100).
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    path = pathlib.Path(path)
    torch.save(model.state_dict(), path)
    return path


def make_hub_cache(cache_dir, repo_id: str = "lazsl-test/tiny-clip", seed: int = 0) -> str:
    """Lay out ``cache_dir`` as a Hugging Face hub cache holding an open_clip
    repository ``repo_id`` (config + weights), as a download would have left it.
    Returns the ``hf-hub:`` id."""
    import open_clip

    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    revision = "0" * 40
    repo_dir = pathlib.Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    cfg = json.loads(_CONFIG.read_text())
    (snap / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": cfg,
                "preprocess_cfg": {
                    "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711],
                },
            }
        )
    )
    torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    return f"hf-hub:{repo_id}"


def make_local_dir(
    folder, preprocess_cfg: dict, *, image_size: int | None = None, seed: int = 0
) -> pathlib.Path:
    """Lay out ``folder`` as an open_clip ``local-dir:`` model: the tiny
    architecture (input side ``image_size``, default 64 px) with random weights
    drawn from ``seed``, and ``preprocess_cfg`` (e.g. ``{"resize_mode": "squash"}``)
    in ``open_clip_config.json``. Pass the folder as ``pretrained=`` to
    :func:`fiftyone_lazsl.core.models.load_model`; open_clip's own
    ``create_model_and_transforms("local-dir:<folder>")`` returns the matching
    ``preprocess``."""
    import open_clip

    cfg = json.loads(_CONFIG.read_text())
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = int(image_size)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": dict(preprocess_cfg)})
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def images_dir(shared_data, subset="cub") -> pathlib.Path:
    return pathlib.Path(shared_data) / "images" / subset


def some_images(shared_data, subset="cub", per_class=1, max_classes=None):
    """``[(path, class)]`` of real photos, ``per_class`` per class, sorted."""
    root = images_dir(shared_data, subset)
    out = []
    for c in sorted(os.listdir(root))[:max_classes]:
        files = sorted(os.listdir(root / c))[:per_class]
        out.extend((str(root / c / f), c) for f in files)
    return out
