"""Shared pieces of the experiments: grouping stored rows, log–log slope fits with intervals,
the verdict rules of DESIGN.md § Verdicts, and figure saving."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..analysis.discretization import OrderFit, fit_order, fit_order_bootstrap
from .store import atomic_write

CONTINUITY_SLOPE = 0.8  # DESIGN.md § Verdicts, H1/H2: Lipschitz-like when the slope CI lies above it
SMOOTH_FRACTION = 0.10  # P0: "smooth" when the CI half-width of κ₀ is below 10 % of the typical |slope|
GAIN_FRACTION = 0.10  # H3: "non-degenerate" when the jump's gain ≥ 10 % of the median random gain
RESIDUAL_TOL = {"float32": 1e-5, "float64": 1e-10}  # H3: the factorization identity


def sample_matrix(rows: Sequence[dict], key: str, value: str, keys: Sequence) -> np.ndarray:
    """``[len(keys), S]`` of ``value`` for each ``key`` level, samples S = (utt, path) sorted;
    NaN where a point is missing (failed)."""
    samples = sorted({(r["utt"], r["path"]) for r in rows})
    index = {s: i for i, s in enumerate(samples)}
    out = np.full((len(keys), len(samples)), np.nan)
    pos = {k: i for i, k in enumerate(keys)}
    for r in rows:
        if r[key] in pos and value in r:
            out[pos[r[key]], index[(r["utt"], r["path"])]] = r[value]
    return out


def complete_samples(mat: np.ndarray) -> np.ndarray:
    """Drop samples (columns) with any missing value."""
    return mat[:, np.all(np.isfinite(mat), axis=0)]


def slope_fit(h, samples: np.ndarray, *, n_boot: int, seed: int = 0) -> OrderFit | None:
    """Slope of ``log mean_s ρ[h, s]`` against ``log h`` with a bootstrap interval over samples
    (the regression t-interval with one sample); ``None`` when ρ is not positive everywhere."""
    h = np.asarray(h, np.float64)
    samples = complete_samples(np.asarray(samples, np.float64))
    if samples.shape[1] == 0 or np.any(samples <= 0):
        return None
    if samples.shape[1] >= 2:
        return fit_order_bootstrap(h, samples, p=1.0, n_boot=n_boot, seed=seed)
    return fit_order(h, samples[:, 0])


def continuity_verdict(fit: OrderFit | None) -> str:
    """H1/H2 rule (DESIGN.md § Verdicts): "continuous" when the slope CI lies above 0.8,
    "discontinuous" when it contains 0 (ρ does not fall with h), else "undecided".

    A CI that contains 0 *and* reaches 0.8 is too wide to tell the two apart: it is
    "undecided" (use :func:`continuity_reason` for the sentence), never a verdict by default."""
    if fit is None:
        return "undecided"
    lo, hi = fit.ci
    if lo > CONTINUITY_SLOPE:
        return "continuous"
    if lo <= 0 <= hi and hi < CONTINUITY_SLOPE:
        return "discontinuous"
    return "undecided"


def continuity_reason(fit: OrderFit | None) -> str:
    """Why :func:`continuity_verdict` decided as it did, in a few words."""
    if fit is None:
        return "ρ is 0 at some h"
    lo, hi = fit.ci
    if lo > CONTINUITY_SLOPE:
        return f"CI > {CONTINUITY_SLOPE}"
    if lo <= 0 <= hi:
        return "CI ∋ 0" if hi < CONTINUITY_SLOPE else f"CI ∋ 0 and reaches {CONTINUITY_SLOPE}: too wide"
    return f"CI in (0, {CONTINUITY_SLOPE}]" if hi <= CONTINUITY_SLOPE else f"CI straddles {CONTINUITY_SLOPE}"


def describe_fit(name: str, fit: OrderFit | None) -> str:
    if fit is None:
        return f"{name} not measurable (ρ = 0 at some h)"
    lo, hi = fit.ci
    return f"{name} slope {fit.order:.2f} [{lo:.2f}, {hi:.2f}]"


def fmt_ci(lo: float, hi: float, digits: int = 3) -> str:
    return f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def g(x: float, digits: int = 3) -> str:
    """A number for a sentence: ``digits`` significant figures."""
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loglog_panel(ax, hs, samples_by_name: dict[str, np.ndarray], fits: dict[str, OrderFit | None], ylabel: str):
    """ρ(h) on log–log axes, per-sample points and the mean, with the fitted slope and a
    slope-1 guide."""
    hs = np.asarray(hs, np.float64)
    for (name, mat), color in zip(samples_by_name.items(), ("C0", "C1", "C2", "C3")):
        mat = complete_samples(mat)
        if mat.size == 0 or np.any(mat <= 0):
            continue
        mean = mat.mean(axis=1)
        for s in range(mat.shape[1]):
            ax.loglog(hs, mat[:, s], ".", color=color, alpha=0.35)
        fit = fits.get(name)
        label = name if fit is None else f"{name}: slope {fit.order:.2f} [{fit.ci[0]:.2f}, {fit.ci[1]:.2f}]"
        ax.loglog(hs, mean, "o-", color=color, label=label)
        if fit is not None:
            ax.loglog(hs, np.exp(fit.intercept) * hs**fit.order, ":", color=color, lw=1)
        ref = mean[-1] if len(mean) else 1.0
        ax.loglog(hs, ref * (hs / hs[-1]), "--", color="0.6", lw=0.8)
    ax.set_xlabel("h (offset M* ± h)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="dashed grey: slope 1", title_fontsize=7)


def kappa_panel(ax, results, title: str):
    """κ(h) with its bootstrap CI on a log h axis, one line per ``(KinkResult or None, label,
    colour)``, with the band of κ₀'s CI where the result has one."""
    for r, label, color in results:
        if r is None:
            continue
        ax.errorbar(r.hs, r.kappa, yerr=[r.kappa - r.kappa_ci[:, 0], r.kappa_ci[:, 1] - r.kappa], fmt="o-", color=color,
                    capsize=3, label=f"κ(h), {label}")
        ax.axhspan(r.kappa0_ci[0], r.kappa0_ci[1], color=color, alpha=0.12, label=f"κ₀ = {r.kappa0:.3g} (CI band), {label}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("h")
    ax.set_ylabel("κ(h) = D⁺ − D⁻ (dB per unit M)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)


def by_kind(records, kind: str) -> list[dict]:
    return [{**rec["point"], **rec["row"]} for rec, _ in records if rec["point"].get("kind") == kind]


def arrays_of(records, kind: str) -> list[tuple[dict, dict]]:
    return [({**rec["point"], **rec["row"]}, arr) for rec, arr in records if rec["point"].get("kind") == kind]


def h_list(rows: Sequence[dict]) -> list[float]:
    return sorted({float(r["h"]) for r in rows})


def safe(fn: Callable, *args, **kwargs):
    """``fn(*args)`` or ``None`` when the data cannot support it (too few points)."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
        return None
