"""E2 — continuity in M of the conditioning Jacobians (hypothesis H2).

With the probes of E1 (:func:`storm_jax.experiments.e1.probe_set`), the score's Jacobians with
respect to its conditions applied to the tangents of those conditions, ``J_C^k·u`` (u = dC/dM)
and ``J_y^k·v`` (v = dY/dM), give ``ρ_C(h)`` and ``ρ_y(h)`` as E1's ρ₁; the direct channel of the
whole sampler, ``L(M)·v`` (:func:`storm_jax.analysis.factorize`, all M in one vmapped pass),
gives ``ρ_L(h) = ‖L(M*+h)v(M*+h) − L(M*−h)v(M*−h)‖ / ‖L(M*)v(M*)‖``. Each is fitted and
decided by the H1 rule; H2 reports the three separately and is "continuous" only when all three
are, "discontinuous" when any is. With ``condition="predictor"`` the score does not see Y:
J_y·v = L·v = 0 and those two are "not applicable".
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..analysis import check_finite, factorize
from ._common import by_kind, continuity_reason, describe_fit
from .e1 import M_STAR, _plot, offsets_m, probe_set, rho, rho_table, continuity_summary
from .runner import Experiment, Figure, Summary, register


def points(preset) -> list[dict]:
    return [{"utt": u, "path": p, "kind": "rho", "h": float(h)}
            for u in range(preset.jac_utterances) for p in range(preset.jac_paths) for h in preset.rho_hs]


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in ("seconds", "steps", "jac_utterances", "jac_paths", "rho_hs", "n_boot")}


def factor_set(ctx, u: int, p: int):
    """:func:`factorize` (with the identity's third lane) at every M of :func:`offsets_m` of the
    preset's ``rho_hs``, one vmapped pass, memoized: E3 takes its M* factorization from here, so
    it is the same computation whether or not E2 ran before it in the process."""
    ms = offsets_m(ctx.preset.rho_hs)

    def compute():
        f = ctx.over_m(_factor_lanes, np.array(ms), (ctx.model, jnp.asarray(ctx.clean[u]), jnp.asarray(ctx.noise[u]),
                       ctx.path_key(u, p)), {"steps": ctx.preset.steps})
        check_finite(f, np.array(ms))
        return f

    return ms, ctx.memoized(("factorize", u, p, tuple(ms), ctx.preset.steps), compute)


def _factor_lanes(ms, model, clean, noise, key, steps: int):
    """E2's lanes: :func:`factorize` at every M of ``ms`` (sharded by the caller)."""
    return factorize(model, clean, noise, ms, key, steps=steps, check=False)


def evaluate(ctx, group):
    u, p = group[0]["utt"], group[0]["path"]
    hs = [pt["h"] for pt in group]
    pr = probe_set(ctx, u, p, hs)
    ms, f = factor_set(ctx, u, p)
    Lv = {m: np.asarray(f.Lv[i]) for i, m in enumerate(ms)}
    nrm = lambda a: float(np.sqrt(np.sum(np.abs(a) ** 2)))
    sees_y = ctx.model.config.condition != "predictor"
    out = []
    for h in hs:
        rc, ratio_c = rho(pr, "JC_u", h)
        ry, ratio_y = rho(pr, "JY_v", h)
        lo, hi = Lv[float(np.round(M_STAR * (1 - h), 12))], Lv[float(np.round(M_STAR * (1 + h), 12))]
        base = nrm(Lv[M_STAR])
        rl = nrm(hi - lo) / base if base > 0 else 0.0
        row = {"rho_C": rc, "rho_Y": ry if sees_y else 0.0, "rho_L": rl if sees_y else 0.0, "norm_Lv": base,
               "norm_Ku": float(f.norm_Ku[0]), "sees_Y": sees_y}
        out.append((row, {"ratio_C": ratio_c, "ratio_Y": ratio_y}))
    return out


def summarize(records, settings) -> Summary:
    sz = settings["sizes"]
    rows = by_kind(records, "rho")
    if not rows:
        return Summary("E2 — conditioning-Jacobian continuity (H2)", {}, ["H2: undecided — no point is stored (see the failed points)"], [])
    sees_y = all(r.get("sees_Y", True) for r in rows)
    lanes = {"rho_C": "J_C·u"} | ({"rho_Y": "J_y·v", "rho_L": "L·v"} if sees_y else {})
    hs, mats, fits, ver = continuity_summary(rows, lanes, int(sz["n_boot"]), int(settings["run"]["seed"]))
    parts = [f"{describe_fit(label, fits[label])}: {continuity_reason(fits[label])} → {ver[label]}" for label in lanes.values()]
    if not sees_y:
        parts.append("J_y·v and L·v: not applicable (condition='predictor': the score does not see Y)")
    decisions = set(ver.values())
    overall = "discontinuous" if "discontinuous" in decisions else ("continuous" if decisions == {"continuous"} else "undecided")
    lv = np.array([r["norm_Lv"] for r in rows])
    ku = np.array([r["norm_Ku"] for r in rows])
    direct = f"; direct channel ‖L·v‖/‖K·u‖ = {lv.mean() / ku.mean():.3g} at M*" if sees_y and ku.mean() > 0 else ""
    verdicts = [f"H2: {'; '.join(parts)}{direct} (rule, each: CI > 0.8 → continuous, CI ∋ 0 below 0.8 → discontinuous, "
                f"else undecided; H2 fails if any is discontinuous) → {overall}"]
    tables = {"rho": rho_table(hs, mats),
              "direct_channel": [{"norm_Ku_mean": float(ku.mean()), "norm_Lv_mean": float(lv.mean()),
                                  "ratio_Lv_Ku": float(lv.mean() / ku.mean()) if ku.mean() > 0 else float("nan")}]}
    figs = [Figure("e2_rho.png", "ρ(h) of the conditioning channels: J_C·u, J_y·v along the trajectory and the sampler's "
                   "direct channel L·v, log–log with fitted slopes.", lambda path: _plot(path, hs, mats, fits, "ρ(h)", "E2: conditioning-Jacobian continuity"))]
    notes = [f"N = {sz['steps']}, {sz['jac_utterances']} utterance(s) × {sz['jac_paths']} path(s); ‖L·v‖/‖K·u‖ at M* = "
             f"{tables['direct_channel'][0]['ratio_Lv_Ku']:.3g}."]
    return Summary("E2 — conditioning-Jacobian continuity (H2)", tables, verdicts, figs, notes)


EXPERIMENT = register(Experiment(name="e2", title="E2 — conditioning-Jacobian continuity (H2)", points=points, evaluate=evaluate,
                                 summarize=summarize, settings=sizes))
