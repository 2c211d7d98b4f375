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

:func:`load_model` builds the whole model at once; :class:`LazyModel` knows
the same provenance without the weights and loads only what is used (cached
text features: nothing; other texts: the text tower alone; images: the whole
model), e.g. for re-scoring from stored image features.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from fiftyone_lazsl import env
from fiftyone_lazsl.core.cache import cache_root as _cache_root
from fiftyone_lazsl.core.config import normalize_pretrained
from fiftyone_lazsl.errors import ConfigError, ModelNotFoundError, WeightsUnavailableError

if TYPE_CHECKING:
    from open_clip.transform import PreprocessCfg

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_BANNER = (
    "RANDOM WEIGHTS: model {model!r} was created without pretrained weights. "
    "Predictions are meaningless; use this only for tests and smoke runs."
)


def cache_root() -> str:
    """Root cache folder (:func:`fiftyone_lazsl.core.cache.cache_root`), as a string."""
    return os.fspath(_cache_root())


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def preprocess_cfg_to_dict(cfg: PreprocessCfg) -> dict:
    """``PreprocessCfg`` -> JSON-serialisable dict (tuples as lists)."""
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def preprocess_cfg_from_dict(d: dict) -> PreprocessCfg:
    """A dict (e.g. open_clip's ``model.visual.preprocess_cfg``) -> ``PreprocessCfg``;
    unknown keys are ignored, missing ones take open_clip's defaults."""
    from dataclasses import fields

    from open_clip.transform import PreprocessCfg

    known = {f.name for f in fields(PreprocessCfg)}
    return PreprocessCfg(
        **{
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in d.items()
            if k in known and v is not None
        }
    )


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names, checked to exist on this machine.

    Called before a run writes anything (``run_lazsl``) and by :func:`load_model`,
    so ``--device cuda`` on a machine without a GPU, ``--device cuda:3`` with two
    GPUs or ``--device bogus`` are one clear error instead of a torch traceback
    halfway through a run.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``..., a
            ``torch.device``, or None for :func:`default_device`.

    Returns:
        the ``torch.device``.

    Raises:
        ConfigError: unknown device string, or a device that is not available
            (message names the parameter ``device``).
    """
    if device is None or (isinstance(device, str) and not device.strip()):
        return torch.device(default_device())
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {device!r} is not a torch device (expected cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(device)!r}: no CUDA GPU is available on this machine "
                "(use --device cpu, or omit it to pick automatically)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {str(device)!r}: Apple MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(
            f"device {str(device)!r} is not supported (expected cpu, cuda, cuda:N or mps)"
        )
    return dev


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
        preprocess_cfg: the model's own image preprocessing,
            ``open_clip.transform.PreprocessCfg`` (size, mean, std, interpolation,
            resize_mode, fill_color), as ``open_clip.create_model_and_transforms``
            builds it (``PreprocessCfg(**model.visual.preprocess_cfg)``). The
            visual set is made with exactly this preprocessing
            (``open_clip.image_transform_v2(preprocess_cfg, is_train=False)``).
        device: the torch device.

    Read-only views of ``preprocess_cfg`` kept for compatibility: ``image_size``
    (square input side in pixels), ``mean``, ``std`` (RGB, for values in
    [0, 1]), ``interpolation`` and ``resize_mode``.

    The constructor takes either ``preprocess_cfg`` or the five loose values
    (``image_size``, ``mean``, ``std``, ``interpolation``, ``resize_mode``), from
    which a ``PreprocessCfg`` is built.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        name: str,
        pretrained: str | None,
        weights_id: str | None,
        random_weights: bool,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        resize_mode: str | None = None,
        device: torch.device | str = "cpu",
        *,
        preprocess_cfg: PreprocessCfg | dict | None = None,
    ):
        from open_clip.transform import PreprocessCfg

        loose = {
            "size": image_size,
            "mean": mean,
            "std": std,
            "interpolation": interpolation,
            "resize_mode": resize_mode,
        }
        if preprocess_cfg is None:
            preprocess_cfg = PreprocessCfg(
                **{
                    k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                    for k, v in loose.items()
                    if v is not None
                }
            )
        elif any(v is not None for v in loose.values()):
            raise TypeError(
                "pass either preprocess_cfg or the loose preprocessing values, not both"
            )
        elif isinstance(preprocess_cfg, dict):
            preprocess_cfg = preprocess_cfg_from_dict(preprocess_cfg)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.weights_id = weights_id
        self.random_weights = random_weights
        self.preprocess_cfg = preprocess_cfg
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return (
            f"LoadedModel(name={self.name!r}, pretrained={self.pretrained!r}, "
            f"random_weights={self.random_weights}, preprocess_cfg={self.preprocess_cfg!r}, "
            f"device={str(self.device)!r})"
        )

    # Compatibility views of preprocess_cfg (read-only).
    @property
    def image_size(self) -> int:
        """Square input side ``S`` in pixels (the first entry of a ``(H, W)`` size)."""
        size = self.preprocess_cfg.size
        return int(size[0]) if isinstance(size, (tuple, list)) else int(size)

    @property
    def mean(self) -> tuple:
        return tuple(self.preprocess_cfg.mean)

    @property
    def std(self) -> tuple:
        return tuple(self.preprocess_cfg.std)

    @property
    def interpolation(self) -> str:
        return self.preprocess_cfg.interpolation

    @property
    def resize_mode(self) -> str:
        return self.preprocess_cfg.resize_mode

    @property
    def transform(self):
        """The model's own evaluation transform,
        ``open_clip.image_transform_v2(preprocess_cfg, is_train=False)``: PIL image ->
        ``[3, S, S]`` float32 normalised tensor (what ``create_model_and_transforms``
        returns as ``preprocess``)."""
        from open_clip.transform import image_transform_v2

        return image_transform_v2(self.preprocess_cfg, is_train=False)

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
            "preprocess": preprocess_cfg_to_dict(self.preprocess_cfg),
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

    def text_cache_path(self, texts: Sequence[str]) -> str | None:
        """Where :meth:`encode_texts` caches the features of exactly these
        ``texts`` (``<cache_root>/text/<sha256 of model name, weights_id and
        texts>.pt``), or None when they are never cached (random weights, no
        texts). The file may not exist."""
        texts = list(texts)
        if self.weights_id is None or not texts:
            return None
        key = hashlib.sha256(
            json.dumps([self.name, self.weights_id, texts], ensure_ascii=False).encode("utf-8")
        ).hexdigest()
        return os.path.join(cache_root(), "text", f"{key}.pt")

    def cached_texts(self, texts: Sequence[str]) -> torch.Tensor | None:
        """The cached ``[T, D]`` float32 unit features of ``texts`` (what
        :meth:`encode_texts` returned for them before), or None when they are
        not cached (nothing is encoded; an unreadable entry is warned about
        and counts as not cached)."""
        texts = list(texts)
        path = self.text_cache_path(texts)
        if path is None or not os.path.exists(path):
            return None
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.shape[0] == len(texts):
                return cached
        except Exception:  # corrupt cache entry: recompute
            logger.warning("ignoring unreadable text-feature cache %s", path)
        return None

    @torch.no_grad()
    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int = 256, use_cache: bool = True
    ) -> torch.Tensor:
        """Encode prompts in chunks of ``batch_size``; returns ``[T, D]`` float32
        unit vectors on the CPU.

        Results are cached on disk (``<cache_root>/text/<sha256>.pt``) keyed by
        model name, weights identity and the exact texts; random weights are
        never cached.
        """
        texts = list(texts)
        if use_cache:
            cached = self.cached_texts(texts)
            if cached is not None:
                return cached
        path = self.text_cache_path(texts) if use_cache else None
        out = []
        cut: list[str] = []
        for s in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[s : s + batch_size])
            cut += _truncated(self.tokenizer, texts[s : s + batch_size], tokens)
            tokens = tokens.to(self.device)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    f = encode_text_tokens(self.model, tokens)
            else:
                f = encode_text_tokens(self.model, tokens)
            out.append(F.normalize(f.float(), dim=-1).cpu())
        if cut:
            logger.warning(
                "%d prompt(s) are longer than the text encoder's context of %d tokens and were "
                "cut (only the beginning is encoded); shorten them, e.g. %r",
                len(cut),
                int(self.tokenizer(texts[:1]).shape[1]),
                cut[0][:120],
            )
        feats = torch.cat(out) if out else torch.zeros(0, 1)
        if path is not None:
            _write_text_cache(path, feats)
        return feats


#: Cache folders that could not be written (warned about once each).
_UNWRITABLE_CACHES: set[str] = set()


def _write_text_cache(path: str, feats: torch.Tensor) -> None:
    """Store text features at ``path`` (atomically). The cache is only an
    optimisation: a folder that cannot be written (read-only ``HOME`` or
    cache, full disk) is warned about once and the run goes on without it."""
    folder = os.path.dirname(path)
    if folder in _UNWRITABLE_CACHES:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        torch.save(feats, tmp)
        os.replace(tmp, path)
    except OSError as e:
        _UNWRITABLE_CACHES.add(folder)
        logger.warning(
            "text-feature cache %s cannot be written (%s); going on without caching "
            "(set FIFTYONE_LAZSL_CACHE to a writable folder to keep it)",
            folder,
            e.strerror or e,
        )
        try:
            os.remove(tmp)
        except OSError:
            pass


def _truncated(tokenizer: Any, texts: Sequence[str], tokens: torch.Tensor) -> list[str]:
    """The ``texts`` whose tokens did not fit the context (``tokens``: the
    tokenizer's ``[T, context_length]`` output, 0-padded). A prompt that fills
    the last position is checked exactly with the tokenizer's ``encode`` when it
    has one (open_clip's ``SimpleTokenizer``: start + tokens + end)."""
    full = (tokens[:, -1] != 0).nonzero().flatten().tolist()
    ctx = int(tokens.shape[1])
    encode = getattr(tokenizer, "encode", None)
    out = []
    for i in full:
        if encode is not None:
            try:
                if len(encode(texts[i])) + 2 <= ctx:
                    continue
            except Exception:  # other tokenizers: the last position filled is enough
                pass
        out.append(texts[i])
    return out


def encode_text_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
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
    # Not public open_clip API, deliberately: open_clip (checked against 3.3.0) has no
    # public way to run the text tower on fewer than its 77 context positions. The
    # lines below are ``open_clip.model.CLIP.encode_text`` of 3.3.0 with the sequence
    # cut (token_embedding, positional_embedding, transformer, attn_mask, ln_final,
    # text_global_pool(..., eos_token_id=), text_projection; the ``eos_token_id``
    # keyword and ``text_eos_id`` need open_clip >= 3). Anything that is not exactly
    # that class falls back to the public ``encode_text``;
    # tests/test_models.py::test_trimmed_text_encoding_equals_full_context checks the
    # equality on every upgrade.
    import open_clip
    from open_clip.transformer import text_global_pool

    trimmable = (
        type(model) is open_clip.CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    )
    if not trimmable or tokens.shape[1] < 2:
        return model.encode_text(tokens)
    L = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :L]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:L].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
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


def _check_repo_id(repo: str, given: str) -> None:
    """Refuse an ``hf-hub:`` id that is not a Hugging Face repository id
    (``huggingface_hub``'s own validation: ``org/name``, no ``..``).

    Raises:
        WeightsUnavailableError: naming the id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise WeightsUnavailableError(
            f"{given!r} is not a Hugging Face repository id (hf-hub:org/name): {first}"
        ) from None


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

    paths = env.get("FIFTYONE_LAZSL_MODEL_CONFIGS") if paths is None else paths.split(os.pathsep)
    for p in filter(None, paths):
        if not os.path.exists(p):
            raise ModelNotFoundError(f"model config not found: {p} (FIFTYONE_LAZSL_MODEL_CONFIGS)")
        open_clip.add_model_config(p)


def _check_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith("hf-hub:"):
        _check_repo_id(model_name[len("hf-hub:") :], model_name)
        return
    if model_name.startswith("local-dir:"):
        return
    if open_clip.get_model_config(model_name.replace("/", "-")) is None:
        names = open_clip.list_models()
        close = difflib.get_close_matches(model_name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"unknown open_clip model {model_name!r}{hint} (see open_clip.list_models())"
        )


def _refuse_local_weights(pretrained_arg: str | None, name: str, error: BaseException) -> None:
    """One line for a local checkpoint file or open_clip folder that cannot be
    loaded as weights: a pickle that would run code when unpickled (refused
    by ``torch.load(weights_only=True)``; nothing of it runs), a pickle named
    ``.safetensors``, a truncated file, weights of another architecture.

    Raises:
        WeightsUnavailableError: when the weights are a local file or folder.
    """
    where = pretrained_arg or (name[len("local-dir:") :] if name.startswith("local-dir:") else None)
    if where is None or not os.path.exists(where):
        return
    first = (str(error).strip().splitlines() or [""])[0][:200]
    why = (
        "it holds pickled code, which is never run (torch.load weights_only refuses it)"
        if "weights only" in str(error).lower() or "weights_only" in str(error)
        else f"{type(error).__name__}: {first}"
    )
    raise WeightsUnavailableError(
        f"weights {where} cannot be loaded as {name!r} weights: {why}; give a checkpoint of "
        "plain tensors (.safetensors, or a .pt/.bin state dict)"
    ) from error


def _file_identity(path: str) -> str:
    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def _resolve(
    model_name: str, pretrained: str | None, cache_dir: str | None
) -> tuple[str, str | None, str | None, bool]:
    """Returns ``(model_name, pretrained_arg, weights_id, random)`` for open_clip."""
    import open_clip

    if normalize_pretrained(pretrained) is None:
        _check_model_name(model_name)
        return model_name, None, None, True
    pretrained = normalize_pretrained(pretrained)
    if pretrained.startswith("hf-hub:"):
        repo = pretrained[len("hf-hub:") :]
        _check_repo_id(repo, pretrained)
        from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        cfg = _hub_cached(repo, [HF_CONFIG_NAME], cache_dir)
        weights = _hub_cached(repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME], cache_dir)
        if (cfg is None or weights is None) and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
        return pretrained, None, f"{pretrained}:{weights or 'download'}", False
    if os.path.isdir(pretrained):
        if not os.path.isfile(os.path.join(pretrained, "open_clip_config.json")):
            raise WeightsUnavailableError(
                f"folder {pretrained} has no open_clip_config.json; pass the checkpoint file instead"
            )
        return (
            f"local-dir:{pretrained}",
            None,
            _file_identity(os.path.join(pretrained, "open_clip_config.json")),
            False,
        )
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
            f"tags: {', '.join(tags) or 'none'}"
        )
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo, fn = (
            os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        )
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        fns = [fn] if fn else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if fn.endswith((".bin", ".pth")):
            fns = [fn[:-4] + ".safetensors", fn]
        cached = _hub_cached(repo, fns, cache_dir)
        if cached is None and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
    elif pcfg.get("url"):
        target = os.path.join(
            cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(pcfg["url"])
        )
        if not os.path.isfile(target) and not hub_reachable():
            raise WeightsUnavailableError(_how_to_supply(model_name, pretrained))
    return model_name, pretrained, f"tag:{name}:{pretrained}", False


class _DropOpenClipRandomNote(logging.Filter):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on
    the root logger; :func:`load_model` says it once, louder, itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


def load_model(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    *,
    device: str | torch.device | None = None,
    cache_dir: str | None = None,
    warn_random: bool = True,
) -> LoadedModel:
    """Create an open_clip model with its tokenizer and preprocessing settings.

    Args:
        model_name: an open_clip model name (``open_clip.list_models()``, plus
            configs listed in ``$FIFTYONE_LAZSL_MODEL_CONFIGS``), or an
            ``"hf-hub:org/repo"`` id.
        pretrained: tag, ``"hf-hub:..."`` id, checkpoint file, open_clip folder,
            or None for random weights (see the module docstring).
        device: torch device; default CUDA when available.
        cache_dir: download cache passed to open_clip (default: the HF cache).
        warn_random: log the one RANDOM WEIGHTS warning (False when the caller
            has already told the user, e.g. the demo's banner).

    Returns:
        a :class:`LoadedModel`.

    Raises:
        ModelNotFoundError: unknown model name.
        WeightsUnavailableError: weights not on disk and not downloadable, or a
            missing checkpoint file / unknown tag.
        ConfigError: ``device`` does not exist on this machine (:func:`check_device`).
    """
    import open_clip

    device = check_device(device)
    register_model_configs()
    name, pretrained_arg, weights_id, random = _resolve(model_name, pretrained, cache_dir)
    quiet = _DropOpenClipRandomNote()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(
            name,
            pretrained=pretrained_arg,
            device=device,
            cache_dir=cache_dir,
            pretrained_text=False,
        )
    except RuntimeError as e:
        if "Failed to download" in str(e) or "HF Hub" in str(e):
            raise WeightsUnavailableError(
                f"{_how_to_supply(model_name, str(pretrained))} ({e})"
            ) from e
        _refuse_local_weights(pretrained_arg, name, e)
        raise
    except Exception as e:  # noqa: BLE001 -- a local file that is not loadable weights
        _refuse_local_weights(pretrained_arg, name, e)
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    pcfg = preprocess_cfg_from_dict(open_clip.get_model_preprocess_cfg(model))
    if random and warn_random:
        logger.warning(RANDOM_WEIGHTS_BANNER.format(model=model_name))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=None if random else str(pretrained),
        weights_id=weights_id,
        random_weights=random,
        preprocess_cfg=pcfg,
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


# ------------------------------------------------------------------ lazy loading
@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """A context in which open_clip's "initialized randomly" note and torch's
    "copying ... to a meta parameter ... is a no-op" warnings are not shown
    (both are expected when a model is built on the meta device)."""
    import warnings

    note = _DropOpenClipRandomNote()
    logging.getLogger().addFilter(note)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*meta parameter.*no-op.*")
            yield
    finally:
        logging.getLogger().removeFilter(note)


def _meta_model(name: str, pretrained_arg: str | None, cache_dir: str | None) -> torch.nn.Module:
    """The open_clip model built on the ``meta`` device: its architecture,
    parameter shapes and image preprocessing (``open_clip.create_model``'s own
    resolution: model config, tag or hub config), no memory, no weights read,
    no random initialisation (a few tens of milliseconds)."""
    import open_clip

    with _quiet_open_clip(), torch.device("meta"):
        return open_clip.create_model(
            name,
            pretrained=pretrained_arg,
            load_weights=False,
            device="meta",
            cache_dir=cache_dir,
            pretrained_text=False,
        )


def _checkpoint_path(name: str, pretrained_arg: str | None, cache_dir: str | None) -> str | None:
    """The weights file ``open_clip.create_model(name, pretrained_arg)`` loads
    (a checkpoint file, a tag's cached file, an ``hf-hub:`` repository's file,
    the one weights file of a ``local-dir:`` folder), or None where it is not
    known here (random weights; a folder with several weights files, among
    which open_clip chooses)."""
    import open_clip

    if name.startswith("hf-hub:"):
        from open_clip.pretrained import download_pretrained_from_hf

        return download_pretrained_from_hf(name[len("hf-hub:") :], cache_dir=cache_dir)
    if name.startswith("local-dir:"):
        folder = name[len("local-dir:") :]
        found = [
            os.path.join(folder, f)
            for f in sorted(os.listdir(folder))
            if f.endswith((".safetensors", ".bin", ".pth"))
        ]
        return found[0] if len(found) == 1 else None
    if pretrained_arg is None:
        return None
    if os.path.isfile(pretrained_arg):
        return pretrained_arg
    pcfg = open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained_arg)
    if not pcfg:
        return None
    return open_clip.download_pretrained(pcfg, cache_dir=cache_dir) or None


def _exp_logit_scale(t: torch.Tensor) -> float:
    """``exp(logit_scale)`` clamped at 100, computed as :attr:`LoadedModel.logit_scale`
    computes it (float32)."""
    return float(t.detach().to(torch.float32).exp().clamp(max=100.0).item())


def _checkpoint_logit_scale(path: str) -> float | None:
    """``exp(logit_scale)`` read from a weights file without reading the rest
    (safetensors: the one tensor; ``torch.save`` zip files: memory-mapped), or
    None when the file does not hold it under open_clip's own key (other
    layouts are converted by open_clip on load; the caller then loads)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt", device="cpu") as f:
                keys = set(f.keys())
                key = next((k for k in ("logit_scale", "module.logit_scale") if k in keys), None)
                return None if key is None else _exp_logit_scale(f.get_tensor(key))
        if path.endswith((".npz", ".npy")):
            return None
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip archive: no memory map
            sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            return None
        t = sd.get("logit_scale", sd.get("module.logit_scale"))
        return _exp_logit_scale(t) if isinstance(t, torch.Tensor) else None
    except Exception:  # noqa: BLE001 -- unreadable here: the caller loads the weights
        return None


def _random_logit_scale(meta: torch.nn.Module, name: str) -> float | None:
    """``exp(logit_scale)`` of randomly initialised weights: open_clip sets
    ``logit_scale = ones(shape) * init_logit_scale`` (the model config's value,
    else the model class's default ``log(1 / 0.07)``); None where neither is
    known (the caller then loads the model)."""
    import inspect

    import open_clip

    init = (open_clip.get_model_config(name.replace("/", "-")) or {}).get("init_logit_scale")
    if init is None:
        p = inspect.signature(type(meta)).parameters.get("init_logit_scale")
        if p is None or p.default is inspect.Parameter.empty:
            return None
        init = p.default
    return _exp_logit_scale(torch.ones(tuple(meta.logit_scale.shape)) * init)


def _materialize_text_tower(model: torch.nn.Module, device: torch.device) -> bool:
    """Allocate everything of a meta-built open_clip model but ``model.visual``
    on ``device`` (uninitialised: the checkpoint fills the parameters) and
    rebuild its non-persistent buffers, the causal attention masks, as
    open_clip builds them. Returns False (nothing usable) for a model with
    another non-persistent buffer outside the image tower (e.g. a Hugging
    Face text tower): the caller then loads the whole model."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, torch.nn.Module):
        return False
    persistent = set(model.state_dict())
    extra = [
        n for n, _ in model.named_buffers() if n not in persistent and not n.startswith("visual.")
    ]
    masks = {}
    for n in extra:
        owner_name, _, leaf = n.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        old = getattr(owner, leaf)
        if leaf != "attn_mask" or old.dim() != 2 or old.shape[0] != old.shape[1]:
            return False
        if hasattr(owner, "build_causal_mask"):  # open_clip's TextTransformer
            mask = owner.build_causal_mask()
        elif hasattr(owner, "build_attention_mask"):  # CoCa's multimodal decoder
            mask = owner.build_attention_mask()
        else:  # open_clip.CLIP keeps its text tower's causal mask: the same construction
            mask = torch.empty(old.shape[0], old.shape[0], device="cpu")
            mask.fill_(float("-inf"))
            mask.triu_(1)
        if tuple(mask.shape) != tuple(old.shape):
            return False
        masks[(owner, leaf)] = mask
    model.to_empty(device=device, recurse=False)
    for child in model.children():
        if child is not visual:
            child.to_empty(device=device)
    for (owner, leaf), mask in masks.items():
        setattr(owner, leaf, mask.to(device))
    return True


def _load_text_tower(
    name: str, pretrained_arg: str | None, cache_dir: str | None, device: torch.device
) -> torch.nn.Module | None:
    """The open_clip model with its text tower (and ``logit_scale``) loaded
    from the weights file and its image tower left on the ``meta`` device
    (never allocated, never initialised), or None where that cannot be done
    here (random weights, a ``local-dir:`` folder with several weights
    files, text towers with other buffers, a weights file open_clip's
    ``load_checkpoint`` refuses): the
    caller then loads the whole model, which also reports any error.

    The text tower's weights are loaded by open_clip's own ``load_checkpoint``
    (``strict=True``: every key of the file matched, conversions applied), so
    its text features equal the whole model's bit for bit
    (tests/test_rescore_lazy.py)."""
    import open_clip

    try:
        path = _checkpoint_path(name, pretrained_arg, cache_dir)
        if path is None:
            return None
        model = _meta_model(name, pretrained_arg, cache_dir)
        if not _materialize_text_tower(model, device):
            return None
        with _quiet_open_clip():
            open_clip.load_checkpoint(model, path, strict=True)
        left = [
            n
            for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta and not n.startswith("visual.")
        ]
        if left:
            return None
        return model.eval().requires_grad_(False)
    except Exception as e:  # noqa: BLE001 -- the whole-model load reports the real error
        logger.debug("text tower alone not loadable for %s (%s); loading the whole model", name, e)
        return None


class LazyModel(LoadedModel):
    """A :class:`LoadedModel` whose weights are loaded only when something
    needs them: what identifies the model and how images are prepared are known
    at once, text features come from the text-feature cache, the text tower
    alone is loaded on a cache miss, and the whole model at the first image.

    Known without loading (constructing it reads no weights): ``name``,
    ``pretrained``, ``weights_id``, ``random_weights`` (all from the same
    resolution as :func:`load_model`), ``preprocess_cfg`` (given, e.g. from a
    run record, or open_clip's own resolution with the model built on the
    ``meta`` device: no memory, no initialisation) and ``logit_scale`` (given,
    or read alone from the weights file; random weights: open_clip's
    initial value). So :meth:`describe`, :attr:`logit_scale`, the feature
    store's fingerprint (:func:`~fiftyone_lazsl.core.features.feature_spec`)
    and a run's provenance need no weights.

    Loaded on demand, once:

    * :meth:`encode_texts`: cached features are returned without loading
      anything; on a miss the *text tower only* is loaded (open_clip's model
      built on the ``meta`` device, the text tower allocated and filled by
      open_clip's ``load_checkpoint``; the image tower is never allocated).
      Where that cannot be done (random weights, whose text and image towers
      must come from one draw; a ``local-dir:`` folder with several weights
      files; Hugging Face text towers) the whole model is loaded instead.
    * :meth:`encode_images`, :attr:`model`: the whole model
      (:func:`load_model`); text encoding then uses it too.

    A loaded model is checked against what was known before: weights
    identity, preprocessing and ``logit_scale`` must be equal, else
    :class:`~fiftyone_lazsl.errors.ConfigError` (e.g. the weights file was
    replaced after the run record was written).

    Args:
        model_name, pretrained: as for :func:`load_model`.
        device: torch device (None: CUDA when available).
        cache_dir: download cache passed to open_clip.
        preprocess_cfg: the model's preprocessing when known (a
            ``PreprocessCfg`` or its dict, e.g. a run record's ``preprocess``);
            None: resolved now as open_clip resolves it.
        logit_scale: ``exp(logit_scale)`` when known (a run record's
            ``logit_scale``); None: read from the weights file.
        warn_random: log the RANDOM WEIGHTS warning (as :func:`load_model`).

    Attributes:
        loaded: what is loaded now: ``"nothing"``, ``"text"`` (text tower
            only) or ``"full"``.
        requested_device: ``device`` as given (None: automatic); a
            :class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier` records
            this, as it does without a model.

    Raises:
        ModelNotFoundError, WeightsUnavailableError, ConfigError: as
            :func:`load_model` (name, weights and device are checked at once).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        *,
        device: str | torch.device | None = None,
        cache_dir: str | None = None,
        preprocess_cfg: PreprocessCfg | dict | None = None,
        logit_scale: float | None = None,
        warn_random: bool = True,
    ) -> None:
        import threading

        self.requested_device = None if device is None else str(device)
        self.device = check_device(device)
        register_model_configs()
        name, pretrained_arg, weights_id, random = _resolve(model_name, pretrained, cache_dir)
        self._args = (model_name, pretrained, cache_dir)
        self._pretrained_arg = pretrained_arg
        self.name = name
        self.pretrained = None if random else str(pretrained)
        self.weights_id = weights_id
        self.random_weights = random
        self._lock = threading.RLock()
        self._full: LoadedModel | None = None
        self._text: LoadedModel | None = None
        self._tokenizer = None
        if preprocess_cfg is None or (logit_scale is None and random):
            meta = _meta_model(name, pretrained_arg, cache_dir)
            if preprocess_cfg is None:
                import open_clip

                preprocess_cfg = open_clip.get_model_preprocess_cfg(meta)
            if logit_scale is None and random:
                logit_scale = _random_logit_scale(meta, name)
        if isinstance(preprocess_cfg, dict):
            preprocess_cfg = preprocess_cfg_from_dict(preprocess_cfg)
        self.preprocess_cfg = preprocess_cfg
        if logit_scale is None:
            path = _checkpoint_path(name, pretrained_arg, cache_dir)
            logit_scale = _checkpoint_logit_scale(path) if path else None
        self._logit_scale = None if logit_scale is None else float(logit_scale)
        if random and warn_random:
            logger.warning(RANDOM_WEIGHTS_BANNER.format(model=model_name))

    @classmethod
    def from_provenance(
        cls, record: dict, *, device: str | torch.device | None = None, cache_dir: str | None = None
    ) -> LazyModel:
        """The model a run record names (:meth:`LaZSLClassifier.config`, a
        run's stored config), with the record's ``preprocess`` and
        ``logit_scale``: nothing is read from the weights. Its ``weights_id``
        is resolved again (so a replaced weights file shows in the feature
        store's fingerprint).

        Raises:
            KeyError: no ``model`` in the record; the errors of the constructor.
        """
        random = bool(record.get("random_weights"))
        ls = record.get("logit_scale")
        return cls(
            record["model"],
            None if random else record.get("pretrained"),
            device=device,
            cache_dir=cache_dir,
            preprocess_cfg=record.get("preprocess") or None,
            logit_scale=None if ls is None else float(ls),
        )

    def __repr__(self) -> str:
        return (
            f"LazyModel(name={self.name!r}, pretrained={self.pretrained!r}, "
            f"random_weights={self.random_weights}, loaded={self.loaded!r}, "
            f"device={str(self.device)!r})"
        )

    @property
    def loaded(self) -> str:
        """``"full"``, ``"text"`` (text tower only) or ``"nothing"``."""
        return "full" if self._full is not None else "text" if self._text is not None else "nothing"

    # ---------------------------------------------------------------- loading
    def _check(self, m: LoadedModel, what: str) -> None:
        """Refuse a loaded model that differs from what was known before it."""
        import math

        diff = [
            k
            for k, a, b in (
                ("weights_id", m.weights_id, self.weights_id),
                ("preprocessing", m.preprocess_cfg, self.preprocess_cfg),
            )
            if a != b
        ]
        # exp() of float32 may differ in the last bit between devices (CPU, CUDA)
        if self._logit_scale is not None and not math.isclose(
            m.logit_scale, self._logit_scale, rel_tol=1e-6
        ):
            diff.append("logit_scale")
        if diff:
            raise ConfigError(
                f"the {what} of {self.name!r} ({self.pretrained or 'random weights'}) loaded now "
                f"differs from what was recorded for it ({', '.join(diff)} differ: the weights "
                "file or open_clip changed since); classify again"
            )

    def full_model(self) -> LoadedModel:
        """The whole model (:func:`load_model`; loaded on the first call)."""
        with self._lock:
            if self._full is None:
                model_name, pretrained, cache_dir = self._args
                m = load_model(
                    model_name,
                    pretrained,
                    device=self.device,
                    cache_dir=cache_dir,
                    warn_random=False,
                )
                if not self.random_weights:
                    self._check(m, "model")
                if self._logit_scale is None:
                    self._logit_scale = m.logit_scale
                self._full, self._text = m, None  # the text tower alone is not needed any more
            return self._full

    def text_model(self) -> LoadedModel:
        """A :class:`LoadedModel` that can encode texts: the whole model when
        loaded, else the text tower alone (loaded on the first call; the whole
        model where the text tower cannot be loaded alone)."""
        with self._lock:
            if self._full is not None:
                return self._full
            if self._text is None and not self.random_weights:
                model_name, _, cache_dir = self._args
                tower = _load_text_tower(self.name, self._pretrained_arg, cache_dir, self.device)
                if tower is not None:
                    import open_clip

                    m = LoadedModel(
                        model=tower,
                        tokenizer=self.tokenizer,
                        name=self.name,
                        pretrained=self.pretrained,
                        weights_id=self.weights_id,
                        random_weights=False,
                        device=self.device,
                        preprocess_cfg=preprocess_cfg_from_dict(
                            open_clip.get_model_preprocess_cfg(tower)
                        ),
                    )
                    self._check(m, "text tower")
                    if self._logit_scale is None:
                        self._logit_scale = m.logit_scale
                    self._text = m
            return self._text if self._text is not None else self.full_model()

    # ------------------------------------------------------ LoadedModel's API
    @property
    def model(self) -> torch.nn.Module:  # type: ignore[override]
        """The whole open_clip model (loaded on first access)."""
        return self.full_model().model

    @property
    def tokenizer(self) -> object:  # type: ignore[override]
        """The open_clip tokenizer (no weights are loaded for it)."""
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.name, cache_dir=self._args[2])
        return self._tokenizer

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)`` (known without loading; see the class docstring)."""
        if self._logit_scale is None:
            self.text_model()
        if self._logit_scale is None:  # pragma: no cover -- every load sets it
            self._logit_scale = self.full_model().logit_scale
        return self._logit_scale

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """As :meth:`LoadedModel.encode_images`; loads the whole model first."""
        return self.full_model().encode_images(pixels)

    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int = 256, use_cache: bool = True
    ) -> torch.Tensor:
        """As :meth:`LoadedModel.encode_texts`: cached features without loading
        anything; otherwise the text tower (see the class docstring) encodes
        them, and they are cached."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, 1)
        if use_cache:
            cached = self.cached_texts(texts)
            if cached is not None:
                return cached
        return self.text_model().encode_texts(texts, batch_size=batch_size, use_cache=use_cache)
