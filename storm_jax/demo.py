"""A generated speech-like example, so the main job runs with nothing to download.

The "speech" is a harmonic source (f0 gliding between 100 and 220 Hz) shaped by three moving
formant resonances and a 4 Hz syllable envelope; the noise is pink-ish (1/f) Gaussian noise
scaled to a given SNR. It exercises the whole pipeline; the embedded eSpeak corpus is the real
default data set once it exists.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["synthetic_example"]


def synthetic_example(key, seconds: float = 2.0, rate: int = 16000, snr_db: float = 5.0):
    """``(clean, noise)`` float32 waveforms of ``seconds`` at ``rate``; ``clean + noise`` has the
    given SNR. Deterministic in ``key``."""
    n = int(round(seconds * rate))
    k1, k2 = jax.random.split(key)
    t = jnp.arange(n) / rate
    p = jax.random.uniform(k1, (4,))
    f0 = 100.0 + 60.0 * (1 + jnp.sin(2 * math.pi * (0.3 + 0.2 * p[0]) * t + 6.0 * p[1]))
    phase = 2 * math.pi * jnp.cumsum(f0) / rate
    formants = jnp.array([500.0, 1500.0, 2500.0]) * (1 + 0.2 * jnp.sin(2 * math.pi * 0.7 * t[:, None] + p[2] * jnp.arange(3)))
    clean = jnp.zeros(n)
    for h in range(1, 30):
        fh = h * f0
        gain = jnp.sum(jnp.exp(-0.5 * ((fh[:, None] - formants) / 150.0) ** 2), axis=-1) + 0.05
        clean = clean + jnp.where(fh < rate / 2 - 200, gain * jnp.sin(h * phase) / h**0.5, 0.0)
    envelope = jnp.clip(jnp.sin(2 * math.pi * 2.0 * t + p[3]), 0.0, None) ** 0.5
    clean = 0.3 * clean * envelope / jnp.max(jnp.abs(clean))
    white = jax.random.normal(k2, (n,))
    spec = jnp.fft.rfft(white)
    f = jnp.arange(spec.shape[0]) + 1.0
    noise = jnp.fft.irfft(spec / jnp.sqrt(f), n)
    gain = jnp.sqrt(jnp.sum(clean**2) / jnp.sum(noise**2) / 10 ** (snr_db / 10))
    return clean.astype(jnp.float32), (gain * noise).astype(jnp.float32)
