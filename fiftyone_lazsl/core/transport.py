"""Entropic optimal transport: batched, masked Sinkhorn solvers.

The one place where LaZSL solves its transport problems. The API follows POT
(``ot.bregman``): :func:`sinkhorn_knopp` is the matrix-scaling algorithm of
``ot.bregman.sinkhorn_knopp`` and :func:`sinkhorn_log` the log-domain variant of
``ot.bregman.sinkhorn_log``; :func:`sinkhorn` dispatches between them like
``ot.sinkhorn(..., method=...)``. Unlike POT, every function solves a whole batch
``P...`` of problems at once, with padded columns, and with the stopping rule of
the official LaZSL code (``OP.py``) applied per problem.

Problem (POT's notation; the LaZSL paper's "OT-based local vision-language
alignment" step, official ``OP.py`` ``OP_d``)::

    T* = argmin_T  <T, M>_F - eps * H(T)
         s.t.  T 1 = a,  T^T 1 = b,  T >= 0,      H(T) = -sum_ij T_ij (log T_ij - 1)

with cost ``M = 1 - S`` (``S`` the hybrid crop/attribute similarity),
row marginal ``a = mu`` over the kept crops and column marginal ``b = nu`` over a
class's attributes. Its solution is ``T* = diag(u) K diag(v)`` with the Gibbs
kernel ``K = exp(-M / eps)``, and Sinkhorn-Knopp finds the scalings by
alternating ``u = a / (K v)``, ``v = b / (K^T u)`` (Cuturi 2013, Alg. 1).

Equation numbers of the LaZSL paper are not cited here: the steps are named
as in its method section and in the official code, which the golden tests
(``tests/test_scoring.py``) reproduce.

Reference: Chen et al., "Interpretable Zero-Shot Learning with Locally-Aligned
Vision-Language Model", ICCV 2025; Cuturi, "Sinkhorn Distances", NeurIPS 2013;
Flamary et al., "POT: Python Optimal Transport", JMLR 2021.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["sinkhorn", "sinkhorn_knopp", "sinkhorn_log", "SinkhornResult", "METHODS"]

METHODS = ("sinkhorn", "sinkhorn_log", "auto")


@dataclass
class SinkhornResult:
    """Solution of a batch of transport problems.

    The plan of problem ``p`` is ``T[p] = u[p, :, None] * K[p] * v[p, None, :]``
    (``K = exp(-M / reg)``) for problems solved by Sinkhorn-Knopp, and
    ``log_plans`` for those solved in the log domain (``log_domain[p]``).

    Attributes:
        u: ``[P..., N]`` float32 row scalings (``r`` in the official code).
        v: ``[P..., A]`` float32 column scalings (``c``; 0 on padded columns).
        iterations: ``[P...]`` int32, Sinkhorn iterations each problem ran.
        log_domain: ``[P...]`` bool, problems solved by :func:`sinkhorn_log`.
        log_plans: ``[F, N, A]`` float32 plans of the ``F`` log-domain problems
            (in the order of ``log_domain.nonzero()``; layout of ``M``), or None.
        transposed: True when ``M``/``K`` were ``[P..., A, N]``.
    """

    u: torch.Tensor
    v: torch.Tensor
    iterations: torch.Tensor
    log_domain: torch.Tensor
    log_plans: torch.Tensor | None = None
    transposed: bool = False

    def plan(self, K: torch.Tensor | None = None) -> torch.Tensor:
        """The transport plans, in the layout of ``K`` (``[P..., N, A]``, or
        ``[P..., A, N]`` when ``transposed``), float32. ``K`` may be omitted when
        every problem was solved in the log domain."""
        if self.log_plans is not None and bool(self.log_domain.all()):
            return self.log_plans.reshape(tuple(self.log_domain.shape) + self.log_plans.shape[-2:])
        if K is None:
            raise ValueError("the Sinkhorn-Knopp plans need the kernel K")
        if self.transposed:
            T = self.v.unsqueeze(-1) * K * self.u.unsqueeze(-2)
        else:
            T = self.u.unsqueeze(-1) * K * self.v.unsqueeze(-2)
        if self.log_plans is not None:
            T = T.clone()
            T[self.log_domain] = self.log_plans
        return T

    def inner(self, K: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """``sum_ij T_ij * S_ij`` per problem (``[P...]`` float32) without
        materialising the Sinkhorn-Knopp plans; ``S`` in the layout of ``K``.
        With ``S = 1 - M`` this is the LaZSL class score ``psi = sum(T * S)``."""
        if self.transposed:
            out = ((K * S * self.v.unsqueeze(-1)).sum(-2) * self.u).sum(-1)
        else:
            out = ((K * S * self.u.unsqueeze(-1)).sum(-2) * self.v).sum(-1)
        if self.log_plans is not None:
            out = out.clone()
            out[self.log_domain] = (self.log_plans * S[self.log_domain]).sum(dim=(-1, -2))
        return out


def _check_every(device: torch.device, check_every: int | None) -> int:
    # Host synchronisation (``any()``) costs a device round trip on CUDA; checking
    # every 8 iterations never changes the result because stopped problems are frozen.
    if check_every is not None:
        return max(1, int(check_every))
    return 8 if device.type == "cuda" else 1


def sinkhorn_knopp(
    a: torch.Tensor,
    b: torch.Tensor,
    M: torch.Tensor | None = None,
    reg: float = 0.1,
    *,
    K: torch.Tensor | None = None,
    max_iter: int = 100,
    stop_tol: float = 1e-2,
    check_every: int | None = None,
    transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Batched Sinkhorn-Knopp matrix scaling (POT ``ot.bregman.sinkhorn_knopp``).

    Solves, for every problem ``p`` of the batch, the entropic OT problem

    .. math::
        T^* = \arg\min_T \langle T, M\rangle_F - \mathrm{reg}\,H(T)
        \quad \text{s.t. } T\mathbf 1 = a,\ T^\top \mathbf 1 = b,\ T \ge 0

    (the LaZSL transport problem) by the iterations, from ``u = 1, v = 1``
    (official code)::

        u = a / (K v),   v = b / (K^T u),    K = exp(-M / reg)

    and stops problem ``p`` after the first full update where
    ``mean_n |u - u_prev| < stop_tol`` (official ``OP.py`` rule; POT instead
    checks the marginal violation), or after ``max_iter``. Stopped problems are
    frozen while the others go on, so the result equals solving each problem
    alone.

    Masking: ``b[..., j] = 0`` marks a padded column, which starts and stays at
    ``v = 0`` so that a padded problem follows exactly the trajectory of the
    problem without padding (its kernel values never matter). ``a[..., i] = 0``
    is allowed (a row that sends no mass, e.g. a crop dropped by vision
    selection).

    Args:
        a: ``[P..., N]`` row marginal (sums to 1 per problem), float32.
        b: ``[P..., A]`` column marginal (sums to 1; 0 on padding), float32.
        M: ``[P..., N, A]`` cost matrix; not needed when ``K`` is given.
        reg: entropic regularisation ``eps`` (> 0; LaZSL uses 0.1).
        K: precomputed Gibbs kernel ``exp(-M / reg)`` (e.g. built in place).
        max_iter: iteration cap (official 100).
        stop_tol: tolerance of the stopping rule (official 1e-2); 0 runs exactly
            ``max_iter`` iterations.
        check_every: host synchronisation period (default 1 on CPU, 8 on CUDA);
            never changes the result.
        transposed: ``M``/``K`` are stored ``[P..., A, N]`` (attribute-major, the
            layout a text-by-image matmul produces), so both half-steps reduce
            over a contiguous axis.

    Returns:
        ``(u, v, iterations)``: ``[P..., N]``, ``[P..., A]``, ``[P...]`` int32. The
        plan is ``u[..., :, None] * K * v[..., None, :]``. Where ``K`` underflows
        the scalings become inf/NaN; use :func:`sinkhorn_log` (or ``method="auto"``
        of :func:`sinkhorn`) there.
    """
    if K is None:
        if M is None:
            raise ValueError("sinkhorn_knopp needs the cost M or the kernel K")
        K = torch.exp(M / -float(reg))
    row_axis, col_axis = (-1, -2) if transposed else (-2, -1)
    real = b > 0

    def step(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u_new = a / (K * v.unsqueeze(row_axis)).sum(col_axis)
        v_new = torch.where(real, b / (K * u_new.unsqueeze(col_axis)).sum(row_axis), 0.0)
        return u_new, v_new, (u_new - u).abs().mean(-1)

    # u = 1; v = 1 on real columns, 0 on padding
    return _iterate_per_problem(
        step,
        torch.ones_like(a),
        real.to(b.dtype),
        max_iter=max_iter,
        stop_tol=stop_tol,
        every=_check_every(K.device, check_every),
    )


def _iterate_per_problem(
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iter: int,
    stop_tol: float,
    every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official stopping rule, per problem, for both solvers.

    Runs ``x, y, err = step(x, y)`` (``x`` ``[P..., N]``, ``y`` ``[P..., A]``,
    ``err`` ``[P...]``); a problem takes the update of an iteration while it is
    active, and stops being active after the first full update where
    ``err < stop_tol``. Returns ``(x, y, iterations)``; the host checks whether
    any problem is still active every ``every`` iterations (frozen problems do
    not move, so this never changes the result)."""
    active = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    iters = torch.zeros(x.shape[:-1], dtype=torch.int32, device=x.device)
    for i in range(max_iter):
        x_new, y_new, err = step(x, y)
        still = active.unsqueeze(-1)
        x = torch.where(still, x_new, x)
        y = torch.where(still, y_new, y)
        iters += active
        active &= ~(err < stop_tol)
        if (i + 1) % every == 0 and not bool(active.any()):
            break
    return x, y, iters


def sinkhorn_log(
    a: torch.Tensor,
    b: torch.Tensor,
    M: torch.Tensor,
    reg: float = 0.1,
    *,
    max_iter: int = 100,
    stop_tol: float = 1e-2,
    check_every: int | None = None,
    transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Batched log-domain Sinkhorn (POT ``ot.bregman.sinkhorn_log``), in float64.

    Same problem, iteration and stopping rule as :func:`sinkhorn_knopp`, on the
    potentials ``f = log u``, ``g = log v`` (Peyre & Cuturi 2019, Remark 4.23)::

        f = log a - logsumexp_j(-M_ij / reg + g_j)
        g = log b - logsumexp_i(-M_ij / reg + f_i)

    so that kernels that underflow (``exp(-M / reg) = 0`` in float32, e.g. a
    small ``reg`` or half-precision features) still give the exact plan
    ``T = exp(f_i - M_ij / reg + g_j)``. The stopping rule compares ``exp(f)``
    like the official rule compares ``u``.

    Args:
        a, b, M, reg, max_iter, stop_tol, check_every, transposed: as in
            :func:`sinkhorn_knopp` (``M`` is required; padded columns have
            ``b = 0`` and ``g = -inf``).

    Returns:
        ``(f, g, iterations)``: float64 ``[P..., N]``, ``[P..., A]`` and int32
        ``[P...]``; the plan is ``exp(f[..., :, None] - M / reg + g[..., None, :])``
        (see :func:`log_plan`).
    """
    row_axis, col_axis = (-1, -2) if transposed else (-2, -1)
    real = b > 0
    logK = _masked_log_kernel(M, reg, real, transposed)
    log_a = torch.log(a.double())
    log_b = torch.log(b.double())
    neg_inf = torch.full_like(log_b, float("-inf"))

    def step(f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f_new = log_a - torch.logsumexp(logK + g.unsqueeze(row_axis), dim=col_axis)
        g_new = torch.where(
            real, log_b - torch.logsumexp(logK + f_new.unsqueeze(col_axis), dim=row_axis), neg_inf
        )
        return f_new, g_new, (torch.exp(f_new) - torch.exp(f)).abs().mean(-1)

    # f = log u = 0; g = log v = 0 on real columns, -inf on padding
    return _iterate_per_problem(
        step,
        torch.zeros_like(log_a),
        torch.where(real, 0.0, neg_inf),
        max_iter=max_iter,
        stop_tol=stop_tol,
        every=_check_every(M.device, check_every),
    )


def _masked_log_kernel(
    M: torch.Tensor, reg: float, real: torch.Tensor, transposed: bool
) -> torch.Tensor:
    """``-M / reg`` in float64 with ``-inf`` on padded columns."""
    logK = M.double() / -float(reg)
    col_mask = real.unsqueeze(-1) if transposed else real.unsqueeze(-2)
    return torch.where(col_mask, logK, float("-inf"))


def log_plan(
    f: torch.Tensor, g: torch.Tensor, M: torch.Tensor, reg: float, *, transposed: bool = False
) -> torch.Tensor:
    """Plan ``exp(f_i - M_ij / reg + g_j)`` of :func:`sinkhorn_log` potentials,
    float32, in the layout of ``M`` (0 on padded columns)."""
    logK = M.double() / -float(reg)
    if transposed:
        return torch.exp(g.unsqueeze(-1) + logK + f.unsqueeze(-2)).float()
    return torch.exp(f.unsqueeze(-1) + logK + g.unsqueeze(-2)).float()


def sinkhorn(
    a: torch.Tensor,
    b: torch.Tensor,
    M: torch.Tensor,
    reg: float = 0.1,
    *,
    method: str = "auto",
    K: torch.Tensor | None = None,
    max_iter: int = 100,
    stop_tol: float = 1e-2,
    check_every: int | None = None,
    transposed: bool = False,
) -> SinkhornResult:
    """Solve a batch of entropic OT problems (POT ``ot.sinkhorn(a, b, M, reg, method=)``).

    Args:
        a, b, M, reg, K, max_iter, stop_tol, check_every, transposed: see
            :func:`sinkhorn_knopp`.
        method: ``"sinkhorn"`` (:func:`sinkhorn_knopp`, float32),
            ``"sinkhorn_log"`` (:func:`sinkhorn_log`, float64) or ``"auto"``:
            Sinkhorn-Knopp, then the problems whose scalings are not finite
            (kernel underflow) are solved again by :func:`sinkhorn_log`.

    Returns:
        :class:`SinkhornResult`; ``result.plan(K)`` gives the plans and
        ``result.inner(K, S)`` the per-problem ``sum(T * S)``.

    Raises:
        ValueError: unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Sinkhorn method {method!r}; expected one of {METHODS}")
    opts = dict(
        max_iter=max_iter, stop_tol=stop_tol, check_every=check_every, transposed=transposed
    )
    batch = a.shape[:-1]
    if method == "sinkhorn_log":
        f, g, iters = sinkhorn_log(a, b, M, reg, **opts)
        nan_u = torch.full_like(a, float("nan"))
        nan_v = torch.full_like(b, float("nan"))
        return SinkhornResult(
            nan_u,
            nan_v,
            iters,
            torch.ones(batch, dtype=torch.bool, device=a.device),
            log_plan(f, g, M, reg, transposed=transposed).reshape((-1,) + M.shape[-2:]),
            transposed,
        )
    u, v, iters = sinkhorn_knopp(a, b, M, reg, K=K, **opts)
    if method == "sinkhorn":
        return SinkhornResult(
            u, v, iters, torch.zeros(batch, dtype=torch.bool, device=a.device), None, transposed
        )
    # Kernel underflow: K v = 0 somewhere makes a scaling inf, then 0 * inf = NaN.
    failed = ~(torch.isfinite(u).all(-1) & torch.isfinite(v).all(-1))
    result = SinkhornResult(u, v, iters, failed, None, transposed)
    if not bool(failed.any()):
        return result
    M_bad = M[failed]
    f, g, it_log = sinkhorn_log(a[failed], b[failed], M_bad, reg, **opts)
    result.iterations = iters.clone()
    result.iterations[failed] = it_log
    result.log_plans = log_plan(f, g, M_bad, reg, transposed=transposed)
    return result
