"""Discrete samplers on a problem with a known score (Gaussian data), independent of the networks."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from storm_jax import OUVE
from storm_jax.sampling import Draws, SamplerConfig, make_draws, sample_with_score, time_grid


def gaussian_score(sde, mu0, s0, C):
    """Exact score of p_t for x0 ~ CN(mu0, s0²) under the OUVE forward process."""

    def score_fn(x, t):
        decay = jnp.exp(-sde.theta * t)
        m = decay * mu0 + (1 - decay) * C
        v = decay**2 * s0**2 + sde.var(t)
        return -(x - m) / v

    return score_fn


def test_time_grids():
    sde = OUVE()
    ts, dts = time_grid(sde, 30, "reference")
    np.testing.assert_allclose(ts, np.linspace(1, 0.03, 30))
    np.testing.assert_allclose(dts, 1 / 30)
    ts, dts = time_grid(sde, 30, "consistent")
    assert ts[0] == 1.0 and ts[-1] - dts[-1] == pytest.approx(0.03)
    assert np.sum(dts) == pytest.approx(0.97)
    # a later start T = 0.6: the reference steps still sum to 1 (over-integration by 1/0.57),
    # the consistent grid covers exactly [t_eps, T]
    late = OUVE(T=0.6)
    ts, dts = time_grid(late, 30, "reference")
    assert ts[0] == 0.6 and ts[-1] == pytest.approx(0.03) and np.sum(dts) == pytest.approx(1.0)
    ts, dts = time_grid(late, 30, "consistent")
    assert ts[0] == 0.6 and np.sum(dts) == pytest.approx(0.57) and ts[-1] - dts[-1] == pytest.approx(0.03)


def test_same_draws_same_output_and_replay():
    sde = OUVE()
    C = jnp.full((2, 4, 8), 0.3 + 0.1j, jnp.complex64)
    cfg = SamplerConfig(steps=10, corrector="ald")
    draws = make_draws(jax.random.key(0), C.shape, cfg, jnp.complex64)
    assert draws.predictor.shape == (10, 2, 4, 8) and draws.corrector.shape == (10, 1, 2, 4, 8)
    score = gaussian_score(sde, 0.0, 0.5, C)
    a = sample_with_score(sde, score, C, draws, cfg)
    b = sample_with_score(sde, score, C, draws, cfg)
    np.testing.assert_array_equal(a, b)
    c = sample_with_score(sde, score, C, make_draws(jax.random.key(1), C.shape, cfg, jnp.complex64), cfg)
    assert not np.allclose(a, c)
    # same draws under jit
    d = jax.jit(lambda dr: sample_with_score(sde, score, C, dr, cfg))(draws)
    np.testing.assert_allclose(d, a, rtol=1e-5, atol=1e-6)


def test_draw_convention():
    d = make_draws(jax.random.key(0), (200, 200), SamplerConfig(steps=1), jnp.complex128)
    z = np.asarray(d.prior)
    assert np.var(z.real) == pytest.approx(0.5, rel=0.03)
    assert np.mean(np.abs(z) ** 2) == pytest.approx(1.0, rel=0.03)
    d = make_draws(jax.random.key(0), (200, 200), SamplerConfig(steps=1, noise="real"), jnp.complex128)
    assert np.var(np.asarray(d.prior).real) == pytest.approx(1.0, rel=0.03)


def test_reverse_diffusion_equals_euler_maruyama():
    sde = OUVE()
    C = jnp.full((3, 5), 0.2 - 0.4j)
    score = gaussian_score(sde, 0.1, 0.3, C)
    for grid in ("reference", "consistent"):
        cfg = SamplerConfig(steps=12, grid=grid)
        draws = make_draws(jax.random.key(2), C.shape, cfg, jnp.complex128)
        a = sample_with_score(sde, score, C, draws, cfg)
        b = sample_with_score(sde, score, C, draws, SamplerConfig(steps=12, grid=grid, predictor="euler_maruyama"))
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_reference_step_by_step():
    """Re-implement the reference loop literally (corrector, then predictor; mean returned)."""
    sde = OUVE()
    C = jnp.asarray([[0.5 + 0.2j, -0.1 + 0.0j]])
    score = gaussian_score(sde, 0.0, 0.4, C)
    cfg = SamplerConfig(steps=5, corrector="ald", snr=0.5)
    draws = make_draws(jax.random.key(3), C.shape, cfg, jnp.complex128)
    x = C + sde.std(1.0) * draws.prior
    ts = np.linspace(1, 0.03, 5)
    for k, t in enumerate(ts):
        step = 2 * (0.5 * sde.std(t)) ** 2
        x = x + step * score(x, t) + jnp.sqrt(2 * step) * draws.corrector[k, 0]
        dt = 1 / 5
        G = sde.g(t) * np.sqrt(dt)
        x_mean = x - (1.5 * (C - x) * dt - G**2 * score(x, t))
        x = x_mean + G * draws.predictor[k]
    np.testing.assert_allclose(sample_with_score(sde, score, C, draws, cfg), x_mean, rtol=1e-12)


def test_sampler_reaches_the_data_distribution():
    """With the exact score and a fine consistent grid, samples at t_eps follow p_{t_eps}."""
    sde = OUVE()
    n = 20000
    mu0, s0 = 0.7 - 0.2j, 0.25
    C = jnp.full((n,), 0.1 + 0.3j)
    cfg = SamplerConfig(steps=200, grid="consistent", denoise=False)
    draws = make_draws(jax.random.key(4), C.shape, cfg, jnp.complex128)
    # StoRM's prior C + σ(1)·z is not p_1 (whose mean still remembers x0): start exactly at p_1
    # by rewriting the prior draw, so only the discretisation error remains.
    d1 = np.exp(-sde.theta)
    m1, v1 = d1 * mu0 + (1 - d1) * C, d1**2 * s0**2 + sde.var(1.0)
    draws = draws._replace(prior=(m1 - C + jnp.sqrt(v1) * draws.prior) / sde.std(1.0))
    x = sample_with_score(sde, gaussian_score(sde, mu0, s0, C), C, draws, cfg)
    t = sde.t_eps
    decay = np.exp(-sde.theta * t)
    m = decay * mu0 + (1 - decay) * 0.1 + 0.3j * (1 - decay)
    v = decay**2 * s0**2 + float(sde.var(t))
    assert abs(complex(jnp.mean(x)) - m) < 5 * np.sqrt(v / n)
    assert float(jnp.mean(jnp.abs(x - jnp.mean(x)) ** 2)) == pytest.approx(v, rel=0.05)


def test_bad_draws_rejected():
    sde = OUVE()
    C = jnp.zeros((2, 2), complex)
    draws = make_draws(jax.random.key(0), C.shape, SamplerConfig(steps=3))
    with pytest.raises(ValueError, match="steps"):
        sample_with_score(sde, lambda x, t: x, C, draws, SamplerConfig(steps=4))
    with pytest.raises(ValueError, match="corrector"):
        sample_with_score(sde, lambda x, t: x, C, draws, SamplerConfig(steps=3, corrector="ald"))
    with pytest.raises(ValueError, match="unknown grid"):
        SamplerConfig(grid="uniform")
