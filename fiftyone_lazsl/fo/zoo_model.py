"""LaZSL in the FiftyOne model zoo: a remote model source and a
:class:`fiftyone.core.models.Model` over :class:`LaZSLClassifier`.

The repository's ``zoo/`` folder (``manifest.json`` + ``__init__.py``) is a
FiftyOne *remote zoo model source*: after
``foz.register_zoo_model_source("https://github.com/fiftyone-lazsl/fiftyone-lazsl")``
FiftyOne copies that folder to ``<fo.config.model_zoo_dir>/fiftyone-lazsl/`` and
calls, from the copy's ``__init__.py``, the functions of this module
(FiftyOne 1.22 ``fiftyone/zoo/models/__init__.py``: ``_download_remote_model``,
``_load_remote_model``, ``_resolve_remote_input``, ``_parse_remote_model_parameters``):

* :func:`download_model` ``(model_name, model_path)``: fetch the open_clip
  weights into ``model_path`` (the manifest's ``base_filename`` in that folder);
* :func:`load_model` ``(model_name, model_path, **kwargs)``: build a
  :class:`LaZSLZooModel` (``foz.load_zoo_model(name, **kwargs)`` lands here);
* :func:`resolve_input` / :func:`parse_parameters`: the parameters form of the
  ``@voxel51/zoo`` plugin's "Apply zoo model" operator.

:class:`LaZSLZooModel` follows FiftyOne's model interface so that
``apply_model``, ``compute_embeddings`` and ``sort_by_similarity`` with a text
query work: ``TorchModelMixin`` + ``SupportsGetItem`` (FiftyOne's ``DataLoader``
decodes the images, reading each sample's ``filepath`` so crops are seeded by
the same key as :func:`~fiftyone_lazsl.fo.apply.run_lazsl`), ``LogitsMixin``,
``EmbeddingsMixin`` (the global-view image embedding) and ``PromptMixin``
(text embeddings in the same space). Labels are built by
:func:`fiftyone_lazsl.fo.apply.to_labels`, the function ``run_lazsl`` uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.core.models as fom
import fiftyone.operators.types as types
import fiftyone.utils.torch as fout
import numpy as np
import open_clip
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from safetensors.torch import save_file

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.config import METHODS, LaZSLConfig, OutputConfig
from fiftyone_lazsl.core.crops import make_views
from fiftyone_lazsl.core.imageio import image_to_tensor, load_image_tensor
from fiftyone_lazsl.core.models import hub_reachable
from fiftyone_lazsl.core.pipeline import non_finite
from fiftyone_lazsl.errors import (
    ConfigError,
    ImageLoadError,
    ModelNotFoundError,
    WeightsUnavailableError,
)
from fiftyone_lazsl.fo.apply import to_labels
from fiftyone_lazsl.fo.store import has_attribute_set, load_attribute_set, resolve_attribute_set

logger = logging.getLogger(__name__)

__all__ = [
    "ZOO_MODELS",
    "ZooModelSpec",
    "zoo_model_spec",
    "download_weights",
    "download_model",
    "load_model",
    "resolve_input",
    "parse_parameters",
    "LaZSLZooModel",
    "LaZSLGetItem",
    "LABEL_KEYS",
]


@dataclass(frozen=True)
class ZooModelSpec:
    """One LaZSL zoo model: the open_clip backbone and the weights it ships with.

    Attributes:
        name: zoo name (the manifest's ``base_name``).
        model: open_clip model name (``open_clip.list_models()``).
        pretrained: open_clip pretrained tag the weights come from.
        filename: the manifest's ``base_filename``: the weights file written
            by :func:`download_model` in the source's zoo folder.
        hf_hub: ``"org/repo/"`` or ``"org/repo/file"`` on the Hugging Face Hub
            holding the weights; None (default): open_clip's pretrained config
            for ``(model, pretrained)``.
    """

    name: str
    model: str
    pretrained: str
    filename: str
    hf_hub: str | None = None


#: The models listed in ``zoo/manifest.json`` (tests check the two agree).
ZOO_MODELS: dict[str, ZooModelSpec] = {
    s.name: s
    for s in (
        ZooModelSpec("lazsl-vit-b-32", "ViT-B-32", "openai", "lazsl-vit-b-32-openai.safetensors"),
        ZooModelSpec("lazsl-vit-b-16", "ViT-B-16", "openai", "lazsl-vit-b-16-openai.safetensors"),
        ZooModelSpec("lazsl-vit-l-14", "ViT-L-14", "openai", "lazsl-vit-l-14-openai.safetensors"),
    )
}

#: Keys of the label dict :meth:`LaZSLZooModel.predict_all` returns, named as
#: :func:`fiftyone_lazsl.fo.runs.output_fields` names run_lazsl's outputs.
#: ``apply_model(model, label_field="F")`` stores them in ``F_prediction``,
#: ``F_crops`` and ``F_attributes`` (FiftyOne's ``Sample.add_labels`` rule).
LABEL_KEYS = ("prediction", "crops", "attributes")

#: load_zoo_model keyword arguments besides the LaZSLConfig fields.
_OUTPUT_KWARGS = ("attribute_set", "top_k_crops", "top_attributes", "evidence", "runner_ups")


def zoo_model_spec(model_name: str) -> ZooModelSpec:
    """The :class:`ZooModelSpec` of a zoo name (an ``@version`` suffix is ignored).

    Raises:
        fiftyone_lazsl.errors.ModelNotFoundError: not a LaZSL zoo model.
    """
    base = str(model_name).split("@", 1)[0]
    try:
        return ZOO_MODELS[base]
    except KeyError:
        raise ModelNotFoundError(
            f"{model_name!r} is not a LaZSL zoo model; expected one of {', '.join(ZOO_MODELS)}"
        ) from None


# --------------------------------------------------------------------- weights
def _how_to_supply(spec: ZooModelSpec, model_path: str) -> str:
    return (
        f"the weights of zoo model {spec.name!r} (open_clip {spec.model}, {spec.pretrained!r}) are "
        f"not in {model_path} and cannot be downloaded (offline or HF_HUB_OFFLINE=1). Supply them "
        f"by: running foz.download_zoo_model({spec.name!r}) where the network is reachable (or "
        f"copying that file to {model_path}); or passing a checkpoint, "
        f"foz.load_zoo_model({spec.name!r}, pretrained='/path/to/open_clip_model.safetensors', "
        "attribute_set=...); or pretrained=None for random weights (tests only)."
    )


def _hub_candidates(spec: ZooModelSpec) -> tuple[str, list[str]]:
    """``(repo_id, filenames)`` of the spec's weights on the Hugging Face Hub,
    from open_clip's pretrained config (``hf_hub``), safetensors first."""
    hub = spec.hf_hub or (open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}).get(
        "hf_hub", ""
    )
    if not hub:
        raise WeightsUnavailableError(
            f"open_clip has no Hugging Face Hub entry for {spec.model} {spec.pretrained!r}"
        )
    repo, fn = os.path.split(hub)
    if not fn:
        return repo.rstrip("/"), [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    stem = os.path.splitext(fn)[0]
    return repo, [stem + ".safetensors", fn]


def _fetch_from_hub(spec: ZooModelSpec, model_path: str) -> str:
    """Path of the weights file in the Hugging Face cache, downloading it when
    the hub is reachable.

    Raises:
        WeightsUnavailableError: not cached and the hub is unreachable.
    """
    repo, names = _hub_candidates(spec)
    for fn in names:
        p = try_to_load_from_cache(repo, fn)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    if not hub_reachable():
        raise WeightsUnavailableError(_how_to_supply(spec, model_path))
    last: Exception | None = None
    for fn in names:
        try:
            return hf_hub_download(repo_id=repo, filename=fn)
        except Exception as e:  # noqa: BLE001 -- try the next file name
            last = e
    raise WeightsUnavailableError(
        f"could not download the weights of {spec.name!r} from {repo} ({', '.join(names)}): {last}"
    )


def download_weights(model_name: str, model_path: str) -> str:
    """Put the zoo model's open_clip weights at ``model_path`` (a safetensors file).

    The file is taken from the Hugging Face cache (``HF_HOME``) or downloaded
    from the hub entry of open_clip's pretrained config
    (``open_clip.get_pretrained_cfg(model, tag)["hf_hub"]``); ``.bin`` weights
    are converted to safetensors. Written to a temporary file and renamed, so an
    interrupted download never leaves a partial ``model_path``.

    Args:
        model_name: a LaZSL zoo name (``"lazsl-vit-b-32"``).
        model_path: destination file (FiftyOne's ``<zoo dir>/<source>/<base_filename>``).

    Returns:
        ``model_path``.

    Raises:
        WeightsUnavailableError: offline (``HF_HUB_OFFLINE=1`` or no route to the
            hub) and not cached; the message says how to supply the weights.
        ModelNotFoundError: not a LaZSL zoo name.
    """
    spec = zoo_model_spec(model_name)
    if os.path.isfile(model_path):
        return model_path
    src = _fetch_from_hub(spec, model_path)
    folder = os.path.dirname(os.path.abspath(model_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        if src.endswith(".safetensors"):
            shutil.copyfile(src, tmp)
        else:
            sd = torch.load(src, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
            save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        os.replace(tmp, model_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("weights of %s written to %s", spec.name, model_path)
    return model_path


# ------------------------------------------------------------ source functions
def download_model(model_name: str, model_path: str) -> None:
    """FiftyOne's remote-source ``download_model(model_name, model_path)``.

    Fetches the weights into ``model_path`` (:func:`download_weights`).
    FiftyOne calls it from ``load_zoo_model`` *before* ``load_model`` whatever
    the keyword arguments, so offline it does not raise: it logs the
    how-to-supply message and returns without writing, so that
    ``load_zoo_model(name, pretrained=None)`` (random weights) or
    ``pretrained=<checkpoint>`` still work offline; ``load_model`` raises
    :class:`WeightsUnavailableError` when it needs the missing weights.
    ``foz.is_zoo_model_downloaded(name)`` stays False until the file exists.
    """
    try:
        download_weights(model_name, model_path)
    except WeightsUnavailableError as e:
        logger.warning("%s", e)


def _split_kwargs(spec: ZooModelSpec, kwargs: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(LaZSLConfig overrides, output options)``; refuses unknown keywords and
    a ``model`` other than the zoo model's backbone."""
    names = set(LaZSLConfig.field_names())
    unknown = sorted(k for k in kwargs if k not in names and k not in _OUTPUT_KWARGS)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) for zoo model {spec.name!r}: {', '.join(unknown)}; expected "
            f"some of: {', '.join(_OUTPUT_KWARGS + LaZSLConfig.field_names())}"
        )
    params = {k: v for k, v in kwargs.items() if k in names}
    if "model" in params and params["model"] != spec.model:
        others = [s.name for s in ZOO_MODELS.values() if s.model == params["model"]]
        hint = f"load {others[0]!r} instead" if others else "use run_lazsl for other backbones"
        raise ConfigError(
            f"zoo model {spec.name!r} is open_clip {spec.model}, not "
            f"model={params['model']!r}; {hint}"
        )
    params["model"] = spec.model
    return params, {k: kwargs[k] for k in _OUTPUT_KWARGS if k in kwargs}


def load_model(model_name: str, model_path: str, **kwargs: Any) -> LaZSLZooModel:
    """FiftyOne's remote-source ``load_model``: build a :class:`LaZSLZooModel`.

    ``foz.load_zoo_model("lazsl-vit-b-32", attribute_set="cub", n_crops=90, seed=0)``
    passes its keyword arguments here.

    Args:
        model_name: a LaZSL zoo name.
        model_path: the zoo weights file (:func:`download_weights`).
        **kwargs: ``attribute_set`` (required: an :class:`AttributeSet`, a dict
            ``{class: [attributes]}``, a JSON file path or a published set name
            such as ``"cub"``), ``top_k_crops`` and ``top_attributes`` (as for
            :func:`~fiftyone_lazsl.fo.apply.run_lazsl`), and any
            :class:`LaZSLConfig` field (``pretrained``, ``method``,
            ``n_crops``, ``seed``, ``theta``, ``device``, ``batch_size``...).
            Without ``pretrained`` the zoo's OpenAI weights at ``model_path``
            are used (downloaded if missing); ``pretrained=None`` gives random
            weights (tests only; logged loudly).

    Returns:
        a :class:`LaZSLZooModel`.

    Raises:
        ConfigError: an unknown keyword, a value out of its domain, no
            ``attribute_set``.
        WeightsUnavailableError: default weights missing and offline (the
            message says how to supply them); errors of
            :func:`~fiftyone_lazsl.fo.store.resolve_attribute_set`.
    """
    spec = zoo_model_spec(model_name)
    params, out = _split_kwargs(spec, kwargs)
    opts = OutputConfig.from_dict({k: v for k, v in out.items() if k != "attribute_set"}).resolved()
    cfg = LaZSLConfig().replace(**params)  # validated before any weights
    if "pretrained" not in params:
        cfg = cfg.replace(pretrained=download_weights(model_name, model_path))
    aset = _attribute_set(out.get("attribute_set"), spec)
    clf = LaZSLClassifier(aset, config=cfg)
    return LaZSLZooModel(clf, output=opts, zoo_name=spec.name)


def _attribute_set(spec_value: Any, spec: ZooModelSpec):
    if spec_value is None or (isinstance(spec_value, str) and not spec_value.strip()):
        raise ConfigError(
            f"zoo model {spec.name!r} needs attribute_set=: a published set name (e.g. 'cub'), "
            "a JSON file {class: [attributes]}, a dict, or an AttributeSet"
        )
    if isinstance(spec_value, AttributeSet):
        return spec_value
    if isinstance(spec_value, Mapping):
        return AttributeSet.from_dict(dict(spec_value))
    return resolve_attribute_set(spec_value)


#: LaZSLConfig fields the App form shows (the rest keep their defaults and
#: remain reachable through load_zoo_model keyword arguments).
_FORM_FIELDS = ("method", "n_crops", "seed", "theta", "batch_size")


def resolve_input(model_name: str, ctx: Any) -> Any:
    """FiftyOne's remote-source ``resolve_input``: the parameters the
    ``@voxel51/zoo`` "Apply zoo model" operator asks for (they become the
    ``load_zoo_model`` keyword arguments). Defaults and help come from
    :class:`LaZSLConfig`.

    Returns:
        a ``fiftyone.operators.types.Property`` over a ``types.Object``.
    """
    zoo_model_spec(model_name)
    inputs = types.Object()
    inputs.str(
        "attribute_set",
        required=True,
        label="Attribute set",
        description="a set stored on this dataset, a published set name (e.g. cub) or a "
        "JSON file {class: [attributes]}",
    )
    fields = {f.name: f for f in dataclasses.fields(LaZSLConfig)}
    method = (getattr(ctx, "params", None) or {}).get("method")
    # the chosen method's defaults (WCA: 60 crops), re-resolved as the form changes
    defaults = LaZSLConfig(method=method if method in METHODS else "lazsl")
    for name in _FORM_FIELDS:
        f, default = fields[name], getattr(defaults, name)
        kw = dict(default=default, label=name, description=f.metadata["help"])
        if f.metadata.get("choices"):
            inputs.enum(name, list(f.metadata["choices"]), **kw)
        elif isinstance(default, int):
            inputs.int(name, **kw)
        else:
            inputs.float(name, **kw)
    inputs.str(
        "pretrained",
        required=False,
        label="pretrained",
        description="blank: the zoo's OpenAI weights; or an open_clip tag, a checkpoint "
        "path, or 'none' for random weights (tests only)",
    )
    inputs.str(
        "device", required=False, label="device", description=fields["device"].metadata["help"]
    )
    inputs.int(
        "top_attributes",
        default=5,
        label="top_attributes",
        description="attributes of the predicted class stored per sample",
    )
    return types.Property(inputs)


def parse_parameters(model_name: str, ctx: Any, params: dict) -> None:
    """FiftyOne's remote-source ``parse_parameters``: turn the form values into
    ``load_zoo_model`` keyword arguments, in place. Blank ``pretrained`` /
    ``device`` are dropped (blank weights mean the zoo's, never random
    weights); an ``attribute_set`` naming a set stored on ``ctx.dataset`` is
    replaced by that set."""
    for k in ("pretrained", "device", "top_k_crops"):
        if k in params and (params[k] is None or str(params[k]).strip() == ""):
            del params[k]
    name = params.get("attribute_set")
    dataset = getattr(ctx, "dataset", None)
    if isinstance(name, str) and dataset is not None:
        if has_attribute_set(dataset, name):
            params["attribute_set"] = load_attribute_set(dataset, name)


# ---------------------------------------------------------------- the model
def _decode(path: str) -> dict:
    """What :class:`LaZSLGetItem` returns for one sample: the decoded image as
    ``run_lazsl``'s decoding workers produce it, or the one-line reason it
    could not be read."""
    try:
        t, info = load_image_tensor(path)
        return {"filepath": path, "image": t, "info": info, "error": None}
    except Exception as e:  # noqa: BLE001 -- reported per sample by the model
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"filepath": path, "image": None, "info": None, "error": msg}


class LaZSLGetItem(fout.GetItem):
    """``fiftyone.utils.torch.GetItem`` for :class:`LaZSLZooModel`: reads the
    sample's ``filepath`` (remappable with ``field_mapping={"filepath": ...}``)
    and decodes it in FiftyOne's ``DataLoader`` workers with
    :func:`fiftyone_lazsl.core.imageio.load_image_tensor` (EXIF orientation,
    pixel budget), exactly as ``run_lazsl`` does.

    Returns (per sample): a dict ``filepath`` (the crop-seed key), ``image``
    (``[3, H, W]`` uint8 tensor or None), ``info`` (``original_size``,
    ``scale``) and ``error`` (None or a one-line reason).
    """

    @property
    def required_keys(self) -> list[str]:
        return ["filepath"]

    def __call__(self, d: dict) -> dict:
        return _decode(d["filepath"])


@dataclass
class LaZSLZooModelConfig:
    """``model.config`` of a :class:`LaZSLZooModel` (FiftyOne reads
    ``model.config``): the zoo name, the LaZSL parameters, the output options
    (resolved: ``top_k_crops`` None means every kept crop)."""

    zoo_name: str | None
    lazsl: LaZSLConfig
    output: OutputConfig

    @property
    def top_k_crops(self) -> int | None:
        return self.output.top_k_crops

    @property
    def top_attributes(self) -> int:
        return self.output.top_attributes

    @property
    def evidence(self) -> str:
        return self.output.evidence

    @property
    def runner_ups(self) -> int:
        return self.output.runner_ups


class LaZSLZooModel(
    fom.Model,
    fom.LogitsMixin,
    fom.EmbeddingsMixin,
    fom.PromptMixin,
    fom.TorchModelMixin,
    fom.SupportsGetItem,
):
    """A ``fiftyone.core.models.Model`` over a :class:`LaZSLClassifier`.

    Args:
        classifier: the built classifier (attribute set, weights, parameters).
        output: what the labels hold (:class:`OutputConfig`: ``top_k_crops``,
            ``top_attributes``, ``evidence``, ``runner_ups``; resolved as
            run_lazsl resolves it; default: every kept crop, compact evidence).
        zoo_name: the zoo model's name, if any.
        **options: single :class:`OutputConfig` options overriding ``output``
            (``top_k_crops=3``; None: every kept crop).

    ``predict_all`` returns per image a dict of labels (keys :data:`LABEL_KEYS`),
    built by :func:`fiftyone_lazsl.fo.apply.to_labels` like run_lazsl's:
    ``"prediction"``: ``fo.Classification`` (label, confidence = probability,
    ``logits`` in class order, always stored, plus the compact
    ``evidence_by_class``, ``evidence_summary``, ``keywords`` and ``words``,
    or with ``evidence="full"`` every class's ``attribute_scores`` /
    ``attribute_crops``); ``"crops"``: ``fo.Detections`` of the kept crops
    (LaZSL); ``"attributes"``: ``fo.Classifications``, one per top attribute of
    the predicted class, in run_lazsl's order, ``confidence`` = the attribute's
    score contribution (LaZSL / DCLIP). A sample whose image cannot be read or
    whose scores are not finite gets no labels and one warning naming the file.

    ``embed_all`` returns ``[B, D]`` float32 unit vectors: the global view's
    image embedding (view 0 of the visual set); ``embed_prompts`` returns
    ``[P, D]`` float32 unit text embeddings of the prompts as given.
    """

    def __init__(
        self,
        classifier: Any,
        *,
        output: OutputConfig | None = None,
        zoo_name: str | None = None,
        **options: Any,
    ) -> None:
        fom.LogitsMixin.__init__(self)
        self.classifier = classifier
        # (without ``output``: every kept crop, as this class always did)
        output = (output or OutputConfig(top_k_crops="all")).replace(**options).resolved()
        self.config = LaZSLZooModelConfig(
            zoo_name=zoo_name, lazsl=classifier.lazsl_config, output=output
        )
        self._preprocess = True
        self._last_embeddings: np.ndarray | None = None

    # ----------------------------------------------------- FiftyOne properties
    @property
    def media_type(self) -> str:
        return "image"

    @property
    def has_logits(self) -> bool:
        return True

    @property
    def has_embeddings(self) -> bool:
        return True

    @property
    def can_embed_prompts(self) -> bool:
        return True

    @property
    def ragged_batches(self) -> bool:
        # Images of different sizes are batched as a list by collate_fn (each
        # image's visual set is built at the model's input size).
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = bool(value)

    @property
    def has_collate_fn(self) -> bool:
        return True

    @staticmethod
    def collate_fn(batch: list) -> list:
        """Batches stay lists of per-sample dicts (images differ in size)."""
        return list(batch)

    def build_get_item(self, field_mapping: dict | None = None) -> LaZSLGetItem:
        return LaZSLGetItem(field_mapping=field_mapping)

    @property
    def classes(self) -> list[str]:
        """The attribute set's classes, in logits order."""
        return list(self.classifier.classes)

    # ------------------------------------------------------------------ inputs
    def _inputs(self, args: Iterable[Any]) -> list[dict]:
        """Normalise FiftyOne's inputs (LaZSLGetItem dicts, or HWC uint8 arrays /
        tensors / PIL images when called directly or on video frames) to
        LaZSLGetItem dicts. Arrays have no file path: their crop-seed key is
        ``"sha1:<digest of the pixels>"`` (so independent of batch position)."""
        items = []
        for a in args:
            if isinstance(a, dict) and "error" in a:
                items.append(a)
                continue
            if isinstance(a, (str, os.PathLike)):
                items.append(_decode(os.fspath(a)))
                continue
            if isinstance(a, torch.Tensor):
                t = a.detach().cpu()
                if t.ndim == 3 and t.shape[0] not in (1, 3, 4):
                    t = t.permute(2, 0, 1)
                arr = t.permute(1, 2, 0).numpy()
            elif isinstance(a, np.ndarray):
                arr = a
            else:  # PIL image
                arr = np.asarray(image_to_tensor(a.convert("RGB")).permute(1, 2, 0))
            arr = np.ascontiguousarray(arr)
            if arr.ndim == 2:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            arr = arr[:, :, :3]
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            key = "sha1:" + hashlib.sha1(arr.tobytes()).hexdigest()
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
            H, W = t.shape[-2:]
            items.append(
                {
                    "filepath": key,
                    "image": t,
                    "info": {"original_size": (int(W), int(H)), "scale": 1.0},
                    "error": None,
                }
            )
        return items

    # ------------------------------------------------------------- prediction
    def predict(self, arg: Any) -> dict | None:
        """Labels for one image (see :meth:`predict_all`)."""
        return self.predict_all([arg])[0]

    def predict_all(self, args: Sequence[Any]) -> list[dict | None]:
        """Labels for a batch: one forward pass over the visual sets of the
        batch (``LaZSLClassifier.predict_tensors``); an image whose prediction
        fails is retried alone so the others keep theirs.

        Returns:
            per image, a dict ``{"prediction", "crops", "attributes"}`` of
            FiftyOne labels (see the class docstring), or None (nothing written)
            for an unreadable image or non-finite scores.
        """
        items = self._inputs(args)
        out: list[dict | None] = [None] * len(items)
        ok = [i for i, it in enumerate(items) if it["error"] is None]
        for it in items:
            if it["error"] is not None:
                logger.warning("%s: %s; no labels written", it["filepath"], it["error"])
        preds = self._predict_tensors([items[i] for i in ok])
        for i, p in zip(ok, preds):
            if isinstance(p, Exception):
                logger.warning(
                    "%s: %s: %s; no labels written", items[i]["filepath"], type(p).__name__, p
                )
                continue
            bad = non_finite(p)
            if bad:
                logger.warning(
                    "%s: non-finite scores (%s); no labels written", items[i]["filepath"], bad
                )
                continue
            out[i] = self._labels(p)
        return out

    def _predict_tensors(self, items: list[dict]) -> list[Any]:
        clf = self.classifier

        def run(group: list[dict]) -> list:
            return clf.predict_tensors(
                [it["image"] for it in group],
                [it["filepath"] for it in group],
                sizes=[tuple(it["info"]["original_size"]) for it in group],
                scales=[float(it["info"]["scale"]) for it in group],
            )

        if not items:
            return []
        try:
            return run(items)
        except Exception as e:  # noqa: BLE001 -- isolate the failing image(s)
            if isinstance(e, torch.cuda.OutOfMemoryError) and len(items) > 1:
                raise  # the batch is too large for the device: lower batch_size
            if len(items) == 1:
                return [e]
        res: list[Any] = []
        for it in items:
            try:
                res.extend(run([it]))
            except Exception as e1:  # noqa: BLE001
                res.append(e1)
        return res

    def _labels(self, pred: Any) -> dict:
        """run_lazsl's labels for ``pred`` (via ``to_labels``), as a label dict."""
        cls, dets, attrs = to_labels(
            pred,
            self.classifier,
            top_k_crops=self.config.top_k_crops,
            top_attributes=self.config.top_attributes,
            evidence=self.config.evidence,
            runner_ups=self.config.runner_ups,
        )
        labels: dict = {"prediction": cls}
        if dets is not None:
            labels["crops"] = dets
        if attrs is not None:
            labels["attributes"] = (
                attrs
                if isinstance(attrs, fo.Label)
                else _attributes_label(attrs, pred, self.classifier)
            )
        return labels

    # -------------------------------------------------------------- embeddings
    def embed(self, arg: Any) -> np.ndarray:
        """``[D]`` float32 global-view embedding of one image."""
        return self.embed_all([arg])[0]

    def embed_all(self, args: Sequence[Any]) -> np.ndarray:
        """``[B, D]`` float32 unit global-view image embeddings: view 0 of
        the visual set, i.e. what the classifier scores with (the global term
        of the hybrid similarity, and DCLIP/CLIP's image feature).

        Raises:
            ImageLoadError: an image could not be read (FiftyOne's
                ``compute_embeddings`` then skips the batch with a warning).
        """
        items = self._inputs(args)
        for it in items:
            if it["error"] is not None:
                raise ImageLoadError(it["filepath"], it["error"])
        m = self.classifier.model
        if not items:
            return np.zeros((0, 0), np.float32)
        S = m.image_size
        pixels = torch.empty(len(items), 3, S, S, dtype=torch.float32, device=m.device)
        none = np.zeros((0, 4), np.int64)
        for i, it in enumerate(items):
            # The global view exactly as LaZSLClassifier.encode builds it.
            make_views(
                it["image"],
                none,
                preprocess_cfg=m.preprocess_cfg,
                device=m.device,
                out=pixels[i : i + 1],
            )
        emb = m.encode_images(pixels).cpu().numpy().astype(np.float32)
        self._last_embeddings = emb
        return emb

    def get_embeddings(self) -> np.ndarray:
        """The embeddings of the last :meth:`embed_all` call (``[B, D]``).

        Raises:
            ValueError: nothing embedded yet.
        """
        if self._last_embeddings is None:
            raise ValueError("no embeddings computed yet; call embed() or embed_all() first")
        return self._last_embeddings

    def embed_prompt(self, prompt: str) -> np.ndarray:
        """``[D]`` float32 unit text embedding of ``prompt``."""
        return self.embed_prompts([prompt])[0]

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """``[P, D]`` float32 unit text embeddings of the prompts as given (the
        open_clip text tower, as FiftyOne's CLIP zoo models; comparable by cosine
        with :meth:`embed_all`, e.g. ``sort_by_similarity("a red bird")``)."""
        return (
            self.classifier.model.encode_texts([str(p) for p in prompts], use_cache=False)
            .cpu()
            .numpy()
            .astype(np.float32)
        )


def _attributes_label(attrs: Sequence[str], pred: Any, classifier: Any) -> Any:
    """``fo.Classifications`` for the attribute names ``to_labels`` returned:
    one ``Classification`` per name, same order, ``confidence`` = the
    attribute's score contribution in ``pred.attribute_scores`` for the
    predicted class, ``attribute_index`` its index in the class's attributes."""
    c = pred.label_index
    names = list(classifier.attribute_labels[c])
    scores = pred.attribute_scores[c] if pred.attribute_scores is not None else None
    used: set[int] = set()
    out = []
    for a in attrs:
        idx = next((i for i, n in enumerate(names) if n == a and i not in used), None)
        kw: dict = {}
        if idx is not None:
            used.add(idx)
            kw["attribute_index"] = int(idx)
            if scores is not None:
                kw["confidence"] = float(scores[idx])
        out.append(fo.Classification(label=str(a), **kw))
    return fo.Classifications(classifications=out)
