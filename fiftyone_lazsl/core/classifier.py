"""``LaZSLClassifier``: images + an attribute set -> scores, labels and evidence.

Ties together the semantic set (prompts encoded once per classifier), the
visual set (seeded crops), and the scorers of :mod:`fiftyone_lazsl.core.scoring`.
Methods: ``"lazsl"`` (optimal transport of crops to attributes), ``"wca"``
(weighted crops against label-weighted sentences, Li et al., ICML 2024),
``"dclip"`` (mean global-view similarity over attributes) and ``"clip"`` (one
``"a photo of a {class}."`` prompt per class).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fiftyone_lazsl.core import imageio
from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.config import CROP_METHODS, METHODS, LaZSLConfig
from fiftyone_lazsl.core.crops import PreparedViews, VisualSetSpec, build_views, relative_boxes
from fiftyone_lazsl.core.imageio import ORIGINAL_SIZE_KEY, SCALE_KEY
from fiftyone_lazsl.core.models import LazyModel, LoadedModel, load_model
from fiftyone_lazsl.core.prompts import build_prompts, clip_prompt, prompt_names
from fiftyone_lazsl.core.scoring import (
    clip_scores,
    dclip_scores,
    global_similarity,
    lazsl_scores,
    wca_scores,
)

__all__ = [
    "LaZSLClassifier",
    "RunProvenance",
    "Prediction",
    "CropEvidence",
    "METHODS",
    "default_crop_backend",
]

#: Marks an argument that was not given (``None`` means random weights).
_UNSET = object()


def default_crop_backend(device: torch.device | str) -> str:
    """What ``crop_backend="auto"`` means on ``device``: ``"device"`` on CUDA (the
    views are resampled on the GPU, the decode workers only decode), ``"pil"``
    elsewhere (on the CPU, PIL's C resampler in the decode workers is faster
    than the same integer arithmetic in torch; see docs/crops.md for the
    measured ratio). Both give identical views."""
    return "device" if torch.device(device).type == "cuda" else "pil"


@dataclass
class CropEvidence:
    """Per-crop evidence for the predicted class of one image (``N`` crops).

    Attributes:
        boxes: ``[N, 4]`` int64 pixel boxes ``(x, y, w, h)`` in the original image.
        boxes_rel: ``[N, 4]`` float64 relative ``[x, y, w, h]``.
        kept: ``[N]`` bool, kept by vision selection (WCA: all True).
        mass: ``[N]`` float32, transport mass the crop sends to the predicted class's
            attributes (``1/#kept`` summed over attributes; 0 if dropped).
            WCA: the crop's weight ``w_n`` in the image embedding (sums to 1).
        attribute: ``[N]`` int64, index (within the predicted class) of the
            attribute receiving most of the crop's mass (WCA: the sentence most
            similar to the crop, ``argmax_a x_n . t_a``).
        share: ``[N]`` float32, that attribute's share of the crop's mass (0..1);
            WCA: the crop's weight ``w_n`` (as ``mass``).
        similarity: ``[N]`` float32, hybrid similarity of crop and that attribute
            (WCA: cosine ``x_n . t_a``).
    """

    boxes: np.ndarray
    boxes_rel: np.ndarray
    kept: np.ndarray
    mass: np.ndarray
    attribute: np.ndarray
    share: np.ndarray
    similarity: np.ndarray


@dataclass
class Prediction:
    """LaZSL result for one image.

    Attributes:
        label: predicted class name; label_index: its index in class order.
        scores: ``[C]`` float32 raw scores (``psi`` for LaZSL, cosine of the
            weighted image and class embeddings for WCA, mean cosine for DCLIP,
            cosine for CLIP).
        logits: ``[C]`` float32, ``logit_scale * scores`` (CLIP's temperature).
        probs: ``[C]`` float32, ``softmax(logits)``.
        image_size: ``(width, height)`` of the original image in pixels.
        crops: per-crop evidence (LaZSL and WCA).
        attribute_scores: per class, ``[A_c]`` float32 contribution of each attribute
            to the class score, ``sum_n T[n, a] * S[n, a]`` (sums to ``scores[c]``;
            LaZSL), ``v_a (z . t_a) / ||sum_a' v_a' t_a'||`` (sums to
            ``scores[c]``; WCA, ``z`` the weighted image embedding), or the
            attribute's global-view cosine (DCLIP). (Every attribute receives
            exactly ``1/A_c`` of the transport mass, so mass alone cannot rank
            attributes.)
        attribute_crops: per class, ``[A_c]`` int64, kept crops whose largest mass
            share within that class goes to the attribute (LaZSL), or crops most
            similar to the sentence among the class's sentences (WCA).
    """

    label: str
    label_index: int
    scores: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    image_size: tuple[int, int]
    method: str
    crops: CropEvidence | None = None
    attribute_scores: list[np.ndarray] | None = None
    attribute_crops: list[np.ndarray] | None = None


class RunProvenance:
    """What a :class:`LaZSLClassifier` with these arguments records as its
    run's provenance (:meth:`config`), its classes and attribute labels,
    known without loading the model's weights or encoding a prompt.

    Takes the arguments of :class:`LaZSLClassifier`. Without a model it uses
    a :class:`~fiftyone_lazsl.core.models.LazyModel`, which resolves the
    weights (identity, random or not), the preprocessing and ``logit_scale``
    without building the model; its :meth:`config` equals that of
    ``LaZSLClassifier(attribute_set, model, pretrained, config=config,
    **params)`` key for key. For a run recorded in one place and executed
    elsewhere (sharded runs: the workers load the model and encode).

    Attributes:
        attribute_set, model, lazsl_config, method, classes, attribute_labels,
        n_crops, crop_scale, crop_backend, theta, eps, gamma, max_iter,
        stop_tol, image_scale_log, text_scale_log, seed, batch_size,
        prompt_style, prompt_suffix: as :class:`LaZSLClassifier`'s.

    Raises:
        fiftyone_lazsl.errors.ConfigError: a parameter out of its domain or unknown.
        errors of :class:`~fiftyone_lazsl.core.models.LazyModel` (unknown model
        name, weights not available here, no such device).
    """

    def __init__(
        self,
        attribute_set: AttributeSet | Mapping | str | os.PathLike,
        model: str | LoadedModel | None = None,
        pretrained: str | None | object = _UNSET,
        *,
        config: LaZSLConfig | None = None,
        **params: Any,
    ) -> None:
        overrides = dict(params)
        loaded = model if isinstance(model, LoadedModel) else None
        if loaded is not None:
            # a LazyModel was made from the config's device as given (None: automatic)
            overrides.update(
                model=loaded.name,
                pretrained=loaded.pretrained,
                device=loaded.requested_device
                if isinstance(loaded, LazyModel)
                else str(loaded.device),
            )
        elif model is not None:
            overrides["model"] = model
        if pretrained is not _UNSET and loaded is None:
            overrides["pretrained"] = pretrained
        cfg = config or LaZSLConfig()
        cfg = cfg.replace(**overrides) if overrides else cfg
        if isinstance(attribute_set, (str, os.PathLike)):
            attribute_set = AttributeSet.from_json(attribute_set)
        elif not isinstance(attribute_set, AttributeSet):
            attribute_set = AttributeSet.from_dict(attribute_set)
        self.attribute_set = attribute_set
        self.model = loaded or self._model_for(cfg)
        if cfg.crop_backend == "auto":
            cfg = cfg.replace(crop_backend=default_crop_backend(self.model.device))
        self.lazsl_config = cfg
        self.method = cfg.method
        self.n_crops = cfg.n_crops if cfg.method in CROP_METHODS else 0
        self.crop_scale = cfg.crop_scale
        self.crop_backend = cfg.crop_backend
        self.theta, self.eps, self.gamma = cfg.theta, cfg.eps, cfg.gamma
        self.max_iter, self.stop_tol = cfg.max_iter, cfg.stop_tol
        self.image_scale_log, self.text_scale_log = cfg.image_scale_log, cfg.text_scale_log
        self.seed = cfg.seed
        self.batch_size = cfg.batch_size
        self.prompt_style = cfg.prompt_style
        self.prompt_suffix = cfg.prompt_suffix
        self.classes = attribute_set.classes
        if self.method == "clip":
            self.attribute_labels = [[c] for c in self.classes]
        else:
            self.prompts, self.attribute_labels = build_prompts(
                self.attribute_set, style=self.prompt_style, suffix=self.prompt_suffix
            )

    def _model_for(self, cfg: LaZSLConfig) -> LoadedModel:
        """The model used when none is given: nothing loaded."""
        return LazyModel(cfg.model, cfg.pretrained, device=cfg.device)

    def config(self) -> dict:
        """Provenance: every :class:`LaZSLConfig` field (``to_dict``), the
        model's identity (:meth:`LoadedModel.describe`: ``model``, ``pretrained``,
        ``weights_id``, ``random_weights``, ``image_size``), the attribute set's
        name, hash, classes and attribute texts, and ``logit_scale``.
        JSON-serialisable; ``LaZSLConfig.from_dict(d, strict=False)`` reads it back."""
        return {
            **self.lazsl_config.to_dict(),
            **self.model.describe(),
            "n_crops": self.n_crops,
            "attribute_set": self.attribute_set.name,
            "attribute_set_hash": self.attribute_set.content_hash,
            "classes": list(self.classes),
            "attribute_labels": [list(a) for a in self.attribute_labels],
            "logit_scale": self.model.logit_scale,
        }


class LaZSLClassifier(RunProvenance):
    """Zero-shot classifier following LaZSL (Chen et al., ICCV 2025).

    Args:
        attribute_set: classes and attributes (:class:`AttributeSet`, a dict, or a JSON path).
        model: open_clip model name, or a :class:`LoadedModel` (then ``pretrained``
            and ``device`` come from it), e.g. a
            :class:`~fiftyone_lazsl.core.models.LazyModel`, which loads nothing
            while every prompt's text features are cached, the text tower alone
            on a miss, and the whole model at the first image (its
            ``requested_device`` is recorded as ``device``). Default:
            ``config.model``, loaded at once (:func:`load_model`).
        pretrained: weights (see :func:`fiftyone_lazsl.core.models.load_model`);
            None = random. Default: ``config.pretrained``.
        config: a :class:`~fiftyone_lazsl.core.config.LaZSLConfig` (default: the
            paper's parameters).
        **params: any :class:`LaZSLConfig` field (``method``, ``n_crops``,
            ``crop_scale``, ``theta``, ``eps``, ``gamma``, ``max_iter``,
            ``stop_tol``, ``seed``, ``batch_size``, ``prompt_style``,
            ``prompt_suffix``, ``crop_backend``, ``device``), overriding ``config``.

    Attributes:
        lazsl_config: the effective :class:`LaZSLConfig`.
        method, n_crops, crop_scale, crop_backend, theta, eps, gamma, max_iter,
        stop_tol, seed, batch_size, prompt_style, prompt_suffix: its values
        (``n_crops`` is 0 for ``dclip`` / ``clip``, which use the global view
        only). ``crop_backend="pil"`` is the official construction, each box
        cut from the decoded image and sent through the model's own
        preprocessing in the decode workers; ``"device"`` makes the same views
        byte for byte on the model's device; ``"tensor"`` uses ``roi_align``
        (approximate); ``"auto"`` (default) resolves to
        :func:`default_crop_backend` of the model's device, and the resolved
        name is what ``crop_backend`` and :meth:`config` hold. See
        :mod:`fiftyone_lazsl.core.crops` and docs/crops.md.

    The prompts are encoded when the classifier is made
    (:meth:`LoadedModel.encode_texts`: through the text-feature cache).

    Raises:
        fiftyone_lazsl.errors.ConfigError: a parameter out of its domain or unknown.
        errors of :func:`load_model`.
    """

    def __init__(
        self,
        attribute_set: AttributeSet | Mapping | str | os.PathLike,
        model: str | LoadedModel | None = None,
        pretrained: str | None | object = _UNSET,
        *,
        config: LaZSLConfig | None = None,
        **params: Any,
    ) -> None:
        super().__init__(attribute_set, model, pretrained, config=config, **params)
        self._encode_text()

    def _model_for(self, cfg: LaZSLConfig) -> LoadedModel:
        """The model used when none is given: loaded now."""
        return load_model(cfg.model, cfg.pretrained, device=cfg.device)

    # ------------------------------------------------------------------ text
    def _encode_text(self) -> None:
        if self.method == "clip":
            names = prompt_names(self.attribute_set)
            self.class_features = self.model.encode_texts(
                [clip_prompt(names[c]) for c in self.classes]
            )
            return
        prompts = self.prompts
        flat = [p for ps in prompts for p in ps]
        feats = self.model.encode_texts(flat)
        C, A, D = len(prompts), max(len(p) for p in prompts), feats.shape[1]
        tf = torch.zeros(C, A, D)
        mask = torch.zeros(C, A, dtype=torch.bool)
        i = 0
        for c, ps in enumerate(prompts):
            tf[c, : len(ps)] = feats[i : i + len(ps)]
            mask[c, : len(ps)] = True
            i += len(ps)
        self.text_features = tf.to(self.model.device)
        self.text_mask = mask.to(self.model.device)
        if self.method == "wca":
            # WCA weights each class's sentences by their likeness to its label prompt
            names = prompt_names(self.attribute_set)
            self.label_features = self.model.encode_texts(
                [clip_prompt(names[c]) for c in self.classes]
            ).to(self.model.device)

    # ---------------------------------------------------------------- images
    @property
    def visual_spec(self) -> VisualSetSpec:
        """What determines an image's visual set (model preprocessing, crops,
        seed, backend) as one picklable value, for decode workers."""
        return VisualSetSpec(
            self.model.preprocess_cfg, self.n_crops, self.crop_scale, self.seed, self.crop_backend
        )

    def crop_boxes(self, width: int, height: int, key: str) -> np.ndarray:
        """The pixel crop boxes this classifier uses for an image of that size and key.

        Args:
            width, height: size in pixels of the image as given to :meth:`views`
                (for files: as decoded, i.e. after any ``max_pixels`` shrink).
            key: stable sample key (for files: the path, or the FiftyOne sample's).

        Returns:
            ``[N, 4]`` int64 boxes ``(x, y, w, h)``, square, inside the image
            (deterministic in ``seed`` and ``key``; ``[0, 4]`` without crops).
            View ``1 + i`` of :meth:`views` is box ``i``.
        """
        return self.visual_spec.boxes(width, height, key)

    def prepare_views(self, image, key: str) -> PreparedViews:
        """The CPU part of one image's visual set (what decode workers make).

        Args:
            image: RGB PIL image (other modes are converted with ``.convert("RGB")``)
                or ``[3, H, W]`` uint8 RGB tensor.
            key: stable sample key for the crop generator.
        """
        return self.visual_spec.prepare(image, key)

    def views(self, image, key: str) -> torch.Tensor:
        """The visual set of one image, exactly as the image encoder sees it.

        View 0 is the model's own preprocessing of the image,
        ``preprocess(image)`` with ``preprocess =
        open_clip.image_transform_v2(model.preprocess_cfg, is_train=False)`` (the
        transform ``open_clip.create_model_and_transforms`` returns). With
        ``crop_backend="pil"`` or ``"device"``, view ``1 + i`` is
        ``preprocess(image.crop(box_i))`` for the boxes of :meth:`crop_boxes`
        (LaZSL's official construction; equal bit for bit on the CPU); with
        ``"tensor"`` it is the ``roi_align`` approximation.

        Args:
            image: RGB PIL image (other modes are converted with ``.convert("RGB")``,
                as torchvision's ``pil_loader`` does; no EXIF rotation is applied to
                a PIL image given here) or ``[3, H, W]`` uint8 RGB tensor.
            key: stable sample key for the crop generator.

        Returns:
            ``[1 + N, 3, S, S]`` float32 normalised views on the model's device.
        """
        return build_views(
            [self.prepare_views(image, key)], self.visual_spec, device=self.model.device
        )

    def encode_prepared(self, prepared: Sequence[PreparedViews]) -> torch.Tensor:
        """Encode prepared visual sets; returns ``[B, 1 + N, D]`` float32 unit features."""
        m, V = self.model, 1 + self.n_crops
        pixels = build_views(prepared, self.visual_spec, device=m.device)
        feats = m.encode_images(pixels)
        return feats.view(len(prepared), V, -1)

    def encode(
        self, images: Sequence, keys: Sequence[str]
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Encode the visual sets of a batch of images (PIL images or ``[3, H, W]``
        uint8 tensors); returns ``[B, 1 + N, D]`` float32 unit features and the
        per-image ``[N, 4]`` pixel boxes."""
        prepared = [self.prepare_views(im, k) for im, k in zip(images, keys)]
        return self.encode_prepared(prepared), [p.boxes for p in prepared]

    # ---------------------------------------------------------------- scores
    def predict_tensors(
        self,
        images: Sequence[torch.Tensor],
        keys: Sequence[str],
        sizes: Sequence[tuple[int, int]] | None = None,
        scales: Sequence[float] | None = None,
    ) -> list[Prediction]:
        """Predict for a batch of decoded images.

        Args:
            images: ``B`` tensors ``[3, H, W]`` uint8 RGB (displayed orientation),
                or RGB PIL images.
            keys: ``B`` stable sample keys (crop seeds).
            sizes: original ``(W, H)`` of each image if it was downscaled on decode.
            scales: decoded/original scale factor per image (boxes are mapped back).

        Returns:
            ``B`` :class:`Prediction` objects.
        """
        if len(images) != len(keys):
            raise ValueError("images and keys differ in length")
        prepared = [self.prepare_views(im, k) for im, k in zip(images, keys)]
        return self.predict_prepared(prepared, sizes, scales)

    def predict_prepared(
        self,
        prepared: Sequence[PreparedViews],
        sizes: Sequence[tuple[int, int]] | None = None,
        scales: Sequence[float] | None = None,
    ) -> list[Prediction]:
        """Predict for visual sets prepared by :meth:`prepare_views` (e.g. in
        decode workers, from :attr:`visual_spec`); ``sizes`` and ``scales`` as
        for :meth:`predict_tensors`."""
        feats = self.encode_prepared(prepared)
        return self._predict_features(
            feats,
            [p.boxes for p in prepared],
            [(p.width, p.height) for p in prepared],
            sizes,
            scales,
        )

    def predict_features(
        self,
        features: torch.Tensor,
        boxes: Sequence[np.ndarray],
        image_sizes: Sequence[tuple[int, int]],
        sizes: Sequence[tuple[int, int]] | None = None,
        scales: Sequence[float] | None = None,
        crop_global: torch.Tensor | None = None,
    ) -> list[Prediction]:
        """Score precomputed visual sets (e.g. from a
        :class:`~fiftyone_lazsl.core.features.FeatureStore`) with this
        classifier's attribute set and parameters; same results as
        :meth:`predict_tensors` on the images that gave those features.

        Args:
            features: ``[B, 1 + N, D]`` float unit view embeddings (global view
                first), as returned by :meth:`encode`. DCLIP / CLIP use index 0.
            boxes: ``B`` arrays ``[N, 4]`` int64 pixel boxes in the decoded image.
            image_sizes: ``B`` decoded ``(width, height)``.
            sizes: original ``(width, height)`` if downscaled on decode.
            scales: decoded/original scale factor per image.
            crop_global: optional ``[B, N]`` float32 crop-to-global cosines
                (:func:`~fiftyone_lazsl.core.scoring.crop_global_similarity` of
                the unrounded embeddings) for the vision selection; a feature
                store keeps them so float16 storage selects the same crops.

        Returns:
            ``B`` :class:`Prediction` objects.

        Raises:
            ValueError: ``features`` with another ``N`` than ``n_crops``;
                ``crop_global`` not ``[B, N]``.
        """
        feats = features.to(self.model.device, torch.float32)
        if self.method in CROP_METHODS and feats.shape[1] != 1 + self.n_crops:
            raise ValueError(
                f"features have {feats.shape[1] - 1} crops, the classifier "
                f"uses n_crops={self.n_crops}"
            )
        return self._predict_features(
            feats,
            list(boxes),
            [(int(w), int(h)) for w, h in image_sizes],
            sizes,
            scales,
            crop_global if self.method in CROP_METHODS else None,
        )

    def _predict_features(
        self,
        feats: torch.Tensor,
        boxes: Sequence[np.ndarray],
        dims: Sequence[tuple[int, int]],
        sizes: Sequence[tuple[int, int]] | None,
        scales: Sequence[float] | None,
        crop_global: torch.Tensor | None = None,
    ) -> list[Prediction]:
        B = feats.shape[0]
        out = wca = None
        if self.method == "wca":
            wca = wca_scores(
                feats,
                self.text_features,
                self.text_mask,
                self.label_features,
                image_scale_log=self.image_scale_log,
                text_scale_log=self.text_scale_log,
                return_weights=True,
                crop_global=crop_global,
            )
            scores = wca.scores
        elif self.method == "lazsl":
            out = lazsl_scores(
                feats,
                self.text_features,
                self.text_mask,
                theta=self.theta,
                eps=self.eps,
                max_iter=self.max_iter,
                stop_tol=self.stop_tol,
                gamma=self.gamma,
                return_plan=True,
                crop_global=crop_global,
            )
            scores = out.scores
        elif self.method == "dclip":
            scores = dclip_scores(feats, self.text_features, self.text_mask)
        else:
            scores = clip_scores(feats, self.model_class_features())
        logits = scores * self.model.logit_scale
        probs = logits.softmax(-1)
        pred = scores.argmax(-1)
        scores_np, logits_np, probs_np = (t.cpu().numpy() for t in (scores, logits, probs))
        pred_np = pred.cpu().numpy()
        lens = [len(a) for a in self.attribute_labels]

        if out is not None:
            plans, S, keep = out.plans, out.similarity, out.keep
            att_mass = (plans * S).sum(2).cpu().numpy()  # [B, C, A]
            best = plans.argmax(-1)  # [B, C, N]
            counts = torch.zeros(plans.shape[:2] + plans.shape[-1:], device=plans.device)
            counts.scatter_add_(2, best, keep.unsqueeze(1).expand_as(best).float())
            att_crops = counts.long().cpu().numpy()
            bidx = torch.arange(B, device=plans.device)
            Tp = plans[bidx, pred]  # [B, N, A]
            Sp = S[bidx, pred]
            cmass = Tp.sum(-1)
            cattr = Tp.argmax(-1)
            cshare = torch.where(
                cmass > 0,
                Tp.gather(-1, cattr.unsqueeze(-1)).squeeze(-1) / cmass.clamp_min(1e-30),
                torch.zeros_like(cmass),
            )
            csim = Sp.gather(-1, cattr.unsqueeze(-1)).squeeze(-1)
            cmass, cattr, cshare, csim, keep_np = (
                t.cpu().numpy() for t in (cmass, cattr, cshare, csim, keep)
            )
        elif wca is not None:
            att_mass, att_crops, (cmass, cattr, cshare, csim, keep_np) = self._wca_evidence(
                feats, wca, pred
            )
        elif self.method == "dclip":
            sim = global_similarity(feats, self.text_features).cpu().numpy()  # [B, C, A]

        preds = []
        for b in range(B):
            W, H = dims[b]
            scale = float(scales[b]) if scales is not None else 1.0
            size = tuple(sizes[b]) if sizes is not None else (int(W), int(H))
            p = Prediction(
                label=self.classes[int(pred_np[b])],
                label_index=int(pred_np[b]),
                scores=scores_np[b],
                logits=logits_np[b],
                probs=probs_np[b],
                image_size=(int(size[0]), int(size[1])),
                method=self.method,
            )
            if out is not None or wca is not None:
                bx = boxes[b].astype(np.float64)
                if scale != 1.0:
                    # Downscaled on decode: pixel boxes in the original grid, and
                    # relative boxes against the original size.
                    px = np.round(bx / scale).astype(np.int64)
                    rel = np.clip(relative_boxes(px, int(size[0]), int(size[1])), 0.0, 1.0)
                else:
                    px, rel = boxes[b], relative_boxes(boxes[b], int(W), int(H))
                p.crops = CropEvidence(
                    boxes=px,
                    boxes_rel=rel,
                    kept=keep_np[b],
                    mass=cmass[b].astype(np.float32),
                    attribute=cattr[b].astype(np.int64),
                    share=cshare[b].astype(np.float32),
                    similarity=csim[b].astype(np.float32),
                )
                p.attribute_scores = [
                    att_mass[b, c, : lens[c]].astype(np.float32) for c in range(len(lens))
                ]
                p.attribute_crops = [att_crops[b, c, : lens[c]] for c in range(len(lens))]
            elif self.method == "dclip":
                p.attribute_scores = [
                    sim[b, c, : lens[c]].astype(np.float32) for c in range(len(lens))
                ]
            preds.append(p)
        return preds

    def _wca_evidence(self, feats: torch.Tensor, wca: Any, pred: torch.Tensor) -> tuple:
        """WCA evidence: ``(attribute_scores [B, C, A], attribute_crops [B, C, A],
        (mass, attribute, share, similarity, kept) [B, N] each)`` as NumPy arrays.

        A sentence's score is its exact share of the class score,
        ``v_a (z . t_a) / ||sum_a' v_a' t_a'||``; each crop is matched to the
        sentence of the class it is most similar to (``argmax_a x_n . t_a``)."""
        tf, mask = self.text_features.float(), self.text_mask
        z, v = wca.image_embeddings, wca.text_weights  # [B, D], [C, A]
        u = torch.einsum("ca,cad->cd", v, tf).norm(dim=-1).clamp_min(1e-12)  # [C]
        att = v.unsqueeze(0) * torch.einsum("bd,cad->bca", z, tf) / u[None, :, None]
        B, N1, _ = feats.shape
        C, A, _ = tf.shape
        flat, pad = tf.reshape(C * A, -1), ~mask[:, :, None]
        counts = torch.zeros(B, C, A, device=feats.device)
        cattr = torch.zeros(B, N1 - 1, dtype=torch.long, device=feats.device)
        csim = torch.zeros(B, N1 - 1, device=feats.device)
        for b in range(B):  # one image at a time: [C, A, N] stays small for 1000 classes
            sim = (flat @ feats[b, 1:].float().T).view(C, A, N1 - 1).masked_fill(pad, float("-inf"))
            best = sim.argmax(1)  # [C, N]
            counts[b].scatter_add_(1, best, torch.ones_like(best, dtype=counts.dtype))
            c = int(pred[b])
            cattr[b] = best[c]
            csim[b] = sim[c].gather(0, best[c].unsqueeze(0)).squeeze(0)
        w = wca.crop_weights
        keep = torch.ones_like(w, dtype=torch.bool)
        crop = tuple(t.cpu().numpy() for t in (w, cattr, w, csim, keep))
        return att.cpu().numpy(), counts.long().cpu().numpy(), crop

    def model_class_features(self) -> torch.Tensor:
        """``[C, D]`` class-name prompt features (CLIP method)."""
        return self.class_features.to(self.model.device)

    def predict(self, images: Iterable, keys: Sequence[str] | None = None) -> list[Prediction]:
        """Predict for images given as file paths, PIL images or ``[3, H, W]`` uint8 tensors.

        Args:
            images: the images.
            keys: crop-seed keys; default: the file path for paths, else the
                position in ``images`` as a string.

        Returns:
            one :class:`Prediction` per image.

        Raises:
            fiftyone_lazsl.core.imageio.ImageLoadError: an unreadable image file.
        """
        decoded, ks, sizes, scales = [], [], [], []
        for i, im in enumerate(images):
            if isinstance(im, (str, os.PathLike)):
                t = imageio.load_image(os.fspath(im))
                key = os.path.abspath(os.fspath(im))
                sizes.append(tuple(t.info[ORIGINAL_SIZE_KEY]))
                scales.append(float(t.info[SCALE_KEY]))
            elif isinstance(im, torch.Tensor):
                t, key = im, str(i)
                sizes.append((int(t.shape[-1]), int(t.shape[-2])))
                scales.append(1.0)
            else:
                t, key = im.convert("RGB"), str(i)
                sizes.append(t.size)
                scales.append(1.0)
            decoded.append(t)
            ks.append(key)
        if keys is not None:
            ks = [str(k) for k in keys]
        preds = []
        for s in range(0, len(decoded), self.batch_size):
            e = s + self.batch_size
            preds.extend(self.predict_tensors(decoded[s:e], ks[s:e], sizes[s:e], scales[s:e]))
        return preds
