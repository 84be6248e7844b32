"""Kink statistics of a curve M ↦ f(M) at the training amplitude M* (DESIGN.md, P0).

One-sided slopes are exact derivatives taken *beside* M*, never at it::

    D⁺(h) = f'(M* + h),   D⁻(h) = f'(M* − h),   κ(h) = D⁺(h) − D⁻(h)

(each f' by a forward-mode pass on a fixed Brownian path). For f piecewise C² with a kink at M*,
``κ(h) = κ₀ + c·h + O(h²)`` where κ₀ = f'(M*⁺) − f'(M*⁻) is the jump of the derivative; for f
C² around M*, ``κ(h) = 2h·f''(M*) + O(h³)`` and κ₀ = 0.

Estimates (per sample i = (utterance, Brownian path), then averaged):

* κ(h): mean over samples, with a two-way bootstrap percentile interval (utterances and paths
  resampled independently with replacement — a crossed design, both are random effects).
* κ₀: linear Richardson extrapolation from the two smallest h,
  ``κ_R(h₁, h₂) = (h₂·κ(h₁) − h₁·κ(h₂)) / (h₂ − h₁)`` per sample, bootstrapped the same way; the
  interval is widened on both sides by the extrapolation-error estimate
  ``e = |κ̄_R(h₁, h₂) − κ̄_R(h₂, h₃)|`` (needs ≥ 3 values of h; with 2, ``e = |κ̄_R − κ̄(h₁)|``).
* kink width: the largest grid h such that κ at every h' ≤ h agrees with κ(h_min) within
  ``rtol·|κ(h_min)|`` plus z·(bootstrap standard errors) — the scale below which κ stops changing.

The same machinery applies to any scalar functional of ŝ (``functional=`` a callable), and to
``‖dŝ/dM‖`` itself (``functional="tangent_norm"``: then D± are the one-sided *values*
‖dŝ/dM(M* ± h)‖ and κ their jump). Every model run also records the relative jump of the whole
tangent, ``‖dŝ/dM(M*+h) − dŝ/dM(M*−h)‖ / ‖dŝ/dM(M*−h)‖``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..metrics import si_sdr
from ..model import StormModel
from .sensitivity import pathwise_derivative

__all__ = ["DEFAULT_HS", "KinkResult", "kink_from_slopes", "kink_statistic", "check_h_resolution"]

DEFAULT_HS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
"""Offsets h (relative to M* = 1) of the P0 programme (DESIGN.md)."""


class KinkResult(NamedTuple):
    """Kink statistics (NumPy arrays; h ascending).

    Attributes:
        hs: offsets h ``[H]``; d_plus, d_minus: D⁺(h), D⁻(h) per sample ``[H, U, P]``
            (utterances × paths).
        kappa: κ(h) averaged over samples ``[H]``; kappa_ci: bootstrap interval ``[H, 2]``;
            kappa_se: bootstrap standard error ``[H]``.
        kappa0: extrapolated κ₀; kappa0_ci: its interval ``[2]`` (widened by kappa0_err);
            kappa0_err: the extrapolation-error estimate.
        width: kink width (an h of the grid); width_resolved: False when κ still changes at the
            smallest h (the width is below the grid).
        tangent_jump: relative jump of dŝ/dM ``[H, U, P]`` (None for a plain function).
        level, m_star, functional: settings.
    """

    hs: np.ndarray
    d_plus: np.ndarray
    d_minus: np.ndarray
    kappa: np.ndarray
    kappa_ci: np.ndarray
    kappa_se: np.ndarray
    kappa0: float
    kappa0_ci: np.ndarray
    kappa0_err: float
    width: float
    width_resolved: bool
    tangent_jump: np.ndarray | None
    level: float
    m_star: float
    functional: str


def check_h_resolution(m_star: float, hs, dtype) -> None:
    """Raise if some h is not > 0, reaches M ≤ 0, or cannot be resolved in ``dtype`` at M*
    (the evaluation points ``fl(M* ± h)`` must reproduce ±h to 1e-3 relative)."""
    dt = np.dtype(dtype)
    eps = float(np.finfo(dt).eps)
    for h in hs:
        if not (np.isfinite(h) and h > 0):
            raise ValueError(f"every h must be finite and > 0 (slopes are taken beside M*, never at it), got {h}")
        if m_star - h <= 0:
            raise ValueError(f"M* − h = {m_star - h} must stay > 0 (h = {h}, M* = {m_star})")
        for sign in (1.0, -1.0):
            realized = float(np.asarray(m_star + sign * h, dt).astype(np.float64)) - m_star
            if abs(abs(realized) - h) > 1e-3 * h:
                raise ValueError(
                    f"h = {h} cannot be resolved in {dt.name} at M* = {m_star}: M* {'+' if sign > 0 else '−'} h "
                    f"rounds to an offset of {abs(realized):.3g} (relative error {abs(abs(realized) - h) / h:.2g}; "
                    f"{dt.name} resolves about {eps * abs(m_star):.2g} near M*). Use a larger h or dtype=jnp.float64."
                )


def _two_way_means(x: np.ndarray, cu: np.ndarray, cp: np.ndarray) -> np.ndarray:
    """Bootstrap means ``[B, ...]`` of ``x [..., U, P]`` for resampling counts cu ``[B, U]``, cp ``[B, P]``."""
    U, P = x.shape[-2:]
    return np.einsum("bu,...up,bp->b...", cu, x, cp) / (U * P)


def kink_from_slopes(d_plus, d_minus, hs, key, *, n_boot: int = 2000, level: float = 0.95, rtol: float = 0.1,
                     tangent_jump=None, m_star: float = 1.0, functional: str = "f") -> KinkResult:  # fmt: skip
    """Kink statistics from one-sided slopes ``d_plus, d_minus`` shaped ``[H]``, ``[H, S]`` or
    ``[H, U, P]`` at offsets ``hs`` ``[H]`` (see module doc). ``key`` (a PRNG key) drives the
    bootstrap resampling."""
    hs = np.asarray(hs, np.float64)
    dp = np.asarray(d_plus, np.float64)
    dm = np.asarray(d_minus, np.float64)
    if dp.shape != dm.shape or dp.shape[0] != hs.shape[0]:
        raise ValueError(f"d_plus {dp.shape}, d_minus {dm.shape} and hs {hs.shape} must agree on the leading axis H")
    if dp.ndim == 1:
        dp, dm = dp[:, None, None], dm[:, None, None]
    elif dp.ndim == 2:
        dp, dm = dp[:, :, None], dm[:, :, None]
    elif dp.ndim != 3:
        raise ValueError("slopes must be [H], [H, S] or [H, U, P]")
    if not (np.all(np.isfinite(dp)) and np.all(np.isfinite(dm))):
        raise ValueError("the one-sided slopes contain NaN/Inf")
    if not (0 < level < 1) or n_boot < 1:
        raise ValueError("need 0 < level < 1 and n_boot >= 1")
    order = np.argsort(hs)
    hs, dp, dm = hs[order], dp[order], dm[order]
    if tangent_jump is not None:
        tangent_jump = np.asarray(tangent_jump)[order]
    H, U, P = dp.shape
    kap = dp - dm  # [H, U, P]

    # Resampling counts from a NumPy generator seeded by the key's bits (explicit randomness,
    # no device compilation for a host-side statistic).
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().astype(np.uint64))
    cu = np.stack([np.bincount(rng.integers(0, U, U), minlength=U) for _ in range(n_boot)]).astype(np.float64)
    cp = np.stack([np.bincount(rng.integers(0, P, P), minlength=P) for _ in range(n_boot)]).astype(np.float64)
    qlo, qhi = (1 - level) / 2, (1 + level) / 2

    mean_k = kap.mean(axis=(1, 2))
    boot = _two_way_means(kap, cu, cp)  # [B, H]
    ci = np.quantile(boot, [qlo, qhi], axis=0).T  # [H, 2]
    se = boot.std(axis=0)

    def richardson(i, j):
        return (hs[j] * kap[i] - hs[i] * kap[j]) / (hs[j] - hs[i])

    if H >= 2:
        kr = richardson(0, 1)
        k0 = float(kr.mean())
        err = abs(k0 - float(richardson(1, 2).mean())) if H >= 3 else abs(k0 - float(mean_k[0]))
        b0 = _two_way_means(kr, cu, cp)
    else:
        k0, err, b0 = float(mean_k[0]), 0.0, boot[:, 0]
    ci0 = np.quantile(b0, [qlo, qhi]) + np.array([-err, err])

    # Width: the largest h below which κ(h) stays within tolerance of κ(h_min).
    z = _normal_quantile(qhi)
    ref = mean_k[0]
    ok = np.abs(mean_k - ref) <= rtol * abs(ref) + z * np.sqrt(se**2 + se[0] ** 2)
    n_ok = int(np.argmin(ok)) if not ok.all() else H  # leading run of True (h ascending)
    width = float(hs[max(n_ok, 1) - 1])
    return KinkResult(
        hs=hs, d_plus=dp, d_minus=dm, kappa=mean_k, kappa_ci=ci, kappa_se=se,
        kappa0=k0, kappa0_ci=ci0, kappa0_err=float(err), width=width, width_resolved=n_ok >= 2,
        tangent_jump=tangent_jump, level=level, m_star=float(m_star), functional=functional,
    )  # fmt: skip


def _normal_quantile(q: float) -> float:
    """Φ⁻¹(q) by bisection on erf (no SciPy needed here)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _fn_slopes(fn: Callable, m_star: float, hs, dtype):
    """D± of a plain function ``fn(M) -> [S]`` or ``[U, P]`` by jvp at M* ± h."""
    dplus, dminus = [], []
    d = jax.jit(lambda m: jax.jvp(fn, (m,), (jnp.ones_like(m),))[1])
    for h in hs:
        dplus.append(np.asarray(d(jnp.asarray(m_star + h, dtype))))
        dminus.append(np.asarray(d(jnp.asarray(m_star - h, dtype))))
    return np.stack(dplus), np.stack(dminus)


def kink_statistic(
    model_or_fn,
    clean=None,
    noise=None,
    key=None,
    *,
    m_star: float = 1.0,
    hs=DEFAULT_HS,
    functional: str | Callable = "si_sdr",
    n_paths: int = 1,
    boot_key=None,
    n_boot: int = 2000,
    level: float = 0.95,
    rtol: float = 0.1,
    dtype=None,
    chunk: int | None = None,
    **overrides,
) -> KinkResult:
    """κ(h), its bootstrap interval, κ₀ and the kink width (see module doc).

    Two uses:

    * ``kink_statistic(model, clean, noise, key, ...)``: clean/noise ``[U, L]`` (or ``[L]``)
      utterances, ``n_paths`` Brownian paths drawn from ``key`` (``fold_in(key, p)``); the
      functional is ``"si_sdr"`` (dSI-SDR/dM against ``clean``), ``"tangent_norm"``
      (‖dŝ/dM‖, one-sided values) or a callable ``functional(waveform, clean) -> [U]`` (any
      scalar functional of ŝ, differentiated by the chain rule). ``overrides`` are those of
      :func:`~storm_jax.analysis.pathwise_derivative` (``condition``, ``normalization``,
      ``norm_factor``, ``steps``, ``config``, ``power``). All 2H points M* ∓ h run in one
      vmapped pass per path, or ``chunk`` M values at a time (memory).
    * ``kink_statistic(fn, ...)``: a plain differentiable ``fn(M) -> [S]`` or ``[U, P]`` (e.g.
      a synthetic curve); its slopes are taken by ``jax.jvp``.

    ``boot_key`` (default ``jax.random.key(0)``) drives the bootstrap; ``dtype`` defaults to the
    model's (or JAX's default float for a function). An h that ``dtype`` cannot resolve at M*
    raises ``ValueError`` suggesting float64.
    """
    hs = tuple(float(h) for h in np.atleast_1d(np.asarray(hs, np.float64)))
    if len(hs) == 0:
        raise ValueError("hs must hold at least one offset h")
    if not (np.isfinite(m_star) and m_star > 0):
        raise ValueError(f"m_star must be finite and > 0, got {m_star}")
    boot_key = jax.random.key(0) if boot_key is None else boot_key

    if not isinstance(model_or_fn, StormModel):
        if not callable(model_or_fn):
            raise TypeError("kink_statistic expects a StormModel or a callable fn(M)")
        dt = jnp.dtype(dtype) if dtype is not None else jnp.dtype(jnp.result_type(float))
        check_h_resolution(m_star, hs, dt)
        dp, dm = _fn_slopes(model_or_fn, m_star, hs, dt)
        name = getattr(model_or_fn, "__name__", "fn")
        return kink_from_slopes(dp, dm, hs, boot_key, n_boot=n_boot, level=level, rtol=rtol, m_star=m_star, functional=name)

    model = model_or_fn
    if clean is None or noise is None or key is None:
        raise ValueError("kink_statistic(model, clean, noise, key, ...) needs clean, noise and key")
    if n_paths < 1:
        raise ValueError("n_paths must be >= 1")
    clean = jnp.asarray(clean)
    noise = jnp.asarray(noise)
    n_utt = int(np.prod(clean.shape[:-1]))  # utterances (leading axes flattened; 1 for [L])
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    leaves = [p for p in jax.tree_util.tree_leaves(model.params) if jnp.issubdtype(p.dtype, jnp.floating)]
    dt = jnp.dtype(dtype) if dtype is not None else (leaves[0].dtype if leaves else jnp.dtype(jnp.float32))
    check_h_resolution(m_star, hs, dt)
    if isinstance(functional, str) and functional not in ("si_sdr", "tangent_norm"):
        raise ValueError(f"functional must be 'si_sdr', 'tangent_norm' or a callable, got {functional!r}")
    fname = functional if isinstance(functional, str) else getattr(functional, "__name__", "functional")

    H = len(hs)
    # All 2H evaluation points M* ∓ h in one vmapped pass per path (or in chunks of ``chunk``).
    ms = np.concatenate([m_star - np.asarray(hs), m_star + np.asarray(hs)])
    step = len(ms) if chunk is None else int(chunk)
    if step < 1:
        raise ValueError("chunk must be >= 1")
    dp = np.zeros((H, n_utt, n_paths))
    dm = np.zeros_like(dp)
    jump = np.zeros_like(dp)
    for p in range(n_paths):
        kp = jax.random.fold_in(key, p)
        ds, tws = [], []
        for lo in range(0, len(ms), step):
            val, tan = pathwise_derivative(model, clean, noise, ms[lo : lo + step], kp, dtype=dt, **overrides)
            ref = jnp.asarray(clean, val.waveform.dtype)
            if functional == "si_sdr":
                _, d = jax.jvp(lambda w: si_sdr(w, ref), (val.waveform,), (tan.waveform,))
            elif functional == "tangent_norm":
                d = jnp.linalg.norm(tan.waveform, axis=-1)
            else:
                _, d = jax.jvp(lambda w: functional(w, ref), (val.waveform,), (tan.waveform,))
            ds.append(np.asarray(d, np.float64).reshape(-1, n_utt))
            tws.append(np.asarray(tan.waveform, np.float64).reshape(-1, n_utt, clean.shape[-1]))
        d = np.concatenate(ds)  # [2H, U]
        tw = np.concatenate(tws)  # [2H, U, L]
        bad = ~np.all(np.isfinite(d), axis=1)
        if bad.any():
            raise FloatingPointError(f"the functional's derivative is NaN/Inf at M = {ms[bad].tolist()} (path {p})")
        dm[:, :, p], dp[:, :, p] = d[:H], d[H:]
        base = np.linalg.norm(tw[:H], axis=-1)
        jump[:, :, p] = np.linalg.norm(tw[H:] - tw[:H], axis=-1) / np.where(base > 0, base, 1.0)
    return kink_from_slopes(dp, dm, hs, boot_key, n_boot=n_boot, level=level, rtol=rtol,
                            tangent_jump=jump, m_star=m_star, functional=fname)  # fmt: skip
