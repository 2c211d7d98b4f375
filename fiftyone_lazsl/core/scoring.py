"""Scores from features: LaZSL optimal transport, and the DCLIP / CLIP baselines.

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

from dataclasses import dataclass

import torch

__all__ = ["lazsl_scores", "dclip_scores", "clip_scores", "hybrid_similarity",
           "vision_selection", "sinkhorn", "LaZSLOutput"]

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


def _check(image_features: torch.Tensor, text_features: torch.Tensor,
           text_mask: torch.Tensor) -> None:
    if image_features.dim() != 3 or image_features.shape[1] < 2:
        raise ValueError(
            f"image_features must be [B, 1+N, D] with N >= 1, got {tuple(image_features.shape)}")
    if text_features.dim() != 3:
        raise ValueError(f"text_features must be [C, A, D], got {tuple(text_features.shape)}")
    if text_mask.shape != text_features.shape[:2]:
        raise ValueError(
            f"text_mask must be [C, A] = {tuple(text_features.shape[:2])}, got {tuple(text_mask.shape)}")
    if image_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"feature dims differ: image {image_features.shape[-1]} vs text {text_features.shape[-1]}")
    for what, t in (("image_features", image_features), ("text_features", text_features)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} has non-finite values (NaN or inf); no score is computed")
    if not bool(text_mask.any(dim=1).all()):
        bad = (~text_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"text_mask has classes with no attribute: indices {bad[:10]}")


def hybrid_similarity(image_features: torch.Tensor, text_features: torch.Tensor,
                      theta: float = 0.8) -> torch.Tensor:
    """Hybrid crop/attribute similarity ``S = (1 - theta) * g.t + theta * x_n.t``.

    Args:
        image_features: ``[B, 1+N, D]``, index 0 the global view, unit vectors.
        text_features: ``[C, A, D]`` unit attribute embeddings (zero rows for padding).
        theta: weight of the crop term (paper default 0.8).

    Returns:
        ``[B, C, N, A]`` in the dtype of the inputs.
    """
    g = image_features[:, 0]
    x = image_features[:, 1:]
    s_g = torch.einsum("bd,cad->bca", g, text_features)
    s_l = torch.einsum("bnd,cad->bcna", x, text_features)
    return (1 - theta) * s_g.unsqueeze(2) + theta * s_l


def vision_selection(image_features: torch.Tensor, gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LaZSL vision selection: keep crops whose similarity to the global view is
    at least the mean over crops plus ``gamma``.

    Args:
        image_features: ``[B, 1+N, D]``.
        gamma: margin added to the mean (official default 0).

    Returns:
        ``(keep, mu)``: ``keep`` ``[B, N]`` bool and ``mu`` ``[B, N]`` float32, the
        crop marginal (``1 / #kept`` on kept crops, 0 elsewhere).
    """
    g = image_features[:, 0]
    x = image_features[:, 1:]
    r = torch.einsum("bnd,bd->bn", x, g).float()
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


def sinkhorn(K: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, *, max_iter: int = 100,
             stop_tol: float = 1e-2, check_every: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched Sinkhorn scaling with the official per-problem stopping rule.

    Starting from ``r = 1, c = 1``, each problem ``p`` iterates
    ``r = mu / (K c)``, ``c = nu / (K^T r)`` and stops after the first full
    update where ``mean_n |r - r_prev| < stop_tol`` (or after ``max_iter``).
    Problems that have stopped are frozen while the others go on, so the result
    equals solving every problem alone. Host synchronisation (``any()``) happens
    every ``check_every`` iterations only (default: 1 on CPU, 8 on CUDA); this
    never changes the result because frozen problems do not move.

    Args:
        K: ``[P..., N, A]`` Gibbs kernel, float32.
        mu: ``[P..., N]`` row marginal (0 allowed).
        nu: ``[P..., A]`` column marginal; 0 marks a padded column, which starts
            and stays at ``c = 0`` so that a padded problem follows exactly the
            trajectory of the problem without padding.
        max_iter: iteration cap (official 100).
        stop_tol: tolerance on the mean absolute change of ``r`` (official 1e-2).
            ``0`` runs exactly ``max_iter`` iterations.

    Returns:
        ``(r, c, iterations)`` with shapes ``[P..., N]``, ``[P..., A]``, ``[P...]``.
        The plan is ``r[..., :, None] * K * c[..., None, :]``.
    """
    if check_every is None:
        check_every = 8 if K.is_cuda else 1
    real = nu > 0
    r = torch.ones_like(mu)
    c = real.to(nu.dtype)  # 1 on real columns; padded columns are not part of the problem
    active = torch.ones(mu.shape[:-1], dtype=torch.bool, device=K.device)
    iters = torch.zeros(mu.shape[:-1], dtype=torch.int32, device=K.device)
    for i in range(max_iter):
        r_new = mu / (K * c.unsqueeze(-2)).sum(-1)
        c_new = torch.where(real, nu / (K * r_new.unsqueeze(-1)).sum(-2), torch.zeros_like(nu))
        err = (r_new - r).abs().mean(-1)
        a = active.unsqueeze(-1)
        r = torch.where(a, r_new, r)
        c = torch.where(a, c_new, c)
        iters = iters + active.int()
        active = active & ~(err < stop_tol)
        if (i + 1) % check_every == 0 and not bool(active.any()):
            break
    return r, c, iters


def _log_sinkhorn(S: torch.Tensor, eps: float, mu: torch.Tensor, nu: torch.Tensor, *,
                  max_iter: int, stop_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-domain Sinkhorn in float64 with the same iteration and stopping rule;
    returns ``(plan, iterations)``. Used where ``exp(-(1 - S)/eps)`` underflows."""
    S = S.double()
    logK = -(1.0 - S) / eps
    log_mu = torch.log(mu.double())
    log_nu = torch.log(nu.double())
    real = nu > 0
    neg_inf = torch.full_like(log_nu, float("-inf"))
    logK = torch.where(real.unsqueeze(-2), logK, float("-inf"))
    f = torch.zeros_like(log_mu)            # log r, r = 1
    g = torch.where(real, 0.0, neg_inf)     # log c, c = 1 on real columns, 0 on padding
    active = torch.ones(mu.shape[:-1], dtype=torch.bool, device=S.device)
    iters = torch.zeros(mu.shape[:-1], dtype=torch.int32, device=S.device)
    for _ in range(max_iter):
        f_new = log_mu - torch.logsumexp(logK + g.unsqueeze(-2), dim=-1)
        g_new = torch.where(real, log_nu - torch.logsumexp(logK + f_new.unsqueeze(-1), dim=-2),
                            neg_inf)
        err = (torch.exp(f_new) - torch.exp(f)).abs().mean(-1)
        a = active.unsqueeze(-1)
        f = torch.where(a, f_new, f)
        g = torch.where(a, g_new, g)
        iters = iters + active.int()
        active = active & ~(err < stop_tol)
        if not bool(active.any()):
            break
    plan = torch.exp(f.unsqueeze(-1) + logK + g.unsqueeze(-2))
    return plan.float(), iters


def _solve_an(K, real, mu, nu, *, max_iter, stop_tol, check_every=None):
    """Sinkhorn of :func:`sinkhorn` on kernels stored attribute-major, ``K``
    ``[P, A, N]`` (the layout the similarity matmul produces), so that both
    half-steps are plain reductions over a contiguous axis. ``real`` ``[P, A]``
    bool, ``mu`` ``[P, N]``, ``nu`` ``[P, A]``. Padded columns keep ``c = 0``, so
    their kernel values never matter. Returns ``(r, c, iterations)``."""
    if check_every is None:
        check_every = 8 if K.is_cuda else 1
    P, A, N = K.shape
    r = torch.ones(P, N, dtype=K.dtype, device=K.device)
    c = real.to(K.dtype)
    active = torch.ones(P, dtype=torch.bool, device=K.device)
    iters = torch.zeros(P, dtype=torch.int32, device=K.device)
    for i in range(max_iter):
        r_new = mu / (K * c.unsqueeze(-1)).sum(1)
        c_new = torch.where(real, nu / (K * r_new.unsqueeze(1)).sum(-1), 0.0)
        err = (r_new - r).abs().mean(-1)
        a = active.unsqueeze(-1)
        r = torch.where(a, r_new, r)
        c = torch.where(a, c_new, c)
        iters += active
        active &= ~(err < stop_tol)
        if (i + 1) % check_every == 0 and not bool(active.any()):
            break
    return r, c, iters


def _lazsl_chunk(image_features, text_features, text_mask, mu, theta, eps, max_iter,
                 stop_tol, want_plan):
    # Same algorithm as hybrid_similarity + sinkhorn, arranged for speed: one
    # matmul gives global and crop similarities at once, attribute-major
    # ([B, C*A, 1+N]); K is built in place; the score is c^T (K * S) r without
    # materialising the plan unless it is asked for.
    imf = image_features.float()
    tf = text_features.float()
    B, N1, D = imf.shape
    C, A, _ = tf.shape
    N, P = N1 - 1, B * C
    sims = torch.matmul(tf.reshape(C * A, D), imf.transpose(1, 2))          # [B, C*A, 1+N]
    S = theta * sims[..., 1:]
    S += (1 - theta) * sims[..., :1]                                          # [B, C*A, N]
    del sims
    K = S.sub(1.0).div_(eps).exp_().view(P, A, N)       # exp(-(1 - S) / eps)
    S = S.view(P, A, N)
    nu = text_mask.float() / text_mask.sum(dim=1, keepdim=True).float()      # [C, A]
    real_p = text_mask.unsqueeze(0).expand(B, C, A).reshape(P, A)
    nu_p = nu.unsqueeze(0).expand(B, C, A).reshape(P, A)
    mu_p = mu.unsqueeze(1).expand(B, C, N).reshape(P, N)
    r, c, iters = _solve_an(K, real_p, mu_p, nu_p, max_iter=max_iter, stop_tol=stop_tol)
    scores = ((K * S * c.unsqueeze(-1)).sum(1) * r).sum(-1)                  # sum(T * S)
    bad = ~torch.isfinite(scores)   # a non-finite plan entry makes its score non-finite
    any_bad = bool(bad.any())
    T = None
    if want_plan or any_bad:
        T = (c.unsqueeze(-1) * K * r.unsqueeze(1)).transpose(1, 2)           # [P, N, A]
        S = S.transpose(1, 2)
    if any_bad:
        # exp underflow (e.g. half-precision inputs, tiny eps): redo those problems
        # in the log domain.
        idx = bad.nonzero(as_tuple=True)
        T_log, it_log = _log_sinkhorn(S[idx], eps, mu_p[idx], nu_p[idx],
                                      max_iter=max_iter, stop_tol=stop_tol)
        T = T.contiguous()
        T[idx] = T_log
        iters[idx] = it_log
        scores = scores.clone()
        scores[idx] = (T_log * S[idx]).sum(dim=(-1, -2))
    scores, iters = scores.view(B, C), iters.view(B, C)
    if want_plan:
        return scores, T.reshape(B, C, N, A), S.reshape(B, C, N, A), iters
    return scores, None, None, iters


def lazsl_scores(image_features: torch.Tensor, text_features: torch.Tensor,
                 text_mask: torch.Tensor, *, theta: float = 0.8, eps: float = 0.1,
                 max_iter: int = 100, stop_tol: float = 1e-2, gamma: float = 0.0,
                 return_plan: bool = False):
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
    keep, mu = vision_selection(image_features.float(), gamma)
    B, N1, _ = image_features.shape
    C, A, _ = text_features.shape
    per_class = max(1, B * (N1 - 1) * A)
    chunk = max(1, _MAX_ELEMENTS // per_class)
    outs = [
        _lazsl_chunk(image_features, text_features[s:s + chunk], text_mask[s:s + chunk], mu,
                     theta, eps, max_iter, stop_tol, return_plan)
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

    def __iter__(self):
        return iter((self.scores, self.plans, self.keep))


def dclip_scores(image_features: torch.Tensor, text_features: torch.Tensor,
                 text_mask: torch.Tensor) -> torch.Tensor:
    """DCLIP baseline (Menon & Vondrick 2023): mean over a class's attributes of
    the global view's cosine similarity.

    Args:
        image_features: ``[B, 1+N, D]`` (only index 0 is used) or ``[B, D]``.
        text_features: ``[C, A, D]``; text_mask: ``[C, A]`` bool.

    Returns:
        ``[B, C]`` float32.
    """
    g = image_features[:, 0] if image_features.dim() == 3 else image_features
    m = text_mask.to(g.device).float()
    s = torch.einsum("bd,cad->bca", g.float(), text_features.to(g.device).float())
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
