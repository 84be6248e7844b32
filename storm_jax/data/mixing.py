"""Mixing clean speech and noise at a noise amplitude M (DESIGN.md § Notation).

``y(M) = s + M·n`` (``power=True``: ``s + sqrt(M)·n``). The stored noise of a corpus is scaled so
that M = M* = 1 gives the configured SNR (default 5 dB); then, with amplitude scaling,
``SNR(M) = SNR(1) − 20·log10(M)`` — M = 2 is 6.02 dB more noise. :func:`mix` is the ``jnp``
function of the pipeline (``storm_jax.mix``), differentiable in M; :func:`mix_np` is the same
formula in NumPy float32 for data loading.

SNRs are energy ratios over the whole utterance: ``SNR = 10·log10(Σ s² / Σ (M·n)²)`` in dB.
"""

from __future__ import annotations

import numpy as np

from ..pipeline import mix

__all__ = ["mix", "mix_np", "snr_db", "scale_to_snr", "m_for_snr", "snr_for_m", "noise_gain"]


def noise_gain(m, power: bool = False):
    """The factor that multiplies the noise at amplitude ``m``: ``m`` or ``sqrt(m)`` (``power``)."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(m < 0):
        raise ValueError(f"noise amplitude M must be >= 0, got {m}")
    return np.sqrt(m) if power else m


def mix_np(clean: np.ndarray, noise: np.ndarray, m=1.0, power: bool = False) -> np.ndarray:
    """``clean + g(M)·noise`` in float32 NumPy (``g`` from :func:`noise_gain`); shapes ``[..., L]``,
    ``m`` scalar or ``[...]``."""
    clean = np.asarray(clean, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if clean.shape != noise.shape:
        raise ValueError(f"mix: clean shape {clean.shape} differs from noise shape {noise.shape}")
    g = noise_gain(m, power).astype(np.float32)
    return clean + g[..., None] * noise


def snr_db(clean: np.ndarray, noise: np.ndarray, m=1.0, power: bool = False) -> np.ndarray:
    """SNR of ``y(M)`` in dB over the last axis: ``10·log10(Σ s² / Σ (g(M)·n)²)`` (float64)."""
    s = np.asarray(clean, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    g = noise_gain(m, power)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.sum(s * s, axis=-1) / (np.square(g) * np.sum(n * n, axis=-1)))


def scale_to_snr(clean: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """``noise`` (float64) scaled so that ``snr_db(clean, result) == snr`` (dB).

    Raises ``ValueError`` for silent clean or noise (no finite scale exists).
    """
    s = np.asarray(clean, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    es, en = float(np.sum(s * s)), float(np.sum(n * n))
    if es == 0.0 or en == 0.0:
        raise ValueError("scale_to_snr: clean and noise must both have nonzero energy")
    return n * np.sqrt(es / (en * 10.0 ** (snr / 10.0)))


def m_for_snr(snr: float | np.ndarray, snr_at_m1: float | np.ndarray, power: bool = False):
    """The amplitude M that gives ``snr`` dB when M = 1 gives ``snr_at_m1`` dB:
    ``10^((SNR₁ − SNR)/20)`` (``power``: ``10^((SNR₁ − SNR)/10)``)."""
    diff = np.asarray(snr_at_m1, dtype=np.float64) - np.asarray(snr, dtype=np.float64)
    return 10.0 ** (diff / (10.0 if power else 20.0))


def snr_for_m(m, snr_at_m1, power: bool = False):
    """SNR in dB at amplitude ``m``: ``SNR₁ − 20·log10(M)`` (``power``: ``SNR₁ − 10·log10(M)``)."""
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.asarray(snr_at_m1, dtype=np.float64) - (10.0 if power else 20.0) * np.log10(m)
