"""Scores from features: LaZSL optimal transport, WCA weighted alignment, and the
DCLIP / CLIP baselines.

Pure functions of torch tensors; no model, no I/O. All ``B x C`` transport
problems of a call are solved together as one batched Sinkhorn iteration, with
the official per-problem stopping rule (each problem freezes on the iteration
where it converges, exactly as if it had been solved alone).

Reference: Chen et al., "Interpretable Zero-Shot Learning with Locally-Aligned
Vision-Language Model", ICCV 2025 (LaZSL), Eqs. for the hybrid similarity,
vision selection and the Sinkhorn plan; official code ``OP.py`` (``OP_d``,
``get_OP_distence(is_cost_global=True, is_sim_global=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fiftyone_lazsl.core.transport import sinkhorn

__all__ = [
    "lazsl_scores",
    "wca_scores",
    "dclip_scores",
    "clip_scores",
    "hybrid_similarity",
    "global_similarity",
    "vision_selection",
    "crop_global_similarity",
    "LaZSLOutput",
    "WCAOutput",
    "wca_class_embeddings",
]

# Upper bound on B*C*N*A elements processed at once; larger calls are split
# over classes so that memory stays bounded (1000 classes x 10 attributes).
_MAX_ELEMENTS = 1 << 25
_TIE_TOL = 1e-6


@dataclass
class LaZSLOutput:
    """Scores and, optionally, transport plans returned by :func:`lazsl_scores`.

    Attributes:
        scores: ``[B, C]`` float32, ``psi = sum(T * S)`` per image and class.
        plans: ``[B, C, N, A]`` float32 transport plans ``T`` (0 on padded
            attributes and on crops dropped by vision selection), or None.
        keep: ``[B, N]`` bool, crops kept by vision selection, or None.
        similarity: ``[B, C, N, A]`` float32 hybrid similarity ``S``, or None.
        iterations: ``[B, C]`` int32, Sinkhorn iterations each problem ran, or None.
    """

    scores: torch.Tensor
    plans: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    iterations: torch.Tensor | None = None


def _check_shapes(
    image_features: torch.Tensor, text_features: torch.Tensor, text_mask: torch.Tensor
) -> None:
    """Shapes shared by every crop method: ``[B, 1+N, D]`` views, ``[C, A, D]``
    texts, a ``[C, A]`` mask, one feature dimension."""
    if image_features.dim() != 3 or image_features.shape[1] < 2:
        raise ValueError(
            f"image_features must be [B, 1+N, D] with N >= 1, got {tuple(image_features.shape)}"
        )
    if text_features.dim() != 3:
        raise ValueError(f"text_features must be [C, A, D], got {tuple(text_features.shape)}")
    if text_mask.shape != text_features.shape[:2]:
        raise ValueError(
            f"text_mask must be [C, A] = {tuple(text_features.shape[:2])}, got {tuple(text_mask.shape)}"
        )


def _check_finite(**tensors: torch.Tensor) -> None:
    """Refuse NaN/inf features. A sum is NaN or inf when any term is (cheap, one
    reduction); only then is every element checked, so a sum that overflows
    cannot raise wrongly."""
    for what, t in tensors.items():
        if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} has non-finite values (NaN or inf); no score is computed")


def _check(
    image_features: torch.Tensor, text_features: torch.Tensor, text_mask: torch.Tensor
) -> None:
    _check_shapes(image_features, text_features, text_mask)
    if image_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"feature dims differ: image {image_features.shape[-1]} vs text {text_features.shape[-1]}"
        )
    _check_finite(image_features=image_features, text_features=text_features)
    if not bool(text_mask.any(dim=1).all()):
        bad = (~text_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"text_mask has classes with no attribute: indices {bad[:10]}")


def hybrid_similarity(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    theta: float = 0.8,
    *,
    attribute_major: bool = False,
) -> torch.Tensor:
    """Hybrid crop/attribute similarity ``S = (1 - theta) * g.t + theta * x_n.t``
    (LaZSL hybrid similarity; official ``get_OP_distence(is_sim_global=True)``).

    One matmul gives the global and crop similarities of every attribute at once.

    Args:
        image_features: ``[B, 1+N, D]``, index 0 the global view, unit vectors.
        text_features: ``[C, A, D]`` unit attribute embeddings (zero rows for padding).
        theta: weight of the crop term (paper default 0.8).
        attribute_major: return ``[B, C, A, N]`` (the layout of the matmul, used by
            the Sinkhorn solver) instead of ``[B, C, N, A]``.

    Returns:
        ``[B, C, N, A]`` (or ``[B, C, A, N]``) float32, whatever the input dtype.
    """
    imf = image_features.float()
    tf = text_features.to(imf.device).float()
    B, N1, D = imf.shape
    C, A, _ = tf.shape
    sims = torch.matmul(tf.reshape(C * A, D), imf.transpose(1, 2))  # [B, C*A, 1+N]
    S = theta * sims[..., 1:]
    S += (1 - theta) * sims[..., :1]  # [B, C*A, N]
    S = S.view(B, C, A, N1 - 1)
    return S if attribute_major else S.transpose(-1, -2)


def global_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine of the global view with every attribute, ``g.t_{c,a}`` (the DCLIP
    per-attribute score, Menon & Vondrick 2023).

    Args:
        image_features: ``[B, 1+N, D]`` (only index 0 is used) or ``[B, D]``.
        text_features: ``[C, A, D]``.

    Returns:
        ``[B, C, A]`` float32 (padded attributes give 0).
    """
    g = image_features[:, 0] if image_features.dim() == 3 else image_features
    return torch.einsum("bd,cad->bca", g.float(), text_features.to(g.device).float())


def crop_global_similarity(image_features: torch.Tensor) -> torch.Tensor:
    """Cosine of every crop with its image's global view, ``r_n = x_n . g``: what
    the vision selection thresholds (official ``OP_d``).

    Args:
        image_features: ``[B, 1+N, D]`` unit vectors, index 0 the global view.

    Returns:
        ``[B, N]`` float32. A :class:`~fiftyone_lazsl.core.features.FeatureStore`
        keeps these in float32 next to (possibly float16) embeddings, so a
        re-scoring selects exactly the crops a fresh run selects.
    """
    return torch.einsum("bnd,bd->bn", image_features[:, 1:], image_features[:, 0]).float()


def vision_selection(
    image_features: torch.Tensor, gamma: float = 0.0, crop_global: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LaZSL vision selection: keep crops whose similarity to the global view is
    at least the mean over crops plus ``gamma``.

    Args:
        image_features: ``[B, 1+N, D]``.
        gamma: margin added to the mean (official default 0).
        crop_global: ``[B, N]`` precomputed :func:`crop_global_similarity` (e.g.
            stored in float32 beside float16 embeddings); computed from
            ``image_features`` when None.

    Returns:
        ``(keep, mu)``: ``keep`` ``[B, N]`` bool and ``mu`` ``[B, N]`` float32, the
        crop marginal (``1 / #kept`` on kept crops, 0 elsewhere).

    Raises:
        ValueError: ``crop_global`` not ``[B, N]``.
    """
    if crop_global is None:
        r = crop_global_similarity(image_features)
    else:
        want = (image_features.shape[0], image_features.shape[1] - 1)
        if tuple(crop_global.shape) != want:
            raise ValueError(f"crop_global must be {list(want)}, got {list(crop_global.shape)}")
        r = crop_global.to(image_features.device, torch.float32)
    # Official rule: drop crops with r < mean(r) + gamma. A float32 tolerance of
    # 1e-6 keeps crops that tie with the mean (e.g. all crops equally similar,
    # where the rounded mean can exceed every r by one ulp).
    keep = ~(r < r.mean(dim=1, keepdim=True) + gamma - _TIE_TOL)
    # All crops below the threshold can only happen with NaN features or an
    # extreme gamma; keep them all rather than create an empty marginal.
    empty = ~keep.any(dim=1, keepdim=True)
    keep = keep | empty
    mu = keep.float() / keep.sum(dim=1, keepdim=True).float()
    return keep, mu


def _lazsl_chunk(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    mu: torch.Tensor,
    theta: float,
    eps: float,
    max_iter: int,
    stop_tol: float,
    want_plan: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """LaZSL scores of one chunk of classes: ``(scores [B, C], plans [B, C, N, A]
    or None, similarity [B, C, N, A] or None, iterations [B, C])``.

    Arranged for speed: the similarity stays attribute-major (``[P, A, N]``, the
    layout of the matmul) so that both Sinkhorn half-steps reduce over a
    contiguous axis; the cost ``1 - S`` and the kernel are built in place; the
    score ``sum(T * S)`` is computed without materialising the plan unless it is
    asked for."""
    B, C, A = image_features.shape[0], text_features.shape[0], text_features.shape[1]
    S = hybrid_similarity(image_features, text_features, theta, attribute_major=True)
    N, P = S.shape[-1], B * C
    S = S.reshape(P, A, N)
    M = 1.0 - S  # cost
    K = M.div(-eps).exp_()  # Gibbs kernel
    nu = text_mask.float() / text_mask.sum(dim=1, keepdim=True).float()  # [C, A]
    nu_p = nu.unsqueeze(0).expand(B, C, A).reshape(P, A)
    mu_p = mu.unsqueeze(1).expand(B, C, N).reshape(P, N)
    sol = sinkhorn(
        mu_p,
        nu_p,
        M,
        eps,
        method="auto",
        K=K,
        max_iter=max_iter,
        stop_tol=stop_tol,
        transposed=True,
    )
    scores = sol.inner(K, S).view(B, C)
    iters = sol.iterations.view(B, C)
    if not want_plan:
        return scores, None, None, iters
    T = sol.plan(K).transpose(1, 2)  # [P, N, A]
    return scores, T.reshape(B, C, N, A), S.transpose(1, 2).reshape(B, C, N, A), iters


def lazsl_scores(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    theta: float = 0.8,
    eps: float = 0.1,
    max_iter: int = 100,
    stop_tol: float = 1e-2,
    gamma: float = 0.0,
    return_plan: bool = False,
    crop_global: torch.Tensor | None = None,
) -> torch.Tensor | LaZSLOutput:
    """LaZSL class scores by optimal transport between crops and attributes.

    For every image ``b`` and class ``y`` (paper Sec. 3, official ``OP_d``):

    1. hybrid similarity ``S[n, a] = (1 - theta) * g.t_a + theta * x_n.t_a``;
    2. vision selection: crop ``n`` is kept when ``x_n.g >= mean_n(x_n.g) + gamma``;
       kept crops share mass 1 (``mu``), the class's attributes share mass 1 (``nu``);
    3. Sinkhorn on ``K = exp(-(1 - S) / eps)`` from ``r = c = 1``, stopping per
       problem when ``mean|r - r_prev| < stop_tol`` (or at ``max_iter``);
    4. ``T = diag(r) K diag(c)``, score ``psi_y = sum(T * S)``.

    Computation is in float32 whatever the input dtype; problems whose kernel
    underflows fall back to a log-domain solver, so scores are never NaN.

    Args:
        image_features: ``[B, 1+N, D]`` unit vectors, index 0 the global view.
        text_features: ``[C, A, D]`` unit attribute embeddings, zero-padded to ``A``.
        text_mask: ``[C, A]`` bool, True where an attribute exists (>= 1 per class).
        theta: weight of the crop similarity (0.8).
        eps: entropic regularisation (0.1).
        max_iter: Sinkhorn iteration cap (100).
        stop_tol: stopping tolerance (1e-2); 0 runs ``max_iter`` iterations.
        gamma: vision-selection margin (0).
        return_plan: also return plans, keep mask, similarity and iteration counts.
        crop_global: optional ``[B, N]`` float32 crop-to-global cosines for the
            vision selection (see :func:`vision_selection`); from
            ``image_features`` when None.

    Returns:
        ``scores`` ``[B, C]`` float32, or with ``return_plan=True`` a
        :class:`LaZSLOutput` (which also unpacks as ``scores, plans, keep``)
        holding plans ``[B, C, N, A]`` and keep ``[B, N]``.

    Raises:
        ValueError: shapes that do not fit, or a class with no attribute.
    """
    _check(image_features, text_features, text_mask)
    text_mask = text_mask.to(device=image_features.device, dtype=torch.bool)
    text_features = text_features.to(image_features.device)
    keep, mu = vision_selection(image_features.float(), gamma, crop_global)
    B, N1, _ = image_features.shape
    C, A, _ = text_features.shape
    per_class = max(1, B * (N1 - 1) * A)
    chunk = max(1, _MAX_ELEMENTS // per_class)
    outs = [
        _lazsl_chunk(
            image_features,
            text_features[s : s + chunk],
            text_mask[s : s + chunk],
            mu,
            theta,
            eps,
            max_iter,
            stop_tol,
            return_plan,
        )
        for s in range(0, C, chunk)
    ]
    scores = torch.cat([o[0] for o in outs], dim=1)
    if not return_plan:
        return scores
    return _Output(
        scores=scores,
        plans=torch.cat([o[1] for o in outs], dim=1),
        keep=keep,
        similarity=torch.cat([o[2] for o in outs], dim=1),
        iterations=torch.cat([o[3] for o in outs], dim=1),
    )


class _Output(LaZSLOutput):
    """:class:`LaZSLOutput` that also unpacks as ``scores, plans, keep``."""

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter((self.scores, self.plans, self.keep))


def dclip_scores(
    image_features: torch.Tensor, text_features: torch.Tensor, text_mask: torch.Tensor
) -> torch.Tensor:
    """DCLIP baseline (Menon & Vondrick 2023): mean over a class's attributes of
    the global view's cosine similarity.

    Args:
        image_features: ``[B, 1+N, D]`` (only index 0 is used) or ``[B, D]``.
        text_features: ``[C, A, D]``; text_mask: ``[C, A]`` bool.

    Returns:
        ``[B, C]`` float32.
    """
    s = global_similarity(image_features, text_features)
    m = text_mask.to(s.device).float()
    return (s * m).sum(-1) / m.sum(-1)


def clip_scores(image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
    """Plain CLIP zero-shot scores: cosine of the global view with one
    class-name prompt per class (``"a photo of a {class}."``, Radford et al. 2021).

    Args:
        image_features: ``[B, 1+N, D]`` (index 0 used) or ``[B, D]``.
        class_features: ``[C, D]`` unit vectors.

    Returns:
        ``[B, C]`` float32.
    """
    g = image_features[:, 0] if image_features.dim() == 3 else image_features
    return g.float() @ class_features.to(g.device).float().T


@dataclass
class WCAOutput:
    """Scores and weights returned by :func:`wca_scores` with ``return_weights=True``.

    Attributes:
        scores: ``[B, C]`` float32, ``normalise(sum_n w_n x_n) . e_c``.
        crop_weights: ``[B, N]`` float32 crop weights ``w_n`` (each row sums to 1).
        text_weights: ``[C, A]`` float32 sentence weights ``v_{c,a}`` (0 on
            padded sentences; each row sums to 1, or is all 0 for a class
            without sentences).
        class_weights: ``[C, D]`` float32 class embeddings ``e_c`` (unit norm;
            the official code's ``zeroshot_weights`` transposed).
        image_embeddings: ``[B, D]`` float32 weighted crop embeddings (unit norm).
    """

    scores: torch.Tensor
    crop_weights: torch.Tensor
    text_weights: torch.Tensor
    class_weights: torch.Tensor
    image_embeddings: torch.Tensor


def _check_wca(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    label_features: torch.Tensor,
) -> None:
    _check_shapes(image_features, text_features, text_mask)
    C, _, D = text_features.shape
    if tuple(label_features.shape) != (C, D):
        raise ValueError(
            f"label_features must be [C, D] = {(C, D)}, got {tuple(label_features.shape)}"
        )
    if image_features.shape[-1] != D:
        raise ValueError(f"feature dims differ: image {image_features.shape[-1]} vs text {D}")
    _check_finite(
        image_features=image_features, text_features=text_features, label_features=label_features
    )


def wca_class_embeddings(
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    label_features: torch.Tensor,
    text_scale_log: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WCA's text side: each class's sentences averaged with weights given by
    their similarity to the class's label prompt (official ``helper.py``
    ``zeroshot_classifier`` with ``tt_scale = exp(text_scale_log)``).

    ``v_{c,a} = softmax_a(exp(text_scale_log) * t_{c,a} . l_c)`` over the
    class's real sentences; ``e_c = normalise(sum_a v_{c,a} t_{c,a})``. A class
    with no sentence (an all-False ``text_mask`` row) gets ``e_c = l_c``, its
    label prompt alone (plain CLIP for that class; the official code cannot
    encode an empty list).

    Args:
        text_features: ``[C, A, D]`` unit sentence embeddings, zero-padded.
        text_mask: ``[C, A]`` bool, True where a sentence exists.
        label_features: ``[C, D]`` unit embeddings of ``"a photo of a {class}."``.
        text_scale_log: log of the softmax temperature (WCA: 2.0).

    Returns:
        ``(class_weights [C, D], text_weights [C, A])`` float32.
    """
    tf = text_features.float()
    lf = label_features.to(tf.device).float()
    mask = text_mask.to(device=tf.device, dtype=torch.bool)
    logits = torch.einsum("cad,cd->ca", tf, lf) * math.exp(float(text_scale_log))
    logits = logits.masked_fill(~mask, float("-inf"))
    has = mask.any(dim=1, keepdim=True)
    v = torch.where(has, logits.softmax(dim=1), torch.zeros_like(logits)).nan_to_num(0.0)
    e = torch.einsum("ca,cad->cd", v, tf)
    e = torch.where(has, e, lf)
    return torch.nn.functional.normalize(e, dim=-1), v


def wca_scores(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    label_features: torch.Tensor,
    *,
    image_scale_log: float = 4.0,
    text_scale_log: float = 2.0,
    return_weights: bool = False,
    crop_global: torch.Tensor | None = None,
) -> torch.Tensor | WCAOutput:
    """WCA class scores: weighted crops against weighted class sentences.

    Li et al., "Visual-Text Cross Alignment: Refining the Similarity Score in
    Vision-Language Models", ICML 2024; official code ``tmlr-group/WCA``
    (``main.py`` method ``"ours"``, ``helper.py`` ``zeroshot_classifier``), with
    every crop of the visual set used once (the official evaluation instead
    draws 60 of 100 encoded crops with replacement, 20 times). For image ``b``
    with global view ``g`` and crops ``x_1..x_N``, and class ``c`` with
    sentences ``t_{c,a}`` and label prompt ``l_c``:

    1. crop weights ``w_n = softmax_n(exp(image_scale_log) * x_n . g)`` (the
       global view only weights the crops; it is not averaged in);
    2. image embedding ``z = normalise(sum_n w_n x_n)``;
    3. sentence weights ``v_{c,a} = softmax_a(exp(text_scale_log) * t_{c,a} . l_c)``
       over the class's sentences, class embedding
       ``e_c = normalise(sum_a v_{c,a} t_{c,a})`` (:func:`wca_class_embeddings`);
    4. score ``s_{b,c} = z . e_c``.

    Masked (padded) sentences get weight 0. A class without any sentence is
    scored with its label prompt alone (``e_c = l_c``). Computation is float32
    whatever the input dtype.

    Args:
        image_features: ``[B, 1+N, D]`` unit vectors, index 0 the global view.
        text_features: ``[C, A, D]`` unit sentence embeddings, zero-padded to ``A``.
        text_mask: ``[C, A]`` bool, True where a sentence exists.
        label_features: ``[C, D]`` unit embeddings of ``"a photo of a {class}."``.
        image_scale_log: log of the crop-weight temperature (WCA configs: 4.0).
        text_scale_log: log of the sentence-weight temperature (WCA configs: 2.0).
        return_weights: return a :class:`WCAOutput` with the weights and embeddings.
        crop_global: optional ``[B, N]`` float32 ``x_n . g`` (see
            :func:`crop_global_similarity`; a feature store keeps them in float32
            beside float16 embeddings so the weights are those of a fresh run);
            computed from ``image_features`` when None.

    Returns:
        ``scores`` ``[B, C]`` float32, or a :class:`WCAOutput`.

    Raises:
        ValueError: shapes that do not fit, non-finite features, ``crop_global``
            not ``[B, N]``.
    """
    _check_wca(image_features, text_features, text_mask, label_features)
    imf = image_features.float()
    if crop_global is None:
        r = crop_global_similarity(imf)
    else:
        want = (imf.shape[0], imf.shape[1] - 1)
        if tuple(crop_global.shape) != want:
            raise ValueError(f"crop_global must be {list(want)}, got {list(crop_global.shape)}")
        r = crop_global.to(imf.device, torch.float32)
    w = (r * math.exp(float(image_scale_log))).softmax(dim=-1)  # [B, N]
    z = torch.nn.functional.normalize(torch.einsum("bn,bnd->bd", w, imf[:, 1:]), dim=-1)
    e, v = wca_class_embeddings(
        text_features.to(imf.device), text_mask, label_features, text_scale_log
    )
    scores = z @ e.T
    if not return_weights:
        return scores
    return WCAOutput(
        scores=scores, crop_weights=w, text_weights=v, class_weights=e, image_embeddings=z
    )
