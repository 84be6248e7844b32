"""Discrete reverse-time samplers as ``lax.scan`` over explicit noise draws.

Reference: ``sgmse/sampling/__init__.py`` (``get_pc_sampler``), ``predictors.py``,
``correctors.py`` (``storm-reference.md`` § Samplers). Every random number is an input
(:class:`Draws`), so the same Brownian path can be replayed for any noise amplitude M and the
map ``(Y, C) ↦ x̂`` is deterministic and differentiable.

One step at grid time ``t_k`` with step ``dt_k`` (corrector first, then predictor)::

    ALD corrector (× corrector_steps):  ε = 2·(snr·σ(t_k))²,  x̄ = x + ε·s,  x = x̄ + sqrt(2ε)·z
    reverse-diffusion predictor:        G = g(t_k)·sqrt(dt_k),  x̄ = x − [θ(C − x)·dt_k − G²·s],
                                        x = x̄ + G·z
    Euler–Maruyama predictor:           x̄ = x − f_rev(x, t_k)·dt_k,  x = x̄ + g(t_k)·sqrt(dt_k)·z

with ``s = s_θ(x, t_k, Y, C)``; the two predictors are algebraically equal for the OUVE SDE
(they differ in rounding only). The result is the last predictor step's mean x̄ (``denoise``).

Time grids (``grid``):

* ``reference``: ``t_k = linspace(T, t_eps, N)[k]`` and ``dt_k = 1/N`` for all k — exactly the
  reference (its ``SDE.discretize`` takes ``dt = 1/N`` whatever T), which integrates a total time
  of 1 over an interval of ``T − t_eps`` (a bias that does not vanish as N grows). With the
  reference's T = 1 the excess is ``t_eps``; a reverse process started later (T < 1) is
  over-integrated by the factor ``1/(T − t_eps)``, so use ``consistent`` there.
* ``consistent``: ``t_k = T − k·h``, ``dt_k = h = (T − t_eps)/N`` — N Euler steps that cover
  exactly ``[t_eps, T]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .sde import OUVE

__all__ = [
    "SamplerConfig",
    "Draws",
    "time_grid",
    "make_draws",
    "complex_normal",
    "reverse_step",
    "sample_with_score",
    "sample",
    "PREDICTORS",
    "CORRECTORS",
    "GRIDS",
]

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
CORRECTORS = ("none", "ald")
GRIDS = ("reference", "consistent")
NOISE_CONVENTIONS = ("complex", "real")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Settings of the discrete reverse process.

    Attributes:
        steps: number of predictor steps N (reference ``enhance()`` default 30).
        predictor: ``reverse_diffusion`` (reference) or ``euler_maruyama``.
        corrector: ``none`` (reference default) or ``ald`` (annealed Langevin dynamics).
        corrector_steps: corrector iterations per step (1).
        snr: ALD signal-to-noise ratio (0.5).
        grid: ``reference`` (dt = 1/N) or ``consistent`` (dt = grid spacing), see module doc.
        noise: ``complex`` — draws with real and imaginary parts each N(0, ½), E|z|² = 1 (the
            reference's ``torch.randn_like`` on complex tensors, which the model was trained
            with); ``real`` — each part N(0, 1).
        denoise: return the final step's mean (reference) instead of the noisy state.
    """

    steps: int = 30
    predictor: Literal["reverse_diffusion", "euler_maruyama"] = "reverse_diffusion"
    corrector: Literal["none", "ald"] = "none"
    corrector_steps: int = 1
    snr: float = 0.5
    grid: Literal["reference", "consistent"] = "reference"
    noise: Literal["complex", "real"] = "complex"
    denoise: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"SamplerConfig: steps must be >= 1, got {self.steps}")
        for name, val, allowed in (
            ("predictor", self.predictor, PREDICTORS),
            ("corrector", self.corrector, CORRECTORS),
            ("grid", self.grid, GRIDS),
            ("noise", self.noise, NOISE_CONVENTIONS),
        ):
            if val not in allowed:
                raise ValueError(f"SamplerConfig: unknown {name} {val!r}; choose one of {allowed}")
        if self.corrector_steps < 0:
            raise ValueError("SamplerConfig: corrector_steps must be >= 0")

    @property
    def n_corrector(self) -> int:
        """Corrector draws per step (0 without a corrector)."""
        return self.corrector_steps if self.corrector != "none" else 0


class Draws(NamedTuple):
    """All the randomness of one reverse process (a pytree of complex arrays).

    Attributes:
        prior: ``[..., F, T]`` — z in ``x_T = C + σ(1)·z``.
        predictor: ``[N, ..., F, T]`` — one draw per predictor step.
        corrector: ``[N, n_corr, ..., F, T]`` — draws of the corrector iterations (n_corr may be 0).
    """

    prior: Array
    predictor: Array
    corrector: Array


def time_grid(sde: OUVE, steps: int, grid: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """Grid times ``t_k`` and step sizes ``dt_k`` (float64 NumPy, each ``[N]``); see module doc."""
    if grid == "reference":
        ts = np.linspace(sde.T, sde.t_eps, steps)
        dts = np.full(steps, 1.0 / steps)
    elif grid == "consistent":
        h = (sde.T - sde.t_eps) / steps
        ts = sde.T - h * np.arange(steps)
        dts = np.full(steps, h)
    else:
        raise ValueError(f"unknown grid {grid!r}; choose one of {GRIDS}")
    return ts, dts


def complex_normal(key: Array, shape: tuple[int, ...], dtype=jnp.complex64, convention: str = "complex") -> Array:
    """Standard complex normal draws: each part N(0, ½) (``complex``) or N(0, 1) (``real``)."""
    rdt = jnp.finfo(dtype).dtype
    kr, ki = jax.random.split(key)
    scale = math.sqrt(0.5) if convention == "complex" else 1.0
    re = jax.random.normal(kr, shape, rdt)
    im = jax.random.normal(ki, shape, rdt)
    return (scale * (re + 1j * im)).astype(dtype)


def make_draws(key: Array, shape: tuple[int, ...], config: SamplerConfig = SamplerConfig(), dtype=jnp.complex64) -> Draws:
    """Draw the prior, predictor and corrector noise for spectrograms of ``shape`` ``[..., F, T]``."""
    kp, ks, kc = jax.random.split(key, 3)
    N, nc = config.steps, config.n_corrector
    return Draws(
        prior=complex_normal(kp, tuple(shape), dtype, config.noise),
        predictor=complex_normal(ks, (N, *shape), dtype, config.noise),
        corrector=complex_normal(kc, (N, nc, *shape), dtype, config.noise),
    )


ScoreFn = Callable[[Array, Array], Array]
"""``score_fn(x, t) -> s``: the score with its conditioning (Y, C) already bound."""


def reverse_step(
    sde: OUVE,
    score_fn: ScoreFn,
    C: Array,
    x: Array,
    t: Array,
    dt: Array,
    z_pred: Array,
    z_corr: Array,
    config: SamplerConfig,
) -> tuple[Array, Array]:
    """One corrector+predictor step from ``t`` to ``t − dt``; returns ``(x, x_mean)``."""
    if config.corrector == "ald":
        eps = 2.0 * (config.snr * sde.std(t)) ** 2
        for i in range(config.corrector_steps):
            s = score_fn(x, t)
            x = x + eps * s + jnp.sqrt(2.0 * eps) * z_corr[i]
    s = score_fn(x, t)
    g = sde.g(t)
    if config.predictor == "reverse_diffusion":
        G = g * jnp.sqrt(dt)
        rev_f = sde.drift(x, C) * dt - G * G * s
        x_mean = x - rev_f
        x_new = x_mean + G * z_pred
    else:  # euler_maruyama, reference EulerMaruyamaPredictor with the step dt_k
        x_mean = x - sde.reverse_drift(x, C, t, s) * dt
        x_new = x_mean + g * jnp.sqrt(dt) * z_pred
    return x_new, x_mean


def _path_draws(draws, sde: OUVE, config: SamplerConfig, C: Array):
    """A noise source with a ``to_draws(config, sde, dtype, shape)`` method (a
    :class:`~storm_jax.continuous.BrownianPath`) becomes the :class:`Draws` of its increments on
    ``config``'s grid; anything else passes. (Duck-typed so that sampling does not depend on the
    continuous-time module, which builds on it.)"""
    if isinstance(draws, Draws) or not hasattr(draws, "to_draws"):
        return draws
    return draws.to_draws(config, sde, C.dtype, tuple(C.shape))


def sample_with_score(
    sde: OUVE,
    score_fn: ScoreFn,
    C: Complex[Array, "*batch F T"],
    draws,
    config: SamplerConfig = SamplerConfig(),
    *,
    return_trajectory: bool = False,
    unroll: int | bool = 1,
):
    """Run the reverse process for any score function ``score_fn(x, t)``.

    ``draws`` is a :class:`Draws` or a :class:`~storm_jax.continuous.BrownianPath` (its
    increments on the config's grid, :func:`~storm_jax.continuous.draws_from_path`).

    ``x_T = C + σ(1)·z_prior``, then ``N = config.steps`` steps of :func:`reverse_step`. Returns
    the final mean (or state if ``denoise=False``), and with ``return_trajectory`` also the
    states ``[N+1, ...]`` entering each step plus the output (memory grows with N: leave it off
    for forward-mode sensitivities).

    ``unroll`` is ``lax.scan``'s: ``True`` unrolls the N steps, which reverse-mode
    differentiation on the CPU needs to be fast (the transposed loop of convolutions ran ~25×
    slower than the unrolled steps with XLA's CPU backend; the training loss of
    ``correct-reverse`` mode uses it).
    """
    C = jnp.asarray(C)
    N = config.steps
    draws = _path_draws(draws, sde, config, C)
    if draws.predictor.shape[0] != N:
        raise ValueError(f"draws hold {draws.predictor.shape[0]} predictor steps but config.steps={N}")
    if draws.corrector.shape[1] < config.n_corrector:
        raise ValueError(f"draws hold {draws.corrector.shape[1]} corrector draws per step, need {config.n_corrector}")
    rdt = jnp.real(C).dtype
    ts, dts = time_grid(sde, N, config.grid)
    ts, dts = jnp.asarray(ts, rdt), jnp.asarray(dts, rdt)
    x0 = sde.prior_sample(C, draws.prior.astype(C.dtype))

    def body(carry, xs):
        x, _ = carry
        t, dt, zp, zc = xs
        x_new, x_mean = reverse_step(sde, score_fn, C, x, t, dt, zp.astype(C.dtype), zc.astype(C.dtype), config)
        return (x_new, x_mean), (x if return_trajectory else None)

    (x, x_mean), traj = jax.lax.scan(body, (x0, x0), (ts, dts, draws.predictor, draws.corrector), unroll=unroll)
    out = x_mean if config.denoise else x
    if return_trajectory:
        return out, jnp.concatenate([traj, out[None]], axis=0)
    return out


def sample(
    model,
    Y: Complex[Array, "*batch F T"],
    C: Complex[Array, "*batch F T"],
    draws,
    config: SamplerConfig = SamplerConfig(),
    *,
    return_trajectory: bool = False,
):
    """Reverse process of a StoRM model, conditioned on the noisy spectrogram ``Y`` and the
    predictor output ``C`` (``[..., F, T]``, compressed and padded).

    ``draws`` is a :class:`Draws` (replayable), a :class:`~storm_jax.continuous.BrownianPath`
    (the noise of the shared continuous-time path, so the result equals ``diffrax.Euler`` on it,
    :func:`~storm_jax.continuous.solve_reverse`), or a PRNG key (then :func:`make_draws`).
    """
    from .model import score  # local import: model imports nn, sampling stays light

    C = jnp.asarray(C)
    draws = _path_draws(draws, model.config.sde, config, C)
    if not isinstance(draws, Draws):
        draws = make_draws(draws, C.shape, config, C.dtype)
    score_fn = lambda x, t: score(model, x, t, Y, C)
    return sample_with_score(model.config.sde, score_fn, C, draws, config, return_trajectory=return_trajectory)
