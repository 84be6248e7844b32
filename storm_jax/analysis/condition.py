"""Importance of Condition (IoC): how much the score model's denoiser relies on its condition.

Second seed (``closing-elbo-gap-abstract.txt``); definitions of DESIGN.md ("Noise-schedule /
ELBO"). With the denoiser ``D(x, t, c) = x + σ_t²·s_θ(x, t, c)`` — Tweedie's estimate of the
forward mean μ_t given x_t (``E[μ_t | x_t] = x_t + σ_t²·∇ log p_t``) — and the condition ``c``
the score network sees (``Y``, ``C`` or both):

* **Jacobian share** ``IoC_J(t) = ‖∂_c D‖²_F / (‖∂_x D‖²_F + ‖∂_c D‖²_F)`` ∈ [0, 1]: 0 when D
  ignores the condition, 1 when D depends on the condition alone (``s = (h(c) − x)/σ_t²``). The
  squared Frobenius norms are of the real-linear maps (x, c complex, ``ℝ^{2D} → ℝ^{2D}``) and are
  estimated by Hutchinson's estimator ``‖J‖²_F = E_v‖J·v‖²`` with Rademacher probes on the real
  and imaginary parts (matfree's ``stochtrace``), one ``jax.jvp`` per probe and block. For
  ``c = (Y, C)`` the block norms add: ``‖∂_{(Y,C)} D‖² = ‖∂_Y D‖² + ‖∂_C D‖²``.
* **Swap effect** ``IoC_Δ(t) = E‖D(x, t, c) − D(x, t, c′)‖² / E‖D(x, t, c) − x‖²`` ≥ 0, with c′
  the condition of another utterance: the change of the denoiser's output when it is given the
  wrong condition, relative to its own correction. 0 when the condition is swapped with itself.

Both are ratios of expectations over x: on **forward-marginal samples**
``x_t = μ_t(X, π) + σ_t·z`` at chosen times (``along="marginal"``) or on the states of actual
**reverse trajectories** of the reference sampler at its grid times (``along="reverse"``). A
ratio ``R = E[a]/E[b]`` is estimated by the ratio of sample means; its standard error by the
delta method, ``se(R)² ≈ Var(a − R·b)/(n·E[b]²)`` over the n samples.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matfree import stochtrace

from ..model import StormModel, score
from ..sampling import SamplerConfig, complex_normal, make_draws, sample_with_score, time_grid
from ..sde import OUVE
from ._pair import check_positive_int, spectrogram_pair

__all__ = ["ConditionImportance", "condition_importance", "importance_of_condition", "KINDS", "WRT", "ALONG"]

KINDS = ("jacobian", "swap")
WRT = ("both", "noisy", "predictor")  # the condition(s) c: Y and C, Y, or C (the model's names)
ALONG = ("marginal", "reverse")

ScoreFn = Callable  # score_fn(x, t, Y, C) -> s


class ConditionImportance(NamedTuple):
    """IoC over time.

    Attributes:
        t: the times ``[K]``.
        value: IoC ``[*batch, K]`` per utterance (``jacobian``: in [0, 1]; ``swap``: ≥ 0).
        se: its standard error ``[*batch, K]``.
        numerator, denominator: the two sample means of the ratio ``[*batch, K]`` (``jacobian``:
            ``‖∂_c D‖²`` and ``‖∂_x D‖² + ‖∂_c D‖²``; ``swap``: ``‖D(c) − D(c′)‖²`` and
            ``‖D(c) − x‖²``), summed over bins.
    """

    t: jax.Array
    value: jax.Array
    se: jax.Array
    numerator: jax.Array
    denominator: jax.Array


def _denoiser(sde: OUVE, score_fn: ScoreFn):
    def D(x, t, Y, C):
        var = sde.var(t)[..., None, None]
        return x + var * score_fn(x, t, Y, C)

    return D


def _as_real(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)])


def _as_complex(v, dtype):
    return (v[0] + 1j * v[1]).astype(dtype)


def _jacobian_terms(D, x, t, Y, C, key, probes: int, wrt: str):
    """``(‖∂_c D‖², ‖∂_x D‖² + ‖∂_c D‖²)`` per utterance ``[*batch]`` at one state (Hutchinson
    over ``probes`` Rademacher probes of the real and imaginary parts, matfree's estimator).

    One probe covers every utterance of a batch: utterance b's output depends on its own input
    only, so the squared norm of ``J·v`` summed over b's bins estimates ``‖J_b‖²_F``."""
    dtype = x.dtype
    args = (x, Y, C)
    per_utt = lambda v: jnp.sum(v**2, axis=(0, -2, -1))  # [2, *batch, F, T] → [*batch]
    estimate = stochtrace.estimator_monte_carlo(lambda matvec, v: per_utt(matvec(v)),
                                                stochtrace.sampler_signs(_as_real(x), num=probes))

    def block(which):
        def f(a):
            full = list(args)
            full[which] = a
            return D(full[0], t, full[1], full[2])

        return lambda v: _as_real(jax.jvp(f, (args[which],), (_as_complex(v, dtype),))[1])

    kx, ky, kc = jax.random.split(key, 3)
    nx = estimate(block(0), kx)
    nc = jnp.zeros_like(nx)
    if wrt in ("both", "noisy"):
        nc = nc + estimate(block(1), ky)
    if wrt in ("both", "predictor"):
        nc = nc + estimate(block(2), kc)
    return nc, nx + nc


def _swap_terms(D, x, t, Y, C, Y2, C2, wrt: str):
    d = D(x, t, Y, C)
    Ys = Y2 if wrt in ("both", "noisy") else Y
    Cs = C2 if wrt in ("both", "predictor") else C
    ds = D(x, t, Ys, Cs)
    per = lambda e: jnp.sum(jnp.abs(e) ** 2, axis=(-2, -1))
    return per(d - ds), per(d - x)


def _checked(sde, kind, wrt, along, Y, C, t, samples, probes, steps, other, rdt):
    """Validate :func:`condition_importance`'s arguments; return ``t`` as a 1-D array (or None)
    and the checked counts."""
    if kind not in KINDS:
        raise ValueError(f"importance_of_condition: kind must be one of {KINDS}, got {kind!r}")
    if wrt not in WRT:
        raise ValueError(f"importance_of_condition: wrt must be one of {WRT}, got {wrt!r}")
    if along not in ALONG:
        raise ValueError(f"importance_of_condition: along must be one of {ALONG}, got {along!r}")
    for needed, arr, what in (("both", Y, "Y"), ("noisy", Y, "Y"), ("both", C, "C"), ("predictor", C, "C")):
        if wrt == needed and arr is None:
            raise ValueError(f"importance_of_condition: wrt={wrt!r} needs the condition {what}, which this score does not see")
    samples = check_positive_int("importance_of_condition", "samples", samples, 2)
    probes = check_positive_int("importance_of_condition", "probes", probes)
    if kind == "swap" and other is None:
        raise ValueError("importance_of_condition: kind='swap' needs the other utterances' conditions (other=(Y', C'))")
    if along == "reverse":
        if t is not None:
            raise ValueError("importance_of_condition: along='reverse' takes the sampler's grid times; leave t=None")
        steps = check_positive_int("importance_of_condition", "steps", steps)
    if t is not None:
        t = jnp.asarray(t, rdt).reshape(-1)
        if not isinstance(t, jax.core.Tracer):
            ts = np.asarray(t)
            if ts.size == 0 or not np.all((ts >= sde.t_eps) & (ts <= sde.T)):
                raise ValueError(f"importance_of_condition: times must lie in [t_eps, T] = [{sde.t_eps}, {sde.T}], got {ts}")
    return t, samples, probes, steps


def _ratio(a, b):
    """Ratio of means over the leading sample axis and its delta-method standard error."""
    n = a.shape[0]
    ma, mb = jnp.mean(a, axis=0), jnp.mean(b, axis=0)
    r = ma / mb
    se = jnp.std(a - r * b, axis=0, ddof=1) / (math.sqrt(n) * jnp.abs(mb))
    return r, se, ma, mb


def condition_importance(
    sde: OUVE,
    score_fn: ScoreFn,
    X,
    Y,
    C,
    attractor,
    key,
    *,
    kind: str = "jacobian",
    wrt: str = "both",
    along: str = "marginal",
    t=None,
    samples: int = 8,
    probes: int = 2,
    steps: int = 30,
    other: tuple | None = None,
) -> ConditionImportance:
    """IoC of any score ``score_fn(x, t, Y, C) -> s`` (module doc) on spectrograms
    ``[*batch, F, T]``: clean ``X``, conditions ``Y``/``C`` (``None`` where the score does not
    take one), forward attractor π.

    Args:
        kind: ``jacobian`` (IoC_J) or ``swap`` (IoC_Δ).
        wrt: the condition measured: ``both`` (Y and C), ``noisy`` (Y) or ``predictor`` (C).
        along: ``marginal`` (x_t ~ q(x_t | X) at the times ``t``, default 8 evenly spaced on
            ``[t_ε, T]``) or ``reverse`` (the states entering each of the ``steps`` steps of the
            reference sampler started from ``CN(π, σ_T²)``, at its grid times; ``t`` must be None).
        samples: independent states per time (≥ 2): marginal draws or reverse trajectories.
        probes: Hutchinson probes per state and block (``jacobian``).
        other: ``(Y′, C′)`` for ``swap``: the other utterances' conditions, shaped like Y and C.
    """
    X = jnp.asarray(X)
    t, samples, probes, steps = _checked(sde, kind, wrt, along, Y, C, t, samples, probes, steps, other, jnp.real(X).dtype)
    # one compilation per score function and shape (called eagerly, the lax.map bodies would
    # otherwise be traced op by op); inside a caller's jit this inlines
    arrays = _ioc_core(sde, score_fn, X, Y, C, attractor, key, t, other, kind, wrt, along, samples, probes, steps)
    return ConditionImportance(*arrays)


@functools.partial(jax.jit, static_argnums=(0, 1, 9, 10, 11, 12, 13, 14))
def _ioc_core(sde, score_fn, X, Y, C, attractor, key, t, other, kind, wrt, along, samples, probes, steps):
    rdt = jnp.real(X).dtype
    D = _denoiser(sde, score_fn)
    k_state = key

    if along == "marginal":
        ts_j = jnp.linspace(sde.t_eps, sde.T, 8, dtype=rdt) if t is None else t
        K = ts_j.shape[0]

        def states(k):  # [K, *batch, F, T] for one sample
            z = complex_normal(k, (K, *X.shape), X.dtype)
            tb = jnp.broadcast_to(ts_j.reshape((-1,) + (1,) * (X.ndim - 2)), (K, *X.shape[:-2]))
            a = jnp.exp(-sde.theta * tb)[..., None, None]  # [K, *batch, 1, 1]
            return a * X + (1 - a) * attractor + sde.std(tb)[..., None, None] * z
    else:
        cfg = SamplerConfig(steps=steps)
        ts_j = jnp.asarray(time_grid(sde, steps)[0], rdt)
        K = steps

        def states(k):
            draws = make_draws(k, X.shape, cfg, X.dtype)
            _, traj = sample_with_score(sde, lambda x, tt: score_fn(x, tt, Y, C), attractor, draws, cfg, return_trajectory=True)
            return traj[:-1]  # the states entering each step, at the grid times

    def one_sample(k):
        kk, kp = jax.random.split(k)
        xs = states(kk)

        def at(x, tk, kq):
            tb = jnp.broadcast_to(tk, X.shape[:-2])
            if kind == "jacobian":
                return _jacobian_terms(D, x, tb, Y, C, kq, probes, wrt)
            return _swap_terms(D, x, tb, Y, C, other[0], other[1], wrt)

        return jax.lax.map(lambda a: at(*a), (xs, ts_j, jax.random.split(kp, K)))  # each [K, *batch]

    num, den = jax.lax.map(one_sample, jax.random.split(k_state, samples))  # [n, K, *batch]
    r, se, ma, mb = _ratio(num, den)
    move = lambda a: jnp.moveaxis(a, 0, -1)  # [*batch, K]
    return ts_j, move(r), move(se), move(ma), move(mb)


@functools.partial(jax.jit, static_argnames=("kind", "wrt", "along", "samples", "probes", "steps"))
def _model_ioc(model, X, Y, C, attractor, key, t, other, kind, wrt, along, samples, probes, steps):
    # the model is traced, so its score is a closure over traced parameters: the core runs inline
    return ConditionImportance(*_ioc_core.__wrapped__(model.config.sde, lambda x, tt, y, c: score(model, x, tt, y, c), X, Y,
                                                      C, attractor, key, t, other, kind, wrt, along, samples, probes, steps))


def importance_of_condition(
    model: StormModel,
    clean,
    noisy,
    key,
    *,
    kind: str = "jacobian",
    wrt: str | None = None,
    along: str = "marginal",
    t=None,
    samples: int = 8,
    probes: int = 2,
    steps: int = 30,
    other_noisy=None,
    normalization: str = "max",
) -> ConditionImportance:
    """IoC over t of a StoRM model on (clean, noisy) waveforms ``[L]`` or ``[B, L]`` (module doc;
    :func:`condition_importance` for the arguments).

    ``wrt`` defaults to everything the score network sees (``model.config.condition``). For
    ``kind="swap"`` the other condition comes from ``other_noisy`` (waveforms shaped like
    ``noisy``: Y′ from it, C′ = Π(Y′)) or, when it is None and there are B ≥ 2 utterances, from
    the next utterance in the batch (utterance b gets b + 1's, the last the first's).
    """
    cond = model.config.condition
    wrt = cond if wrt is None else wrt
    sees = {"both": ("both", "noisy", "predictor"), "noisy": ("noisy",), "predictor": ("predictor",)}[cond]
    if wrt in WRT and wrt not in sees:
        raise ValueError(f"importance_of_condition: wrt={wrt!r}, but this model's score network sees condition={cond!r}")
    pair = spectrogram_pair("importance_of_condition", model, clean, noisy, normalization)
    Y = pair.Y if cond in ("both", "noisy") else None
    C = pair.C if cond in ("both", "predictor") else None
    other = None
    if kind == "swap":
        if other_noisy is not None:
            o = spectrogram_pair("importance_of_condition", model, clean, other_noisy, normalization)
            other = (o.Y if Y is not None else None, o.C if C is not None else None)
        elif pair.Y.ndim == 3 and pair.Y.shape[0] >= 2:
            roll = lambda a: None if a is None else jnp.roll(a, -1, axis=0)
            other = (roll(Y), roll(C))
        else:
            raise ValueError("importance_of_condition: kind='swap' needs another utterance: pass other_noisy, or a batch of B >= 2 utterances")
    t, samples, probes, steps = _checked(model.config.sde, kind, wrt, along, Y, C, t, samples, probes, steps, other,
                                         jnp.real(pair.X).dtype)
    out = _model_ioc(model, pair.X, Y, C, pair.attractor, key, t, other, kind, wrt, along, samples, probes, steps)
    if not bool(jnp.all(jnp.isfinite(out.value))):
        raise FloatingPointError("importance_of_condition: IoC came out NaN or Inf (a denominator is 0 or the score is not finite)")
    return out
