"""The enhancement pipeline and the pure map M ↦ ŝ(M) on a fixed Brownian path (tiny preset)."""

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import storm_jax as sj
from storm_jax.demo import synthetic_example

L = 8000  # 0.5 s → 63 frames → padded to 64
CFG = sj.EnhanceConfig(sampler=sj.SamplerConfig(steps=4))


@pytest.fixture(scope="module")
def tiny():
    return sj.init_storm("tiny", jax.random.key(0))


@pytest.fixture(scope="module")
def signals():
    clean, noise = synthetic_example(jax.random.key(1), seconds=L / 16000)
    return clean, noise


def test_shapes_and_padding(tiny, signals):
    clean, noise = signals
    assert sj.spec_shape(tiny, L) == (256, 64)
    draws = sj.draws_for(tiny, L, jax.random.key(2), CFG.sampler)
    out = jax.jit(sj.enhance_mixture, static_argnames="config")(tiny, clean, noise, 1.0, draws, config=CFG)
    assert out.waveform.shape == (L,) and out.spec.shape == (256, 64)
    assert np.all(np.isfinite(np.asarray(out.waveform)))
    np.testing.assert_allclose(out.norm, jnp.max(jnp.abs(clean + noise)), rtol=1e-6)


def test_same_draws_same_output_any_m(tiny, signals):
    clean, noise = signals
    draws = sj.draws_for(tiny, L, jax.random.key(3), CFG.sampler)
    f = jax.jit(lambda m, d: sj.enhance_mixture(tiny, clean, noise, m, d, CFG).waveform)
    a, b = f(1.3, draws), f(1.3, draws)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, f(1.3, sj.draws_for(tiny, L, jax.random.key(4), CFG.sampler)))
    # enhance() with an integer seed is reproducible too
    y = np.asarray(clean + noise)
    np.testing.assert_array_equal(sj.enhance(tiny, y, 7, steps=4), sj.enhance(tiny, y, 7, steps=4))


def test_pathwise_derivative_matches_finite_difference(tiny, signals):
    """dŝ/dM by jvp equals a central difference on the same draws (float64)."""
    m64 = tiny.astype(jnp.float64)
    clean, noise = (jnp.asarray(s, jnp.float64) for s in signals)
    draws = sj.draws_for(m64, L, jax.random.key(5), CFG.sampler, dtype=jnp.complex128)
    f = jax.jit(lambda m: sj.enhance_mixture(m64, clean, noise, m, draws, CFG).waveform)
    m0, h = 1.1, 1e-5
    _, tangent = jax.jvp(f, (m0,), (1.0,))
    fd = (f(m0 + h) - f(m0 - h)) / (2 * h)
    assert np.all(np.isfinite(np.asarray(tangent)))
    assert float(jnp.linalg.norm(tangent - fd) / jnp.linalg.norm(fd)) < 1e-6


def test_normalization_modes_and_predictor_only(tiny, signals):
    clean, noise = signals
    y = clean + noise
    draws = sj.draws_for(tiny, L, jax.random.key(6), CFG.sampler)
    nu = float(jnp.max(jnp.abs(y)))
    a = sj.enhance_waveform(tiny, y, draws, CFG)
    b = sj.enhance_waveform(tiny, y, draws, dataclasses.replace(CFG, normalization="frozen", norm_factor=nu))
    np.testing.assert_allclose(a.waveform, b.waveform, rtol=1e-5, atol=1e-6)
    r = sj.enhance_waveform(tiny, y, draws, dataclasses.replace(CFG, normalization="rms"))
    assert np.all(np.isfinite(np.asarray(r.waveform)))
    p = sj.enhance_waveform(tiny, y, draws, dataclasses.replace(CFG, predictor_only=True))
    np.testing.assert_allclose(p.spec, sj.predictor(tiny, p.Y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="norm_factor"):
        sj.EnhanceConfig(normalization="frozen")


def test_batch_of_waveforms(tiny, signals):
    clean, noise = signals
    y = jnp.stack([clean + noise, clean + 0.5 * noise])
    out = sj.enhance(tiny, np.asarray(y), 0, steps=2)
    assert out.shape == (2, L) and np.all(np.isfinite(out))


def test_spectral_domain_is_reference_order(tiny, signals):
    """Y = pad64(compress(stft(y/ν))); ŝ = ν·istft(decompress(x̂)) over the padded spectrogram."""
    clean, noise = signals
    y = clean + noise
    out = sj.enhance_waveform(tiny, y, sj.draws_for(tiny, L, jax.random.key(8), CFG.sampler), CFG)
    nu = jnp.max(jnp.abs(y))
    Y = sj.pad_frames(sj.compress(sj.stft(y / nu), 0.5, 0.15), 64)
    np.testing.assert_allclose(out.Y, Y, rtol=1e-6, atol=1e-7)
    wav = nu * sj.istft(sj.decompress(out.spec, 0.5, 0.15), L)
    np.testing.assert_allclose(out.waveform, wav, rtol=1e-5, atol=1e-6)


def test_mean_of_samples(tiny, signals):
    """EnhanceConfig(samples=K): ŝ = (1/K)·Σ_k ŝ_k with sample k on key fold_in(key, k) (k ≥ 1)."""
    clean, noise = signals
    y = np.asarray(clean + noise)
    key = jax.random.key(9)
    one = [sj.enhance(tiny, y, key if k == 0 else jax.random.fold_in(key, k), config=CFG) for k in range(3)]
    three = sj.enhance(tiny, y, key, config=dataclasses.replace(CFG, samples=3))
    np.testing.assert_allclose(three, np.mean(one, axis=0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(sj.enhance(tiny, y, key, config=dataclasses.replace(CFG, samples=1)), one[0])
    # the samples differ, so the mean is not any one of them
    dev = [float(np.sum((o - three) ** 2)) for o in one]
    assert min(dev) > 0
    # the predictor is deterministic: nothing to average
    pcfg = dataclasses.replace(CFG, predictor_only=True)
    np.testing.assert_array_equal(sj.enhance(tiny, y, key, config=dataclasses.replace(pcfg, samples=4)), sj.enhance(tiny, y, key, config=pcfg))
    with pytest.raises(ValueError, match="one noise path"):
        sj.enhance_waveform(tiny, y, sj.draws_for(tiny, L, key, CFG.sampler), dataclasses.replace(CFG, samples=2))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="samples must be a positive integer"):
            sj.EnhanceConfig(samples=bad)
