"""P0 — the SI-SDR(M) curve and the kink statistic at M* (DESIGN.md § Experiments, § Verdicts).

Per utterance and Brownian path, one forward-mode pass over all M values (vmapped) gives
``SI-SDR(ŝ(M), s)`` and its exact derivative ``dSI-SDR/dM = ∇SI-SDR · dŝ/dM``
(:func:`storm_jax.analysis.pathwise_derivative`), on the log-spaced grid of ``m_range`` and at
``M*(1 ± h)``. The predictor's own curve ``SI-SDR(ν·W(C_M), s)`` and its derivative come out of the
same pass (C and u = dC/dM are part of it), so the report can say whether a kink of StoRM is
already in its predictor. One-sided slopes ``D±(h) = dSI-SDR/dM`` at ``M*(1 ± h)`` give
``κ(h) = D⁺ − D⁻``, its two-way bootstrap CI (utterances × paths), ``κ₀`` by Richardson and the
kink width (:func:`storm_jax.analysis.kink_from_slopes`).

Verdict P0: "kink" when the CI of κ₀ excludes 0; "smooth" when it contains 0 and its half-width
is below 10 % of the typical |slope| (the median |D±| over samples and h); else "undecided".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import check_finite, kink_from_slopes, pathwise_derivative
from ..metrics import si_sdr
from ..pipeline import synthesis
from ._common import SMOOTH_FRACTION, fmt_ci, g, kappa_panel, pyplot, sample_matrix, save_figure
from .runner import Experiment, Figure, Summary, register

M_STAR = 1.0


def m_grid(preset) -> list[float]:
    lo, hi = preset.m_range
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), preset.grid_points)) * M_STAR
    return [float(np.round(m, 10)) for m in grid]


def points(preset) -> list[dict]:
    out = []
    for u in range(preset.utterances):
        for p in range(preset.paths):
            for m in m_grid(preset):
                out.append({"utt": u, "path": p, "kind": "grid", "m": m, "h": 0.0})
            for h in preset.hs:
                for sign in (-1, 1):
                    out.append({"utt": u, "path": p, "kind": "side", "m": float(np.round(M_STAR * (1 + sign * h), 12)), "h": float(h)})
    return out


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in ("seconds", "steps", "utterances", "paths", "grid_points", "m_range", "hs", "n_boot")}


@jax.jit
def _metrics(model, clean, noise, value_wave, tan_wave, C, u, nu, dnu):
    """SI-SDR of StoRM and of the predictor, their M-derivatives, the noisy input's SI-SDR."""
    L = clean.shape[-1]
    s, ds = jax.jvp(lambda w: si_sdr(w, clean), (value_wave,), (tan_wave,))
    pred = lambda c, n: si_sdr(synthesis(model, c, L, n), clean)
    sp, dsp = jax.jvp(pred, (C, nu), (u, dnu))
    return s, ds, sp, dsp, jnp.linalg.norm(tan_wave, axis=-1)


def sample_ms(preset, u: int, p: int) -> list[float]:
    """The M values of P0's points for sample ``(u, p)``, in point order (one group)."""
    return [pt["m"] for pt in points(preset) if (pt["utt"], pt["path"]) == (u, p)]


def _curve_lanes(ms, model, clean, noise, key, steps: int):
    """P0's lanes: ŝ and dŝ/dM at every M of ``ms`` ``[K]`` (one vmapped jvp), the SI-SDRs of
    StoRM, predictor and noisy input with their M-derivatives, and ‖dŝ/dM‖."""
    value, tangent = pathwise_derivative(model, clean, noise, ms, key, steps=steps, check=False)
    metrics = _metrics(model, clean, noise, value.waveform, tangent.waveform, value.C, tangent.C, value.norm, tangent.norm)
    noisy = si_sdr(clean[None] + ms.astype(clean.dtype)[:, None] * noise[None], clean)
    return value, tangent, metrics, noisy


def curve_set(ctx, u: int, p: int):
    """P0's one vmapped pass for sample ``(u, p)`` — ŝ and dŝ/dM at every M of
    :func:`sample_ms` — and the SI-SDRs of StoRM, predictor and noisy input with their
    M-derivatives, sharded over the context's devices and memoized: E3's plain one-sided slopes
    come from here, the same computation whether or not P0 ran before it in the process."""
    def compute():
        ms = np.array(sample_ms(ctx.preset, u, p))
        value, tangent, metrics, noisy = ctx.over_m(_curve_lanes, ms, (ctx.model, jnp.asarray(ctx.clean[u]),
                                                    jnp.asarray(ctx.noise[u]), ctx.path_key(u, p)), {"steps": ctx.preset.steps})
        check_finite((value, tangent), ms)
        s, ds, sp, dsp, tn = (np.asarray(a, np.float64) for a in metrics)
        return {"ms": list(ms), "value": value, "s": s, "ds": ds, "sp": sp, "dsp": dsp, "tn": tn,
                "noisy": np.asarray(noisy, np.float64)}

    return ctx.memoized(("p0-curve", u, p, tuple(sample_ms(ctx.preset, u, p)), ctx.preset.steps), compute)


def evaluate(ctx, group):
    u, p = group[0]["utt"], group[0]["path"]
    clean, noise = ctx.clean[u], ctx.noise[u]
    c = curve_set(ctx, u, p)
    if [pt["m"] for pt in group] != c["ms"]:
        raise RuntimeError(f"p0: group utt={u} path={p} is not the whole sample")
    value, s, ds, sp, dsp, tn, noisy = (c[k] for k in ("value", "s", "ds", "sp", "dsp", "tn", "noisy"))
    grid = [pt["m"] for pt in group if pt["kind"] == "grid"]
    keep = {M_STAR if M_STAR in grid else None, max(grid) if grid else None} - {None}
    out = []
    for i, pt in enumerate(group):
        row = {"si_sdr": float(s[i]), "d_si_sdr": float(ds[i]), "si_sdr_predictor": float(sp[i]),
               "d_si_sdr_predictor": float(dsp[i]), "si_sdr_noisy": float(noisy[i]), "tangent_norm": float(tn[i])}
        arrays = {}
        if u == 0 and p == 0 and pt["kind"] == "grid" and pt["m"] in keep:
            L = clean.shape[-1]
            arrays = {"clean": clean, "noisy": clean + pt["m"] * noise, "enhanced": np.asarray(value.waveform[i]),
                      "predictor": np.asarray(synthesis(ctx.model, value.C[i], L, value.norm[i]))}
        out.append((row, arrays))
    return out


def kink_of(rows, value: str, hs, n_boot: int, seed: int):
    """:func:`kink_from_slopes` of the stored one-sided slopes of column ``value``."""
    side = [r for r in rows if r["kind"] == "side"]
    plus = [dict(r, hh=r["h"]) for r in side if r["m"] > M_STAR]
    minus = [dict(r, hh=r["h"]) for r in side if r["m"] < M_STAR]
    dp = sample_matrix(plus, "hh", value, hs)
    dm = sample_matrix(minus, "hh", value, hs)
    ok = np.all(np.isfinite(dp), axis=0) & np.all(np.isfinite(dm), axis=0)
    if not ok.any():
        return None, dp, dm
    dp, dm = dp[:, ok], dm[:, ok]
    # The two bootstrap factors: utterances and paths (a crossed design) when the samples form
    # a full grid; otherwise a one-way resampling of the samples.
    samples = sorted({(r["utt"], r["path"]) for r in side})
    samples = [s for s, k in zip(samples, ok) if k]
    U, P = len({s[0] for s in samples}), len({s[1] for s in samples})
    if U * P == len(samples):
        dp3, dm3 = dp.reshape(len(hs), U, P), dm.reshape(len(hs), U, P)
    else:
        dp3, dm3 = dp[:, :, None], dm[:, :, None]
    res = kink_from_slopes(dp3, dm3, hs, jax.random.key(seed), n_boot=n_boot, m_star=M_STAR, functional=value)
    return res, dp, dm


def p0_verdict(res, dp, dm) -> tuple[str, str]:
    """(decision, sentence) of the P0 rule for a :class:`~storm_jax.analysis.KinkResult`."""
    lo, hi = (float(x) for x in res.kappa0_ci)
    typical = float(np.median(np.abs(np.concatenate([dp.ravel(), dm.ravel()]))))
    half = 0.5 * (hi - lo)
    if lo > 0 or hi < 0:
        decision, rule = "kink", "CI excludes 0"
    elif half < SMOOTH_FRACTION * typical:
        decision, rule = "smooth", f"CI contains 0 and half-width {g(half)} < 10 % of typical |slope| {g(typical)}"
    else:
        decision, rule = "undecided", f"CI contains 0 but half-width {g(half)} ≥ 10 % of typical |slope| {g(typical)}"
    return decision, f"κ₀ = {g(res.kappa0)} dB {fmt_ci(lo, hi)} ({int(res.level * 100)} % CI): {rule}"


def summarize(records, settings) -> Summary:
    sizes_ = settings["sizes"]
    rows = [{**rec["point"], **rec["row"]} for rec, _ in records]
    hs = sorted(float(h) for h in sizes_["hs"])
    n_boot, seed = int(sizes_["n_boot"]), int(settings["run"]["seed"])
    grid_ms = sorted({r["m"] for r in rows if r["kind"] == "grid"})
    curve = []
    for m in grid_ms:
        rs = [r for r in rows if r["kind"] == "grid" and r["m"] == m]
        curve.append({"m": m, "samples": len(rs)} | {k: float(np.mean([r[k] for r in rs])) for k in
                     ("si_sdr", "d_si_sdr", "si_sdr_predictor", "d_si_sdr_predictor", "si_sdr_noisy", "tangent_norm")})
    verdicts, tables, notes, figures = [], {"curve": curve}, [], []
    res, dp, dm = kink_of(rows, "d_si_sdr", hs, n_boot, seed)
    res_p, _, _ = kink_of(rows, "d_si_sdr_predictor", hs, n_boot, seed)
    if res is None:
        verdicts.append("P0: undecided — no complete pair of one-sided slopes is stored (see the failed points)")
    else:
        decision, sentence = p0_verdict(res, dp, dm)
        width = f"kink width {g(res.width)}" + ("" if res.width_resolved else " (below the smallest h: κ still changes there)")
        pred = ""
        if res_p is not None:
            d_p, s_p = p0_verdict(res_p, *kink_of(rows, "d_si_sdr_predictor", hs, n_boot, seed)[1:])
            pred = f"; the predictor's own curve: {s_p} → {d_p}"
        verdicts.append(f"P0: SI-SDR {sentence}; {width} → {decision}{pred}")
        kt = []
        for i, h in enumerate(res.hs):
            r = {"h": float(h), "D_plus": float(res.d_plus[i].mean()), "D_minus": float(res.d_minus[i].mean()),
                 "kappa": float(res.kappa[i]), "kappa_lo": float(res.kappa_ci[i, 0]), "kappa_hi": float(res.kappa_ci[i, 1])}
            if res_p is not None:
                r |= {"kappa_predictor": float(res_p.kappa[i]), "kappa_predictor_lo": float(res_p.kappa_ci[i, 0]),
                      "kappa_predictor_hi": float(res_p.kappa_ci[i, 1])}
            kt.append(r)
        tables["kink"] = kt
        tables["kink_summary"] = [{"functional": name, "kappa0": r_.kappa0, "kappa0_lo": float(r_.kappa0_ci[0]),
                                   "kappa0_hi": float(r_.kappa0_ci[1]), "extrapolation_error": r_.kappa0_err,
                                   "width": r_.width, "width_resolved": r_.width_resolved}
                                  for name, r_ in (("StoRM", res), ("predictor", res_p)) if r_ is not None]
        figures.append(Figure("p0_kappa.png", "κ(h) = D⁺ − D⁻ with its bootstrap CI, for StoRM and its predictor; "
                              "the band is κ₀ (Richardson, h → 0) with its CI.", lambda path: _plot_kappa(path, res, res_p)))
    if curve:
        figures.insert(0, Figure("p0_curve.png", "SI-SDR(M) of StoRM, its predictor and the noisy input (mean over samples), "
                                 "with the exact derivative dSI-SDR/dM and the one-sided slopes D±(h) beside M*.",
                                 lambda path: _plot_curve(path, rows, curve, res)))
    specs = [(rec, arr) for rec, arr in records if arr.get("enhanced") is not None]
    if specs:
        figures.append(Figure("p0_spectrograms.png", "Spectrograms (dB) of the clean speech, the noisy input, the predictor output "
                              "and the StoRM output at M* and at the largest M of the grid (utterance 0, path 0).",
                              lambda path: _plot_spectrograms(path, specs)))
    notes.append(f"{len({(r['utt'], r['path']) for r in rows})} samples (utterances × Brownian paths), N = {sizes_['steps']} "
                 f"sampler steps, crops of {sizes_['seconds']} s, M* = {M_STAR}, h ∈ {hs}.")
    return Summary(title="P0 — SI-SDR(M) and the kink at M*", tables=tables, verdicts=verdicts, figures=figures, notes=notes)


# ----------------------------------------------------------------------------------- figures


def _plot_curve(path, rows, curve, res):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    m = np.array([c["m"] for c in curve])
    for key, label, color in (("si_sdr", "StoRM", "C0"), ("si_sdr_predictor", "predictor C", "C1"), ("si_sdr_noisy", "noisy y", "0.5")):
        a.plot(m, [c[key] for c in curve], "o-", color=color, label=label, ms=3)
    # exact derivative as short tangent segments on the StoRM curve
    span = 0.08
    for c in curve:
        x = np.array([c["m"] * (1 - span), c["m"] * (1 + span)])
        a.plot(x, c["si_sdr"] + c["d_si_sdr"] * (x - c["m"]), "-", color="C3", lw=1.5)
    a.plot([], [], "-", color="C3", label="exact dSI-SDR/dM (tangents)")
    a.axvline(M_STAR, color="k", lw=0.6, ls=":")
    a.set_xscale("log")
    a.set_xlabel("M (noise amplitude; M* = 1)")
    a.set_ylabel("SI-SDR (dB)")
    a.legend(fontsize=8)
    a.grid(True, alpha=0.3)
    b.plot(m, [c["d_si_sdr"] for c in curve], "o-", color="C0", ms=3, label="dSI-SDR/dM, StoRM (grid)")
    b.plot(m, [c["d_si_sdr_predictor"] for c in curve], "o-", color="C1", ms=3, label="predictor")
    if res is not None:
        hs = res.hs
        b.plot(M_STAR * (1 + hs), res.d_plus.reshape(len(hs), -1).mean(axis=1), "^", color="C2", label="D⁺(h) at M*(1+h)")
        b.plot(M_STAR * (1 - hs), res.d_minus.reshape(len(hs), -1).mean(axis=1), "v", color="C4", label="D⁻(h) at M*(1−h)")
    b.axvline(M_STAR, color="k", lw=0.6, ls=":")
    b.set_xscale("log")
    b.set_xlabel("M")
    b.set_ylabel("dSI-SDR/dM (dB per unit M)")
    b.legend(fontsize=8)
    b.grid(True, alpha=0.3)
    fig.suptitle("P0: the degradation curve and its exact derivative")
    save_figure(fig, path)


def _plot_kappa(path, res, res_p):
    fig, ax = pyplot().subplots(figsize=(6, 4))
    kappa_panel(ax, ((res, "StoRM", "C0"), (res_p, "predictor", "C1")), "P0: kink statistic")
    save_figure(fig, path)


def _plot_spectrograms(path, specs):
    import librosa

    plt = pyplot()
    specs = sorted(specs, key=lambda ra: ra[0]["point"]["m"])
    n = len(specs)
    fig, axes = plt.subplots(n, 4, figsize=(14, 2.6 * n), squeeze=False)
    for i, (rec, arr) in enumerate(specs):
        m = rec["point"]["m"]
        for j, (key, label) in enumerate((("clean", "clean s"), ("noisy", f"noisy y(M={m:g})"), ("predictor", "predictor C"),
                                          ("enhanced", "StoRM ŝ"))):
            S = np.abs(librosa.stft(np.asarray(arr[key], np.float32), n_fft=510, hop_length=128))
            db = 20 * np.log10(S + 1e-6)
            axes[i, j].imshow(db, origin="lower", aspect="auto", vmin=db.max() - 80, vmax=db.max(), cmap="magma",
                              extent=[0, len(arr[key]) / 16000, 0, 8])
            axes[i, j].set_title(label, fontsize=9)
            axes[i, j].set_xlabel("s")
            axes[i, j].set_ylabel("kHz")
    fig.tight_layout()
    save_figure(fig, path)


EXPERIMENT = register(Experiment(name="p0", title="P0 — SI-SDR(M), its exact derivative and the kink at M*", points=points,
                                 evaluate=evaluate, summarize=summarize, settings=sizes))
