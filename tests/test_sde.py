"""OUVE SDE: reference values, closed-form marginals against a Monte-Carlo simulation."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from storm_jax import OUVE


def test_reference_values():
    sde = OUVE()
    # storm-reference.md § OUVE SDE (4 significant digits as stated there)
    assert float(sde.std(1.0)) == pytest.approx(0.3890, abs=5e-5)
    assert float(sde.std(0.5)) == pytest.approx(0.1217, abs=5e-5)
    assert float(sde.std(0.03)) == pytest.approx(0.01883, abs=5e-6)
    assert float(sde.g(1.0)) == pytest.approx(1.0730, abs=5e-5)
    assert float(sde.g(0.03)) == pytest.approx(0.1150, abs=5e-5)
    assert float(jnp.exp(-sde.theta)) == pytest.approx(0.2231, abs=5e-5)


def test_variance_solves_its_ode():
    # d(σ²)/dt = −2θσ² + g² for the OU process with time-varying diffusion.
    sde = OUVE(theta=1.3, sigma_min=0.02, sigma_max=0.7)
    t = jnp.linspace(0.05, 1.0, 7)
    dvar = jax.vmap(jax.grad(lambda s: sde.var(s)))(t)
    np.testing.assert_allclose(dvar, -2 * sde.theta * sde.var(t) + sde.g(t) ** 2, rtol=1e-10)
    assert float(sde.var(0.0)) == 0.0


def test_mean_and_std_against_monte_carlo():
    """Simulate the forward SDE with fine Euler–Maruyama steps (complex noise, E|dw|² = dt)."""
    sde = OUVE()
    key = jax.random.key(0)
    n_paths, n_steps, t_end = 20000, 400, 0.7
    x0, C = 0.8 - 0.3j, -0.2 + 0.5j
    dt = t_end / n_steps

    def step(x, inp):
        k, z = inp
        t = k * dt
        return x + sde.drift(x, C) * dt + sde.g(t) * jnp.sqrt(dt) * z, None

    kr, ki = jax.random.split(key)
    z = (jax.random.normal(kr, (n_steps, n_paths)) + 1j * jax.random.normal(ki, (n_steps, n_paths))) / np.sqrt(2)
    x, _ = jax.lax.scan(step, jnp.full(n_paths, x0, complex), (jnp.arange(n_steps), z))
    mu = sde.mean(jnp.asarray(x0), jnp.asarray(C), t_end)
    sigma = float(sde.std(t_end))
    # Monte-Carlo standard error of the mean is sigma/sqrt(n) ≈ 1e-3; 5 SE tolerance.
    assert abs(complex(jnp.mean(x)) - complex(mu)) < 5 * sigma / np.sqrt(n_paths)
    emp = float(jnp.sqrt(jnp.mean(jnp.abs(x - mu) ** 2)))
    assert emp == pytest.approx(sigma, rel=0.02)  # sampling + O(dt) discretisation


def test_batched_time_broadcasts_over_spectrogram_axes():
    sde = OUVE()
    x0 = jnp.ones((3, 4, 5), complex)
    C = jnp.zeros((3, 4, 5), complex)
    t = jnp.asarray([0.1, 0.5, 1.0])
    mu = sde.mean(x0, C, t)
    np.testing.assert_allclose(mu[:, 0, 0], np.exp(-1.5 * np.asarray(t)))


def test_prior_and_reverse_drift():
    sde = OUVE()
    C = jnp.asarray([1.0 + 1j])
    z = jnp.asarray([0.5 - 0.5j])
    np.testing.assert_allclose(sde.prior_sample(C, z), C + sde.std(1.0) * z)
    x, s, t = jnp.asarray([0.2 + 0j]), jnp.asarray([0.3 - 0.1j]), 0.4
    np.testing.assert_allclose(sde.reverse_drift(x, C, t, s), 1.5 * (C - x) - sde.g(t) ** 2 * s)


def test_invalid_schedule():
    with pytest.raises(ValueError):
        OUVE(sigma_min=0.5, sigma_max=0.1)
    with pytest.raises(ValueError):
        OUVE(t_eps=1.0)
