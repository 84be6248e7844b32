"""E3 — non-degeneracy of K (hypothesis H3) and where the kink lives.

Per sample (utterance, path), at M*:

* the factorization ``dx̂/dM = K·u + L·v`` with an independent third tangent lane for the total,
  its relative residual, ‖K·u‖, ‖L·v‖ and their angle (:func:`storm_jax.analysis.factorize`,
  taken from E2's vmapped pass over its offsets, :func:`storm_jax.experiments.e2.factor_set`);
* the top singular values of ``K = ∂x̂/∂C`` (Golub–Kahan, :func:`storm_jax.analysis.sampler_spectrum`);
* the gain ``‖K·Δu‖/‖Δu‖`` on the predictor's one-sided jump ``Δu = u(M*(1+h)) − u(M*(1−h))``
  against random directions (:func:`storm_jax.analysis.direction_gain`);
* one-sided slopes of SI-SDR at ``M*(1 ± h)`` for the plain pipeline and for the ablation whose
  predictor output is its linearization at M*
  (:func:`storm_jax.analysis.linearized_predictor_derivative`), giving κ₀ of each; the plain
  slopes come from P0's pass (:func:`storm_jax.experiments.p0.curve_set`) when P0's offsets
  include the ablation's.

Verdict H3: the identity holds when the residual is ≤ 1e-5 (float32) / 1e-10 (float64);
"non-degenerate" when the jump's gain is ≥ 10 % of the median random gain; "kink localized in the
predictor" when the ablated κ₀'s CI contains 0 while the plain one's excludes it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import direction_gain, kink_from_slopes, linearized_predictor_derivative, sampler_jacobian, sampler_spectrum, si_sdr_derivative
from ..analysis._setup import check_stages, prepare
from ..analysis.sensitivity import front_jvp
from ._common import GAIN_FRACTION, RESIDUAL_TOL, by_kind, fmt_ci, g, kappa_panel, pyplot, sample_matrix, save_figure
from . import p0
from .e2 import factor_set
from .runner import Experiment, Figure, Summary, register

M_STAR = 1.0


def points(preset) -> list[dict]:
    out = []
    for u in range(preset.jac_utterances):
        for p in range(preset.jac_paths):
            out += [{"utt": u, "path": p, "kind": k, "h": 0.0} for k in ("factor", "svd", "gain")]
            out += [{"utt": u, "path": p, "kind": "ablation", "h": float(h)} for h in preset.ablation_hs]
    return out


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in ("seconds", "steps", "jac_utterances", "jac_paths", "svd_k", "svd_matvecs", "gain_h",
                                            "gain_random", "ablation_hs", "n_boot")}


def _side(h):
    return [float(np.round(M_STAR * (1 - h), 12)), float(np.round(M_STAR * (1 + h), 12))]


def _plain_slopes(ctx, u, p, abl_hs, ms) -> np.ndarray:
    """dSI-SDR/dM of the plain pipeline at ``ms``: from P0's pass for the sample when P0 has it
    (its offsets include these h), else one :func:`si_sdr_derivative` pass."""
    pre = ctx.preset
    if u < pre.utterances and p < pre.paths and set(abl_hs) <= set(pre.hs):
        sample = [q for q in p0.points(pre) if (q["utt"], q["path"]) == (u, p)]
        side = {pt["m"]: i for i, pt in enumerate(sample) if pt["kind"] == "side"}
        return np.asarray(p0.curve_set(ctx, u, p)["ds"])[[side[float(m)] for m in ms]]
    _, d = ctx.over_m(_slope_lanes, ms, (ctx.model, jnp.asarray(ctx.clean[u]), jnp.asarray(ctx.noise[u]), ctx.path_key(u, p)), {"steps": pre.steps})
    return np.asarray(d, np.float64)


def _slope_lanes(ms, model, clean, noise, key, steps: int):
    return si_sdr_derivative(model, clean, noise, ms, key, steps=steps, check=False)


def _ablation_lanes(ms, model, clean, noise, key, steps: int):
    return linearized_predictor_derivative(model, clean, noise, ms, key, m_star=M_STAR, steps=steps)


def evaluate(ctx, group):
    u, p = group[0]["utt"], group[0]["path"]
    pre, model = ctx.preset, ctx.model
    clean, noise, key = ctx.clean[u], ctx.noise[u], ctx.path_key(u, p)
    dtype = str(np.dtype(np.asarray(jax.tree_util.tree_leaves(model.params)[0]).dtype))
    out = []
    abl_hs = [pt["h"] for pt in group if pt["kind"] == "ablation"]
    if abl_hs:
        ms = np.array([m for h in abl_hs for m in _side(h)])
        d_plain = _plain_slopes(ctx, u, p, abl_hs, ms)
        _, d_lin = ctx.over_m(_ablation_lanes, ms, (model, jnp.asarray(clean), jnp.asarray(noise), key), {"steps": pre.steps})
        d_lin = np.asarray(d_lin, np.float64)
        if not np.all(np.isfinite(d_lin)):
            raise FloatingPointError("non-finite values first appear at stage 'ablated dSI-SDR/dM (linearized predictor)'")
    for pt in group:
        if pt["kind"] == "factor":
            ms, f = factor_set(ctx, u, p)  # E2's vmapped pass; M* is one of its M
            i = ms.index(M_STAR)
            out.append(({"residual": float(f.residual[i]), "residual_wave": float(f.residual_wave[i]),
                         "norm_total": float(f.norm_total[i]), "norm_Ku": float(f.norm_Ku[i]), "norm_Lv": float(f.norm_Lv[i]),
                         "cos_Ku_Lv": float(f.cos_angle[i]), "norm_term": float(np.linalg.norm(np.asarray(f.norm_term[i]))),
                         "dtype": dtype}, {}))
        elif pt["kind"] == "svd":
            s = sampler_spectrum(model, clean, noise, M_STAR, key, wrt="C", k=pre.svd_k, num_matvecs=pre.svd_matvecs,
                                 start_key=ctx.aux_key(u, p, 2), steps=pre.steps)
            vals = np.asarray(s.values, np.float64)
            out.append(({"sigma1_K": float(vals[0]), "sigma_last_K": float(vals[-1]),
                         "triplet_residual_max": float(np.max(np.asarray(s.residual)))}, {"sigma_K": vals}))
        elif pt["kind"] == "gain":
            prep = prepare(model, clean, noise, M_STAR, key, steps=pre.steps)
            (Y, _, C), _ = front_jvp(prep.model, prep.clean, prep.noise, prep.m, prep.norm_factor, prep.static)
            us = []
            for m in _side(pre.gain_h):
                pm = prepare(model, clean, noise, m, key, steps=pre.steps)
                us.append(front_jvp(pm.model, pm.clean, pm.noise, pm.m, pm.norm_factor, pm.static)[1][2])
            du = us[1] - us[0]
            check_stages([("predictor C", C), ("jump Δu of u = dC/dM", du)], M_STAR)
            K = sampler_jacobian(prep.model, Y, C, prep.draws, prep.static.sampler, wrt="C")
            gain = direction_gain(K, du, ctx.aux_key(u, p, 3), n_random=pre.gain_random)
            rnd = np.asarray(gain.random, np.float64)
            out.append(({"gain_jump": float(gain.gain), "gain_random_median": float(np.median(rnd)),
                         "gain_percentile": float(gain.percentile), "norm_du": float(np.sqrt(np.sum(np.abs(np.asarray(du)) ** 2)))},
                        {"gain_random": rnd}))
        else:
            i = abl_hs.index(pt["h"])
            out.append(({"D_minus": float(d_plain[2 * i]), "D_plus": float(d_plain[2 * i + 1]),
                         "D_minus_lin": float(d_lin[2 * i]), "D_plus_lin": float(d_lin[2 * i + 1])}, {}))
    return out


def _kink(rows, plus: str, minus: str, hs, n_boot, seed):
    dp = sample_matrix(rows, "h", plus, hs)
    dm = sample_matrix(rows, "h", minus, hs)
    ok = np.all(np.isfinite(dp), axis=0) & np.all(np.isfinite(dm), axis=0)
    if not ok.any():
        return None
    return kink_from_slopes(dp[:, ok], dm[:, ok], hs, jax.random.key(seed), n_boot=n_boot, m_star=M_STAR)


def summarize(records, settings) -> Summary:
    sz = settings["sizes"]
    n_boot, seed = int(sz["n_boot"]), int(settings["run"]["seed"])
    fac, svd, gain, abl = (by_kind(records, k) for k in ("factor", "svd", "gain", "ablation"))
    tables, parts, figures = {}, [], []
    decision = "undecided"
    if fac:
        res = max(r["residual"] for r in fac)
        tol = RESIDUAL_TOL.get(fac[0].get("dtype", "float32"), 1e-5)
        holds = res <= tol
        parts.append(f"factorization residual max {g(res)} {'≤' if holds else '>'} {tol:g} ({fac[0].get('dtype', 'float32')}) → "
                     f"{'identity holds' if holds else 'THE IDENTITY FAILED'}")
        ku = np.mean([r["norm_Ku"] for r in fac])
        lv = np.mean([r["norm_Lv"] for r in fac])
        parts.append(f"‖K·u‖ {g(ku)}, ‖L·v‖ {g(lv)} (ratio {g(lv / ku if ku > 0 else float('nan'))})")
        tables["factorization"] = fac
    if gain:
        gj = float(np.median([r["gain_jump"] for r in gain]))
        gr = float(np.median([r["gain_random_median"] for r in gain]))
        ratio = gj / gr if gr > 0 else float("nan")
        decision = "non-degenerate" if ratio >= GAIN_FRACTION else "degenerate"
        parts.append(f"gain ‖K·Δu‖/‖Δu‖ {g(gj)} vs median random gain {g(gr)} (ratio {g(ratio)} "
                     f"{'≥' if ratio >= GAIN_FRACTION else '<'} {GAIN_FRACTION:g}) → {decision}")
        tables["gain"] = gain
    if svd:
        tables["singular_values_K"] = [{"utt": r["utt"], "path": r["path"], "index": i + 1, "sigma": float(s)}
                                       for rec, arr in records if rec["point"].get("kind") == "svd"
                                       for r in [rec["point"]] for i, s in enumerate(arr["sigma_K"])]
        figures.append(Figure("e3_singular_values.png", "Top singular values of K = ∂x̂/∂C at M* (Golub–Kahan, matrix-free), "
                              "per sample.", lambda path: _plot_sv(path, records)))
    if abl:
        hs = sorted({r["h"] for r in abl})
        plain = _kink(abl, "D_plus", "D_minus", hs, n_boot, seed)
        lin = _kink(abl, "D_plus_lin", "D_minus_lin", hs, n_boot, seed)
        if plain is not None and lin is not None:
            ex = lambda r: r.kappa0_ci[0] > 0 or r.kappa0_ci[1] < 0
            if ex(plain) and not ex(lin):
                loc = "kink localized in the predictor"
            elif not ex(plain):
                loc = "localization not applicable (the plain κ₀'s CI contains 0: no kink to localize)"
            else:
                loc = "kink not localized in the predictor (it survives the ablation)"
            parts.append(f"ablation: plain κ₀ {g(plain.kappa0)} {fmt_ci(*plain.kappa0_ci)}, linearized predictor κ₀ "
                         f"{g(lin.kappa0)} {fmt_ci(*lin.kappa0_ci)} → {loc}")
            tables["ablation"] = [{"h": float(h), "kappa": float(plain.kappa[i]), "kappa_lo": float(plain.kappa_ci[i, 0]),
                                   "kappa_hi": float(plain.kappa_ci[i, 1]), "kappa_lin": float(lin.kappa[i]),
                                   "kappa_lin_lo": float(lin.kappa_ci[i, 0]), "kappa_lin_hi": float(lin.kappa_ci[i, 1])}
                                  for i, h in enumerate(plain.hs)]
            figures.append(Figure("e3_ablation.png", "κ(h) of the plain pipeline and of the ablation with the predictor "
                                  "linearized at M*.", lambda path: _plot_ablation(path, plain, lin)))
    verdicts = [f"H3: {'; '.join(parts) if parts else 'no point is stored'} → {decision}"]
    notes = [f"N = {sz['steps']}, {sz['jac_utterances']} utterance(s) × {sz['jac_paths']} path(s); Δu at h = {sz['gain_h']}, "
             f"{sz['gain_random']} random directions; ablation h ∈ {sz['ablation_hs']}."]
    return Summary("E3 — non-degeneracy of K (H3) and localization", tables, verdicts, figures, notes)


def _plot_sv(path, records):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for rec, arr in records:
        if rec["point"].get("kind") == "svd":
            s = arr["sigma_K"]
            ax.semilogy(np.arange(1, len(s) + 1), s, "o-", label=f"utt {rec['point']['utt']}, path {rec['point']['path']}")
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i(K)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("E3: singular spectrum of K = ∂x̂/∂C")
    save_figure(fig, path)


def _plot_ablation(path, plain, lin):
    fig, ax = pyplot().subplots(figsize=(6, 4))
    kappa_panel(ax, ((plain, "plain", "C0"), (lin, "predictor linearized at M*", "C1")), "E3: linearized-predictor ablation")
    save_figure(fig, path)


EXPERIMENT = register(Experiment(name="e3", title="E3 — non-degeneracy of K (H3) and localization", points=points, evaluate=evaluate,
                                 summarize=summarize, settings=sizes))
