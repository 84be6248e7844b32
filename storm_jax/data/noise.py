"""Procedural noise for the embedded corpus.

Every generator is a pure function ``(rng, n_samples, rate, ...) -> float64 [n_samples]`` of an
explicit ``numpy.random.Generator`` and returns a signal of unit RMS (so the corpus builder can
scale it to a target SNR). Types (DESIGN.md § Data): ``white``, ``pink`` (power ∝ 1/f),
``brown`` (power ∝ 1/f²), ``babble`` (a mixture of other utterances), ``hum`` (mains 50/60 Hz with
harmonics) and ``bursts`` (non-stationary band-limited noise bursts and clicks over a quiet floor).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import signal as _signal

__all__ = ["NOISE_TYPES", "white", "pink", "brown", "babble", "hum", "bursts", "make_noise"]

NOISE_TYPES: tuple[str, ...] = ("white", "pink", "brown", "babble", "hum", "bursts")


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x))))
    if not np.isfinite(rms) or rms == 0.0:
        raise ValueError("noise generator produced a silent or non-finite signal")
    return x / rms


def _check_n(n: int) -> int:
    n = int(n)
    if n <= 0:
        raise ValueError(f"noise length must be positive, got {n}")
    return n


def white(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Gaussian white noise (flat power spectrum), unit RMS."""
    return _unit_rms(rng.standard_normal(_check_n(n)))


def _coloured(rng: np.random.Generator, n: int, rate: int, exponent: float, f_min: float = 20.0) -> np.ndarray:
    """White noise shaped in the frequency domain so that power ∝ f^(−exponent) above ``f_min``
    (flat below it, and no DC)."""
    n = _check_n(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, d=1.0 / rate)
    gain = np.maximum(f, f_min) ** (-exponent / 2.0)
    gain[0] = 0.0
    x = np.fft.irfft(spec * gain, n=n)
    return _unit_rms(x)


def pink(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Pink noise: power spectral density ∝ 1/f (−3 dB/octave) above 20 Hz, unit RMS."""
    return _coloured(rng, n, rate, 1.0)


def brown(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Brown (red) noise: power spectral density ∝ 1/f² (−6 dB/octave) above 20 Hz, unit RMS."""
    return _coloured(rng, n, rate, 2.0)


def babble(rng: np.random.Generator, n: int, rate: int, talkers: Sequence[np.ndarray], n_talkers: tuple[int, int] = (3, 6)) -> np.ndarray:
    """Babble: the sum of ``k ∈ [n_talkers]`` utterances drawn from ``talkers`` without
    replacement, each circularly shifted by a random offset, repeated to length ``n``,
    normalised to unit RMS and weighted by a gain uniform in [0.5, 1]; unit RMS overall.

    ``talkers`` are other utterances (the caller excludes the target's own sentence).
    """
    n = _check_n(n)
    if len(talkers) == 0:
        raise ValueError("babble needs at least one other utterance")
    lo, hi = n_talkers
    k = int(min(rng.integers(lo, hi + 1), len(talkers)))
    chosen = rng.choice(len(talkers), size=k, replace=False)
    out = np.zeros(n)
    for idx in chosen:
        t = np.asarray(talkers[int(idx)], dtype=np.float64)
        t = np.tile(t, -(-n // t.size))
        t = np.roll(t, int(rng.integers(t.size)))[:n]
        out += rng.uniform(0.5, 1.0) * _unit_rms(t)
    return _unit_rms(out)


def hum(rng: np.random.Generator, n: int, rate: int = 16000, n_harmonics: int = 12) -> np.ndarray:
    """Mains hum: fundamental 50 or 60 Hz (equal odds) times (1 + 0.001·sin(2π·0.2 t)) drift,
    harmonics ``k = 1..n_harmonics`` with amplitude ``k^(−p)·U(0.5, 1)`` (p ~ U(0.5, 1.5), odd
    harmonics 2× stronger, as from a rectifier/transformer), random phases, plus a white floor
    40 dB below; unit RMS. Harmonics above 0.45·rate are dropped."""
    n = _check_n(n)
    t = np.arange(n) / rate
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    p = rng.uniform(0.5, 1.5)
    drift_phase = rng.uniform(0, 2 * np.pi)
    # instantaneous phase of the fundamental with a slow ±0.1 % frequency drift
    phase0 = 2 * np.pi * f0 * (t - 0.001 / (2 * np.pi * 0.2) * (np.cos(2 * np.pi * 0.2 * t + drift_phase) - np.cos(drift_phase)))
    x = np.zeros(n)
    for k in range(1, n_harmonics + 1):
        if k * f0 > 0.45 * rate:
            break
        amp = k ** (-p) * rng.uniform(0.5, 1.0) * (2.0 if k % 2 else 1.0)
        x += amp * np.sin(k * phase0 + rng.uniform(0, 2 * np.pi))
    x = _unit_rms(x) + 0.01 * rng.standard_normal(n)
    return _unit_rms(x)


def bursts(rng: np.random.Generator, n: int, rate: int = 16000, rate_per_s: float = 2.5) -> np.ndarray:
    """Non-stationary bursts: Poisson(``rate_per_s``·duration, at least 1) events at uniform
    onsets; 80 % are band-pass noise bursts (4th-order Butterworth, centre 200–4000 Hz log-uniform,
    one octave wide, 30–300 ms, Hann envelope, amplitude 0.3–3), 20 % are clicks (5 ms
    exponentially decaying white noise, amplitude 2–6); over a pink floor at 0.05 amplitude
    (−26 dB). Unit RMS."""
    n = _check_n(n)
    x = 0.05 * pink(rng, n, rate)
    n_events = max(1, int(rng.poisson(rate_per_s * n / rate)))
    for _ in range(n_events):
        onset = int(rng.integers(n))
        if rng.random() < 0.8:
            length = int(rate * rng.uniform(0.03, 0.3))
            fc = float(np.exp(rng.uniform(np.log(200.0), np.log(4000.0))))
            band = [fc / np.sqrt(2), min(fc * np.sqrt(2), 0.49 * rate)]
            sos = _signal.butter(4, band, btype="bandpass", fs=rate, output="sos")
            ev = _signal.sosfilt(sos, rng.standard_normal(length + 256))[256:]
            ev = _unit_rms(ev) * np.hanning(length) * rng.uniform(0.3, 3.0)
        else:
            length = int(rate * 0.005)
            ev = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.001 * rate)) * rng.uniform(2.0, 6.0)
        stop = min(onset + length, n)
        x[onset:stop] += ev[: stop - onset]
    return _unit_rms(x)


def make_noise(kind: str, rng: np.random.Generator, n: int, rate: int = 16000, talkers: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Dispatch on ``kind`` (one of :data:`NOISE_TYPES`); ``talkers`` is used by ``babble`` only."""
    if kind == "babble":
        return babble(rng, n, rate, talkers)
    gens = {"white": white, "pink": pink, "brown": brown, "hum": hum, "bursts": bursts}
    if kind not in gens:
        raise ValueError(f"unknown noise type {kind!r}; choose from {', '.join(NOISE_TYPES)}")
    return gens[kind](rng, n, rate)
