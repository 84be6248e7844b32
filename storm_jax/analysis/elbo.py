"""The continuous-time variational bound (ELBO) of the OUVE model and its terms.

Second seed (``closing-elbo-gap-abstract.txt``; DESIGN.md, "Noise-schedule / ELBO"). The forward
process started at the clean spectrogram ``X`` (``[F, T]`` complex bins, ``D = F·T``) is
``x_t ~ CN(μ_t, σ_t²·I)``, ``μ_t = a_t·X + (1 − a_t)·π``, ``a_t = e^{−θt}``, with π the attractor
(StoRM: the predictor output C; SGMSE+: Y). The model generates ``x_T ~ CN(π, σ_T²·I)`` (the
sampler's prior), runs the reverse SDE with its score s_θ down to ``t_ε`` and decodes
``X ~ CN(D̂(x_ε), v_ε·I)`` with the Tweedie estimate ``D̂ = (x_ε + σ_ε²·s_θ − (1 − a_ε)·π)/a_ε`` and
``v_ε = σ_ε²/a_ε²`` (the forward noise expressed at the scale of X). Jensen's inequality with the
forward path as proposal and Girsanov's theorem give (complex Brownian motion, ``E|dw|² = dt``,
so the drift error ``g²·(s_θ − s*)`` costs ``|·|²/g²`` per unit time, without the real case's ½)::

    −log p(X | Y, C) ≤ KL(q(x_T | X) ‖ π_T)                              prior
                     + ∫_{t_ε}^T g(t)²·E|s_θ(x_t, t) − s*(x_t, t)|² dt      denoising
                     + E[−log p(X | x_ε)]                                  reconstruction

with ``s* = −(x_t − μ_t)/σ_t² = −z/σ_t``. In the training loss's terms ``|σ_t·s_θ + z|²`` the
denoising term is ``∫ λ(t)·ℓ(t) dt``, ``ℓ(t) = E|σ_t·s_θ + z|²``, with the likelihood weight
``λ(t) = g(t)²/σ(t)²`` (the reference trains with ``t ~ U(t_ε, T)``, i.e. a flat weight). Closed
forms used here:

* prior: ``KL = a_T²·Σ|X − π|²/σ_T²`` (two complex Gaussians of one covariance);
* reconstruction: ``−log p(X | x_ε) = D·ln(π·v_ε) + Σ|σ_ε·s_θ(x_ε, t_ε) + z|²`` (with the
  Tweedie decoder ``X − D̂ = −(σ_ε/a_ε)·(σ_ε·s_θ + z)``);
* ``λ(t) = d/dt ln σ_t² + 2θ``, so ``Λ = ∫_{t_ε}^T λ dt = ln[expm1(2(θ+L)T)/expm1(2(θ+L)t_ε)]``
  (``L = ln(σ_max/σ_min)``).

λ behaves like 1/t near 0, so a uniform t would give the denoising estimator a heavy tail. It is
importance-sampled from the proposal ``q(t) = λ(t)/Λ`` itself, drawn exactly by inverting its CDF,
``t = log1p(exp(ℓ₀ + u·(ℓ₁ − ℓ₀)))/(2(θ + L))`` with ``ℓ = ln expm1(2(θ + L)·t)`` at ``t_ε, T`` and
``u ~ U(0, 1)``; each draw's value ``Λ·|σ_t·s_θ + z|²`` then has the variance of ℓ(t) alone (finite
for any score of finite error). The other terms are plain Monte Carlo over z (the prior is exact).

Units: every term is in **nats per complex bin** (the sum over the D bins divided by D);
:meth:`ELBO.bits_per_dim` converts to **bits per real dimension** (a complex bin is two real
dimensions: ``nats/bin / (2·ln 2)``). Values are of the density of the compressed, padded,
ν-normalised spectrogram — the space the model lives in — so they compare models and schedules
on one input, not waveform likelihoods.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..model import StormModel, score
from ..sampling import complex_normal
from ..sde import OUVE
from ._pair import check_positive_int, spectrogram_pair

__all__ = ["ELBO", "elbo", "elbo_of_score", "likelihood_weight", "sample_likelihood_times", "weight_integral"]


class ELBO(NamedTuple):
    """Terms of the bound, in nats per complex bin, each ``[*batch]`` (one value per utterance),
    with Monte Carlo standard errors (``*_se``; the prior term is exact, its error 0).

    Attributes:
        prior: ``KL(q(x_T | X) ‖ π_T)/D``.
        denoising: the likelihood-weighted score term ``∫ λ·ℓ dt / D``.
        reconstruction: ``E[−log p(X | x_ε)]/D``.
        total: their sum, the bound on ``−log p(X | Y, C)/D``.
        training_loss: the flat-weighted loss the reference trains, ``½·E_{t~U}[ℓ(t)]/D``
            (``loss_score`` per bin).
        weighting_gap: ``denoising − Λ·E_{t~U}[ℓ(t)]/D``: what the likelihood weighting adds over
            the same mean error spread evenly in t. Positive when the model's error sits where λ
            is large (small t), which a flat-weighted loss does not penalise — the sense in which
            the usual loss caps the ELBO.
    """

    prior: jax.Array
    denoising: jax.Array
    reconstruction: jax.Array
    total: jax.Array
    training_loss: jax.Array
    weighting_gap: jax.Array
    prior_se: jax.Array
    denoising_se: jax.Array
    reconstruction_se: jax.Array
    total_se: jax.Array
    training_loss_se: jax.Array
    weighting_gap_se: jax.Array

    def bits_per_dim(self) -> "ELBO":
        """The same terms in bits per real dimension (``nats per complex bin / (2·ln 2)``)."""
        return ELBO(*(v / (2.0 * math.log(2.0)) for v in self))


def likelihood_weight(sde: OUVE, t) -> jax.Array:
    """``λ(t) = g(t)²/σ(t)²`` (≈ 1/t near 0)."""
    t = jnp.asarray(t)
    return sde.g(t) ** 2 / sde.var(t)


def _log_expm1(a):
    # ln(e^a − 1) without overflow for large a
    return a + jnp.log(-jnp.expm1(-a))


def _weight_bounds(sde: OUVE, dtype):
    k = 2.0 * (sde.theta + sde.log_ratio)
    lo = _log_expm1(jnp.asarray(k * sde.t_eps, dtype))
    hi = _log_expm1(jnp.asarray(k * sde.T, dtype))
    return k, lo, hi


def weight_integral(sde: OUVE, dtype=jnp.float64) -> jax.Array:
    """``Λ = ∫_{t_ε}^T λ(t) dt = ln[expm1(2(θ+L)T)/expm1(2(θ+L)t_ε)]``."""
    _, lo, hi = _weight_bounds(sde, dtype)
    return hi - lo


def sample_likelihood_times(sde: OUVE, key, shape, dtype=jnp.float32) -> jax.Array:
    """Exact draws from ``q(t) = λ(t)/Λ`` on ``[t_ε, T]`` (inverse CDF; module doc)."""
    k, lo, hi = _weight_bounds(sde, dtype)
    u = jax.random.uniform(key, shape, dtype)
    ell = lo + u * (hi - lo)
    # ln(1 + e^ℓ) = softplus(ℓ), stable for either sign
    return jnp.clip(jax.nn.softplus(ell) / k, sde.t_eps, sde.T)


def _check_sde(name: str, sde: OUVE):
    if not sde.t_eps > 0:
        raise ValueError(f"{name}: the SDE's t_eps is {sde.t_eps}; the bound needs t_eps > 0 (its weight g²/σ² ~ 1/t is not integrable at 0)")


def _mean_se(v):
    """Mean and standard error over the leading (sample) axis."""
    n = v.shape[0]
    return jnp.mean(v, axis=0), jnp.std(v, axis=0, ddof=1) / math.sqrt(n)


def elbo_of_score(
    sde: OUVE,
    score_fn: Callable,
    X,
    attractor,
    key,
    *,
    samples: int = 64,
    chunk: int = 16,
) -> ELBO:
    """The bound of the module doc for any score ``score_fn(x, t) -> s`` (shapes of ``x``
    ``[*batch, F, T]``, ``t`` ``[*batch]``; its conditioning bound in), clean spectrogram ``X`` and
    attractor π (``[*batch, F, T]``, complex). ``samples`` draws (≥ 2) per Monte Carlo term, taken
    ``chunk`` at a time (vmapped) to bound memory; ``key`` is split once per term.

    Pure and traceable (``jax.jit`` it with ``score_fn`` closed over); each term's draws depend only
    on ``key`` and ``samples``, so the estimate is reproducible."""
    samples = check_positive_int("elbo", "samples", samples, 2)
    chunk = check_positive_int("elbo", "chunk", chunk)
    _check_sde("elbo", sde)
    # one compilation per score function and shape; inside a caller's jit this inlines
    return _elbo_core(sde, score_fn, jnp.asarray(X), attractor, key, samples, chunk)


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6))
def _elbo_core(sde, score_fn, X, attractor, key, samples, chunk) -> ELBO:
    X = jnp.asarray(X)
    attractor = jnp.asarray(attractor, X.dtype)
    rdt = jnp.real(X).dtype
    lead = X.shape[:-2]
    bins = X.shape[-2] * X.shape[-1]
    k_den, k_uni, k_rec = jax.random.split(key, 3)

    def per_bin(e):
        return jnp.sum(jnp.abs(e) ** 2, axis=(-2, -1)) / bins

    def ell(k, t):
        """``Σ|σ_t·s_θ(x_t, t) + z|²/D`` for one draw of z at times ``t`` ``[*batch]``."""
        z = complex_normal(k, X.shape, X.dtype)
        sigma = sde.std(t)[..., None, None]
        x_t = sde.mean(X, attractor, t) + sigma * z
        return per_bin(sigma * score_fn(x_t, t) + z)

    def draws(k, time_of):
        ks = jax.random.split(k, samples)
        return jax.lax.map(lambda kk: ell(jax.random.fold_in(kk, 1), time_of(jax.random.fold_in(kk, 0))), ks,
                           batch_size=min(chunk, samples))

    big_lambda = weight_integral(sde, rdt)
    den = big_lambda * draws(k_den, lambda k: sample_likelihood_times(sde, k, lead, rdt))
    uni = draws(k_uni, lambda k: jax.random.uniform(k, lead, rdt) * (sde.T - sde.t_eps) + sde.t_eps)
    eps = jnp.full(lead, sde.t_eps, rdt)
    v_eps = sde.var(eps) * jnp.exp(2.0 * sde.theta * eps)
    rec = jnp.log(math.pi * v_eps) + draws(k_rec, lambda k: eps)

    a_T = math.exp(-sde.theta * sde.T)
    prior = a_T**2 * per_bin(X - attractor) / sde.var(jnp.asarray(sde.T, rdt))
    m_den, s_den = _mean_se(den)
    m_uni, s_uni = _mean_se(uni)
    m_rec, s_rec = _mean_se(rec)
    gap_draws = den - big_lambda * uni  # independent draws: the difference's spread is both terms'
    m_gap, s_gap = _mean_se(gap_draws)
    return ELBO(
        prior=prior, denoising=m_den, reconstruction=m_rec, total=prior + m_den + m_rec,
        training_loss=0.5 * m_uni, weighting_gap=m_gap,
        prior_se=jnp.zeros_like(prior), denoising_se=s_den, reconstruction_se=s_rec,
        total_se=jnp.sqrt(s_den**2 + s_rec**2), training_loss_se=0.5 * s_uni, weighting_gap_se=s_gap,
    )


@functools.partial(jax.jit, static_argnames=("samples", "chunk"))
def _model_elbo(model: StormModel, X, Y, C, attractor, key, samples: int, chunk: int) -> ELBO:
    return elbo_of_score(model.config.sde, lambda x, t: score(model, x, t, Y, C), X, attractor, key,
                         samples=samples, chunk=chunk)


def elbo(
    model: StormModel,
    clean,
    noisy,
    key,
    *,
    samples: int = 64,
    chunk: int = 16,
    normalization: str = "max",
) -> ELBO:
    """ELBO terms of ``−log p(X | Y, C)`` per utterance (module doc), in nats per complex bin.

    Args:
        model: a StoRM (or score-only) model; its SDE gives θ, σ_min, σ_max, t_ε, T.
        clean, noisy: waveforms ``[L]`` or ``[B, L]`` (the noisy one normalised by ν as in
            enhancement — ``normalization`` ``max``, the reference, or ``rms`` — the clean one by the
            same ν).
        key: PRNG key of the Monte Carlo draws.
        samples: draws per Monte Carlo term (≥ 2; the standard errors shrink as 1/√samples).
        chunk: draws evaluated together (memory ∝ chunk network passes).

    Returns:
        :class:`ELBO`, each field ``[]`` or ``[B]``; ``.bits_per_dim()`` converts.
    """
    samples = check_positive_int("elbo", "samples", samples, 2)
    chunk = check_positive_int("elbo", "chunk", chunk)
    _check_sde("elbo", model.config.sde)
    pair = spectrogram_pair("elbo", model, clean, noisy, normalization)
    out = _model_elbo(model, pair.X, pair.Y, pair.C, pair.attractor, key, samples, chunk)
    bad = [name for name, v in out._asdict().items() if not bool(jnp.all(jnp.isfinite(v)))]
    if bad:
        raise FloatingPointError(f"elbo: the terms {bad} came out NaN or Inf (the score network's output is not finite)")
    return out
