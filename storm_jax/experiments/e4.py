"""E4 — discretization audit on nested grids sharing one Brownian path.

Per sample (utterance, path) one :func:`storm_jax.brownian_path` with ``finest = max N`` serves
every step count, so differences between N are discretization errors, not Monte-Carlo noise.
Each solve is :func:`storm_jax.solve_reverse` (diffrax; ``euler`` equals the scan sampler to
rounding) inside a forward-mode pass in M, with the step count traced so one compilation serves
every N:

* consistent grid, Euler–Maruyama (reverse diffusion), every N: ŝ_N, dŝ_N/dM at M*, and the
  one-sided slopes of SI-SDR at ``M*(1 ± h)`` for N ≤ ``e4_kappa_max_steps`` (κ_N);
* the reference's grid (``dt = 1/N`` on ``linspace(1, t_eps, N)``) for every N below the finest;
* a continuous-time reference: ``e4_solver`` (SEA by default) at the finest N.

Derived (:mod:`storm_jax.analysis.discretization`): strong error of x̂_N against the finest Euler
solve and against the SEA reference, with the fitted order and a bootstrap CI over samples
(expected ≈ 1 for StoRM's additive noise); weak error of mean SI-SDR; relative error of the
tangent dx̂/dM; κ_N with a Richardson estimate κ∞ (order 1 in the step size, interval by
bootstrap over samples); and the reference grid's bias, SI-SDR(reference grid, N) − SI-SDR(finest
consistent solve), with its sign.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from ..analysis.discretization import richardson, step_sizes, strong_error, tangent_error, weak_error
from ..continuous import brownian_path, solve_reverse
from ..metrics import si_sdr
from ..model import predictor
from ..pipeline import EnhanceConfig, analysis_input, mix, spec_shape, synthesis
from ._common import fmt_ci, g, pyplot, safe, save_figure
from .runner import Experiment, Figure, Summary, register

M_STAR = 1.0


def points(preset) -> list[dict]:
    finest = max(preset.e4_steps)
    out = []
    for u in range(preset.e4_utterances):
        for p in range(preset.e4_paths):
            out += [{"utt": u, "path": p, "kind": "solve", "solver": "euler", "grid": "consistent", "N": n} for n in preset.e4_steps]
            out += [{"utt": u, "path": p, "kind": "solve", "solver": "euler", "grid": "reference", "N": n}
                    for n in preset.e4_steps if n != finest]
            out.append({"utt": u, "path": p, "kind": "solve", "solver": preset.e4_solver, "grid": "consistent", "N": finest})
    return out


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in ("seconds", "e4_steps", "e4_utterances", "e4_paths", "e4_h", "e4_kappa_max_steps",
                                            "e4_solver", "n_boot")}


def _solve(ms, model, clean, noise, path, steps, solver: str, grid: str):
    """``x̂, dx̂/dM, ŝ, SI-SDR, dSI-SDR/dM`` for every M of ``ms`` ``[K]`` on ``path`` with
    ``steps`` (traced); the lanes of :meth:`Context.over_m`."""
    cfg = EnhanceConfig()
    L = clean.shape[-1]

    def f(m):
        Y, nu = analysis_input(model, mix(clean, noise, m), cfg)
        C = predictor(model, Y) if model.config.has_predictor else Y
        x = solve_reverse(model, Y, C, path, solver=solver, steps=steps, grid=grid)
        return x, synthesis(model, x, L, nu)

    def one(m):
        (x, w), (dx, dw) = jax.jvp(f, (m,), (jnp.ones_like(m),))
        s, ds = jax.jvp(lambda a: si_sdr(a, clean), (w,), (dw,))
        return x, dx, w, s, ds

    return jax.vmap(one)(ms)


def evaluate(ctx, group):
    u, p = group[0]["utt"], group[0]["path"]
    pre, model = ctx.preset, ctx.model
    clean, noise = jnp.asarray(ctx.clean[u]), jnp.asarray(ctx.noise[u])
    finest = max(pre.e4_steps)
    path = brownian_path(ctx.path_key(u, p), spec_shape(model, clean.shape[-1]), finest=finest, sde=model.config.sde,
                         dtype=jnp.float32)
    out = []
    for pt in group:
        with_kappa = pt["grid"] == "consistent" and pt["solver"] == "euler" and pt["N"] <= pre.e4_kappa_max_steps
        ms = [M_STAR] + ([M_STAR * (1 - pre.e4_h), M_STAR * (1 + pre.e4_h)] if with_kappa else [])
        # One lane per device and call: every point of a solver and grid then shares one compiled
        # program (on one device a 3-lane batch for the κ points would compile a second one for
        # about the cost of three calls; on 4 devices the three lanes run side by side).
        x, dx, w, s, ds = ctx.over_m(_solve, np.asarray(ms, np.float32), (model, clean, noise, path, jnp.asarray(pt["N"])),
                                     {"solver": pt["solver"], "grid": pt["grid"]}, batch=1)
        ds = np.asarray(ds, np.float64)
        for name, a in (("x̂", x), ("dx̂/dM", dx), ("dSI-SDR/dM", ds)):
            if not np.all(np.isfinite(np.asarray(a))):
                raise FloatingPointError(f"non-finite values first appear at stage 'E4 {pt['solver']} {pt['grid']} N={pt['N']} {name}'")
        row = {"si_sdr": float(s[0]), "d_si_sdr": float(ds[0])}
        if with_kappa:
            row |= {"D_minus": float(ds[1]), "D_plus": float(ds[2]), "kappa": float(ds[2] - ds[1])}
        out.append((row, {"x": np.asarray(x[0]), "dx": np.asarray(dx[0]), "wave": np.asarray(w[0])}))
    return out


def _collect(records, solver, grid):
    """{N: {sample: (row, arrays)}} for one solver and grid."""
    out: dict[int, dict] = {}
    for rec, arr in records:
        pt = rec["point"]
        if pt["solver"] == solver and pt["grid"] == grid:
            out.setdefault(int(pt["N"]), {})[(pt["utt"], pt["path"])] = ({**pt, **rec["row"]}, arr)
    return out


def summarize(records, settings) -> Summary:
    sz = settings["sizes"]
    steps_all = sorted(int(n) for n in sz["e4_steps"])
    finest, solver_ref = steps_all[-1], sz["e4_solver"]
    n_boot, seed = int(sz["n_boot"]), int(settings["run"]["seed"])
    cons, refg, cont = _collect(records, "euler", "consistent"), _collect(records, "euler", "reference"), _collect(records, solver_ref, "consistent")
    samples = sorted(set.intersection(*[set(v) for v in cons.values()], set(cont.get(finest, {})))) if cons and cont.get(finest) else []
    tables, parts, figures = {}, [], []
    if not samples or finest not in cons:
        return Summary("E4 — discretization audit", {}, ["E4: undecided — the finest solves are missing (see the failed points)"], [])
    steps = [n for n in steps_all if n in cons]
    X = np.stack([np.stack([cons[n][s][1]["x"] for s in samples]) for n in steps])
    dX = np.stack([np.stack([cons[n][s][1]["dx"] for s in samples]) for n in steps])
    ref_fine, dref_fine = X[-1], dX[-1]
    ref_cont = np.stack([cont[finest][s][1]["x"] for s in samples])
    dref_cont = np.stack([cont[finest][s][1]["dx"] for s in samples])
    mask = [n != finest for n in steps]
    kw = dict(grid="consistent", sde=_sde(), n_boot=n_boot, seed=seed)
    se_f = strong_error(X, ref_fine, steps, fit_mask=mask, relative=True, **kw)
    se_c = strong_error(X, ref_cont, steps, relative=True, **kw)
    te = tangent_error(dX, dref_cont, steps, **kw)
    sdr = np.array([[cons[n][s][0]["si_sdr"] for s in samples] for n in steps])
    we = weak_error(sdr, sdr[-1], steps, grid="consistent", sde=_sde(), fit_mask=mask)
    hN = step_sizes(steps, "consistent", _sde())
    tables["errors"] = [{"N": n, "h": float(hN[i]), "strong_vs_finest": float(se_f.error[i]), f"strong_vs_{solver_ref}": float(se_c.error[i]),
                         "tangent_rel_error": float(te.error[i]), "mean_si_sdr": float(sdr[i].mean()), "weak_si_sdr_bias": float(we.bias[i])}
                        for i, n in enumerate(steps)]
    fit = se_f.fit
    parts.append(f"strong order {g(fit.order)} {fmt_ci(*fit.ci)} vs the finest solve, {g(se_c.fit.order)} {fmt_ci(*se_c.fit.ci)} "
                 f"vs {solver_ref.upper()} at N = {finest} (expected ≈ 1)")
    parts.append(f"tangent order {g(te.fit.order)} {fmt_ci(*te.fit.ci)}")
    # κ_N and Richardson κ∞ (order 1 in the step size), interval by bootstrap over samples
    kN = [n for n in steps if all("kappa" in cons[n][s][0] for s in samples)]
    if len(kN) >= 2:
        K = np.array([[cons[n][s][0]["kappa"] for s in samples] for n in kN])
        hk = step_sizes(kN, "consistent", _sde())
        k_inf = richardson(hk, K.mean(axis=1), order=1.0).value
        rng = np.random.default_rng(seed)
        boot = [richardson(hk, K[:, rng.integers(0, K.shape[1], K.shape[1])].mean(axis=1), order=1.0).value for _ in range(n_boot)]
        lo, hi = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
        excl = lo > 0 or hi < 0
        parts.append(f"κ_N(h={sz['e4_h']}) for N ∈ {kN}: κ∞ = {g(k_inf)} {fmt_ci(lo, hi)} (Richardson, bootstrap over samples) → "
                     + ("CI excludes 0: not a discretization artefact" if excl else "CI contains 0: κ vanishes as N → ∞"))
        tables["kappa_N"] = [{"N": n, "h_step": float(hk[i]), "kappa_mean": float(K[i].mean()), "kappa_min": float(K[i].min()),
                              "kappa_max": float(K[i].max())} for i, n in enumerate(kN)] + [{"N": "inf (Richardson)", "h_step": 0.0,
                              "kappa_mean": float(k_inf), "kappa_min": lo, "kappa_max": hi}]
        figures.append(Figure("e4_kappa.png", "κ_N against N with the Richardson estimate κ∞ and its bootstrap CI.",
                              lambda path: _plot_kappa(path, kN, K, k_inf, lo, hi)))
    # the reference grid's dt = 1/N bias against the converged consistent solve
    rN = sorted(n for n in refg if all(s in refg[n] for s in samples))
    if rN:
        bias = [{"N": n, "si_sdr_reference_grid": float(np.mean([refg[n][s][0]["si_sdr"] for s in samples])),
                 "bias_vs_finest_consistent_dB": float(np.mean([refg[n][s][0]["si_sdr"] for s in samples]) - sdr[-1].mean()),
                 "strong_distance_rel": float(np.sqrt(np.mean([np.sum(np.abs(refg[n][s][1]["x"] - ref_fine[i]) ** 2) /
                                                               np.sum(np.abs(ref_fine[i]) ** 2) for i, s in enumerate(samples)])))}
                for n in rN]
        tables["reference_grid_bias"] = bias
        b = bias[-1]
        parts.append(f"reference grid (dt = 1/N) at N = {b['N']}: SI-SDR bias {b['bias_vs_finest_consistent_dB']:+.3g} dB, "
                     f"relative distance {g(b['strong_distance_rel'])} from the converged solve")
    figures.insert(0, Figure("e4_errors.png", "Strong error of x̂_N (vs the finest solve and vs the continuous-time reference), "
                             "tangent error and weak SI-SDR error against the step size, with slope-0.5 and slope-1 guides.",
                             lambda path: _plot_errors(path, hN, se_f, se_c, te, we, mask, solver_ref)))
    verdicts = [f"E4: {'; '.join(parts)}"]
    notes = [f"N ∈ {steps_all} on nested grids of one Brownian path per sample ({len(samples)} samples); continuous-time "
             f"reference {solver_ref.upper()} at N = {finest}; errors relative to ‖x̂_ref‖."]
    return Summary("E4 — discretization audit", tables, verdicts, figures, notes)


def _sde():
    from ..sde import OUVE

    return OUVE()


def _plot_errors(path, h, se_f, se_c, te, we, mask, solver_ref):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    m = np.asarray(mask)
    a.loglog(h[m], se_f.error[m], "o-", label=f"strong vs finest (order {se_f.fit.order:.2f})")
    a.loglog(h, se_c.error, "s-", label=f"strong vs {solver_ref.upper()} (order {se_c.fit.order:.2f})")
    a.loglog(h, te.error, "^-", label=f"tangent dx̂/dM (order {te.fit.order:.2f})")
    ref = se_c.error[0]
    a.loglog(h, ref * (h / h[0]), "--", color="0.5", lw=0.8, label="slope 1")
    a.loglog(h, ref * (h / h[0]) ** 0.5, ":", color="0.5", lw=0.8, label="slope 0.5")
    a.set_xlabel("step size h_N")
    a.set_ylabel("relative error")
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    a.set_title("E4: strong and tangent errors")
    e = np.abs(we.bias)
    ok = m & (e > 0)
    if ok.any():
        b.loglog(h[ok], e[ok], "o-", label="|weak error| of mean SI-SDR (dB)")
        b.loglog(h[ok], e[ok][0] * (h[ok] / h[ok][0]), "--", color="0.5", lw=0.8, label="slope 1")
        b.loglog(h[ok], e[ok][0] * (h[ok] / h[ok][0]) ** 0.5, ":", color="0.5", lw=0.8, label="slope 0.5")
    b.set_xlabel("step size h_N")
    b.set_ylabel("dB")
    b.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=8)
    b.set_title("E4: weak error (vs the finest solve)")
    save_figure(fig, path)


def _plot_kappa(path, kN, K, k_inf, lo, hi):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in range(K.shape[1]):
        ax.plot(kN, K[:, s], ".", color="C0", alpha=0.4)
    ax.plot(kN, K.mean(axis=1), "o-", color="C0", label="κ_N (mean over samples)")
    ax.axhspan(lo, hi, color="C1", alpha=0.2, label=f"κ∞ = {k_inf:.3g} (Richardson, CI band)")
    ax.axhline(k_inf, color="C1")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("N (steps)")
    ax.set_ylabel("κ_N (dB per unit M)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("E4: kink statistic against N")
    save_figure(fig, path)


EXPERIMENT = register(Experiment(name="e4", title="E4 — discretization audit", points=points, evaluate=evaluate, summarize=summarize,
                                 settings=sizes))
