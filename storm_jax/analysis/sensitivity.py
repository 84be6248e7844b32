"""Exact pathwise sensitivity of StoRM's output to the noise amplitude M, and its factorization.

With the Brownian path fixed (prior draw and per-step draws, :class:`~storm_jax.sampling.Draws`),
the pipeline of :mod:`storm_jax.pipeline` is a deterministic composition (DESIGN.md notation)::

    y(M) = s + M·n                                   (mixture; or s + sqrt(M)·n)
    ν(M), Y(M) = normalization_factor(y), pad(compress(STFT(y/ν)))
    C(M) = Π(Y(M))                                   (predictor)
    x̂(M) = S(Y(M), C(M))                             (reverse process on the fixed path)
    ŝ(M) = ν(M)·W(x̂(M)),   W = iSTFT ∘ decompress    (waveform, length L)

so ``dŝ/dM`` is obtained exactly by forward-mode differentiation (``jax.jvp``): one pass carries
the value and the tangent together and its memory does not grow with the number of sampler steps.

Factorization (seed paper, "central identity"; DESIGN.md § Notation). With ``u = dC/dM``,
``v = dY/dM``, ``K = ∂S/∂C`` and ``L = ∂S/∂Y`` (both along the fixed path), the chain rule gives,
in the compressed-spectrogram domain of the sampler output::

    dx̂/dM = K·u + L·v                                 (exact; L·v ≡ 0 when condition="predictor")

and in the waveform domain, since ν also depends on M (``normalization="max"`` or ``"rms"``)::

    dŝ/dM = ν·W'(x̂)·(K·u) + ν·W'(x̂)·(L·v) + (dν/dM)·W(x̂)

The last term is the *normalization term*: it is reported on its own, never folded into a
residual. The seed paper's identity ``dŝ/dM = K·u`` is the special case ``L·v = 0`` with a
frozen normalisation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..metrics import si_sdr
from ..model import predictor, refine
from ..pipeline import Enhanced, analysis_input, enhance_mixture, mix, synthesis
from ..sampling import sample
from ._setup import Prepared, _Static, check_stages, prepare

__all__ = ["check_finite", "pathwise_derivative", "si_sdr_derivative", "factorize", "Factorization", "linearized_predictor_derivative"]


# ---------------------------------------------------------------------------------------------
# Pathwise derivative dŝ/dM
# ---------------------------------------------------------------------------------------------


def _over_m(fn, m):
    """Apply ``fn`` to a scalar ``m`` or map it over a 1-D array of M values (leading axis K)."""
    return fn(m) if m.ndim == 0 else jax.vmap(fn)(m)


@functools.partial(jax.jit, static_argnames=("static",))
def _pathwise_core(model, clean, noise, m, draws, norm_factor, static: _Static):
    cfg = static.enhance_config(norm_factor)

    def one(mm):
        f = lambda q: enhance_mixture(model, clean, noise, q, draws, cfg, static.power)
        return jax.jvp(f, (mm,), (jnp.ones_like(mm),))

    return _over_m(one, m)


def _enhanced_stages(value: Enhanced, tangent: Enhanced, what: str) -> list:
    """Pipeline stages in order, for :func:`check_stages`."""
    return [
        (f"{what} normalisation factor ν", value.norm),
        (f"{what} analysis Y (STFT, compression)", value.Y),
        (f"{what} predictor C = Π(Y)", value.C),
        (f"{what} sampler output x̂", value.spec),
        (f"{what} waveform ŝ (decompress, iSTFT, ×ν)", value.waveform),
        (f"{what} dν/dM (normalisation)", tangent.norm),
        (f"{what} v = dY/dM (analysis: STFT, compression)", tangent.Y),
        (f"{what} u = dC/dM (predictor)", tangent.C),
        (f"{what} dx̂/dM (sampler)", tangent.spec),
        (f"{what} dŝ/dM (synthesis: decompress, iSTFT, ×ν)", tangent.waveform),
    ]


def pathwise_derivative(
    model,
    clean,
    noise,
    m,
    key,
    *,
    config=None,
    condition=None,
    normalization=None,
    norm_factor=None,
    steps=None,
    dtype=None,
    power: bool = False,
    check: bool = True,
) -> tuple[Enhanced, Enhanced]:
    """``(ŝ, dŝ/dM)``: the enhanced output at M and its exact pathwise derivative, in one
    forward-mode pass (``jax.jvp`` of :func:`~storm_jax.pipeline.enhance_mixture`).

    Both are :class:`~storm_jax.pipeline.Enhanced` records: the first holds the values
    (``waveform`` ŝ ``[..., L]``, ``spec`` x̂ ``[..., F, Tp]`` in the compressed, normalised
    domain, ``C``, ``Y``, ``norm`` ν), the second their M-derivatives (``waveform`` dŝ/dM,
    ``spec`` dx̂/dM, ``C`` u = dC/dM, ``Y`` v = dY/dM, ``norm`` dν/dM). Units: waveform per unit M.

    Args:
        model: StoRM model; clean, noise: waveforms ``[..., L]`` of equal shape (leading axes
            are utterances, processed as one batch).
        m: M > 0, a scalar or ``[K]`` (then every output gets a leading axis K; all M values
            share the same draws).
        key: PRNG key, integer seed or :class:`~storm_jax.sampling.Draws` (the fixed path).
        config: base :class:`~storm_jax.pipeline.EnhanceConfig`; ``condition``,
            ``normalization`` (with ``norm_factor`` for ``frozen``; default ``max|y(M*=1)|``),
            ``steps``, ``dtype`` override it or the model.
        power: mix with ``sqrt(M)`` (power scaling) instead of ``M``.
        check: raise :class:`~storm_jax.analysis.NonFiniteTangentError` naming the first stage
            whose value or tangent is NaN/Inf (one host sync).
    """
    p = prepare(model, clean, noise, m, key, config=config, condition=condition, normalization=normalization,
                norm_factor=norm_factor, steps=steps, dtype=dtype, power=power)
    value, tangent = _pathwise_core(p.model, p.clean, p.noise, p.m, p.draws, p.norm_factor, p.static)
    if check:
        check_finite((value, tangent), p.m)
    return value, tangent


def si_sdr_derivative(model, clean, noise, m, key, *, reference=None, **overrides) -> tuple[jax.Array, jax.Array]:
    """``(SI-SDR(ŝ(M), s), dSI-SDR/dM)`` in dB and dB per unit M, shapes ``[K?, ...]``.

    Exact: the chain rule through the differentiable SI-SDR (:func:`storm_jax.metrics.si_sdr`),
    ``dSI-SDR/dM = ∇_ŝ SI-SDR · dŝ/dM``, on top of :func:`pathwise_derivative` (no extra pass
    through the networks). ``reference`` defaults to ``clean``; other keyword arguments are those
    of :func:`pathwise_derivative`.
    """
    value, tangent = pathwise_derivative(model, clean, noise, m, key, **overrides)
    ref = jnp.asarray(clean if reference is None else reference, value.waveform.dtype)
    return jax.jvp(lambda w: si_sdr(w, ref), (value.waveform,), (tangent.waveform,))


# ---------------------------------------------------------------------------------------------
# Factorization dx̂/dM = K·u + L·v (+ the normalization term in the waveform)
# ---------------------------------------------------------------------------------------------


class Factorization(NamedTuple):
    """The terms of ``dŝ/dM`` (shapes for one M; a leading ``[K]`` axis when m is 1-D).

    Spectrogram domain (compressed, normalised sampler output x̂, ``[..., F, Tp]``):
        total: dx̂/dM, propagated with both tangents at once (independently of ``Ku``/``Lv``
            when ``check_identity``; otherwise ``Ku + Lv``).
        Ku: K·u, the sampler tangent with only C perturbed.
        Lv: L·v, the sampler tangent with only Y perturbed (exactly 0 for ``condition="predictor"``).
        u: dC/dM (predictor tangent); v: dY/dM (direct tangent of the noisy input).
        residual: ``‖total − (Ku + Lv)‖ / ‖total‖`` per utterance ``[...]`` (the absolute
            difference where ‖total‖ = 0); ``None`` without ``check_identity``.
        norm_total, norm_Ku, norm_Lv: Euclidean norms per utterance ``[...]``.
        cos_angle: ``Re⟨Ku, Lv⟩ / (‖Ku‖·‖Lv‖)`` per utterance (0 when either term is 0).

    Waveform domain (``[..., L]``), ``total_wave = Ku_wave + Lv_wave + norm_term``:
        total_wave: dŝ/dM; Ku_wave = ν·W'(x̂)·Ku; Lv_wave = ν·W'(x̂)·Lv;
        norm_term: (dν/dM)·W(x̂), the normalisation factor's own dependence on M (0 for
            ``frozen``); residual_wave: as ``residual`` for the waveform identity.

    Values: value (:class:`~storm_jax.pipeline.Enhanced` at M), dnu (dν/dM ``[...]``).
    """

    total: jax.Array
    Ku: jax.Array
    Lv: jax.Array
    u: jax.Array
    v: jax.Array
    residual: jax.Array | None
    norm_total: jax.Array
    norm_Ku: jax.Array
    norm_Lv: jax.Array
    cos_angle: jax.Array
    total_wave: jax.Array
    Ku_wave: jax.Array
    Lv_wave: jax.Array
    norm_term: jax.Array
    residual_wave: jax.Array | None
    dnu: jax.Array
    value: Enhanced


def _norm(a, axes):
    return jnp.sqrt(jnp.sum(jnp.real(a) ** 2 + jnp.imag(a) ** 2, axis=axes))


def _rel(diff_norm, ref_norm):
    return jnp.where(ref_norm > 0, diff_norm / jnp.where(ref_norm > 0, ref_norm, 1.0), diff_norm)


def _front(model, clean, noise, m, cfg, power):
    """``M ↦ (Y, ν, C)``: mixture, analysis and predictor (the stages before the sampler)."""
    y = mix(clean, noise, m, power)
    Y, nu = analysis_input(model, y, cfg)
    # As enhance_spectrogram: a score-only model conditions the sampler on C := Y.
    C = predictor(model, Y) if model.config.has_predictor else Y
    return Y, nu, C


@functools.partial(jax.jit, static_argnames=("static",))
def front_jvp(model, clean, noise, m, norm_factor, static: _Static):
    """``((Y, ν, C), (v, dν/dM, u))`` at one M: the stages before the sampler and their
    tangents, in one jitted forward-mode pass (used by the probes and the spectra)."""
    cfg = static.enhance_config(norm_factor)
    return jax.jvp(lambda q: _front(model, clean, noise, q, cfg, static.power), (m,), (jnp.ones_like(m),))


def _factorize_one(model, clean, noise, m, draws, norm_factor, static: _Static, check_identity: bool):
    cfg = static.enhance_config(norm_factor)
    length = clean.shape[-1]
    # Pass 1 (one tangent): u, v and dν/dM through analysis and predictor.
    (Y, nu, C), (v, dnu, u) = jax.jvp(lambda q: _front(model, clean, noise, q, cfg, static.power), (m,), (jnp.ones_like(m),))

    # Pass 2: the sampler and the (linear-in-ν) synthesis, with the tangent directions stacked
    # on a vmapped axis. The primal does not depend on the mapped tangents, so vmap computes it
    # once and only the tangent arithmetic is batched (one sampler run, 2–3 tangent lanes).
    def back(Yb, Cb):
        xhat = refine(model, sample(model, Yb, Cb, draws, cfg.sampler))  # a two-stage model: K, L include R'
        return xhat, synthesis(model, xhat, length, jnp.ones_like(nu))  # W(x̂), ν applied below

    zY, zC = jnp.zeros_like(v), jnp.zeros_like(u)
    tY = [zY, v] + ([v] if check_identity else [])
    tC = [u, zC] + ([u] if check_identity else [])
    (xhat, wav), (dx, dw) = jax.vmap(lambda a, b: jax.jvp(back, (Y, C), (a, b)), out_axes=((None, None), (0, 0)))(
        jnp.stack(tY), jnp.stack(tC)
    )
    Ku, Lv = dx[0], dx[1]
    nu_b = nu[..., None]
    Ku_w, Lv_w = nu_b * dw[0], nu_b * dw[1]
    norm_term = dnu[..., None] * wav
    spec_axes, wave_axes = (-2, -1), (-1,)
    if check_identity:
        total, total_w = dx[2], nu_b * dw[2] + norm_term
        residual = _rel(_norm(total - (Ku + Lv), spec_axes), _norm(total, spec_axes))
        residual_w = _rel(_norm(total_w - (Ku_w + Lv_w + norm_term), wave_axes), _norm(total_w, wave_axes))
    else:
        total, total_w = Ku + Lv, Ku_w + Lv_w + norm_term
        residual = residual_w = None
    nK, nL = _norm(Ku, spec_axes), _norm(Lv, spec_axes)
    inner = jnp.sum(jnp.real(jnp.conj(Ku) * Lv), axis=spec_axes)
    denom = nK * nL
    cos = jnp.where(denom > 0, inner / jnp.where(denom > 0, denom, 1.0), 0.0)
    value = Enhanced(waveform=nu_b * wav, spec=xhat, C=C, Y=Y, norm=nu)
    return Factorization(
        total=total, Ku=Ku, Lv=Lv, u=u, v=v, residual=residual,
        norm_total=_norm(total, spec_axes), norm_Ku=nK, norm_Lv=nL, cos_angle=cos,
        total_wave=total_w, Ku_wave=Ku_w, Lv_wave=Lv_w, norm_term=norm_term, residual_wave=residual_w,
        dnu=dnu, value=value,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("static", "check_identity"))
def _factorize_core(model, clean, noise, m, draws, norm_factor, static: _Static, check_identity: bool):
    one = lambda mm: _factorize_one(model, clean, noise, mm, draws, norm_factor, static, check_identity)
    return _over_m(one, m)


def factorize(
    model,
    clean,
    noise,
    m,
    key,
    *,
    config=None,
    condition=None,
    normalization=None,
    norm_factor=None,
    steps=None,
    dtype=None,
    power: bool = False,
    check_identity: bool = True,
    check: bool = True,
) -> Factorization:
    """All terms of ``dŝ/dM = K·u + L·v (+ normalization term)`` in one call (see module doc).

    Two passes: a jvp through analysis and predictor gives ``u, v, dν/dM``; one jvp through the
    sampler with the tangent directions ``(C: u, Y: 0)``, ``(C: 0, Y: v)`` and, with
    ``check_identity``, ``(C: u, Y: v)`` stacked on a vmapped axis gives ``K·u``, ``L·v`` and
    the total, sharing a single primal sampler run. Without ``check_identity`` the total is
    defined as ``K·u + L·v`` (one tangent lane less) and the residuals are ``None``.

    For a two-stage model (``config.refiner``) the sampler's output is refined, ``x̂ = R∘S``, so
    ``K = ∂x̂/∂C`` and ``L = ∂x̂/∂Y`` include the refiner's Jacobian: ``K_2 = (I + R′)·K_1``.

    The residual measures how exactly the identity holds in floating point (expected: rounding,
    ≲1e-6 in float32, ≲1e-12 in float64); that ``total`` equals the end-to-end derivative of
    :func:`pathwise_derivative` is checked in the test suite. Arguments as in
    :func:`pathwise_derivative`.
    """
    p: Prepared = prepare(model, clean, noise, m, key, config=config, condition=condition, normalization=normalization,
                          norm_factor=norm_factor, steps=steps, dtype=dtype, power=power)
    out = _factorize_core(p.model, p.clean, p.noise, p.m, p.draws, p.norm_factor, p.static, bool(check_identity))
    if check:
        check_finite(out, p.m)
    return out


def _factorization_stages(out: "Factorization") -> list:
    val = out.value
    return [
        ("normalisation factor ν", val.norm),
        ("analysis Y (STFT, compression)", val.Y),
        ("predictor C = Π(Y)", val.C),
        ("sampler output x̂", val.spec),
        ("waveform ŝ", val.waveform),
        ("dν/dM (normalisation)", out.dnu),
        ("v = dY/dM (analysis: STFT, compression)", out.v),
        ("u = dC/dM (predictor)", out.u),
        ("K·u (sampler, C channel)", out.Ku),
        ("L·v (sampler, Y channel)", out.Lv),
        ("dx̂/dM total (sampler)", out.total),
        ("waveform terms (synthesis: decompress, iSTFT, ×ν)", out.total_wave),
    ]


def check_finite(result, m) -> None:
    """The NaN/Inf check of :func:`pathwise_derivative` (a ``(value, tangent)`` pair) or
    :func:`factorize` (a :class:`Factorization`), for results computed with ``check=False`` or
    inside an outer ``jit`` — as the sharded sweeps of :mod:`storm_jax.experiments` do, which
    check the gathered lanes. Raises :class:`NonFiniteTangentError` naming the first stage in
    pipeline order whose value or tangent is not finite."""
    if isinstance(result, Factorization):
        check_stages(_factorization_stages(result), m)
    else:
        value, tangent = result
        check_stages(_enhanced_stages(value, tangent, "pipeline"), m)


# ---------------------------------------------------------------------------------------------
# Ablation: the predictor replaced by its linearization at M*
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("static",))
def _linearized_core(model, clean, noise, m, m_star, draws, norm_factor, static: _Static):
    cfg = static.enhance_config(norm_factor)
    length = clean.shape[-1]
    (_, _, C0), (_, _, u0) = jax.jvp(lambda q: _front(model, clean, noise, q, cfg, static.power), (m_star,), (jnp.ones_like(m_star),))

    def one(mm):
        def f(q):
            Y, nu = analysis_input(model, mix(clean, noise, q, static.power), cfg)
            C = C0 + (q - m_star) * u0  # C_lin(M) = C(M*) + (M − M*)·u(M*)
            xhat = refine(model, sample(model, Y, C, draws, cfg.sampler))
            return synthesis(model, xhat, length, nu)

        return jax.jvp(f, (mm,), (jnp.ones_like(mm),))

    return _over_m(one, m)


def linearized_predictor_derivative(model, clean, noise, m, key, *, m_star: float = 1.0, reference=None,
                                    **overrides) -> tuple[jax.Array, jax.Array]:
    """``(SI-SDR, dSI-SDR/dM)`` of the pipeline whose predictor output is replaced by its
    first-order expansion at M* (E3's ablation, DESIGN.md):

        C_lin(M) = C(M*) + (M − M*)·u(M*),   ŝ_lin(M) = ν(M)·W(S(Y(M), C_lin(M)))

    C_lin is affine in M, so any kink of ŝ_lin at M* comes from the analysis front end or the
    sampler, not from the predictor: if the kink of :func:`si_sdr_derivative` lives in the
    predictor, it vanishes here. Shapes and arguments as :func:`si_sdr_derivative` (``m`` a
    scalar or ``[K]``; the model needs a predictor)."""
    if not model.config.has_predictor:
        raise ValueError("the linearized-predictor ablation needs a model with a predictor network")
    p = prepare(model, clean, noise, m, key, **overrides)
    m_star_arr = jnp.asarray(m_star, p.m.dtype)
    wave, dwave = _linearized_core(p.model, p.clean, p.noise, p.m, m_star_arr, p.draws, p.norm_factor, p.static)
    check_stages([("ablated waveform ŝ_lin", wave), ("ablated dŝ_lin/dM", dwave)], p.m)
    ref = jnp.asarray(clean if reference is None else reference, wave.dtype)
    return jax.jvp(lambda w: si_sdr(w, ref), (wave,), (dwave,))
