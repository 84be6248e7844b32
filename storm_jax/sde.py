"""The Ornstein–Uhlenbeck variance-exploding SDE (OUVE) of SGMSE+/StoRM.

Forward SDE (reference ``sgmse/sdes.py``, ``OUVESDE``; ``storm-reference.md`` § OUVE SDE)::

    dx = θ·(C − x)·dt + g(t)·dw,   g(t) = σ_min·(σ_max/σ_min)^t·sqrt(2·ln(σ_max/σ_min)),

on complex spectrograms, where ``w`` is a complex Brownian motion with ``E|dw|² = dt`` (real
and imaginary parts each of variance dt/2, the convention of ``torch.randn_like`` on complex
tensors). For StoRM the attractor C is the predictor output. Marginals::

    μ(t) = e^{−θt}·x0 + (1 − e^{−θt})·C,
    σ(t)² = σ_min²·(e^{2(θ+L)t} − 1)·e^{−2θt}·L/(θ + L),   L = ln(σ_max/σ_min).

The noise schedule (θ, σ_min, σ_max) and the integration floor t_eps are first-class config.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

__all__ = ["OUVE"]


@dataclasses.dataclass(frozen=True)
class OUVE:
    """OUVE SDE with its schedule; all methods are pure functions of arrays.

    Attributes:
        theta: stiffness θ (1.5).
        sigma_min, sigma_max: schedule bounds (0.05, 0.5).
        t_eps: smallest time the reverse process reaches (0.03).
        T: final time (1).
    """

    theta: float = 1.5
    sigma_min: float = 0.05
    sigma_max: float = 0.5
    t_eps: float = 0.03
    T: float = 1.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"OUVE: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.theta < 0:
            raise ValueError(f"OUVE: theta must be >= 0, got {self.theta}")
        if not (0 <= self.t_eps < self.T):
            raise ValueError(f"OUVE: need 0 <= t_eps < T, got t_eps={self.t_eps}, T={self.T}")

    @property
    def log_ratio(self) -> float:
        """L = ln(σ_max/σ_min)."""
        return math.log(self.sigma_max / self.sigma_min)

    def g(self, t: Float[Array, "..."]) -> Float[Array, "..."]:
        """Diffusion coefficient ``g(t) = σ_min·(σ_max/σ_min)^t·sqrt(2L)``."""
        t = jnp.asarray(t)
        return self.sigma_min * jnp.exp(self.log_ratio * t) * math.sqrt(2.0 * self.log_ratio)

    def drift(self, x: Complex[Array, "..."], C: Complex[Array, "..."], t=None) -> Complex[Array, "..."]:
        """Forward drift ``f(x, C) = θ·(C − x)`` (time-independent)."""
        return self.theta * (C - x)

    def mean(self, x0: Complex[Array, "..."], C: Complex[Array, "..."], t: Float[Array, "..."]):
        """Marginal mean ``μ(t) = e^{−θt}·x0 + (1 − e^{−θt})·C``; ``t`` broadcasts against the
        leading (batch) axes, i.e. a ``[B]`` time vector applies to ``[B, F, T]`` arrays."""
        decay = _expand(jnp.exp(-self.theta * jnp.asarray(t)), jnp.ndim(x0))
        return decay * x0 + (1.0 - decay) * C

    def var(self, t: Float[Array, "..."]) -> Float[Array, "..."]:
        """Marginal variance ``σ(t)² = σ_min²·(e^{2(θ+L)t} − 1)·e^{−2θt}·L/(θ+L)``."""
        t = jnp.asarray(t)
        L, th = self.log_ratio, self.theta
        return self.sigma_min**2 * jnp.expm1(2.0 * (th + L) * t) * jnp.exp(-2.0 * th * t) * L / (th + L)

    def std(self, t: Float[Array, "..."]) -> Float[Array, "..."]:
        """Marginal standard deviation σ(t) (for complex x: ``E|x − μ|² = σ²``)."""
        return jnp.sqrt(self.var(t))

    def prior_sample(self, C: Complex[Array, "..."], z: Complex[Array, "..."]) -> Complex[Array, "..."]:
        """Start of the reverse process ``x_T = C + σ(T)·z`` for a given standard draw z."""
        return C + self.std(jnp.asarray(self.T, jnp.real(C).dtype)) * z

    def reverse_drift(self, x, C, t, score):
        """Drift of the reverse-time SDE in forward-time convention,
        ``f_rev = θ·(C − x) − g(t)²·s`` (reference ``RSDE.sde``); integrating from t to t − dt gives
        ``x − f_rev·dt + g·sqrt(dt)·z``."""
        g = _expand(self.g(t), jnp.ndim(x))
        return self.drift(x, C) - g * g * score

    def probability_flow_drift(self, x, C, t, score):
        """Drift of the probability-flow ODE, ``θ·(C − x) − ½·g(t)²·s``."""
        g = _expand(self.g(t), jnp.ndim(x))
        return self.drift(x, C) - 0.5 * g * g * score


def _expand(a, ndim: int):
    """Append singleton axes so a per-batch scalar broadcasts over the trailing ``[F, T]`` axes."""
    a = jnp.asarray(a)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


jax.tree_util.register_static(OUVE)
