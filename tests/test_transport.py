"""The public Sinkhorn solvers of :mod:`fiftyone_lazsl.core.transport` against POT.

Expected plans come from POT (``ot.sinkhorn(method="sinkhorn")`` and
``ot.sinkhorn(method="sinkhorn_log")``), one problem at a time in float64; the
solvers here solve the whole batch at once, with padded columns.
"""

import numpy as np
import pytest
import torch

from fiftyone_lazsl.core.transport import log_plan, sinkhorn, sinkhorn_knopp, sinkhorn_log

ot = pytest.importorskip("ot")


def random_batch(seed, P=6, N=9, A=7, reg_scale=1.0, pad=True):
    """``P`` random problems: costs in [0, 1.5], random marginals, and (``pad``)
    a random number of padded columns per problem (b = 0 there)."""
    rng = np.random.default_rng(seed)
    M = rng.uniform(0.0, 1.5, size=(P, N, A)) * reg_scale
    a = rng.uniform(0.2, 1.0, size=(P, N))
    a /= a.sum(1, keepdims=True)
    b = rng.uniform(0.2, 1.0, size=(P, A))
    sizes = rng.integers(2, A + 1, size=P) if pad else np.full(P, A)
    for p, k in enumerate(sizes):
        b[p, k:] = 0.0
    b /= b.sum(1, keepdims=True)
    return M, a, b, sizes


def pot_plan(M, a, b, k, reg, method):
    return ot.sinkhorn(a, b[:k], M[:, :k], reg=reg, method=method, numItermax=100000, stopThr=1e-13)


def knopp_plans(M, a, b, reg, transposed=False):
    Mt = torch.tensor(M, dtype=torch.float32)
    if transposed:
        Mt = Mt.transpose(1, 2).contiguous()
    u, v, it = sinkhorn_knopp(
        torch.tensor(a, dtype=torch.float32),
        torch.tensor(b, dtype=torch.float32),
        Mt,
        reg,
        max_iter=3000,
        stop_tol=0.0,
        transposed=transposed,
    )
    K = torch.exp(Mt / -reg)
    T = (
        (v.unsqueeze(-1) * K * u.unsqueeze(-2)).transpose(1, 2)
        if transposed
        else u.unsqueeze(-1) * K * v.unsqueeze(-2)
    )
    return T.numpy(), it


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("seed,reg", [(0, 0.1), (1, 0.3), (2, 0.05)])
def test_sinkhorn_knopp_matches_pot(seed, reg, transposed):
    M, a, b, sizes = random_batch(seed)
    T, it = knopp_plans(M, a, b, reg, transposed)
    assert torch.all(it == 3000)
    for p, k in enumerate(sizes):
        P = pot_plan(M[p], a[p], b[p], k, reg, "sinkhorn")
        np.testing.assert_allclose(T[p][:, :k], P, rtol=0, atol=2e-6)
        assert np.all(T[p][:, k:] == 0)  # padded columns carry no mass


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("seed,reg,shift", [(3, 0.1, 0.0), (4, 0.03, 0.0), (5, 0.05, 40.0)])
def test_sinkhorn_log_matches_pot(seed, reg, shift, transposed):
    # A constant shift of the cost does not change the plan, but with shift 40 and
    # reg 0.05 exp(-M / reg) < exp(-800) underflows in float32 and float64 alike:
    # only the log domain can solve it.
    M, a, b, sizes = random_batch(seed)
    M = M + shift
    assert (np.exp(-M / reg) == 0).all() == (shift > 0)
    Mt = torch.tensor(M)
    if transposed:
        Mt = Mt.transpose(1, 2).contiguous()
    f, g, it = sinkhorn_log(
        torch.tensor(a),
        torch.tensor(b),
        Mt,
        reg,
        max_iter=3000,
        stop_tol=0.0,
        transposed=transposed,
    )
    assert f.dtype == torch.float64
    T = log_plan(f, g, Mt, reg, transposed=transposed)
    if transposed:
        T = T.transpose(1, 2)
    T = T.numpy()
    assert np.isfinite(T).all()
    for p, k in enumerate(sizes):
        P = pot_plan(M[p], a[p], b[p], k, reg, "sinkhorn_log")
        np.testing.assert_allclose(T[p][:, :k], P, rtol=0, atol=2e-6)
        np.testing.assert_allclose(T[p][:, :k].sum(1), a[p], atol=1e-5)
        assert np.all(T[p][:, k:] == 0)


def test_official_stopping_rule_per_problem():
    """Each problem stops on the first iteration where mean|u - u_prev| < stop_tol,
    exactly as a plain loop over that problem alone."""
    M, a, b, sizes = random_batch(7, P=8, N=12, A=6)
    reg, tol = 0.1, 1e-3
    u, v, it = sinkhorn_knopp(
        torch.tensor(a), torch.tensor(b), torch.tensor(M), reg, max_iter=100, stop_tol=tol
    )
    assert len(set(it.tolist())) > 1  # problems stop at different points
    for p, k in enumerate(sizes):
        K = np.exp(-M[p][:, :k] / reg)
        uu, vv = np.ones(M.shape[1]), np.ones(k)
        n = 0
        for n in range(1, 101):  # noqa: B007 -- n is read after the loop
            prev = uu
            uu = a[p] / (K @ vv)
            vv = b[p][:k] / (K.T @ uu)
            if np.mean(np.abs(uu - prev)) < tol:
                break
        assert int(it[p]) == n
        np.testing.assert_allclose(u[p].numpy(), uu, rtol=1e-10)
        np.testing.assert_allclose(v[p, :k].numpy(), vv, rtol=1e-10)


def test_auto_falls_back_to_log_domain_only_where_needed():
    M, a, b, sizes = random_batch(8, P=4)
    M[1] *= 40.0  # problem 1: kernel underflows at reg 0.1
    reg = 0.1
    Mt = torch.tensor(M, dtype=torch.float32)
    a32, b32 = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    res = sinkhorn(a32, b32, Mt, reg, method="auto", max_iter=100)
    assert res.log_domain.tolist() == [False, True, False, False]
    plain = sinkhorn(a32, b32, Mt, reg, method="sinkhorn", max_iter=100)
    assert not plain.log_domain.any()
    assert not torch.isfinite(plain.plan(torch.exp(Mt / -reg))[1]).all()
    T = res.plan(torch.exp(Mt / -reg)).numpy()
    assert np.isfinite(T).all()
    log = sinkhorn(a32, b32, Mt, reg, method="sinkhorn_log", max_iter=100)
    np.testing.assert_allclose(T, log.plan().numpy(), rtol=0, atol=1e-6)
    assert torch.equal(log.plan(), log.plan(torch.exp(Mt / -reg)))
    S = 1.0 - Mt
    np.testing.assert_allclose(
        res.inner(torch.exp(Mt / -reg), S).numpy(),
        (torch.tensor(T) * S).sum((-1, -2)).numpy(),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="unknown Sinkhorn method"):
        sinkhorn(a32, b32, Mt, reg, method="exact")
