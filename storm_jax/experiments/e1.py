"""E1 — continuity of the score Jacobian J_x in M (hypothesis H1), and E2's shared probes.

Along the reverse trajectory of ``y(M)`` (fixed Brownian path), the probes of
:func:`storm_jax.analysis.probes_at` record ``J_x^k·w`` for a fixed unit probe w at every step k
(and ``J_C^k·u``, ``J_y^k·v``, used by E2). For each offset h::

    ρ(h) = max_k ‖J^k(M*+h)·w − J^k(M*−h)·w‖ / ‖J^k(M*)·w‖

(DESIGN.md, E1). Fitting ``log ρ = a + s·log h`` over the h of the preset, with a bootstrap CI of
s over the samples: H1 "continuous" when the CI lies above 0.8, "discontinuous" when it contains
0, else "undecided". The top singular values of J_x at evenly spaced steps of the M* trajectory
come from Golub–Kahan bidiagonalisation (:func:`storm_jax.analysis.score_spectrum`).
"""

from __future__ import annotations

import numpy as np

from ..analysis import probes_at, score_spectrum
from ..analysis._setup import check_stages, prepare
from ..analysis.sensitivity import front_jvp
from ._common import by_kind, continuity_reason, continuity_verdict, describe_fit, h_list, loglog_panel, pyplot, sample_matrix, save_figure, slope_fit
from .runner import Experiment, Figure, Summary, register

M_STAR = 1.0
LANES = {"Jx_w": "J_x·w", "JC_u": "J_C·u", "JY_v": "J_y·v"}


def offsets_m(hs) -> list[float]:
    return [M_STAR] + [float(np.round(M_STAR * (1 + s * h), 12)) for h in hs for s in (-1, 1)]


def probe_set(ctx, u: int, p: int, hs) -> dict:
    """Probes (full per-step vectors) at M* and M*(1 ± h) for each h, one fixed probe w."""
    clean, noise = ctx.clean[u], ctx.noise[u]
    compute = lambda m: probes_at(ctx.model, clean, noise, m, ctx.path_key(u, p), probe_key=ctx.aux_key(u, p, 1),
                                  record="full", steps=ctx.preset.steps)
    return {m: ctx.memoized(("probes", u, p, m, ctx.preset.steps), lambda: compute(m)) for m in offsets_m(hs)}


def _norms(a) -> np.ndarray:
    a = np.asarray(a)
    return np.sqrt(np.sum(np.abs(a) ** 2, axis=(-2, -1)))


def rho(probes: dict, lane: str, h: float) -> tuple[float, np.ndarray]:
    """``ρ(h)`` of a probe lane and its per-step ratios ``[N]`` (0/0 steps count as 0)."""
    lo, hi = probes[float(np.round(M_STAR * (1 - h), 12))], probes[float(np.round(M_STAR * (1 + h), 12))]
    base = _norms(getattr(probes[M_STAR], lane))
    diff = _norms(np.asarray(getattr(hi, lane)) - np.asarray(getattr(lo, lane)))
    ratio = np.where(base > 0, diff / np.where(base > 0, base, 1.0), np.where(diff > 0, np.inf, 0.0))
    return float(ratio.max()), ratio


def points(preset) -> list[dict]:
    out = []
    for u in range(preset.jac_utterances):
        for p in range(preset.jac_paths):
            out += [{"utt": u, "path": p, "kind": "rho", "h": float(h)} for h in preset.rho_hs]
            out.append({"utt": u, "path": p, "kind": "svd", "h": 0.0})
    return out


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in ("seconds", "steps", "jac_utterances", "jac_paths", "rho_hs", "svd_steps", "svd_k",
                                            "svd_matvecs", "n_boot")}


def evaluate(ctx, group):
    u, p = group[0]["utt"], group[0]["path"]
    pr = probe_set(ctx, u, p, [pt["h"] for pt in group if pt["kind"] == "rho"])
    out = []
    for pt in group:
        if pt["kind"] == "rho":
            r, ratio = rho(pr, "Jx_w", pt["h"])
            out.append(({"rho_x": r, "norm_Jx_w_max": float(_norms(pr[M_STAR].Jx_w).max())}, {"ratio_x": ratio}))
        else:
            out.append(_svd_row(ctx, u, p, pr[M_STAR]))
    return out


def _svd_row(ctx, u, p, probes):
    pre = ctx.preset
    prep = prepare(ctx.model, ctx.clean[u], ctx.noise[u], M_STAR, ctx.path_key(u, p), steps=pre.steps)
    (Y, _, C), _ = front_jvp(prep.model, prep.clean, prep.noise, prep.m, prep.norm_factor, prep.static)
    check_stages([("analysis Y", Y), ("predictor C", C)], M_STAR)
    ks = np.unique(np.linspace(0, pre.steps - 1, pre.svd_steps).round().astype(int))
    sig = []
    for k in ks:
        spec = score_spectrum(prep.model, probes.x[k], probes.t[k], Y, C, wrt="x", k=pre.svd_k,
                              num_matvecs=pre.svd_matvecs, start_key=ctx.aux_key(u, p, 2))
        sig.append(float(np.asarray(spec.values)[0]))
    row = {"sigma1_max": float(max(sig)), "sigma1_first": sig[0], "sigma1_last": sig[-1]}
    return row, {"steps": ks, "t": np.asarray(probes.t)[ks], "sigma1": np.array(sig)}


def continuity_summary(rows, lanes: dict[str, str], n_boot: int, seed: int):
    """Per lane: the ρ(h) matrix ``[H, S]``, its slope fit and verdict."""
    hs = h_list(rows)
    mats, fits, verdicts = {}, {}, {}
    for col, label in lanes.items():
        mat = sample_matrix(rows, "h", col, hs)
        fit = slope_fit(hs, mat, n_boot=n_boot, seed=seed)
        mats[label], fits[label], verdicts[label] = mat, fit, continuity_verdict(fit)
    return hs, mats, fits, verdicts


def rho_table(hs, mats) -> list[dict]:
    out = []
    for i, h in enumerate(hs):
        r = {"h": h}
        for label, mat in mats.items():
            col = mat[i][np.isfinite(mat[i])]
            r[f"rho {label} mean"] = float(col.mean()) if col.size else float("nan")
            r[f"rho {label} max"] = float(col.max()) if col.size else float("nan")
        out.append(r)
    return out


def summarize(records, settings) -> Summary:
    sz = settings["sizes"]
    rows = by_kind(records, "rho")
    tables, verdicts, figures = {}, [], []
    if rows:
        hs, mats, fits, ver = continuity_summary(rows, {"rho_x": "J_x·w"}, int(sz["n_boot"]), int(settings["run"]["seed"]))
        fit = fits["J_x·w"]
        tables["rho"] = rho_table(hs, mats)
        rule = "rule: CI > 0.8 → continuous; CI ∋ 0 below 0.8 → discontinuous; else undecided"
        verdicts.append(f"H1: ρ₁ {describe_fit('', fit).strip()} over h ∈ {hs}: {continuity_reason(fit)} → {ver['J_x·w']} ({rule})")
        figures.append(Figure("e1_rho.png", "ρ₁(h) = max_k ‖J_x^k(M*+h)w − J_x^k(M*−h)w‖ / ‖J_x^k(M*)w‖ on log–log axes "
                              "(dots: samples; line: mean; dotted: fitted slope; dashed: slope 1).",
                              lambda path: _plot(path, hs, mats, fits, "ρ₁(h)", "E1: score-Jacobian continuity")))
    else:
        verdicts.append("H1: undecided — no ρ₁ point is stored (see the failed points)")
    svd = [(r, a) for r, a in ((({**rec["point"], **rec["row"]}), arr) for rec, arr in records) if r.get("kind") == "svd"]
    if svd:
        tables["sigma1"] = [{"utt": r["utt"], "path": r["path"], "step": int(k), "t": float(t), "sigma1_Jx": float(s)}
                            for r, a in svd for k, t, s in zip(a["steps"], a["t"], a["sigma1"])]
        figures.append(Figure("e1_sigma1.png", "Top singular value of the score Jacobian J_x along the reverse trajectory at M* "
                              "(Golub–Kahan, matrix-free).", lambda path: _plot_sigma(path, svd)))
    notes = [f"N = {sz['steps']} steps, {sz['jac_utterances']} utterance(s) × {sz['jac_paths']} path(s), probe w: one unit "
             "complex Gaussian per sample, fixed over k and M."]
    return Summary(title="E1 — continuity of the score Jacobian J_x in M (H1)", tables=tables, verdicts=verdicts,
                   figures=figures, notes=notes)


def _plot(path, hs, mats, fits, ylabel, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    loglog_panel(ax, hs, mats, fits, ylabel)
    ax.set_title(title)
    save_figure(fig, path)


def _plot_sigma(path, svd):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, a in svd:
        ax.plot(a["t"], a["sigma1"], "o-", label=f"utt {r['utt']}, path {r['path']}")
    ax.set_xlabel("t (reverse process runs from 1 to t_eps)")
    ax.set_ylabel("σ₁(J_x)")
    ax.invert_xaxis()
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("E1: top singular value of J_x along the trajectory")
    save_figure(fig, path)


EXPERIMENT = register(Experiment(name="e1", title="E1 — score-Jacobian continuity (H1)", points=points, evaluate=evaluate,
                                 summarize=summarize, settings=sizes))
