"""Loading open_clip models and encoding text, with honest provenance.

``pretrained`` may be:

* an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...) for a built-in
  model name; weights come from the Hugging Face Hub cache (or are downloaded);
* an ``"hf-hub:org/repo"`` id (the model config and weights of that repository);
* a local checkpoint file (``.pt``/``.bin``/``.safetensors``), or a folder with
  ``open_clip_config.json`` and weights (open_clip's ``local-dir:`` layout);
* ``None`` (or ``"random"``): random weights, for tests and smoke runs. This is
  logged loudly and recorded as ``random_weights=True`` everywhere.

Offline (``HF_HUB_OFFLINE=1`` or no route to the hub) a missing download fails
at once with :class:`~fiftyone_lazsl.errors.WeightsUnavailableError`, which
says how to supply the weights, instead of retrying for a minute.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from fiftyone_lazsl.errors import ModelNotFoundError, WeightsUnavailableError

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_BANNER = (
    "RANDOM WEIGHTS: model {model!r} was created without pretrained weights. "
    "Predictions are meaningless; use this only for tests and smoke runs."
)

_RANDOM_TAGS = (None, "", "none", "None", "random")


def cache_root() -> str:
    """Root cache folder: ``$FIFTYONE_LAZSL_CACHE`` or ``~/.cache/fiftyone-lazsl``."""
    return os.environ.get("FIFTYONE_LAZSL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fiftyone-lazsl")


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with what is needed to use it.

    Attributes:
        model: the ``open_clip`` model in eval mode on ``device``.
        tokenizer: the matching open_clip tokenizer.
        name: model name as given (``"ViT-B-32"`` or ``"hf-hub:..."``).
        pretrained: the weights as given (tag, path, hub id or None).
        weights_id: a stable identity of the weights (tag, file path with size and
            mtime, or resolved hub file), None for random weights.
        random_weights: True when no pretrained weights were loaded.
        image_size: square input side of the image tower, in pixels.
        mean, std: per-channel normalisation (RGB, for values in [0, 1]).
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        resize_mode: open_clip's ``"shortest"``, ``"longest"`` or ``"squash"``.
        device: the torch device.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    pretrained: str | None
    weights_id: str | None
    random_weights: bool
    image_size: int
    mean: tuple
    std: tuple
    interpolation: str
    resize_mode: str
    device: torch.device
    extra: dict = field(default_factory=dict)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature ``exp(logit_scale)`` (100 for OpenAI CLIP)."""
        ls = getattr(self.model, "logit_scale", None)
        if ls is None:
            return 100.0
        return float(ls.detach().exp().clamp(max=100.0).item())

    def describe(self) -> dict:
        """Provenance as a JSON-serialisable dict."""
        return {
            "model": self.name,
            "pretrained": self.pretrained,
            "weights_id": self.weights_id,
            "random_weights": self.random_weights,
            "image_size": self.image_size,
        }

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode preprocessed images; ``[V, 3, S, S]`` float -> ``[V, D]`` float32
        unit vectors. Uses fp16 autocast on CUDA."""
        pixels = pixels.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                feats = self.model.encode_image(pixels)
        else:
            feats = self.model.encode_image(pixels)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256,
                     use_cache: bool = True) -> torch.Tensor:
        """Encode prompts in chunks of ``batch_size``; returns ``[T, D]`` float32
        unit vectors on the CPU.

        Results are cached on disk (``<cache_root>/text/<sha256>.pt``) keyed by
        model name, weights identity and the exact texts; random weights are
        never cached.
        """
        texts = list(texts)
        path = None
        if use_cache and self.weights_id is not None and texts:
            key = hashlib.sha256(json.dumps(
                [self.name, self.weights_id, texts], ensure_ascii=False).encode("utf-8")).hexdigest()
            path = os.path.join(cache_root(), "text", f"{key}.pt")
            if os.path.exists(path):
                try:
                    cached = torch.load(path, map_location="cpu", weights_only=True)
                    if cached.shape[0] == len(texts):
                        return cached
                except Exception:  # corrupt cache entry: recompute
                    logger.warning("ignoring unreadable text-feature cache %s", path)
        out = []
        for s in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[s:s + batch_size]).to(self.device)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    f = encode_text_tokens(self.model, tokens)
            else:
                f = encode_text_tokens(self.model, tokens)
            out.append(F.normalize(f.float(), dim=-1).cpu())
        feats = torch.cat(out) if out else torch.zeros(0, 1)
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save(feats, tmp)
            os.replace(tmp, path)
        return feats


def encode_text_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, computed only up to the last end-of-text
    token of the batch when that gives the same result.

    For open_clip's ``CLIP`` class with a causal attention mask and ``argmax``
    (end-of-text) pooling, positions after the pooled token can influence
    nothing, so the sequence is cut there (prompts of ~20 tokens instead of the
    77-token context: about 4x less text-encoder work). Other text towers are
    called unchanged.

    Args:
        model: an open_clip model; tokens: ``[T, L]`` int64 token ids.

    Returns:
        ``[T, D]`` unnormalised text features.
    """
    import open_clip
    from open_clip.transformer import text_global_pool

    trimmable = (type(model) is open_clip.CLIP and getattr(model, "text_pool_type", None) == "argmax"
                 and getattr(model, "attn_mask", None) is not None)
    if not trimmable or tokens.shape[1] < 2:
        return model.encode_text(tokens)
    L = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :L]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:L].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co accepts a TCP connection within ``timeout`` seconds
    (False at once when ``HF_HUB_OFFLINE`` is set)."""
    if _hub_offline():
        return False
    try:
        from huggingface_hub import constants
        host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    except Exception:
        host = "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(repo_id: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    for fn in filenames:
        p = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
        if isinstance(p, str) and os.path.exists(p):
            return p
    return None


def _how_to_supply(model_name: str, pretrained: str) -> str:
    return (
        f"pretrained weights {pretrained!r} for {model_name!r} are not on this machine and cannot be "
        "downloaded (offline or HF_HUB_OFFLINE=1). Supply them by: downloading once where the network "
        "is reachable (the Hugging Face cache, HF_HOME, is reused offline); or passing a local "
        "checkpoint file or open_clip folder as pretrained=/path/to/open_clip_model.safetensors; or "
        "pretrained=None for random weights (tests only)."
    )


def register_model_configs(paths: str | None = None) -> None:
    """Add custom open_clip architecture configs (JSON files or folders of them)
    to open_clip's registry (``open_clip.add_model_config``).

    Args:
        paths: ``os.pathsep``-separated files/folders; default the environment
            variable ``FIFTYONE_LAZSL_MODEL_CONFIGS``.
    """
    import open_clip
    paths = os.environ.get("FIFTYONE_LAZSL_MODEL_CONFIGS", "") if paths is None else paths
    for p in filter(None, paths.split(os.pathsep)):
        if not os.path.exists(p):
            raise ModelNotFoundError(f"model config not found: {p} (FIFTYONE_LAZSL_MODEL_CONFIGS)")
        open_clip.add_model_config(p)


def _check_model_name(model_name: str) -> None:
    import open_clip
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    if open_clip.get_model_config(model_name.replace("/", "-")) is None:
        names = open_clip.list_models()
        close = difflib.get_close_matches(model_name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"unknown open_clip model {model_name!r}{hint} "
                                 f"(see open_clip.list_models())")


def _file_identity(path: str) -> str:
    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def _resolve(model_name: str, pretrained, cache_dir):
    """Returns ``(model_name, pretrained_arg, weights_id, random)`` for open_clip."""
    import open_clip
    if pretrained in _RANDOM_TAGS:
        _check_model_name(model_name)
        return model_name, None, None, True
    pretrained = str(pretrained)
    if pretrained.startswith("hf-hub:"):
        repo = pretrained[len("hf-hub:"):]
        from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        cfg = _hub_cached(repo, [HF_CONFIG_NAME], cache_dir)
        weights = _hub_cached(repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME], cache_dir)
        if (cfg is None or weights is None) and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
        return pretrained, None, f"{pretrained}:{weights or 'download'}", False
    if os.path.isdir(pretrained):
        if not os.path.isfile(os.path.join(pretrained, "open_clip_config.json")):
            raise WeightsUnavailableError(
                f"folder {pretrained} has no open_clip_config.json; pass the checkpoint file instead")
        return f"local-dir:{pretrained}", None, _file_identity(
            os.path.join(pretrained, "open_clip_config.json")), False
    if os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not os.path.isfile(pretrained):
            raise WeightsUnavailableError(f"checkpoint file not found: {pretrained}")
        _check_model_name(model_name)
        return model_name, pretrained, _file_identity(pretrained), False
    _check_model_name(model_name)
    name = model_name.replace("/", "-")
    pcfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsUnavailableError(
            f"{pretrained!r} is neither a pretrained tag of {model_name!r} nor an existing file; "
            f"tags: {', '.join(tags) or 'none'}")
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo, fn = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        fns = [fn] if fn else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if fn.endswith((".bin", ".pth")):
            fns = [fn[:-4] + ".safetensors", fn]
        cached = _hub_cached(repo, fns, cache_dir)
        if cached is None and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
    elif pcfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"),
                              os.path.basename(pcfg["url"]))
        if not os.path.isfile(target) and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
    return model_name, pretrained, f"tag:{name}:{pretrained}", False


def load_model(model_name: str = "ViT-B-32", pretrained: str | None = "openai", *,
               device: str | torch.device | None = None, cache_dir: str | None = None) -> LoadedModel:
    """Create an open_clip model with its tokenizer and preprocessing settings.

    Args:
        model_name: an open_clip model name (``open_clip.list_models()``, plus
            configs listed in ``$FIFTYONE_LAZSL_MODEL_CONFIGS``), or an
            ``"hf-hub:org/repo"`` id.
        pretrained: tag, ``"hf-hub:..."`` id, checkpoint file, open_clip folder,
            or None for random weights (see the module docstring).
        device: torch device; default CUDA when available.
        cache_dir: download cache passed to open_clip (default: the HF cache).

    Returns:
        a :class:`LoadedModel`.

    Raises:
        ModelNotFoundError: unknown model name.
        WeightsUnavailableError: weights not on disk and not downloadable, or a
            missing checkpoint file / unknown tag.
    """
    import open_clip

    device = torch.device(device or default_device())
    register_model_configs()
    name, pretrained_arg, weights_id, random = _resolve(model_name, pretrained, cache_dir)
    try:
        model = open_clip.create_model(name, pretrained=pretrained_arg, device=device,
                                       cache_dir=cache_dir, pretrained_text=False)
    except RuntimeError as e:
        if "Failed to download" in str(e) or "HF Hub" in str(e):
            raise WeightsUnavailableError(f"{_how_to_supply(model_name, str(pretrained))} ({e})") from e
        raise
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    pcfg = open_clip.get_model_preprocess_cfg(model)
    size = pcfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if random:
        logger.warning(RANDOM_WEIGHTS_BANNER.format(model=model_name))
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, pretrained=None if random else str(pretrained),
        weights_id=weights_id, random_weights=random, image_size=int(size),
        mean=tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=pcfg.get("interpolation", "bicubic"),
        resize_mode=pcfg.get("resize_mode", "shortest"),
        device=device,
    )


def check_weights(model_name: str, pretrained: str | None, *, cache_dir: str | None = None) -> bool:
    """Whether :func:`load_model` could load these weights here, without building
    the model (no weights are read or downloaded).

    Cheap: checks the model name, the checkpoint file / folder, or whether a
    pretrained tag's weights are in the local cache or the hub is reachable
    (up to about 3 s when offline without ``HF_HUB_OFFLINE=1``).

    Args:
        model_name: an open_clip model name (plus ``$FIFTYONE_LAZSL_MODEL_CONFIGS``).
        pretrained: as for :func:`load_model` (None: random weights).
        cache_dir: download cache (default: the HF cache).

    Returns:
        True if the weights are random (``pretrained`` None), else False.

    Raises:
        ModelNotFoundError: unknown model name.
        WeightsUnavailableError: the weights cannot be loaded here (the message
            says how to supply them).
    """
    register_model_configs()
    return bool(_resolve(model_name, pretrained, cache_dir)[3])
