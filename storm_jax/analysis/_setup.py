"""Shared set-up of the sensitivity analyses: argument checks, overrides, fixed draws, finiteness.

Every analysis of :mod:`storm_jax.analysis` differentiates the map ``M ↦ ŝ(M)`` of
:func:`storm_jax.pipeline.enhance_mixture` on a *fixed* Brownian path (DESIGN.md, "Differentiation
rules": M must not change the noise, the time grid or the step sizes). This module turns the
user-facing arguments (``model, clean, noise, m, key`` plus the ``condition``, ``normalization``,
``steps`` and ``dtype`` overrides) into explicit arrays and a hashable static configuration, and
rejects bad input with a clear message instead of letting a NaN through.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..audio import NORMALIZATIONS, normalization_factor
from ..model import CONDITIONS, StormModel
from ..pipeline import EnhanceConfig, draws_for, mix, spec_shape
from ..sampling import Draws, SamplerConfig

__all__ = ["NonFiniteTangentError", "Prepared", "prepare", "frozen_norm_factor", "check_stages"]


class NonFiniteTangentError(FloatingPointError):
    """A value or tangent of the pipeline came out NaN/Inf; the message names the first stage."""


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable part of an analysis (a static argument of the jitted cores).

    ``normalization="frozen"`` keeps its factor out of here (it is an array, passed separately),
    which is why this is not an :class:`~storm_jax.pipeline.EnhanceConfig`.
    """

    sampler: SamplerConfig
    normalization: str
    power: bool

    def enhance_config(self, norm_factor) -> EnhanceConfig:
        # Built inside the trace: ``norm_factor`` may be a traced array (frozen mode) or None.
        return EnhanceConfig(sampler=self.sampler, normalization=self.normalization, norm_factor=norm_factor)


class Prepared(NamedTuple):
    """Explicit inputs of one analysis (see :func:`prepare`)."""

    model: StormModel
    clean: jax.Array  # [..., L]
    noise: jax.Array  # [..., L]
    m: jax.Array  # [] or [K]
    draws: Draws  # shapes [..., F, Tp] (prior), [N, ..., F, Tp], [N, n_corr, ..., F, Tp]
    norm_factor: jax.Array | None  # [...] for normalization="frozen", else None
    static: _Static


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_brownian_path(obj) -> bool:
    """A :class:`storm_jax.continuous.BrownianPath` (the continuous-time path of issue 6)?"""
    if type(obj).__name__ != "BrownianPath":
        return False
    from ..continuous import BrownianPath

    return isinstance(obj, BrownianPath)


def _real_dtype(model: StormModel, dtype) -> Any:
    if dtype is not None:
        dt = jnp.dtype(dtype)
        if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        if dt == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                "dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
                "before creating arrays (otherwise every array silently stays float32)"
            )
        return dt
    leaves = [p for p in jax.tree_util.tree_leaves(model.params) if jnp.issubdtype(p.dtype, jnp.floating)]
    return jnp.dtype(leaves[0].dtype) if leaves else jnp.dtype(jnp.float32)


def _with_condition(model: StormModel, condition: str | None) -> StormModel:
    """``model`` with ``config.condition`` replaced, when the weights allow it.

    ``noisy`` and ``predictor`` both feed the score net 4 real channels ``[x, cond]``, so one
    can be swapped for the other (the weights are then reinterpreted, which is meaningful for
    random-weight experiments, not for a trained model). ``both`` has 6 input channels: it
    cannot be switched on or off by an override.
    """
    if condition is None or condition == model.config.condition:
        return model
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    cfg = model.config
    new = dataclasses.replace(cfg, condition=condition)
    if new.score_inputs != cfg.score_inputs and cfg.has_score:
        raise ValueError(
            f"condition={condition!r} needs a score network with {2 * new.score_inputs} input channels, "
            f"but this model's score network was built for condition={cfg.condition!r} "
            f"({2 * cfg.score_inputs} channels); build a model for it with "
            f"init_storm(storm_config(preset, condition={condition!r}), key) or load one"
        )
    return model.replace(config=new)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _cast_model(model: StormModel, dtype) -> StormModel:
    # One compiled cast for the whole parameter tree (eagerly it is one dispatch per leaf).
    return model.astype(dtype)


@functools.partial(jax.jit, static_argnames=("n_samples", "sampler", "batch", "dtype"))
def _draws(model: StormModel, key, n_samples: int, sampler: SamplerConfig, batch: tuple, dtype) -> Draws:
    return draws_for(model, n_samples, key, sampler, batch, dtype)


def _check_m(m, rdt) -> jax.Array:
    if not _is_traced(m):
        arr = np.asarray(m, dtype=np.float64)
        if arr.ndim > 1:
            raise ValueError(f"m must be a scalar or a 1-D array of M values, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"m must be finite, got {arr if arr.ndim else float(arr)}")
        if np.any(arr <= 0):
            raise ValueError(f"m must be > 0 (the noise amplitude scale M), got {arr if arr.ndim else float(arr)}")
    m = jnp.asarray(m, rdt)
    if m.ndim > 1:
        raise ValueError(f"m must be a scalar or a 1-D array of M values, got shape {m.shape}")
    return m


def _check_signals(clean, noise, rdt, n_fft: int):
    clean = jnp.asarray(clean)
    noise = jnp.asarray(noise)
    if clean.ndim == 0 or noise.ndim == 0:
        raise ValueError("clean and noise must be waveforms [..., L]")
    if clean.shape[-1] != noise.shape[-1]:
        raise ValueError(
            f"clean and noise must have the same length: clean has {clean.shape[-1]} samples, "
            f"noise has {noise.shape[-1]}"
        )
    if clean.shape != noise.shape:
        raise ValueError(f"clean and noise must have the same shape, got {clean.shape} and {noise.shape}")
    if clean.shape[-1] <= n_fft // 2:
        raise ValueError(f"waveforms of {clean.shape[-1]} samples are too short for n_fft={n_fft}")
    for name, x in (("clean", clean), ("noise", noise)):
        if not _is_traced(x) and not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{name} contains NaN/Inf samples")
    if not (_is_traced(clean) or _is_traced(noise)):
        # y = clean + M·noise ≡ 0 for every M: the normalisation ν = max|y| is 0 and ŝ(M) undefined.
        silent = ~np.any(np.asarray(clean) != 0, axis=-1) & ~np.any(np.asarray(noise) != 0, axis=-1)
        if np.any(silent):
            where = f" (utterance(s) {np.flatnonzero(silent).tolist()})" if np.ndim(silent) else ""
            raise ValueError(f"clean and noise are both silent (all zeros){where}: the mixture is 0 for every M, "
                             "so its normalisation and ŝ(M) are undefined")
    return clean.astype(rdt), noise.astype(rdt)


def _check_draws(draws: Draws, model: StormModel, length: int, batch, sampler: SamplerConfig, cdt) -> Draws:
    want = spec_shape(model, length, tuple(batch))
    if tuple(draws.prior.shape) != want:
        raise ValueError(f"draws.prior has shape {tuple(draws.prior.shape)}, expected {want} for these waveforms")
    if draws.predictor.shape[0] != sampler.steps:
        raise ValueError(
            f"the draws hold {draws.predictor.shape[0]} predictor steps but steps={sampler.steps}; "
            f"pass steps={draws.predictor.shape[0]} or make draws for {sampler.steps} steps"
        )
    if draws.corrector.shape[1] < sampler.n_corrector:
        raise ValueError(f"the draws hold {draws.corrector.shape[1]} corrector draws per step, need {sampler.n_corrector}")
    return Draws(*(jnp.asarray(a).astype(cdt) for a in draws))


def frozen_norm_factor(clean, noise, m_star: float = 1.0, power: bool = False) -> jax.Array:
    """``ν* = max_n |y(M*)[n]|``: the reference's max-normalisation factor at the training
    amplitude M* (default 1), for ``normalization="frozen"`` (shape ``[...]``)."""
    return normalization_factor(mix(clean, noise, jnp.asarray(m_star, jnp.asarray(clean).dtype), power), "max")


def prepare(
    model: StormModel,
    clean,
    noise,
    m,
    key,
    *,
    config: EnhanceConfig | None = None,
    condition: str | None = None,
    normalization: str | None = None,
    norm_factor=None,
    steps: int | None = None,
    dtype=None,
    power: bool = False,
    m_star: float = 1.0,
) -> Prepared:
    """Validate and resolve the arguments shared by every analysis.

    Args:
        model: a StoRM model with a score network.
        clean, noise: waveforms ``[..., L]`` (16 kHz); the leading axes are utterances.
        m: M, a scalar or a 1-D array ``[K]`` of M values (each > 0 and finite).
        key: a PRNG key, an integer seed, a :class:`~storm_jax.sampling.Draws` or a
            :class:`~storm_jax.continuous.BrownianPath` (the fixed path).
        config: base :class:`~storm_jax.pipeline.EnhanceConfig` (default: reference settings).
        condition, normalization, steps, dtype: overrides of the model's condition mode, the
            normalisation (``max``/``frozen``/``rms``), the sampler's N and the float dtype.
        norm_factor: ν for ``normalization="frozen"``; default ``max|y(M*)|`` per utterance.
        power: ``y = clean + sqrt(M)·noise`` instead of ``clean + M·noise``.
        m_star: the training amplitude M* used for the default frozen factor.
    """
    config = config or EnhanceConfig()
    if config.predictor_only:
        raise ValueError("the sensitivity analyses need the reverse process; use predictor_only=False")
    model = _with_condition(model, condition)
    if not model.config.has_score:
        raise ValueError("this model has no score network: the sampler Jacobians K and L do not exist")
    rdt = _real_dtype(model, dtype)
    cdt = jnp.result_type(rdt, jnp.complex64)
    if any(p.dtype != rdt for p in jax.tree_util.tree_leaves(model.params) if jnp.issubdtype(p.dtype, jnp.floating)):
        model = _cast_model(model, rdt)
    sampler = config.sampler if steps is None else dataclasses.replace(config.sampler, steps=int(steps))
    norm = normalization or config.normalization
    if norm not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {norm!r}; choose one of {NORMALIZATIONS}")
    clean, noise = _check_signals(clean, noise, rdt, model.config.spec.n_fft)
    m = _check_m(m, rdt)
    batch = clean.shape[:-1]
    if norm == "frozen":
        nf = norm_factor if norm_factor is not None else config.norm_factor
        nf = frozen_norm_factor(clean, noise, m_star, power) if nf is None else jnp.asarray(nf, rdt)
        nf = jnp.broadcast_to(nf, batch).astype(rdt)
        if not _is_traced(nf) and not np.all(np.isfinite(np.asarray(nf)) & (np.asarray(nf) > 0)):
            raise ValueError(f"the frozen normalisation factor must be finite and > 0, got {nf}")
    else:
        nf = None
    if isinstance(key, Draws):
        draws = _check_draws(key, model, clean.shape[-1], batch, sampler, cdt)
    elif _is_brownian_path(key):
        from ..continuous import draws_from_path  # local import: diffrax is heavy

        draws = _check_draws(draws_from_path(key, sampler, model.config.sde, cdt), model, clean.shape[-1], batch, sampler, cdt)
    else:
        if isinstance(key, (int, np.integer)):
            key = jax.random.key(int(key))
        draws = _draws(model, key, clean.shape[-1], sampler, tuple(batch), cdt)
    static = _Static(sampler=sampler, normalization=norm, power=bool(power))
    return Prepared(model, clean, noise, m, draws, nf, static)


def check_stages(stages: list[tuple[str, Any]], m) -> None:
    """Raise :class:`NonFiniteTangentError` naming the first stage (in pipeline order) whose
    value or tangent holds NaN/Inf. ``stages`` is ``[(description, array or None), …]``.
    Inside an outer trace (``jit`` of a caller, e.g. a sharded sweep) there is nothing to check
    yet: the check is the caller's, on the computed arrays (:func:`~storm_jax.analysis.check_finite`)."""
    if any(_is_traced(arr) for _, arr in stages):
        return
    for name, arr in stages:
        if arr is None:
            continue
        a = np.asarray(arr)
        bad = ~np.isfinite(a)
        if bad.any():
            ok = [n for n, x in stages[: [s[0] for s in stages].index(name)] if x is not None]
            mm = np.asarray(m)
            raise NonFiniteTangentError(
                f"non-finite values first appear at stage '{name}': {int(bad.sum())} of {a.size} entries "
                f"are NaN/Inf (M = {mm.tolist()}). Earlier stages are finite: {ok or 'none'}. "
                "Check that stage's inputs and parameters; in float32, try dtype=jnp.float64."
            )

