"""Acceptance tests for :mod:`fiftyone_lazsl.core.scoring`.

Every expected value is computed independently of the library: the golden
outputs of the official LaZSL scorer (``shared/data/golden/*.npz``), a plain
per-problem NumPy loop written here from the algorithm statement in
``shared/data/README.md``, a float64 log-domain variant of that loop, and POT's
``ot.sinkhorn``.
"""

import glob
import os

import numpy as np
import pytest
import torch

from fiftyone_lazsl.core import scoring
from fiftyone_lazsl.core.scoring import clip_scores, dclip_scores, lazsl_scores


# --------------------------------------------------------------------------
# Independent references (float64, one (image, class) problem at a time)
# --------------------------------------------------------------------------
def _logsumexp(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def ref_problem(g, X, Tt, *, theta, eps, max_iter, stop_tol, gamma, log_domain=False):
    """README steps 1-4 for one image (global ``g`` [D], crops ``X`` [N, D]) and one
    class (its *real* attributes ``Tt`` [A_c, D]). Returns ``(psi, plan, S, keep)``."""
    g, X, Tt = (np.asarray(a, dtype=np.float64) for a in (g, X, Tt))
    N, A = X.shape[0], Tt.shape[0]
    # 1. hybrid similarity
    s_g = Tt @ g  # [A]
    s_l = X @ Tt.T  # [N, A]
    S = (1.0 - theta) * s_g[None, :] + theta * s_l
    # 2. vision selection
    r_n = X @ g
    keep = ~(r_n < r_n.mean() + gamma)
    mu = keep.astype(np.float64) / keep.sum()
    nu = np.full(A, 1.0 / A)
    # 3. Sinkhorn from r = 1, c = 1
    if not log_domain:
        K = np.exp(-(1.0 - S) / eps)
        r = np.ones(N)
        c = np.ones(A)
        for _ in range(max_iter):
            r_prev = r
            r = mu / (K @ c)
            c = nu / (K.T @ r)
            if np.mean(np.abs(r - r_prev)) < stop_tol:
                break
        plan = r[:, None] * K * c[None, :]
    else:
        logK = -(1.0 - S) / eps
        with np.errstate(divide="ignore"):
            log_mu = np.log(mu)
        log_nu = np.log(nu)
        f = np.zeros(N)
        h = np.zeros(A)
        for _ in range(max_iter):
            f_prev = f
            f = log_mu - _logsumexp(logK + h[None, :], axis=1)
            h = log_nu - _logsumexp(logK + f[:, None], axis=0)
            if np.mean(np.abs(np.exp(f) - np.exp(f_prev))) < stop_tol:
                break
        plan = np.exp(f[:, None] + logK + h[None, :])
    # 4. score
    return float(np.sum(plan * S)), plan, S, keep


def ref_scores(image_features, text_features, text_mask, **kw):
    imf = np.asarray(image_features, dtype=np.float64)
    tf = np.asarray(text_features, dtype=np.float64)
    m = np.asarray(text_mask, dtype=bool)
    B, C = imf.shape[0], tf.shape[0]
    out = np.zeros((B, C))
    for b in range(B):
        for c in range(C):
            out[b, c] = ref_problem(imf[b, 0], imf[b, 1:], tf[c][m[c]], **kw)[0]
    return out


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_problem(seed, B=3, N=10, C=5, A=6, D=16, correlated=0.0, ragged=True):
    """Random unit features; ragged attribute counts with zero padding (or every
    class with ``A`` attributes when ``ragged=False``). ``correlated`` mixes a
    shared direction in so similarities are spread out."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(D)
    img = unit(rng.standard_normal((B, 1 + N, D)) + correlated * base).astype(np.float32)
    txt = unit(rng.standard_normal((C, A, D)) + correlated * base).astype(np.float32)
    counts = rng.integers(1, A + 1, size=C)
    counts[0] = A  # at least one full class
    counts[-1] = 1  # and a single-attribute class
    if not ragged:
        counts[:] = A
    mask = np.arange(A)[None, :] < counts[:, None]
    txt[~mask] = 0.0
    return img, txt, mask


def T(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# --------------------------------------------------------------------------
# Golden files of the official implementation
# --------------------------------------------------------------------------
def _golden_files():
    from conftest import SHARED

    # the official LaZSL scorer's files (wca_*.npz are WCA's: tests/test_wca.py)
    return sorted(glob.glob(str(SHARED / "golden" / "official_*.npz")))


def _golden_params(d):
    return dict(
        theta=float(d["theta"]),
        eps=float(d["eps"]),
        max_iter=int(d["max_iter"]),
        stop_tol=float(d["stop_tol"]),
        gamma=float(d["gamma"]),
    )


@pytest.fixture(
    params=_golden_files() or [None], ids=lambda p: os.path.basename(p) if p else "no-golden"
)
def golden(request, shared_data):
    if request.param is None:
        pytest.skip("no golden/*.npz files in shared data")
    return dict(np.load(request.param))


def test_golden_files_present(shared_data):
    assert len(glob.glob(str(shared_data / "golden" / "*.npz"))) >= 1


def test_golden_scores(golden):
    d = golden
    scores = lazsl_scores(
        T(d["image_features"]), T(d["text_features"]), T(d["text_mask"]), **_golden_params(d)
    )
    assert scores.dtype == torch.float32
    assert scores.shape == d["scores"].shape
    np.testing.assert_allclose(scores.numpy(), d["scores"], rtol=0, atol=1e-5)
    assert np.array_equal(scores.numpy().argmax(1), d["scores"].argmax(1))


def test_golden_dclip_scores(golden):
    d = golden
    s = dclip_scores(T(d["image_features"]), T(d["text_features"]), T(d["text_mask"]))
    np.testing.assert_allclose(s.numpy(), d["dclip_scores"], rtol=0, atol=1e-5)
    assert np.array_equal(s.numpy().argmax(1), d["dclip_scores"].argmax(1))
    # also accepts [B, D] global features
    s2 = dclip_scores(T(d["image_features"][:, 0]), T(d["text_features"]), T(d["text_mask"]))
    np.testing.assert_allclose(s2.numpy(), d["dclip_scores"], rtol=0, atol=1e-5)


def test_golden_plan_and_unpacking(golden):
    d = golden
    B, N1, _ = d["image_features"].shape
    C, A, _ = d["text_features"].shape
    out = lazsl_scores(
        T(d["image_features"]),
        T(d["text_features"]),
        T(d["text_mask"]),
        return_plan=True,
        **_golden_params(d),
    )
    scores, plans, keep = out
    assert tuple(scores.shape) == (B, C)
    assert tuple(plans.shape) == (B, C, N1 - 1, A)
    assert tuple(keep.shape) == (B, N1 - 1) and keep.dtype == torch.bool
    np.testing.assert_allclose(scores.numpy(), d["scores"], rtol=0, atol=1e-5)

    c = int(d["plan_class_b0"])
    a_c = int(d["text_mask"][c].sum())
    assert d["plan_b0"].shape == (N1 - 1, a_c)
    plan = plans[0, c, :, :a_c].numpy()
    np.testing.assert_allclose(plan, d["plan_b0"], rtol=0, atol=1e-6)
    # padded attributes carry no mass
    assert np.all(plans[0, c, :, a_c:].numpy() == 0)
    sim = out.similarity[0, c, :, :a_c].numpy()
    np.testing.assert_allclose(sim, d["plan_cost_sim_b0"], rtol=0, atol=1e-6)
    # dropped crops carry no mass (golden rows are 0 there)
    dropped = ~keep[0].numpy()
    assert dropped.any()
    assert np.all(plan[dropped] == 0)
    assert np.all(d["plan_b0"][dropped] == 0)


def test_golden_matches_numpy_reference(golden):
    """Sanity of the test's own reference: it reproduces the official scores."""
    d = golden
    ref = ref_scores(
        d["image_features"][:2], d["text_features"][:8], d["text_mask"][:8], **_golden_params(d)
    )
    np.testing.assert_allclose(ref, d["scores"][:2, :8], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------
# Independent per-problem reference on random inputs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.05, -0.03])
def test_matches_numpy_loop(theta, gamma):
    img, txt, mask = random_problem(
        seed=int(theta * 10 + gamma * 1000) % 97, B=3, N=12, C=6, A=7, D=24, correlated=0.8
    )
    kw = dict(theta=theta, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=gamma)
    got = lazsl_scores(T(img), T(txt), T(mask), **kw)
    ref = ref_scores(img, txt, mask, **kw)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ragged", [False, True])
def test_matches_numpy_loop_plans_and_keep(ragged):
    img, txt, mask = random_problem(seed=5, B=2, N=9, C=4, A=5, D=16, correlated=0.5, ragged=ragged)
    kw = dict(theta=0.8, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=0.02)
    out = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
    for b in range(2):
        for c in range(4):
            a_c = int(mask[c].sum())
            psi, plan, S, keep = ref_problem(img[b, 0], img[b, 1:], txt[c, :a_c], **kw)
            assert np.array_equal(out.keep[b].numpy(), keep)
            np.testing.assert_allclose(out.plans[b, c, :, :a_c].numpy(), plan, rtol=0, atol=1e-6)
            np.testing.assert_allclose(out.similarity[b, c, :, :a_c].numpy(), S, rtol=0, atol=1e-6)
            assert np.all(out.plans[b, c, :, a_c:].numpy() == 0)
            assert out.scores[b, c].item() == pytest.approx(psi, abs=1e-5)


@pytest.mark.parametrize("ragged", [False, True])
def test_other_eps_and_iteration_caps(ragged):
    img, txt, mask = random_problem(
        seed=11, B=2, N=8, C=4, A=5, D=16, correlated=0.6, ragged=ragged
    )
    for kw in (
        dict(theta=0.8, eps=0.05, max_iter=100, stop_tol=1e-2, gamma=0.0),
        dict(theta=0.3, eps=0.5, max_iter=3, stop_tol=1e-3, gamma=0.0),
        dict(theta=0.8, eps=0.1, max_iter=1, stop_tol=1e-2, gamma=0.0),
    ):
        got = lazsl_scores(T(img), T(txt), T(mask), **kw)
        np.testing.assert_allclose(got.numpy(), ref_scores(img, txt, mask, **kw), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------
# Converged plans against POT
# --------------------------------------------------------------------------
def test_converged_plans_match_pot():
    ot = pytest.importorskip("ot")
    img, txt, mask = random_problem(seed=3, B=2, N=10, C=4, A=6, D=16, correlated=0.7)
    eps = 0.1
    out = lazsl_scores(
        T(img),
        T(txt),
        T(mask),
        theta=0.8,
        eps=eps,
        max_iter=2000,
        stop_tol=0.0,
        gamma=0.0,
        return_plan=True,
    )
    assert int(out.iterations.min()) == 2000
    for b, c in [(0, 0), (0, 3), (1, 1), (1, 2)]:
        a_c = int(mask[c].sum())
        keep = out.keep[b].numpy()
        S = out.similarity[b, c][keep][:, :a_c].double().numpy()
        mu = np.full(keep.sum(), 1.0 / keep.sum())
        nu = np.full(a_c, 1.0 / a_c)
        P = ot.sinkhorn(mu, nu, 1.0 - S, reg=eps, numItermax=100000, stopThr=1e-12)
        plan = out.plans[b, c].numpy()
        np.testing.assert_allclose(plan[keep][:, :a_c], P, rtol=0, atol=1e-6)
        assert np.all(plan[~keep] == 0)
        # marginals of the converged plan
        np.testing.assert_allclose(plan[keep][:, :a_c].sum(1), mu, atol=1e-6)
        np.testing.assert_allclose(plan[keep][:, :a_c].sum(0), nu, atol=1e-6)


# --------------------------------------------------------------------------
# Batching, per-problem stopping and chunking
# --------------------------------------------------------------------------
def test_batched_equals_one_at_a_time():
    img, txt, mask = random_problem(seed=21, B=4, N=15, C=6, A=7, D=24, correlated=1.0)
    kw = dict(theta=0.8, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=0.0)
    out = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
    # the problems do stop at different iterations: per-problem rule matters here
    assert len(set(out.iterations.flatten().tolist())) > 1
    full = out.scores.numpy()
    for b in range(4):
        one = lazsl_scores(T(img[b : b + 1]), T(txt), T(mask), **kw).numpy()
        np.testing.assert_allclose(one[0], full[b], rtol=0, atol=1e-6)
    for c in range(6):
        one = lazsl_scores(T(img), T(txt[c : c + 1]), T(mask[c : c + 1]), **kw).numpy()
        np.testing.assert_allclose(one[:, 0], full[:, c], rtol=0, atol=1e-6)
    # and one class alone with its padding removed
    for c in range(6):
        a_c = int(mask[c].sum())
        one = lazsl_scores(T(img), T(txt[c : c + 1, :a_c]), T(mask[c : c + 1, :a_c]), **kw).numpy()
        np.testing.assert_allclose(one[:, 0], full[:, c], rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_iter", [100, 1])
def test_zero_padding_is_not_part_of_the_problem(max_iter):
    """A class padded to A attributes is the same transport problem as the class
    alone (README: one class at a time): same iterations, same plan."""
    img, txt, mask = random_problem(seed=5, B=2, N=9, C=4, A=5, D=16, correlated=0.5)
    kw = dict(theta=0.8, eps=0.1, max_iter=max_iter, stop_tol=1e-2, gamma=0.02)
    padded = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
    for c in range(4):
        a_c = int(mask[c].sum())
        alone = lazsl_scores(
            T(img), T(txt[c : c + 1, :a_c]), T(mask[c : c + 1, :a_c]), return_plan=True, **kw
        )
        assert torch.equal(alone.iterations[:, 0], padded.iterations[:, c])
        np.testing.assert_allclose(
            padded.plans[:, c, :, :a_c].numpy(), alone.plans[:, 0].numpy(), rtol=0, atol=1e-7
        )


def test_class_chunking(monkeypatch):
    img, txt, mask = random_problem(seed=8, B=3, N=11, C=9, A=6, D=16, correlated=0.5)
    kw = dict(theta=0.8, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=0.0)
    whole = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
    for limit in (1, 3 * 11 * 6 * 2):  # one class per chunk; two classes per chunk
        monkeypatch.setattr(scoring, "_MAX_ELEMENTS", limit)
        calls = []
        orig = scoring._lazsl_chunk
        monkeypatch.setattr(
            scoring,
            "_lazsl_chunk",
            lambda *a, calls=calls, orig=orig, **k: calls.append(1) or orig(*a, **k),
        )
        part = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
        monkeypatch.setattr(scoring, "_lazsl_chunk", orig)
        assert len(calls) == (9 if limit == 1 else 5)
        np.testing.assert_allclose(part.scores.numpy(), whole.scores.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(part.plans.numpy(), whole.plans.numpy(), rtol=0, atol=1e-7)
        assert torch.equal(part.keep, whole.keep)
        assert torch.equal(part.iterations, whole.iterations)
        assert tuple(part.plans.shape) == (3, 9, 11, 6)


# --------------------------------------------------------------------------
# Half precision and exp underflow
# --------------------------------------------------------------------------
def test_half_precision_inputs():
    img, txt, mask = random_problem(seed=13, B=2, N=10, C=5, A=6, D=32, correlated=0.7)
    img16, txt16 = T(img).half(), T(txt).half()
    kw = dict(theta=0.8, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=0.0)
    got = lazsl_scores(img16, txt16, T(mask), **kw)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    ref = ref_scores(img16.double().numpy(), txt16.double().numpy(), mask, **kw)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)
    d = dclip_scores(img16, txt16, T(mask))
    assert d.dtype == torch.float32 and torch.isfinite(d).all()


@pytest.mark.parametrize(
    "eps,ragged", [(0.005, False), (0.002, False), (0.005, True), (0.002, True)]
)
def test_tiny_eps_underflow_is_finite_and_exact(eps, ragged):
    # Uncorrelated features: S ~ 0, so exp(-(1 - S)/eps) ~ exp(-200) underflows in float32.
    img, txt, mask = random_problem(
        seed=17, B=2, N=10, C=5, A=6, D=32, correlated=0.0, ragged=ragged
    )
    S = np.einsum("bnd,cad->bcna", img[:, 1:], txt)
    assert np.exp(-(1 - S[..., mask[0]].max()) / eps).astype(np.float32) == 0  # premise: underflow
    kw = dict(theta=0.8, eps=eps, max_iter=100, stop_tol=1e-2, gamma=0.0)
    got = lazsl_scores(T(img), T(txt), T(mask), return_plan=True, **kw)
    assert torch.isfinite(got.scores).all()
    assert torch.isfinite(got.plans).all()
    ref = ref_scores(img, txt, mask, log_domain=True, **kw)
    np.testing.assert_allclose(got.scores.numpy(), ref, rtol=0, atol=1e-5)
    # fp16 inputs with tiny eps as well
    got16 = lazsl_scores(T(img).half(), T(txt).half(), T(mask), **kw)
    assert torch.isfinite(got16).all()
    ref16 = ref_scores(
        T(img).half().double().numpy(), T(txt).half().double().numpy(), mask, log_domain=True, **kw
    )
    np.testing.assert_allclose(got16.numpy(), ref16, rtol=0, atol=1e-5)


def test_partial_underflow_is_exact():
    """Spread-out similarities with a small eps: only *some* kernel entries
    underflow in float32; the plan must still equal the float64 log-domain one."""
    img, txt, mask = random_problem(seed=29, B=2, N=10, C=5, A=6, D=8, correlated=1.5)
    eps = 0.01
    S = np.einsum("bnd,cad->bcna", img[:, 1:].astype(np.float64), txt.astype(np.float64))
    K32 = np.exp(-(1 - S) / eps).astype(np.float32)
    real = np.broadcast_to(mask[None, :, None, :], K32.shape)
    assert (K32[real] == 0).any() and (K32[real] > 0).any()  # premise: partial underflow
    kw = dict(theta=0.8, eps=eps, max_iter=100, stop_tol=1e-2, gamma=0.0)
    got = lazsl_scores(T(img), T(txt), T(mask), **kw)
    assert torch.isfinite(got).all()
    ref = ref_scores(img, txt, mask, log_domain=True, **kw)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)


def test_log_domain_reference_agrees_with_plain_reference():
    """Sanity of the test's own log-domain reference at a normal eps."""
    img, txt, mask = random_problem(seed=2, B=2, N=8, C=3, A=5, D=16, correlated=0.5)
    kw = dict(theta=0.8, eps=0.1, max_iter=100, stop_tol=1e-2, gamma=0.0)
    np.testing.assert_allclose(
        ref_scores(img, txt, mask, log_domain=True, **kw),
        ref_scores(img, txt, mask, **kw),
        rtol=0,
        atol=1e-10,
    )


# --------------------------------------------------------------------------
# Errors and the CLIP baseline
# --------------------------------------------------------------------------
def test_bad_shapes_raise():
    img, txt, mask = random_problem(seed=1, B=2, N=4, C=3, A=4, D=8)
    img, txt, mask = T(img), T(txt), T(mask)
    with pytest.raises(ValueError):
        lazsl_scores(img[:, 0], txt, mask)  # [B, D] image features
    with pytest.raises(ValueError):
        lazsl_scores(img[:, :1], txt, mask)  # no crop
    with pytest.raises(ValueError):
        lazsl_scores(img, txt[:, 0], mask)  # [C, D] text features
    with pytest.raises(ValueError):
        lazsl_scores(img, txt, mask[:, :3])  # mask shape
    with pytest.raises(ValueError):
        lazsl_scores(img, txt, mask[:2])  # mask classes
    with pytest.raises(ValueError):
        lazsl_scores(img[..., :7], txt, mask)  # feature dims differ


def test_class_without_attribute_raises():
    img, txt, mask = random_problem(seed=1, B=2, N=4, C=3, A=4, D=8)
    mask = mask.copy()
    mask[1] = False
    with pytest.raises(ValueError, match="no attribute"):
        lazsl_scores(T(img), T(txt), T(mask))


def test_clip_scores():
    rng = np.random.default_rng(4)
    img = unit(rng.standard_normal((3, 5, 16))).astype(np.float32)
    cls = unit(rng.standard_normal((7, 16))).astype(np.float32)
    expected = np.array(
        [
            [
                float(np.dot(img[b, 0].astype(np.float64), cls[c].astype(np.float64)))
                for c in range(7)
            ]
            for b in range(3)
        ]
    )
    got = clip_scores(T(img), T(cls))
    assert got.shape == (3, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        clip_scores(T(img[:, 0]), T(cls)).numpy(), expected, rtol=0, atol=1e-6
    )
