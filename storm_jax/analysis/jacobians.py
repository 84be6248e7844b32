"""Jacobian probes along the reverse trajectory and matrix-free spectra (experiments E1–E3).

Probes (DESIGN.md, E1/E2). At every step k of the discrete reverse process, with state x_k
entering the step at grid time t_k, the score ``s_θ(x, t_k, Y, C)`` has the Jacobians
``J_x^k = ∂s/∂x``, ``J_C^k = ∂s/∂C`` and ``J_y^k = ∂s/∂Y`` at ``(x_k, Y, C)``. For fixed probe
vectors ``w`` (and the tangents ``u = dC/dM``, ``v = dY/dM``) :func:`trajectory_probes` records
``J_x^k·w``, ``J_C^k·u`` and ``J_y^k·v`` for k = 0 … N−1 while carrying the state's own tangent
``ẋ_k = dx_k/dM`` (the pathwise derivative along the trajectory), all in one scan whose step is a
single score evaluation with its tangent lanes stacked (vmapped jvp).

Spectra (E1, E3). The operators are real-linear maps between complex spectrograms seen as real
vectors ``[Re, Im]`` (the pipeline is not holomorphic):

* ``K = ∂x̂/∂C`` and ``L = ∂x̂/∂Y``, the sampler Jacobians along the fixed path;
* ``J_x^k`` (and ``J_C^k``, ``J_y^k``), the score Jacobians at one state.

Top singular triplets come from Golub–Kahan bidiagonalisation with full reorthogonalisation
(``matfree.decomp.bidiag``; matrix–vector products by ``jax.jvp``, transposed products by the
``vjp`` that matfree takes of them). The reverse-mode pass through the sampler's ``lax.scan`` would
store every step's network activations; the score is therefore wrapped in ``jax.checkpoint`` so
only the per-step states are stored and the network is recomputed in the backward sweep.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matfree import decomp, eig

from ..model import StormModel, score
from ..sampling import Draws, SamplerConfig, reverse_step, sample_with_score, time_grid
from ._setup import check_stages, prepare
from .sensitivity import front_jvp

__all__ = [
    "Probes",
    "trajectory_probes",
    "probes_at",
    "Spectrum",
    "top_singular",
    "sampler_jacobian",
    "score_jacobian",
    "sampler_spectrum",
    "score_spectrum",
    "Gain",
    "direction_gain",
]


# ---------------------------------------------------------------------------------------------
# Probes along the trajectory
# ---------------------------------------------------------------------------------------------


class Probes(NamedTuple):
    """Per-step records of :func:`trajectory_probes` (leading axis: step k = 0 … N−1).

    Attributes:
        t: grid times t_k ``[N]``.
        x: states x_k entering step k ``[N, ..., F, T]`` (``record="norms"``: ``‖x_k‖`` ``[N, ...]``).
        dx: their tangents dx_k/dM along the fixed path (same shapes).
        Jx_w: J_x^k·w; JC_u: J_C^k·u; JY_v: J_y^k·v (0 where the score does not see C resp. Y).
        out, dout: the sampler output x̂ and dx̂/dM (equal to :func:`factorize`'s ``total``).
    """

    t: jax.Array
    x: jax.Array
    dx: jax.Array
    Jx_w: jax.Array
    JC_u: jax.Array
    JY_v: jax.Array
    out: jax.Array
    dout: jax.Array


def _sq_norm(a):
    axes = (-2, -1)
    return jnp.sqrt(jnp.sum(jnp.real(a) ** 2 + jnp.imag(a) ** 2, axis=axes))


@functools.partial(jax.jit, static_argnames=("sampler", "record"))
def _probes_core(model, Y, C, draws, w, u, v, sampler: SamplerConfig, record: str):
    sde = model.config.sde
    rdt = jnp.real(C).dtype
    ts, dts = time_grid(sde, sampler.steps, sampler.grid)
    ts, dts = jnp.asarray(ts, rdt), jnp.asarray(dts, rdt)
    x0 = sde.prior_sample(C, draws.prior)
    dx0 = u  # x_T = C + σ(1)·z: the fixed draw makes dx_T/dM = dC/dM
    zx, zY, zC = jnp.zeros_like(C), jnp.zeros_like(Y), jnp.zeros_like(C)
    keep = (lambda a: a) if record == "full" else _sq_norm

    def body(carry, xs):
        x, dx, _, _ = carry
        t, dt, zp, zc = xs

        def f(xx, YY, CC):
            s_k = score(model, xx, t, YY, CC)
            # reverse_step evaluates the score at its input state first (no corrector) — reuse
            # s_k there instead of a second network call (identity test on the traced state).
            fn = lambda a, tt: s_k if a is xx else score(model, a, tt, YY, CC)
            x_new, x_mean = reverse_step(sde, fn, CC, xx, t, dt, zp, zc, sampler)
            return s_k, x_new, x_mean

        lanes = (
            (w, zY, zC),  # J_x·w
            (zx, zY, u),  # J_C·u
            (zx, v, zC),  # J_y·v
            (dx, v, u),  # the state's own tangent: dx_{k+1}/dM
        )
        tx, tY, tC = (jnp.stack(a) for a in zip(*lanes))
        (s, x_new, x_mean), (ds, dx_new, dx_mean) = jax.vmap(
            lambda a, b, c: jax.jvp(f, (x, Y, C), (a, b, c)), out_axes=((None, None, None), (0, 0, 0))
        )(tx, tY, tC)
        rec = (keep(x), keep(dx), keep(ds[0]), keep(ds[1]), keep(ds[2]))
        return (x_new, dx_new[3], x_mean, dx_mean[3]), rec

    init = (x0, dx0, x0, dx0)
    (x, dx, x_mean, dx_mean), rec = jax.lax.scan(body, init, (ts, dts, draws.predictor, draws.corrector))
    out, dout = (x_mean, dx_mean) if sampler.denoise else (x, dx)
    return Probes(ts, *rec, out, dout)


def trajectory_probes(
    model: StormModel,
    Y,
    C,
    draws: Draws,
    w,
    u=None,
    v=None,
    *,
    sampler: SamplerConfig = SamplerConfig(),
    record: str = "full",
) -> Probes:
    """Score-Jacobian probes along one reverse trajectory (see module doc).

    Args:
        model: StoRM model; Y, C: compressed padded spectrograms ``[..., F, T]`` (the
            conditioning); draws: the fixed path (:class:`~storm_jax.sampling.Draws`).
        w: probe for J_x (same shape as C), fixed over k.
        u, v: probes for J_C and J_y, and the tangents (dC/dM, dY/dM) carried into dx_k/dM
            (default zero: then ``dx`` and ``dout`` are zero).
        sampler: sampler settings; ``record="full"`` keeps the vectors (memory ∝ N),
            ``"norms"`` only their Euclidean norms per step and utterance.

    Probes are taken at the state entering each step (the predictor's input when there is no
    corrector; with the ALD corrector, before the corrector moves it).
    """
    if record not in ("full", "norms"):
        raise ValueError(f"record must be 'full' or 'norms', got {record!r}")
    C = jnp.asarray(C)
    Y = jnp.asarray(Y, C.dtype)
    if Y.shape != C.shape:
        raise ValueError(f"Y and C must have the same shape, got {Y.shape} and {C.shape}")
    cast = lambda a: jnp.zeros_like(C) if a is None else jnp.broadcast_to(jnp.asarray(a, C.dtype), C.shape)
    draws = Draws(*(jnp.asarray(a, C.dtype) for a in draws))
    if draws.predictor.shape[0] != sampler.steps:
        raise ValueError(f"draws hold {draws.predictor.shape[0]} steps but sampler.steps={sampler.steps}")
    return _probes_core(model, Y, C, draws, cast(w), cast(u), cast(v), sampler, record)


def probes_at(model, clean, noise, m, key, w=None, *, probe_key=None, record: str = "full", **overrides) -> Probes:
    """:func:`trajectory_probes` on the trajectory of ``y(M) = clean + M·noise`` with the
    conditioning ``Y(M), C(M)``, the tangents ``u = dC/dM``, ``v = dY/dM`` at that M, and the
    probe ``w`` (default: a standard complex normal draw from ``probe_key``, unit norm per
    utterance). ``m`` must be a scalar; other arguments as in
    :func:`~storm_jax.analysis.pathwise_derivative`.
    """
    p = prepare(model, clean, noise, m, key, **overrides)
    if p.m.ndim != 0:
        raise ValueError("probes_at takes one M value; loop or vmap over M yourself")
    (Y, nu, C), (v, dnu, u) = front_jvp(p.model, p.clean, p.noise, p.m, p.norm_factor, p.static)
    check_stages([("analysis Y", Y), ("predictor C", C), ("v = dY/dM", v), ("u = dC/dM", u)], p.m)
    if w is None:
        if probe_key is None:
            raise ValueError("give a probe w or a probe_key to draw one")
        kr, ki = jax.random.split(probe_key)
        rdt = jnp.real(C).dtype
        w = jax.random.normal(kr, C.shape, rdt) + 1j * jax.random.normal(ki, C.shape, rdt)
        w = w / _sq_norm(w)[..., None, None]
    return trajectory_probes(p.model, Y, C, p.draws, w, u, v, sampler=p.static.sampler, record=record)


# ---------------------------------------------------------------------------------------------
# Matrix-free singular values (Golub–Kahan bidiagonalisation, matfree)
# ---------------------------------------------------------------------------------------------


class Spectrum(NamedTuple):
    """Top singular triplets ``A·r_i ≈ σ_i·l_i`` of a linear operator A (descending σ).

    Attributes:
        values: σ_1 ≥ … ≥ σ_k ``[k]``.
        left: l_i ``[k, *out_shape]``; right: r_i ``[k, *in_shape]`` (unit norm as real vectors).
        residual: ``‖A·r_i − σ_i·l_i‖ / σ_1`` ``[k]``, a posteriori check of each triplet.
    """

    values: jax.Array
    left: jax.Array
    right: jax.Array
    residual: jax.Array


def _to_real(a):
    return jnp.concatenate([jnp.real(a).ravel(), jnp.imag(a).ravel()]) if jnp.iscomplexobj(a) else a.ravel()


def _from_real(r, like):
    if jnp.iscomplexobj(like):
        n = like.size
        return (r[:n] + 1j * r[n:]).reshape(like.shape).astype(like.dtype)
    return r.reshape(like.shape).astype(like.dtype)


def top_singular(matvec: Callable, example_input, k: int = 4, *, num_matvecs: int | None = None, key=None) -> Spectrum:
    """Top-k singular triplets of the real-linear operator ``matvec`` (matrix-free).

    Golub–Kahan–Lanczos bidiagonalisation with ``num_matvecs`` steps and full
    reorthogonalisation (``matfree.decomp.bidiag``) gives ``A V = U B``; the SVD of the small
    bidiagonal B gives Ritz approximations of the top singular triplets, exact once
    ``num_matvecs`` reaches the rank. Complex in- and outputs are treated as real vectors
    ``[Re, Im]``. Each step costs one ``matvec`` and one transposed product (``jax.vjp`` of
    ``matvec``). Default ``num_matvecs = min(n, max(3k + 10, 20))``; ``key`` draws the start vector.
    """
    example_input = jnp.asarray(example_input)
    out_like = jax.eval_shape(matvec, example_input)
    n_in = 2 * example_input.size if jnp.iscomplexobj(example_input) else example_input.size
    n_out = 2 * int(np.prod(out_like.shape)) if jnp.issubdtype(out_like.dtype, jnp.complexfloating) else int(np.prod(out_like.shape))
    cap = min(n_in, n_out)
    if not (1 <= k <= cap):
        raise ValueError(f"k must lie in [1, {cap}], got {k}")
    if num_matvecs is None:
        num_matvecs = min(cap, max(3 * k + 10, 20))
    if not (k <= num_matvecs <= cap):
        raise ValueError(f"num_matvecs must lie in [k={k}, {cap}], got {num_matvecs}")
    rdt = jnp.real(example_input).dtype
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, (n_in,), rdt)
    A = lambda r: _to_real(matvec(_from_real(r, example_input)))
    out = _gk_svd(A, v0, num_matvecs)
    U, S, Vt = out
    vals, lefts, rights = S[:k], U[:k], Vt[:k]
    res = jax.vmap(lambda l, s, r: jnp.linalg.norm(A(r) - s * l))(lefts, vals, rights) / vals[0]
    out_proto = jnp.zeros(out_like.shape, out_like.dtype)
    return Spectrum(
        values=vals,
        left=jax.vmap(lambda r: _from_real(r, out_proto))(lefts),
        right=jax.vmap(lambda r: _from_real(r, example_input))(rights),
        residual=res,
    )


def _gk_svd(A: Callable, v0, num_matvecs: int):
    """``(U, σ, Vᵀ)`` with the Ritz vectors as rows: matfree's partial SVD on top of its
    bidiagonalisation ``A·Vᵀ = Uᵀ·B`` (SVD of the small B, rotated back)."""
    return eig.svd_partial(decomp.bidiag(num_matvecs, materialize=True))(A, v0)


# --- operators -------------------------------------------------------------------------------


def _ckpt_score(model):
    """The score with its network rematerialised in reverse mode (memory O(N·state), not
    O(N·activations), for the transposed products through the sampler scan)."""
    return jax.checkpoint(lambda x, t, Y, C: score(model, x, t, Y, C))


_SAMPLER_WRT = {"C": (1.0, 0.0), "Y": (0.0, 1.0)}
_SCORE_WRT = {"x": (1.0, 0.0, 0.0), "Y": (0.0, 1.0, 0.0), "C": (0.0, 0.0, 1.0)}


def _selector(table: dict, wrt: str, dtype) -> jax.Array:
    """Which input an operator perturbs, as a *traced* 0/1 vector: K, L (or J_x, J_C, J_y)
    then share one compiled executable, and a one-hot tangent costs the same as a plain jvp."""
    if wrt not in table:
        raise ValueError(f"wrt must be one of {tuple(table)}, got {wrt!r}")
    return jnp.asarray(table[wrt], dtype)


def _sampler_matvec(model, Y, C, draws, sampler: SamplerConfig, sel, d):
    """``(sel_C·K + sel_Y·L)·d``: one jvp of the sampler (checkpointed score) along the path."""
    sde = model.config.sde
    sc = _ckpt_score(model)
    S = lambda Yb, Cb: sample_with_score(sde, lambda x, t: sc(x, t, Yb, Cb), Cb, draws, sampler)
    return jax.jvp(S, (Y, C), (sel[1] * d, sel[0] * d))[1]


def _score_matvec(model, x, t, Y, C, sel, d):
    """``(sel_x·J_x + sel_Y·J_y + sel_C·J_C)·d`` at one state."""
    return jax.jvp(lambda a, b, c: score(model, a, t, b, c), (x, Y, C), (sel[0] * d, sel[1] * d, sel[2] * d))[1]


def sampler_jacobian(model: StormModel, Y, C, draws: Draws, sampler: SamplerConfig = SamplerConfig(), wrt: str = "C") -> Callable:
    """The linear map ``K·d = ∂x̂/∂C·d`` (``wrt="C"``) or ``L·d = ∂x̂/∂Y·d`` (``wrt="Y"``), as a
    function of a spectrogram ``d`` shaped like C, along the fixed path ``draws``. The score is
    checkpointed, so the transposed product (``jax.vjp`` of this map) stores only the per-step
    states of the scan."""
    C = jnp.asarray(C)
    sel = _selector(_SAMPLER_WRT, wrt, jnp.real(C).dtype)
    return functools.partial(_sampler_matvec, model, jnp.asarray(Y, C.dtype), C, draws, sampler, sel)


def score_jacobian(model: StormModel, x, t, Y, C, wrt: str = "x") -> Callable:
    """The linear map ``d ↦ ∂s_θ(x, t, Y, C)/∂(wrt)·d`` for ``wrt`` in ``x``, ``Y``, ``C``."""
    x = jnp.asarray(x)
    sel = _selector(_SCORE_WRT, wrt, jnp.real(x).dtype)
    return functools.partial(_score_matvec, model, x, t, jnp.asarray(Y, x.dtype), jnp.asarray(C, x.dtype), sel)


@functools.partial(jax.jit, static_argnames=("sampler", "k", "num_matvecs"))
def _sampler_svd(model, Y, C, draws, sel, start_key, sampler: SamplerConfig, k: int, num_matvecs):
    op = functools.partial(_sampler_matvec, model, Y, C, draws, sampler, sel)
    return top_singular(op, C, k, num_matvecs=num_matvecs, key=start_key)


@functools.partial(jax.jit, static_argnames=("k", "num_matvecs"))
def _score_svd(model, x, t, Y, C, sel, start_key, k: int, num_matvecs):
    op = functools.partial(_score_matvec, model, x, t, Y, C, sel)
    return top_singular(op, x, k, num_matvecs=num_matvecs, key=start_key)


def sampler_spectrum(model, clean, noise, m, key, *, wrt: str = "C", k: int = 4, num_matvecs=None, start_key=None, **overrides) -> Spectrum:
    """Top-k singular triplets of ``K = ∂x̂/∂C`` (``wrt="C"``) or ``L = ∂x̂/∂Y`` at ``y(M)`` on
    the fixed path ``key`` (one M; a batch of utterances is one block-diagonal operator).
    Arguments as in :func:`~storm_jax.analysis.pathwise_derivative`; ``start_key`` draws the
    Krylov start vector. Cost: ``num_matvecs`` × (one jvp + one vjp of the sampler)."""
    p = prepare(model, clean, noise, m, key, **overrides)
    if p.m.ndim != 0:
        raise ValueError("sampler_spectrum takes one M value")
    (Y, _, C), _ = front_jvp(p.model, p.clean, p.noise, p.m, p.norm_factor, p.static)
    check_stages([("analysis Y", Y), ("predictor C", C)], p.m)
    sel = _selector(_SAMPLER_WRT, wrt, jnp.real(C).dtype)
    start_key = jax.random.key(0) if start_key is None else start_key
    return _sampler_svd(p.model, Y, C, p.draws, sel, start_key, p.static.sampler, k, num_matvecs)


def score_spectrum(model: StormModel, x, t, Y, C, *, wrt: str = "x", k: int = 4, num_matvecs=None, start_key=None) -> Spectrum:
    """Top-k singular triplets of the score Jacobian ``J_x``, ``J_C`` or ``J_y`` at one state
    ``(x, t, Y, C)`` (all spectrograms of one shape); the top one is E1's "top singular value of
    J_x" (Golub–Kahan converges to it first, like power iteration on JᵀJ but faster)."""
    x = jnp.asarray(x)
    sel = _selector(_SCORE_WRT, wrt, jnp.real(x).dtype)
    start_key = jax.random.key(0) if start_key is None else start_key
    t = jnp.asarray(t, jnp.real(x).dtype)
    return _score_svd(model, x, t, jnp.asarray(Y, x.dtype), jnp.asarray(C, x.dtype), sel, start_key, k, num_matvecs)


class Gain(NamedTuple):
    """``‖A·d‖/‖d‖`` for a given direction d and for random Gaussian directions.

    Attributes:
        gain: the gain of d (scalar); random: gains of ``n_random`` random directions ``[n]``;
        percentile: share (0–1) of random gains below ``gain``.
    """

    gain: jax.Array
    random: jax.Array
    percentile: jax.Array


def direction_gain(matvec: Callable, d, key, n_random: int = 8) -> Gain:
    """Gain ``‖A·d‖/‖d‖`` of an operator (e.g. :func:`sampler_jacobian`) along ``d`` (e.g. the
    predictor's one-sided jump ``Δu = u(M*+h) − u(M*−h)``, experiment E3) against ``n_random``
    standard Gaussian directions (complex: both parts); all products in one vmapped jvp."""
    d = jnp.asarray(d)
    rdt = jnp.real(d).dtype
    kr, ki = jax.random.split(key)
    R = jax.random.normal(kr, (n_random, *d.shape), rdt)
    if jnp.iscomplexobj(d):
        R = R + 1j * jax.random.normal(ki, (n_random, *d.shape), rdt)
    D = jnp.concatenate([d[None], R.astype(d.dtype)])
    nrm = lambda a: jnp.sqrt(jnp.sum(jnp.abs(a) ** 2))
    AD = jax.jit(jax.vmap(matvec))(D)
    gains = jax.vmap(nrm)(AD) / jax.vmap(nrm)(D)
    return Gain(gain=gains[0], random=gains[1:], percentile=jnp.mean(gains[1:] < gains[0]))
