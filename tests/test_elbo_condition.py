"""ELBO of the OUVE model and Importance of Condition (second seed): closed forms on Gaussian
problems, exact limits, and the model-level entry points on the micro preset."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import storm_jax
from storm_jax.analysis.condition import condition_importance
from storm_jax.analysis.elbo import elbo_of_score, likelihood_weight, sample_likelihood_times, weight_integral
from storm_jax.sde import OUVE

SDE = OUVE()


def _gaussian_problem(seed=0, shape=(2, 4, 8)):
    """Data x0 ~ CN(m, v0) per bin around a fixed attractor C; the exact score of its forward marginal."""
    r = np.random.default_rng(seed)
    cplx = lambda s: (r.standard_normal(shape) + 1j * r.standard_normal(shape)) * s
    m, C, v0 = cplx(0.3), cplx(0.3), 0.04
    X = m + cplx(math.sqrt(v0 / 2))

    def score_fn(x, t):
        a = jnp.exp(-SDE.theta * t)[..., None, None]
        V = a**2 * v0 + SDE.var(t)[..., None, None]
        return -(x - (a * m + (1 - a) * C)) / V

    def bracket(t):
        """E|σ_t·s + z|² per bin (bin mean) for the exact score, a function of t (float)."""
        a, s2 = math.exp(-SDE.theta * t), float(SDE.var(t))
        V = a * a * v0 + s2
        return float(np.mean(s2 * a * a * np.abs(X - m) ** 2 / V**2 + (1 - s2 / V) ** 2, axis=(-2, -1)).mean()), (
            np.mean(s2 * a * a * np.abs(X - m) ** 2 / V**2, axis=(-2, -1)) + (1 - s2 / V) ** 2)

    return jnp.asarray(X), jnp.asarray(C), score_fn, bracket


def _closed_form(bracket):
    eps, T = SDE.t_eps, SDE.T
    per = lambda f: np.array([integrate.quad(lambda t: f(t)[b], eps, T, limit=200, epsabs=1e-12, epsrel=1e-10)[0] for b in range(2)])
    den = per(lambda t: float(likelihood_weight(SDE, t)) * bracket(t)[1])
    uni = per(lambda t: bracket(t)[1]) / (T - eps)
    v_eps = float(SDE.var(eps)) * math.exp(2 * SDE.theta * eps)
    rec = math.log(math.pi * v_eps) + bracket(eps)[1]
    return den, uni, rec


def test_likelihood_time_proposal_is_the_normalised_weight():
    """Λ = ∫λ dt by quadrature (1e-9), and the inverse-CDF draws follow λ/Λ (their CDF at
    quartiles within 0.01 of the integral of the weight)."""
    lam = lambda t: float(likelihood_weight(SDE, t))
    Lam = integrate.quad(lam, SDE.t_eps, SDE.T, limit=200)[0]
    np.testing.assert_allclose(float(weight_integral(SDE)), Lam, rtol=1e-9)
    t = np.asarray(sample_likelihood_times(SDE, jax.random.key(0), (200_000,), jnp.float64))
    assert t.min() >= SDE.t_eps and t.max() <= SDE.T
    for q in (0.05, 0.2, 0.5):
        want = integrate.quad(lam, SDE.t_eps, q)[0] / Lam
        assert abs(np.mean(t <= q) - want) < 0.01


def test_elbo_matches_the_closed_form_bound_of_a_gaussian_problem():
    """With the exact score of a Gaussian data model each estimated term lies within three
    standard errors of its quadrature value (float64), the prior term is exact, and the
    standard errors shrink as 1/√n (a 4× larger n halves them, ±25 %)."""
    X, C, score_fn, bracket = _gaussian_problem()
    den, uni, rec = _closed_form(bracket)
    a_T = math.exp(-SDE.theta * SDE.T)
    prior = a_T**2 * np.mean(np.abs(np.asarray(X - C)) ** 2, axis=(-2, -1)) / float(SDE.var(SDE.T))
    Lam = float(weight_integral(SDE))
    est = jax.jit(lambda k, n: elbo_of_score(SDE, score_fn, X, C, k, samples=n), static_argnums=1)
    e = est(jax.random.key(1), 256)
    np.testing.assert_allclose(np.asarray(e.prior), prior, rtol=1e-12)
    assert np.all(np.asarray(e.prior_se) == 0)
    for got, se, want in ((e.denoising, e.denoising_se, den), (e.reconstruction, e.reconstruction_se, rec),
                          (e.training_loss, e.training_loss_se, 0.5 * uni), (e.weighting_gap, e.weighting_gap_se, den - Lam * uni),
                          (e.total, e.total_se, prior + den + rec)):
        got, se = np.asarray(got), np.asarray(se)
        assert got.shape == (2,) and np.all(se > 0)
        assert np.all(np.abs(got - want) < 3 * se), (got, want, se)
    small = est(jax.random.key(2), 64)
    ratio = np.asarray(small.denoising_se) / np.asarray(est(jax.random.key(3), 1024).denoising_se)
    assert np.all((ratio > 0.75 * 4) & (ratio < 1.25 * 4)), ratio
    bpd = e.bits_per_dim()
    np.testing.assert_allclose(np.asarray(bpd.total), np.asarray(e.total) / (2 * math.log(2)), rtol=1e-12)


def test_elbo_of_the_micro_model_and_its_bad_input():
    cfg = storm_jax.storm_config("micro")
    model = storm_jax.init_storm(cfg, 0)
    r = np.random.default_rng(0)
    clean = (0.3 * r.standard_normal((2, 4000))).astype(np.float32)
    noisy = clean + (0.1 * r.standard_normal((2, 4000))).astype(np.float32)
    e = storm_jax.elbo(model, clean, noisy, jax.random.key(0), samples=4, chunk=2)
    for name, v in e._asdict().items():
        assert v.shape == (2,) and np.all(np.isfinite(np.asarray(v))), name
    np.testing.assert_allclose(np.asarray(e.total), np.asarray(e.prior + e.denoising + e.reconstruction), rtol=1e-6)
    # an untrained network outputs ≈ 0: ℓ ≈ E|z|² = 1 per bin, so the flat loss is ≈ ½ per bin
    assert np.all(np.abs(np.asarray(e.training_loss) - 0.5) < 0.1)
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        storm_jax.elbo(model, clean, noisy, jax.random.key(0), samples=1)
    with pytest.raises(ValueError, match="t_eps > 0"):
        bad = model.replace(config=dataclasses.replace(cfg, sde=dataclasses.replace(cfg.sde, t_eps=0.0)))
        storm_jax.elbo(bad, clean, noisy, jax.random.key(0))
    with pytest.raises(ValueError, match="silent"):
        storm_jax.elbo(model, clean, 0 * noisy, jax.random.key(0))
    with pytest.raises(ValueError, match="one shape"):
        storm_jax.elbo(model, clean, noisy[:, :100], jax.random.key(0))


# ------------------------------------------------------------------------ importance of condition


def _conds(seed=1, shape=(2, 4, 8)):
    r = np.random.default_rng(seed)
    c = lambda: jnp.asarray(0.3 * (r.standard_normal(shape) + 1j * r.standard_normal(shape)))
    return c(), c(), c()  # X, Y, C


def test_ioc_jacobian_is_zero_without_the_condition_and_one_without_x():
    X, Y, C = _conds()
    kw = dict(samples=3, probes=2, t=[0.1, 0.5, 1.0])
    blind = lambda x, t, y, c: -x / (1.0 + SDE.var(t)[..., None, None])
    out = condition_importance(SDE, blind, X, Y, C, C, jax.random.key(0), **kw)
    assert out.value.shape == (2, 3) and np.all(np.asarray(out.value) == 0)
    # s = (h(Y, C) − x)/σ²: the denoiser D = h(Y, C) ignores x
    only_c = lambda x, t, y, c: (0.5 * y + 0.3 * c * jnp.abs(c) - x) / SDE.var(t)[..., None, None]
    for wrt in ("both", "noisy", "predictor"):
        out = condition_importance(SDE, only_c, X, Y, C, C, jax.random.key(0), wrt=wrt, **kw)
        np.testing.assert_allclose(np.asarray(out.value), 1.0, atol=1e-10)


def test_ioc_jacobian_of_a_linear_score_is_exact():
    """s = −α·x + β·Y + γ·C (complex scalars): D's blocks multiply each bin by a complex number w,
    a real-linear map of Frobenius norm² 2|w|² per bin, which Rademacher probes hit exactly."""
    X, Y, C = _conds()
    al, be, ga = 2.0 + 0.5j, 0.7 - 0.2j, -0.4 + 0.9j
    lin = lambda x, t, y, c: -al * x + be * y + ga * c
    ts = np.array([0.05, 0.3, 0.9])
    out = condition_importance(SDE, lin, X, Y, C, C, jax.random.key(0), t=ts, samples=2, probes=1)
    s2 = np.asarray(SDE.var(ts))
    nx = 2 * 32 * np.abs(1 - s2 * al) ** 2
    for wrt, nc in (("both", 2 * 32 * s2**2 * (abs(be) ** 2 + abs(ga) ** 2)), ("noisy", 2 * 32 * s2**2 * abs(be) ** 2),
                    ("predictor", 2 * 32 * s2**2 * abs(ga) ** 2)):
        out = condition_importance(SDE, lin, X, Y, C, C, jax.random.key(0), t=ts, samples=2, probes=1, wrt=wrt)
        np.testing.assert_allclose(np.asarray(out.numerator), np.broadcast_to(nc, (2, 3)), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(out.value), np.broadcast_to(nc / (nx + nc), (2, 3)), rtol=1e-12)


def test_ioc_swap_with_itself_is_zero_and_with_another_is_the_hand_ratio():
    X, Y, C = _conds()
    lin = lambda x, t, y, c: -2.0 * x + 0.7 * y + 0.4 * c
    ts = [0.2, 0.8]
    same = condition_importance(SDE, lin, X, Y, C, C, jax.random.key(0), kind="swap", t=ts, samples=2, other=(Y, C))
    assert np.all(np.asarray(same.value) == 0)
    Y2, C2 = jnp.roll(Y, 1, axis=0), jnp.roll(C, 1, axis=0)
    out = condition_importance(SDE, lin, X, Y, C, C, jax.random.key(0), kind="swap", wrt="noisy", t=ts, samples=2, other=(Y2, C2))
    s2 = np.asarray(SDE.var(np.asarray(ts)))
    num = s2**2 * 0.49 * np.sum(np.abs(np.asarray(Y - Y2)) ** 2, axis=(-2, -1))[:, None]
    np.testing.assert_allclose(np.asarray(out.numerator), num, rtol=1e-12)
    assert np.all(np.asarray(out.value) > 0) and np.all(np.asarray(out.se) >= 0)


def test_importance_of_condition_of_the_micro_model():
    """On the marginal and along reverse trajectories: values in [0, 1] (jacobian), ≥ 0 (swap),
    0 for a self-swap; one value per utterance and time; bad arguments named."""
    model = storm_jax.init_storm("micro", 0)
    r = np.random.default_rng(0)
    clean = (0.3 * r.standard_normal((2, 2000))).astype(np.float32)
    noisy = clean + (0.1 * r.standard_normal((2, 2000))).astype(np.float32)
    k = jax.random.key(0)
    j = storm_jax.importance_of_condition(model, clean, noisy, k, t=[0.1, 0.6], samples=2, probes=1)
    assert j.value.shape == (2, 2) and np.all((np.asarray(j.value) >= 0) & (np.asarray(j.value) <= 1))
    rev = storm_jax.importance_of_condition(model, clean, noisy, k, along="reverse", steps=3, samples=2, probes=1, wrt="predictor")
    assert rev.value.shape == (2, 3) and np.allclose(np.asarray(rev.t), storm_jax.time_grid(model.config.sde, 3)[0])
    assert np.all((np.asarray(rev.value) >= 0) & (np.asarray(rev.value) <= 1))
    sw = storm_jax.importance_of_condition(model, clean, noisy, k, kind="swap", t=[0.5], samples=2)
    assert sw.value.shape == (2, 1) and np.all(np.asarray(sw.value) > 0)
    self_swap = storm_jax.importance_of_condition(model, clean, noisy, k, kind="swap", t=[0.5], samples=2, other_noisy=noisy)
    assert np.all(np.asarray(self_swap.value) == 0)
    with pytest.raises(ValueError, match="another utterance"):
        storm_jax.importance_of_condition(model, clean[0], noisy[0], k, kind="swap")
    with pytest.raises(ValueError, match=r"times must lie in \[t_eps, T\]"):
        storm_jax.importance_of_condition(model, clean, noisy, k, t=[0.0])
    with pytest.raises(ValueError, match="kind must be one of"):
        storm_jax.importance_of_condition(model, clean, noisy, k, kind="nope")
