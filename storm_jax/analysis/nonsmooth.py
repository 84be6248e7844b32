"""Non-smooth spots of the pipeline that are not the predictor's: where max-normalisation switches.

With ``normalization="max"`` (the reference), ``ν(M) = max_n |s[n] + M·n[n]|`` is the upper
envelope of the 2L lines ``±(s[n] + M·n[n])``: convex and piecewise linear in M, with a kink
wherever the arg-max sample changes. Those kinks propagate into ŝ(M) (DESIGN.md, "Non-smooth
spots are first-class") and must be told apart from a kink of the predictor; every analysis can
therefore also run with ``normalization="frozen"``. (With power scaling ``y = s + sqrt(M)·n`` the
envelope is piecewise linear in ``sqrt(M)``.) The derivative JAX takes at a switch is finite (a
one-sided or averaged slope), never NaN.

The other spot, ``|c|^α`` at c = 0 (infinite slope for α < 1), is handled in
:func:`storm_jax.audio.compress` by a bounded derivative inside ``|c| < grad_floor``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["NormSwitches", "normalization_switches", "distance_to_switch"]


class NormSwitches(NamedTuple):
    """Arg-max switches of ``ν(M) = max_n |y(M)[n]|`` inside an M interval (one utterance).

    Attributes:
        m: M values of the switches, ascending ``[S]``.
        before, after: sample index n holding the maximum just below / above each switch ``[S]``.
        argmax: sample holding the maximum at the interval's left end.
    """

    m: np.ndarray
    before: np.ndarray
    after: np.ndarray
    argmax: int


def _envelope_breaks(a: np.ndarray, b: np.ndarray, lo: float, hi: float):
    """Breakpoints in ``(lo, hi)`` of ``max_k (a_k + b_k·x)``, walking from ``lo`` to the right.

    At the current line k only lines with a larger slope can overtake it; the next breakpoint is
    the nearest crossing ``x_j = (a_k − a_j)/(b_j − b_k)`` to the right (ties: the steepest line,
    which stays on top longest). Each step is one vectorised pass; there are few switches.
    """
    val = a + b * lo
    top = np.flatnonzero(val >= val.max() - 1e-12 * max(1.0, abs(val.max())))
    k = int(top[np.argmax(b[top])])  # among ties at lo, the steepest is on top just right of lo
    first = k
    xs, ks = [], [k]
    x = lo
    while True:
        steeper = b > b[k]
        if not steeper.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = (a[k] - a[steeper]) / (b[steeper] - b[k])
        idx = np.flatnonzero(steeper)
        ok = cross > x
        if not ok.any():
            break
        cross, idx = cross[ok], idx[ok]
        xmin = cross.min()
        if xmin >= hi:
            break
        cand = idx[cross <= xmin + 1e-12 * max(1.0, abs(xmin))]
        k = int(cand[np.argmax(b[cand])])
        xs.append(float(xmin))
        ks.append(k)
        x = xmin
    return np.asarray(xs), np.asarray(ks), first


def normalization_switches(clean, noise, m_range=(0.25, 4.0), power: bool = False):
    """Where the max-normalisation factor switches samples, for M in ``m_range``.

    Args:
        clean, noise: waveforms ``[L]`` or ``[B, L]`` (float; converted to float64 NumPy).
        m_range: ``(M_lo, M_hi)``, ``0 < M_lo < M_hi``.
        power: mixtures ``clean + sqrt(M)·noise``.

    Returns:
        :class:`NormSwitches` for one utterance, or a list of them for a batch.
    """
    c = np.asarray(clean, np.float64)
    z = np.asarray(noise, np.float64)
    if c.shape != z.shape:
        raise ValueError(f"clean and noise must have the same shape, got {c.shape} and {z.shape}")
    lo, hi = (float(v) for v in m_range)
    if not (0 < lo < hi) or not np.isfinite(hi):
        raise ValueError(f"m_range must satisfy 0 < M_lo < M_hi < inf, got {m_range}")
    if c.ndim == 2:
        return [normalization_switches(ci, zi, m_range, power) for ci, zi in zip(c, z)]
    if c.ndim != 1:
        raise ValueError("clean and noise must be [L] or [B, L]")
    L = c.shape[0]
    # Lines ±(c_n + x·z_n) in x = M (or sqrt(M)); line k ↦ sample k mod L.
    a = np.concatenate([c, -c])
    b = np.concatenate([z, -z])
    tr = (lambda m: np.sqrt(m)) if power else (lambda m: m)
    xs, ks, first = _envelope_breaks(a, b, tr(lo), tr(hi))
    ms = xs**2 if power else xs
    samples = ks % L
    # A crossing of +line and −line of the same sample would be at a zero of the envelope, which
    # is impossible unless y ≡ 0; every breakpoint is a switch between two samples.
    return NormSwitches(m=ms, before=samples[:-1], after=samples[1:], argmax=int(first % L))


def distance_to_switch(m, switches: NormSwitches) -> float:
    """Relative distance ``min_s |M − M_s| / M`` of M to the nearest switch (``inf`` if none)."""
    if switches.m.size == 0:
        return float("inf")
    return float(np.min(np.abs(switches.m - m)) / m)
