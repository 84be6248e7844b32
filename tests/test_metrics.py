"""Metrics against hand computations (issue 3, item 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storm_jax import energy_ratios, enhancement_metrics, estoi, pesq_wb, si_sar, si_sdr, si_sir
from storm_jax.data import DEFAULT_VOICES, Synthesizer
from storm_jax.metrics import MetricError


def _orthonormal(n, k, seed=0):
    """k orthonormal zero-mean vectors of length n (QR of Gaussian columns after centring)."""
    a = np.random.default_rng(seed).standard_normal((n, k))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)
    return q.T


def test_si_sdr_hand_computation_and_invariances():
    s, e = _orthonormal(4000, 2)
    s, e = 3.0 * s, 0.5 * e
    est = s + e  # e ⟂ s: the projection of est on s is s itself
    expected = 10 * np.log10(np.sum(s**2) / np.sum(e**2))  # = 20·log10(3/0.5) = 15.563 dB
    assert float(si_sdr(est, s)) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(20 * np.log10(6.0), abs=1e-9)
    # scale invariance in the estimate and in the reference (any nonzero factor, either sign)
    for c in (0.01, 7.0, -2.0):
        assert float(si_sdr(c * est, s)) == pytest.approx(expected, abs=1e-8)
        assert float(si_sdr(est, c * s)) == pytest.approx(expected, abs=1e-8)
    # zero_mean: a DC offset does not matter; without it, it counts as distortion
    assert float(si_sdr(est + 0.3, s)) == pytest.approx(expected, abs=1e-8)
    assert float(si_sdr(est + 0.3, s, zero_mean=False)) < expected - 1.0
    # batched over leading axes
    batch = si_sdr(np.stack([est, s + 2 * e]), np.stack([s, s]))
    assert batch.shape == (2,) and float(batch[1]) == pytest.approx(expected - 20 * np.log10(2), abs=1e-8)
    assert np.isinf(float(si_sdr(s, s)))  # no eps: identical signals give +inf


def test_si_sdr_gradient_matches_finite_differences():
    s, e, d = _orthonormal(512, 3, seed=1)
    est = s + 0.3 * e
    g = jax.grad(lambda x: si_sdr(x, s))(jnp.asarray(est))
    h = 1e-6
    fd = (float(si_sdr(est + h * d, s)) - float(si_sdr(est - h * d, s))) / (2 * h)
    assert float(jnp.dot(g, d)) == pytest.approx(fd, rel=1e-5)
    assert np.all(np.isfinite(np.asarray(g)))


def test_energy_ratios_hand_computation():
    s, n, a = _orthonormal(3000, 3, seed=2)
    s, n, a = 2.0 * s, 1.5 * n, 0.4 * a  # mutually orthogonal: speech, noise, artefact
    est = 0.9 * s + 0.2 * n + a
    es, en, ea = (0.9**2) * np.sum(s**2), (0.2**2) * np.sum(n**2), np.sum(a**2)
    sdr, sir, sar = (float(v) for v in energy_ratios(est, s, n))
    assert sdr == pytest.approx(10 * np.log10(es / (en + ea)), abs=1e-9)
    assert sir == pytest.approx(10 * np.log10(es / en), abs=1e-9)
    assert sar == pytest.approx(10 * np.log10(es / ea), abs=1e-9)
    assert float(si_sir(est, s, n)) == pytest.approx(sir, abs=1e-12)
    assert float(si_sar(est, s, n)) == pytest.approx(sar, abs=1e-12)
    # its SI-SDR is the plain SI-SDR (without zero-mean, as the reference evaluation)
    assert sdr == pytest.approx(float(si_sdr(est, s, zero_mean=False)), abs=1e-9)
    # the reference formula (sgmse energy_ratios) on non-orthogonal signals
    rng = np.random.default_rng(3)
    s2, n2 = rng.standard_normal(2000), rng.standard_normal(2000)
    est2 = 0.8 * s2 + 0.3 * n2 + 0.1 * rng.standard_normal(2000)
    t = np.dot(est2, s2) / np.dot(s2, s2) * s2
    en2 = np.dot(est2, n2) / np.dot(n2, n2) * n2
    art = est2 - t - en2
    ref = [10 * np.log10(np.sum(t**2) / np.sum(x**2)) for x in (en2 + art, en2, art)]
    assert np.allclose([float(v) for v in energy_ratios(est2, s2, n2)], ref, atol=1e-9)


@pytest.fixture(scope="module")
def speech():
    with Synthesizer() as syn:
        x = syn.speak("Clear speech makes the quality measures meaningful.", DEFAULT_VOICES[0])
    return 0.5 * x.astype(np.float64) / np.max(np.abs(x))


def _noisy(x, snr, seed=0):
    n = np.random.default_rng(seed).standard_normal(x.size)
    return x + n * np.sqrt(np.sum(x**2) / (np.sum(n**2) * 10 ** (snr / 10)))


def test_pesq_and_estoi_on_identical_and_noisy_speech(speech):
    # identical signals: PESQ-WB saturates at its maximum 4.644, ESTOI at 1
    assert float(pesq_wb(speech, speech)) == pytest.approx(4.644, abs=1e-3)
    assert float(estoi(speech, speech)) == pytest.approx(1.0, abs=1e-6)
    p = [float(pesq_wb(_noisy(speech, snr), speech)) for snr in (20.0, 5.0, -5.0)]
    e = [float(estoi(_noisy(speech, snr), speech)) for snr in (20.0, 5.0, -5.0)]
    assert 4.64 > p[0] > p[1] > p[2] >= 1.0
    assert 1.0 > e[0] > e[1] > e[2] > 0.0
    assert p[1] < 2.0 and e[1] < 0.9  # white noise at 5 dB is clearly degraded
    # batched over leading axes, equal to the per-utterance values
    batch = np.stack([_noisy(speech, 20.0), _noisy(speech, 5.0)])
    assert np.allclose(pesq_wb(batch, np.stack([speech, speech])), p[:2], atol=1e-12)
    assert np.allclose(estoi(batch, np.stack([speech, speech])), e[:2], atol=1e-12)


def test_enhancement_metrics_table(speech):
    noisy = _noisy(speech, 5.0)
    out = enhancement_metrics(noisy, speech, noisy=noisy)
    assert set(out) == {"si_sdr", "pesq", "estoi", "si_sir", "si_sar"}
    assert float(out["si_sdr"]) == pytest.approx(5.0, abs=0.1)  # input SNR 5 dB of white noise
    assert float(out["si_sir"]) == pytest.approx(5.0, abs=0.1)
    # the noisy input has no artefacts: only the small speech–noise correlation leaks into e_art
    assert float(out["si_sar"]) > 30.0


def test_metric_input_errors(speech):
    with pytest.raises(MetricError, match="differs from reference shape"):
        pesq_wb(speech[:-1], speech)
    with pytest.raises(MetricError, match="needs 16000 Hz"):
        pesq_wb(speech, speech, rate=8000)
    with pytest.raises(MetricError, match="NaN or Inf"):
        estoi(np.full_like(speech, np.nan), speech)
    with pytest.raises(MetricError, match="utterance 0: the reference is silent"):
        pesq_wb(np.zeros(16000), np.zeros(16000))
    with pytest.raises(MetricError, match="utterance 0: BufferTooShortError"):
        pesq_wb(speech[:1000], speech[:1000])  # PESQ needs at least 0.25 s
