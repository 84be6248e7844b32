"""Discretization audit (E4): strong and weak errors against step size, tangent errors, fitted
orders with confidence intervals, Richardson extrapolation, and a closed-form test problem.

Conventions. A *study* solves the same problem on nested grids ``N ∈ {8, 15, …, 480}`` that share
one Brownian path (:func:`storm_jax.brownian_path`), so differences between step counts are
discretization errors, not Monte-Carlo noise. Arrays of solutions are stacked ``[n_N, S, ...]``:
axis 0 the step counts, axis 1 the *samples* (utterances, paths, or independent elements), the
rest one sample's vector. With step sizes ``h_N`` (:func:`step_sizes`):

* strong error ``e_N = (mean_s ‖x_N[s] − x_ref[s]‖^p)^{1/p}`` (p = 2: the L² strong error);
* weak error of a statistic ``φ``: ``|mean_s φ(x_N[s]) − mean_s φ(x_ref[s])|`` with a paired
  t-interval (e.g. φ = SI-SDR in dB, :func:`storm_jax.metrics.si_sdr`);
* tangent error: the strong error of ``dx̂_N/dM`` (relative to ``‖dx̂_ref/dM‖``);
* fitted order: least squares ``log e = a + p·log h``; its confidence interval is a bootstrap
  over samples (paired across N, so the path's shared randomness is respected) or, for one
  sample, the t-interval of the regression slope;
* Richardson: ``φ(h) = φ_0 + Σ_j c_j h^{j·p}`` fitted to the finest points, ``φ_0`` the N → ∞
  estimate (for instance of the kink statistic κ_N).

The expected strong order of Euler–Maruyama for StoRM's additive noise is 1 (Kloeden & Platen,
*Numerical Solution of SDEs*, §10.2: the Milstein correction vanishes for additive noise); SEA
is order 1 with a smaller constant and ShARK order 1.5 (Foster, dos Reis, Strange 2023).

:class:`GaussianProblem` is a verification problem with everything in closed form: data
``x0 ~ CN(μ0, s0²)`` elementwise, so the OUVE marginal is ``CN(m(t), v(t))`` with
``m(t) = e^{−θt}μ0 + (1 − e^{−θt})C`` and ``v(t) = e^{−2θt}s0² + σ(t)²``, the score is
``s = −(x − m)/v``, and the reverse SDE is linear with additive noise: its pathwise solution on a
given Brownian path, and its mean and variance, are known (:meth:`GaussianProblem.exact_solution`,
:meth:`GaussianProblem.exact_moments`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Array

from ..continuous import NESTED_STEPS, BrownianPath, _node_times, noise_scale
from ..metrics import si_sdr
from ..sde import OUVE

__all__ = [
    "OrderFit",
    "ErrorCurve",
    "WeakErrorCurve",
    "Extrapolation",
    "GaussianProblem",
    "step_sizes",
    "fit_order",
    "fit_order_bootstrap",
    "strong_error",
    "tangent_error",
    "weak_error",
    "si_sdr_weak_error",
    "richardson",
    "estimate_order",
    "convergence_study",
]


# ---------------------------------------------------------------------------------------------
# step sizes and order fits


def step_sizes(steps: Sequence[int], grid: str = "consistent", sde: OUVE = OUVE()) -> np.ndarray:
    """Step sizes ``h_N`` (float64 ``[n_N]``): ``(T − t_eps)/N`` on the consistent grid, ``1/N``
    (the reference's ``dt``) on the reference grid."""
    steps = np.asarray(steps, np.float64)
    if grid == "consistent":
        return (sde.T - sde.t_eps) / steps
    if grid == "reference":
        return 1.0 / steps
    raise ValueError(f"unknown grid {grid!r}; choose 'reference' or 'consistent'")


class OrderFit(NamedTuple):
    """A fitted convergence order ``e ≈ exp(intercept)·h^order``.

    Attributes:
        order: the least-squares slope of ``log e`` against ``log h``.
        ci: ``(low, high)`` confidence interval of the order at ``level``.
        intercept: ``log`` of the error constant.
        stderr: standard error of the order (regression or bootstrap standard deviation).
        level: confidence level.
        method: ``regression`` (t-interval of the slope) or ``bootstrap`` (percentile interval
            over samples).
    """

    order: float
    ci: tuple[float, float]
    intercept: float
    stderr: float
    level: float
    method: str


def _loglog_fit(h: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    X = np.stack([np.ones_like(h), np.log(h)], axis=1)
    coef, *_ = np.linalg.lstsq(X, np.log(e), rcond=None)
    return float(coef[1]), float(coef[0])


def _check_curve(h, e):
    h = np.asarray(h, np.float64)
    e = np.asarray(e, np.float64)
    if h.ndim != 1 or h.shape[0] != e.shape[0]:
        raise ValueError(f"h {h.shape} and errors {e.shape} must have the same leading length")
    if h.shape[0] < 2:
        raise ValueError("an order fit needs at least two step sizes")
    if np.any(h <= 0):
        raise ValueError("step sizes must be positive")
    return h, e


def fit_order(h: Sequence[float], errors: Sequence[float], *, level: float = 0.95) -> OrderFit:
    """Order ``p`` of ``errors ≈ c·h^p`` by least squares on ``log``–``log``, with the
    ``level`` t-interval of the slope (``n − 2`` degrees of freedom; infinite width for n = 2).
    Errors must be positive."""
    h, e = _check_curve(h, errors)
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"errors must be finite and positive for a log-log fit, got {e}")
    p, a = _loglog_fit(h, e)
    n = h.shape[0]
    if n > 2:
        x = np.log(h)
        resid = np.log(e) - (a + p * x)
        s2 = float(resid @ resid) / (n - 2)
        se = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
        q = float(scipy.stats.t.ppf(0.5 + level / 2, n - 2))
        ci = (p - q * se, p + q * se)
    else:
        se, ci = float("inf"), (-float("inf"), float("inf"))
    return OrderFit(order=p, ci=ci, intercept=a, stderr=se, level=level, method="regression")


def _pooled(samples: np.ndarray, p: float) -> np.ndarray:
    return np.mean(samples**p, axis=-1) ** (1.0 / p)


def fit_order_bootstrap(
    h: Sequence[float],
    sample_errors,
    *,
    p: float = 2.0,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> OrderFit:
    """Order of the pooled error ``e_N = (mean_s err[N, s]^p)^{1/p}`` with a percentile bootstrap
    interval: samples are resampled with replacement (the same resample for every N, so the
    correlation of the errors across N on a shared path is kept) and the order refitted.

    Args:
        h: step sizes ``[n_N]``.
        sample_errors: per-sample errors ``[n_N, S]`` (S ≥ 2).
        p: pooling exponent (2: L² strong error).
        level, n_boot, seed: interval level, bootstrap replicates, NumPy seed (explicit, so the
            interval is reproducible).
    """
    h, E = _check_curve(h, sample_errors)
    if E.ndim != 2 or E.shape[1] < 2:
        raise ValueError(f"sample_errors must be [n_N, S] with S >= 2, got {E.shape}")
    pooled = _pooled(E, p)
    if np.any(pooled <= 0) or not np.all(np.isfinite(pooled)):
        raise ValueError(f"pooled errors must be finite and positive, got {pooled}")
    order, a = _loglog_fit(h, pooled)
    rng = np.random.default_rng(seed)
    S = E.shape[1]
    idx = rng.integers(0, S, size=(n_boot, S))
    boot = np.empty(n_boot)
    X = np.stack([np.ones_like(h), np.log(h)], axis=1)
    pinv = np.linalg.pinv(X)
    for b in range(n_boot):
        eb = _pooled(E[:, idx[b]], p)
        boot[b] = (pinv @ np.log(np.maximum(eb, np.finfo(float).tiny)))[1]
    lo, hi = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return OrderFit(order=order, ci=(float(lo), float(hi)), intercept=a, stderr=float(boot.std(ddof=1)), level=level, method="bootstrap")


# ---------------------------------------------------------------------------------------------
# error curves


class ErrorCurve(NamedTuple):
    """Errors of a convergence study.

    Attributes:
        steps: step counts ``[n_N]``.
        h: step sizes ``[n_N]``.
        error: pooled error per N ``[n_N]``.
        samples: per-sample errors ``[n_N, S]``.
        fit: :class:`OrderFit` of ``error`` against ``h`` (bootstrap over samples when S ≥ 2).
    """

    steps: np.ndarray
    h: np.ndarray
    error: np.ndarray
    samples: np.ndarray
    fit: OrderFit


def _stack(solutions) -> np.ndarray:
    if isinstance(solutions, (list, tuple)):
        return np.stack([np.asarray(s) for s in solutions])
    return np.asarray(solutions)


def _resolve_h(steps, h, grid: str, sde: OUVE):
    steps = np.asarray(steps)
    return steps, (np.asarray(h, np.float64) if h is not None else step_sizes(steps, grid, sde))


def _fit(h, samples, error, p, level, n_boot, seed) -> OrderFit:
    if samples.shape[1] >= 2:
        return fit_order_bootstrap(h, samples, p=p, level=level, n_boot=n_boot, seed=seed)
    return fit_order(h, error, level=level)


def strong_error(
    solutions,
    reference,
    steps: Sequence[int],
    h: Sequence[float] | None = None,
    *,
    grid: str = "consistent",
    sde: OUVE = OUVE(),
    relative: bool = False,
    p: float = 2.0,
    fit_mask: Sequence[bool] | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> ErrorCurve:
    """Strong error ``e_N = (mean_s ‖x_N[s] − x_ref[s]‖^p)^{1/p}`` against the step size.

    Args:
        solutions: ``[n_N, S, ...]`` (or a list of ``[S, ...]``), real or complex.
        reference: ``[S, ...]``: the exact solution, a continuous-time reference (SEA/ShARK on
            a finer grid) or the finest solve.
        steps: the step counts ``[n_N]``.
        h: step sizes (default :func:`step_sizes` of ``grid``).
        relative: divide each sample's error by ``‖x_ref[s]‖``.
        p: pooling exponent over samples.
        fit_mask: which N enter the order fit (default all; exclude the reference itself).
        level, n_boot, seed: confidence level and bootstrap settings of the order interval.
    """
    X = _stack(solutions)
    R = np.asarray(reference)
    if X.shape[1:] != R.shape:
        raise ValueError(f"solutions {X.shape} must be [n_N, *reference.shape] with reference {R.shape}")
    if R.ndim < 1:
        raise ValueError("reference must have a leading sample axis [S, ...]")
    steps, h = _resolve_h(steps, h, grid, sde)
    if len(steps) != X.shape[0] or len(h) != X.shape[0]:
        raise ValueError(f"{X.shape[0]} solutions but {len(steps)} step counts / {len(h)} step sizes")
    S = R.shape[0]
    diff = (X - R[None]).reshape(X.shape[0], S, -1)
    samples = np.linalg.norm(diff, axis=-1)
    if relative:
        samples = samples / np.linalg.norm(R.reshape(S, -1), axis=-1)[None]
    error = _pooled(samples, p)
    mask = np.ones(len(steps), bool) if fit_mask is None else np.asarray(fit_mask, bool)
    fit = _fit(h[mask], samples[mask], error[mask], p, level, n_boot, seed)
    return ErrorCurve(steps=steps, h=h, error=error, samples=samples, fit=fit)


def tangent_error(tangents, reference_tangent, steps, h=None, **kwargs) -> ErrorCurve:
    """Relative strong error of the tangent ``dx̂_N/dM`` (or any jvp) against a reference
    tangent: :func:`strong_error` with ``relative=True`` (override with ``relative=False``)."""
    kwargs.setdefault("relative", True)
    return strong_error(tangents, reference_tangent, steps, h, **kwargs)


class WeakErrorCurve(NamedTuple):
    """Weak errors of a statistic.

    Attributes:
        steps, h: step counts and sizes ``[n_N]``.
        bias: signed ``mean_s φ_N − mean_s φ_ref`` ``[n_N]``.
        ci: ``[n_N, 2]`` paired t-interval of the bias (over samples).
        error: ``|bias|``.
        fit: :class:`OrderFit` of ``error`` against ``h`` (regression).
    """

    steps: np.ndarray
    h: np.ndarray
    bias: np.ndarray
    ci: np.ndarray
    error: np.ndarray
    fit: OrderFit


def weak_error(
    stats,
    reference_stats,
    steps: Sequence[int],
    h: Sequence[float] | None = None,
    *,
    grid: str = "consistent",
    sde: OUVE = OUVE(),
    fit_mask: Sequence[bool] | None = None,
    level: float = 0.95,
) -> WeakErrorCurve:
    """Weak error ``|E φ(x_N) − E φ(x_ref)|`` estimated by paired sample means.

    Args:
        stats: ``[n_N, S]`` values of a scalar statistic per sample.
        reference_stats: ``[S]`` (paired with the samples) or a scalar (an exact expectation).
        steps, h, grid, sde: as in :func:`strong_error`.
        fit_mask: which N enter the order fit (default: all with a nonzero error).
    """
    A = np.asarray(stats, np.float64)
    if A.ndim != 2:
        raise ValueError(f"stats must be [n_N, S], got {A.shape}")
    ref = np.asarray(reference_stats, np.float64)
    steps, h = _resolve_h(steps, h, grid, sde)
    d = A - (ref[None] if ref.ndim == 1 else ref)
    bias = d.mean(axis=1)
    S = A.shape[1]
    if S >= 2:
        se = d.std(axis=1, ddof=1) / math.sqrt(S)
        q = float(scipy.stats.t.ppf(0.5 + level / 2, S - 1))
    else:
        se, q = np.zeros_like(bias), 0.0
    ci = np.stack([bias - q * se, bias + q * se], axis=1)
    error = np.abs(bias)
    mask = (error > 0) if fit_mask is None else np.asarray(fit_mask, bool) & (error > 0)
    if mask.sum() >= 2:
        fit = fit_order(h[mask], error[mask], level=level)
    else:
        fit = OrderFit(float("nan"), (float("nan"), float("nan")), float("nan"), float("nan"), level, "regression")
    return WeakErrorCurve(steps=steps, h=h, bias=bias, ci=ci, error=error, fit=fit)


def si_sdr_weak_error(estimates, reference_estimates, clean, steps, h=None, **kwargs) -> WeakErrorCurve:
    """Weak error of mean SI-SDR (dB): :func:`weak_error` of
    ``φ(ŝ) = si_sdr(ŝ, clean)`` (:func:`storm_jax.metrics.si_sdr`).

    Args:
        estimates: enhanced waveforms ``[n_N, S, L]``.
        reference_estimates: ``[S, L]`` (the finest or continuous-time solve).
        clean: clean references ``[S, L]``.
    """
    X = _stack(estimates)
    clean = jnp.asarray(clean)
    stats = np.asarray(si_sdr(jnp.asarray(X), clean[None]))
    ref = np.asarray(si_sdr(jnp.asarray(reference_estimates), clean))
    return weak_error(stats, ref, steps, h, **kwargs)


# ---------------------------------------------------------------------------------------------
# Richardson extrapolation


class Extrapolation(NamedTuple):
    """``φ(h) ≈ value + Σ_j coefficients[j]·h^{(j+1)·order}``.

    Attributes:
        value: the extrapolated ``φ(0)``.
        stderr: standard error of ``value`` from the fit residuals (``nan`` when the fit is
            exactly determined).
        order: the leading order p used.
        coefficients: ``c_j`` ``[terms]``.
        residual: RMS residual of the fit.
    """

    value: float
    stderr: float
    order: float
    coefficients: np.ndarray
    residual: float


def richardson(h: Sequence[float], values: Sequence[float], order: float | None = 1.0, *, terms: int = 1) -> Extrapolation:
    """Richardson extrapolation of a scalar statistic to ``h → 0``.

    Fits ``φ(h) = φ_0 + Σ_{j=1}^{terms} c_j·h^{j·p}`` by least squares (exact for
    ``len(h) = terms + 1``; two points give the classical ``(2^p φ(h/2) − φ(h))/(2^p − 1)``).
    With ``order=None`` the order is estimated from the three smallest step sizes
    (:func:`estimate_order`).
    """
    h = np.asarray(h, np.float64)
    v = np.asarray(values, np.float64)
    if h.ndim != 1 or h.shape != v.shape:
        raise ValueError(f"h {h.shape} and values {v.shape} must be 1-D of equal length")
    if len(h) < terms + 1:
        raise ValueError(f"{terms} correction term(s) need at least {terms + 1} points, got {len(h)}")
    if np.any(h <= 0) or not np.all(np.isfinite(v)):
        raise ValueError("step sizes must be positive and values finite")
    if order is None:
        order = estimate_order(h, v)
    X = np.stack([np.ones_like(h)] + [h ** (j * order) for j in range(1, terms + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(X, v, rcond=None)
    resid = v - X @ coef
    dof = len(h) - X.shape[1]
    rms = float(np.sqrt(np.mean(resid**2)))
    if dof > 0:
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(X.T @ X)
        se = float(math.sqrt(max(cov[0, 0], 0.0)))
    else:
        se = float("nan")
    return Extrapolation(value=float(coef[0]), stderr=se, order=float(order), coefficients=coef[1:], residual=rms)


def estimate_order(h: Sequence[float], values: Sequence[float]) -> float:
    """Observed order p from the three smallest step sizes ``h1 > h2 > h3``, solving
    ``(φ1 − φ2)/(φ2 − φ3) = (h1^p − h2^p)/(h2^p − h3^p)`` (Aitken; ``log(ratio)/log(h1/h2)``
    for a geometric sequence)."""
    h = np.asarray(h, np.float64)
    v = np.asarray(values, np.float64)
    if len(h) < 3:
        raise ValueError("estimating an order needs at least three step sizes")
    o = np.argsort(h)[:3][::-1]
    (h1, h2, h3), (v1, v2, v3) = h[o], v[o]
    if v2 == v3 or v1 == v2:
        raise ValueError("values do not change with h: the order is undefined")
    r = (v1 - v2) / (v2 - v3)
    if r <= 0:
        raise ValueError(f"values are not monotone in h (ratio {r:.3g}): the order is undefined")
    f = lambda p: (h1**p - h2**p) / (h2**p - h3**p) - r
    lo, hi = 1e-3, 20.0
    if f(lo) * f(hi) > 0:
        raise ValueError(f"no order in [{lo}, {hi}] matches the ratio {r:.3g}")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(lo) * f(mid) <= 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# driver


def convergence_study(
    solve: Callable[[int], Array],
    steps: Sequence[int] = NESTED_STEPS,
    reference=None,
    *,
    grid: str = "consistent",
    sde: OUVE = OUVE(),
    h: Sequence[float] | None = None,
    **kwargs,
) -> ErrorCurve:
    """Run ``solve(N)`` (returning ``[S, ...]``) for every N and measure the strong error.

    Without ``reference`` the finest N is the reference and is left out of the order fit. Pass a
    continuous-time reference (e.g. ShARK on the finest grid, or an exact solution) to include
    every N. Other keyword arguments go to :func:`strong_error`.
    """
    steps = list(steps)
    sols = [np.asarray(solve(N)) for N in steps]
    if reference is None:
        i_ref = int(np.argmax(steps))
        reference = sols[i_ref]
        kwargs.setdefault("fit_mask", [i != i_ref for i in range(len(steps))])
    return strong_error(sols, reference, steps, h, grid=grid, sde=sde, **kwargs)


# ---------------------------------------------------------------------------------------------
# closed-form test problem


_GL_X, _GL_W = np.polynomial.legendre.leggauss(2)


class GaussianProblem(NamedTuple):
    """Gaussian data under the OUVE SDE: every quantity of the reverse process in closed form.

    Data ``x0 ~ CN(μ0, s0²)`` elementwise (``E|x0 − μ0|² = s0²``), attractor ``C``; marginals
    ``CN(m(t), v(t))`` with ``m(t) = e^{−θt}μ0 + (1 − e^{−θt})C`` and
    ``v(t) = e^{−2θt}s0² + σ(t)²``; exact score ``s(x, t) = −(x − m(t))/v(t)``.

    The reverse SDE in the variable u with ``t(u) = T − α·u`` (``α = 1``, ``u ∈ [0, T − t_eps]``:
    the consistent grid's SDE; ``α = T − t_eps``, ``u ∈ [0, 1]``: the N → ∞ limit of the
    reference grid's ``dt = 1/N`` scheme) is ``dx = −f_rev(x, t(u))du + κ·g(t(u))dW_c(u)``,
    linear with additive noise. With ``e = x − m(t(u))`` and ``v' = −2θv + g²``::

        de = [a(u)·e + (1 − α)·θ·(m(t) − C)]du + κ·g·dW_c,      a = θ − g²/v,
        Φ(u) = exp ∫_0^u a = e^{−θu}·(v(t(u))/v(T))^{1/α},
        x(U) = m(t_U) + Φ(U)·[x_T − m(T) + (1 − α)θ(μ0 − C)·j(U) + I(U)],
        j(U) = ∫_0^U e^{−θ t(r)}/Φ(r) dr,      I(U) = ∫_0^U k(r)dW_c(r),   k = κ·g(t(r))/Φ(r),

    where ``W_c = W[0] + i·W[1]`` is the path's complex view. ``I`` is evaluated pathwise by
    parts, ``I = k(U)W_c(U) − ∫_0^U k'(r)W_c(r)dr``, on a grid ``refine`` times finer than the
    path's finest grid; per cell ``∫k'W dr = ∫k'·W_lin dr + k'(mid)·δ·H`` (2-point Gauss on
    the linear interpolant, the space-time Lévy area H for the rest: ``∫(W − W_lin) = δ·H``), an
    O(δ²) quadrature of the exact Brownian integral (the tree's increments and Lévy areas are
    exact in law when no two query times share a tree leaf).

    Attributes:
        sde: the OUVE SDE.
        mu0: data means ``[*shape]`` (complex).
        s0: data standard deviation (scalar).
        C: attractor ``[*shape]`` (complex).
    """

    sde: OUVE
    mu0: Array
    s0: float
    C: Array

    def mean(self, t):
        """``m(t)`` ``[*shape]`` for a scalar t."""
        d = jnp.exp(-self.sde.theta * t)
        return d * self.mu0 + (1.0 - d) * self.C

    def var(self, t):
        """``v(t) = e^{−2θt}s0² + σ(t)²``."""
        return jnp.exp(-2.0 * self.sde.theta * t) * self.s0**2 + self.sde.var(t)

    def score(self, x, t):
        """Exact score ``−(x − m(t))/v(t)``; usable as ``score_fn`` of the samplers."""
        return -(x - self.mean(t)) / self.var(t)

    # --- closed forms in the reversed variable u ---

    def _alpha_U(self, grid: str):
        T, te = self.sde.T, self.sde.t_eps
        if grid == "consistent":
            return 1.0, T - te
        if grid == "reference":
            return T - te, 1.0
        raise ValueError(f"unknown grid {grid!r}; choose 'reference' or 'consistent'")

    def _phi(self, u, alpha, flow: bool = False):
        # SDE: Φ = e^{−θu}(v(t)/v(T))^{1/α}; probability flow: Φ = (v(t)/v(T))^{1/(2α)}.
        T = self.sde.T
        ratio = self.var(T - alpha * u) / self.var(T)
        if flow:
            return ratio ** (0.5 / alpha)
        return jnp.exp(-self.sde.theta * u) * ratio ** (1.0 / alpha)

    def _quad(self, f, U, panels: int = 256, order: int = 8):
        # Composite Gauss–Legendre for smooth deterministic integrands (float64 accuracy).
        x, w = np.polynomial.legendre.leggauss(order)
        edges = np.linspace(0.0, U, panels + 1)
        a, b = edges[:-1, None], edges[1:, None]
        nodes = (0.5 * (b - a) * x[None] + 0.5 * (a + b)).ravel()
        weights = (0.5 * (b - a) * w[None]).ravel()
        return jnp.sum(jnp.asarray(weights) * jax.vmap(f)(jnp.asarray(nodes)))

    def _j(self, U, alpha, flow: bool = False):
        T, th = self.sde.T, self.sde.theta
        return self._quad(lambda r: jnp.exp(-th * (T - alpha * r)) / self._phi(r, alpha, flow), U)

    def exact_solution(self, path: BrownianPath, grid: str = "consistent", *, noise: str = "complex", refine: int = 8, C=None):
        """Pathwise exact ``x(t_eps)`` of the reverse SDE (no final noise-free step), driven by
        ``path`` from ``x_T = C + σ(T)·κ·(prior[0] + i·prior[1])`` (class doc). ``grid``
        selects the SDE (consistent, or the N → ∞ limit of the reference grid). ``C`` overrides
        the attractor (for tangents: ``jax.jvp`` in C is exact, the stochastic part does not
        depend on C). The path needs ``tol`` below the quadrature spacing
        (``brownian_path(..., tol=...)``)."""
        I = self.stochastic_integral(path, grid, noise=noise, refine=refine)
        return self.assemble(I, path, grid, noise=noise, C=C)

    def assemble(self, I, path: BrownianPath, grid: str = "consistent", *, noise: str = "complex", C=None, flow: bool = False):
        """``x(U)`` from a precomputed stochastic integral ``I`` (:meth:`stochastic_integral`;
        ``I = 0`` for the probability flow): the deterministic part only, so ``jax.jvp`` in
        ``C`` gives the exact tangent without re-evaluating the path."""
        C = self.C if C is None else C
        prob = self._replace(C=C)
        alpha, U = self._alpha_U(grid)
        T, th = prob.sde.T, prob.sde.theta
        kappa = noise_scale(noise)
        xT = prob.sde.prior_sample(C, (kappa * path.prior_complex()).astype(jnp.result_type(C, jnp.complex64)))
        phiU = prob._phi(U, alpha, flow)
        forcing = (1.0 - alpha) * th * (prob.mu0 - C) * prob._j(U, alpha, flow)
        return prob.mean(T - alpha * U) + phiU * (xT - prob.mean(T) + forcing + I)

    def exact_flow_solution(self, path: BrownianPath, grid: str = "consistent", *, noise: str = "complex", C=None):
        """Exact solution of the probability-flow ODE ``dx = [θ(C − x) − ½g²s]dt`` from the
        path's prior: with ``a = θ − g²/(2v)``, ``Φ(u) = (v(t(u))/v(T))^{1/(2α)}`` and the same
        forcing as the SDE (class doc), ``x(U) = m(t_U) + Φ(U)[x_T − m(T) + (1 − α)θ(μ0 − C)j(U)]``."""
        zero = jnp.zeros(path.shape, jnp.result_type(self.C, jnp.complex64))
        return self.assemble(zero, path, grid, noise=noise, C=C, flow=True)

    def stochastic_integral(self, path: BrownianPath, grid: str = "consistent", *, noise: str = "complex", refine: int = 8):
        """``I(U) = ∫_0^U κ·g(t(r))/Φ(r) dW_c(r)`` on ``path`` ``[*shape]`` (class doc)."""
        alpha, U = self._alpha_U(grid)
        kappa = noise_scale(noise)
        T = self.sde.T
        M = path.finest * int(refine)
        delta = U / M
        if not (path.tol < delta):
            raise ValueError(
                f"the path's tree resolution ({path.tol:.3g}) must be below the quadrature "
                f"spacing {delta:.3g}: build it with brownian_path(..., tol={0.5 * delta:.3g}) or lower `refine`"
            )
        k = lambda r: kappa * self.sde.g(T - alpha * r) / self._phi(r, alpha)
        dk = jax.vmap(jax.grad(k))
        r = jnp.asarray(_node_times(U, np.arange(M + 1), M), path.dtype)
        levy = jax.lax.map(lambda ab: path.evaluate(ab[0], ab[1], use_levy=True), (r[:-1], r[1:]))
        dW, H = levy.W, levy.H  # [M, 2, *shape]
        W0 = jnp.concatenate([jnp.zeros_like(dW[:1]), jnp.cumsum(dW, axis=0)[:-1]], axis=0)  # W at cell starts
        WU = jnp.sum(dW, axis=0)
        a, b = r[:-1], r[1:]
        h = b - a
        expand = lambda v: v.reshape(v.shape + (1,) * (dW.ndim - 1))
        acc = jnp.zeros_like(dW[0])
        for xg, wg in zip(_GL_X, _GL_W):
            xi = 0.5 * (1.0 + xg)  # position in the cell
            kp = dk(a + xi * h)
            acc = acc + jnp.sum(expand(0.5 * wg * h * kp) * (W0 + xi * dW), axis=0)
        acc = acc + jnp.sum(expand(dk(0.5 * (a + b)) * h) * H, axis=0)
        I_real = k(jnp.asarray(U, path.dtype)) * WU - acc
        return jax.lax.complex(I_real[0], I_real[1])

    def exact_moments(self, grid: str = "consistent", *, noise: str = "complex"):
        """Mean ``[*shape]`` and variance ``E|x − E x|²`` (scalar) of the exact ``x(t_eps)`` over
        paths and priors (class doc): ``E x = m(t_U) + Φ(U)[C − m(T) + (1 − α)θ(μ0 − C)j(U)]``,
        ``Var = 2κ²·Φ(U)²·[σ(T)² + ∫_0^U g(t(r))²/Φ(r)² dr]``."""
        alpha, U = self._alpha_U(grid)
        T, th = self.sde.T, self.sde.theta
        kappa = noise_scale(noise)
        phiU = self._phi(U, alpha)
        mean = self.mean(T - alpha * U) + phiU * (self.C - self.mean(T) + (1.0 - alpha) * th * (self.mu0 - self.C) * self._j(U, alpha))
        integral = self._quad(lambda r: self.sde.g(T - alpha * r) ** 2 / self._phi(r, alpha) ** 2, U)
        var = 2.0 * kappa**2 * phiU**2 * (self.sde.var(T) + integral)
        return mean, var
