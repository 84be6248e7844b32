"""S — the noise schedule, the ELBO and the Importance of Condition; two-stage refinement
(hypotheses S1 and S2, the second seed: ``closing-elbo-gap-abstract.txt``).

**S1, "changing the schedule changes IoC".** For each schedule (σ_min, σ_max) of the preset's
grid, a score network of the preset's size (``sched_score_preset``) is trained from scratch on
the frozen predictor of ``--checkpoint`` (``freeze-predictor`` mode, ``init_networks =
("predictor",)``; everything but the SDE shared), then measured on crops of the test split:
SI-SDR, PESQ and ESTOI of its enhancement, the ELBO's terms (:func:`storm_jax.elbo`), and IoC
over t — the Jacobian share IoC_J (wrt Y and C) and the swap effect IoC_Δ with the next
utterance's condition (:func:`storm_jax.importance_of_condition`, forward-marginal samples).
Rule: the schedules' mean IoC_J (over the preset's times) differ by more than three combined
standard errors between some two schedules → "changes IoC"; otherwise "undecided" (the spread
is within the estimator's noise, which more samples or utterances can resolve).

**S2, "refinement improves on one stage".** A refinement network (``refine_preset``) is trained
on the outputs of ``--checkpoint`` (``--mode refine``, the first stage frozen, its sampler at
``sched_sampler_steps``), and the one- and two-stage models enhance the same crops with the same
noise. Rule: the paired SI-SDR gain (two − one, per utterance) has a bootstrap CI above 0 →
"improves", below 0 → "worsens", else "undecided"; PESQ and ESTOI and the SI-SDR(M) curve under
mismatch are reported beside it.

Each point is one training run (the group unit, ``group_by = ("run",)``); its run folder lives
under the experiment's ``work/`` folder, so a killed sweep resumes inside the interrupted run
(:func:`storm_jax.train` resumes from its last checkpoint) and finished schedules are skipped.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from ._common import fmt_ci, g, pyplot, save_figure
from .runner import Experiment, Figure, Summary, register

S1_SE = 3.0  # S1: a spread of mean IoC_J beyond this many combined standard errors is a change


def schedules(preset) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a in preset.sched_sigma_min for b in preset.sched_sigma_max]


def points(preset) -> list[dict]:
    pts = [{"run": i, "kind": "schedule", "sigma_min": a, "sigma_max": b} for i, (a, b) in enumerate(schedules(preset))]
    return pts + [{"run": len(pts), "kind": "refine"}]


_SIZES = ("sched_sigma_min", "sched_sigma_max", "sched_score_preset", "sched_train_steps", "sched_batch", "sched_frames",
          "sched_lr", "sched_seconds", "sched_test_utterances", "sched_sampler_steps", "sched_elbo_samples", "sched_ioc_times",
          "sched_ioc_samples", "sched_ioc_probes", "refine_preset", "refine_train_steps", "refine_m", "n_boot")


def sizes(preset) -> dict:
    return {k: getattr(preset, k) for k in _SIZES}


# ----------------------------------------------------------------------------------- evaluation


def _test_crops(ctx):
    """``[U, L]`` clean and noise crops of the first ``sched_test_utterances`` test utterances
    (the loudest ``sched_seconds`` of each, as the other experiments crop), memoized."""
    from ..data import embedded_corpus, folder_dataset
    from .context import _crop, crop_length

    pr = ctx.preset

    def load():
        ds = embedded_corpus("test", progress=False) if ctx.data_spec == "embedded" else folder_dataset(Path(ctx.data_spec), "test", resample=True, downmix=True)
        n = pr.sched_test_utterances
        if len(ds) < n:
            raise ValueError(f"--data {ctx.data_spec}: the test split holds {len(ds)} utterances, the schedule experiment needs {n}")
        length = crop_length(ctx.model, pr.sched_seconds)
        pairs = [_crop(np.asarray(ds[i].clean, np.float32), np.asarray(ds[i].noise, np.float32), length, ctx.model.config.spec.hop) for i in range(n)]
        return np.stack([c for c, _ in pairs]), np.stack([z for _, z in pairs])

    return ctx.memoized(("schedule-test-crops", pr.sched_test_utterances, pr.sched_seconds), load)


def _train_config(ctx, model_config, mode: str, steps: int, **kw):
    from ..training import TrainConfig

    pr = ctx.preset
    spec = ctx.model_spec
    if not (spec.startswith("pretrained") or spec.startswith("preset:")):
        spec = str(Path(spec).absolute())
    return TrainConfig(model=model_config, mode=mode, lr=pr.sched_lr, batch_size=pr.sched_batch, frames=pr.sched_frames,
                       steps=steps, seed=ctx.seed, init_from=spec, log_every=max(1, steps // 20),
                       ckpt_every=max(1, steps // 10), keep=2, val_every=-1, progress=sys.stderr.isatty(), **kw)


def _trained(ctx, name: str, config):
    """Train (or resume) ``config`` in ``work/<name>/`` and return its exported EMA model."""
    from ..checkpoints import load_model
    from ..training import export_ema_model, train

    run = ctx.work / name
    summary = train(config, run, ctx.data_spec)
    return load_model(export_ema_model(run, ctx.work / f"{name}-model")), summary


def _enhanced(model, noisy, key, steps: int):
    from ..pipeline import EnhanceConfig, enhance
    from ..sampling import SamplerConfig

    return enhance(model, noisy, key, config=EnhanceConfig(sampler=SamplerConfig(steps=steps)))


def _metrics(model, clean, noise, key, steps: int, m: float = 1.0) -> dict:
    from ..metrics import enhancement_metrics

    noisy = clean + m * noise
    est = _enhanced(model, noisy, key, steps)
    return {k: np.asarray(v, np.float64) for k, v in enhancement_metrics(est, clean, rate=model.config.spec.sample_rate).items()}


def _elbo_row(model, clean, noisy, key, samples: int, prefix: str = "elbo_") -> dict:
    from ..analysis import elbo

    e = elbo(model, clean, noisy, key, samples=samples, chunk=min(samples, 8))
    U = clean.shape[0]
    row = {}
    for name in ("total", "prior", "denoising", "reconstruction", "training_loss", "weighting_gap"):
        v, se = np.asarray(getattr(e, name), np.float64), np.asarray(getattr(e, f"{name}_se"), np.float64)
        row[f"{prefix}{name}"] = float(v.mean())
        row[f"{prefix}{name}_se"] = float(np.sqrt(np.sum(se**2)) / U)  # the mean over utterances
    return row


def _evaluate_schedule(ctx, point):
    from ..analysis import importance_of_condition
    from ..nn import ncsnpp_config

    pr = ctx.preset
    base = ctx.model.config
    score_backbone = ncsnpp_config(pr.sched_score_preset)
    mcfg = dataclasses.replace(base, sde=dataclasses.replace(base.sde, sigma_min=point["sigma_min"], sigma_max=point["sigma_max"]),
                               score_backbone=None if score_backbone == base.backbone else score_backbone, sampler_steps=None,
                               refiner=None, score_symmetry="none")
    cfg = _train_config(ctx, mcfg, "freeze-predictor", pr.sched_train_steps, init_networks=("predictor",))
    model, summary = _trained(ctx, f"run-{point['run']}", cfg)
    clean, noise = _test_crops(ctx)
    noisy = clean + noise
    key = jax.random.fold_in(jax.random.key(ctx.seed), 1_000 + point["run"])
    met = _metrics(model, clean, noise, jax.random.fold_in(key, 0), pr.sched_sampler_steps)
    row = {"sigma_min": point["sigma_min"], "sigma_max": point["sigma_max"], "train_steps": int(summary["step"]),
           "final_loss": float(summary["losses"][-1]) if summary["losses"] else float("nan"),
           **{k: float(v.mean()) for k, v in met.items()}}
    row |= _elbo_row(model, clean, noisy, jax.random.fold_in(key, 1), pr.sched_elbo_samples)
    ts = list(pr.sched_ioc_times)
    kw = dict(t=ts, samples=pr.sched_ioc_samples, probes=pr.sched_ioc_probes)
    jac = importance_of_condition(model, clean, noisy, jax.random.fold_in(key, 2), kind="jacobian", **kw)
    arrays = {"ioc_t": np.asarray(ts), "si_sdr_utt": met["si_sdr"]}
    for name, res in (("ioc_j", jac), ("ioc_swap", importance_of_condition(model, clean, noisy, jax.random.fold_in(key, 3), kind="swap", **kw)
                                        if clean.shape[0] >= 2 else None)):
        if res is None:
            continue
        v, se = np.asarray(res.value, np.float64), np.asarray(res.se, np.float64)  # [U, K]
        curve, curve_se = v.mean(axis=0), np.sqrt(np.sum(se**2, axis=0)) / v.shape[0]
        arrays[name], arrays[f"{name}_se"] = curve, curve_se
        row[f"{name}_mean"] = float(curve.mean())
        row[f"{name}_se"] = float(np.sqrt(np.sum(curve_se**2)) / curve.size)
    return row, arrays


def _evaluate_refine(ctx, point):
    from ..metrics import si_sdr
    from ..nn import ncsnpp_config

    pr = ctx.preset
    one = ctx.model
    mcfg = dataclasses.replace(one.config, refiner=ncsnpp_config(pr.refine_preset))
    cfg = _train_config(ctx, mcfg, "refine", pr.refine_train_steps, reverse_steps=pr.sched_sampler_steps)
    two, summary = _trained(ctx, "refine", cfg)
    clean, noise = _test_crops(ctx)
    key = jax.random.fold_in(jax.random.key(ctx.seed), 2_000)
    row = {"train_steps": int(summary["step"]), "final_loss": float(summary["losses"][-1]) if summary["losses"] else float("nan")}
    arrays = {}
    for tag, model in (("one", one), ("two", two)):
        met = _metrics(model, clean, noise, jax.random.fold_in(key, 0), pr.sched_sampler_steps)
        row |= {f"{tag}_{k}": float(v.mean()) for k, v in met.items()}
        arrays[f"{tag}_si_sdr_utt"] = met["si_sdr"]
        curve = [float(np.mean(np.asarray(si_sdr(np.asarray(_enhanced(model, clean + m * noise, jax.random.fold_in(key, 0), pr.sched_sampler_steps), np.float64),
                                                  np.asarray(clean, np.float64)))))
                 for m in pr.refine_m]
        arrays[f"{tag}_curve"] = np.asarray(curve)
    arrays["m"] = np.asarray(pr.refine_m, np.float64)
    row |= _elbo_row(one, clean, clean + noise, jax.random.fold_in(key, 1), pr.sched_elbo_samples, prefix="one_elbo_")
    row["si_sdr_gain"] = row["two_si_sdr"] - row["one_si_sdr"]
    return row, arrays


def evaluate(ctx, group):
    point = group[0]
    if ctx.work is None:
        raise ValueError("the schedule experiment trains models: run it through run_experiment (it needs a work folder)")
    return [(_evaluate_schedule if point["kind"] == "schedule" else _evaluate_refine)(ctx, point)]


# ------------------------------------------------------------------------------------ summary


def s1_verdict(rows: list[dict]) -> str:
    """The S1 line from the schedule rows (module doc)."""
    rows = [r for r in rows if "ioc_j_mean" in r]
    if len(rows) < 2:
        return f"S1: undecided — {len(rows)} schedule(s) measured; a change needs at least two"
    hi = max(rows, key=lambda r: r["ioc_j_mean"])
    lo = min(rows, key=lambda r: r["ioc_j_mean"])
    spread = hi["ioc_j_mean"] - lo["ioc_j_mean"]
    se = float(np.hypot(hi["ioc_j_se"], lo["ioc_j_se"]))
    name = lambda r: f"(σ_min {g(r['sigma_min'])}, σ_max {g(r['sigma_max'])})"
    measured = (f"mean IoC_J from {g(lo['ioc_j_mean'])} ± {g(lo['ioc_j_se'], 2)} at {name(lo)} to {g(hi['ioc_j_mean'])} ± "
                f"{g(hi['ioc_j_se'], 2)} at {name(hi)}: spread {g(spread)} = {g(spread / se if se > 0 else float('inf'))} SE")
    rule = f"(rule: spread > {S1_SE:g} combined SE → changes IoC, else undecided)"
    decision = "changes IoC" if se == 0 and spread > 0 or se > 0 and spread > S1_SE * se else "undecided (within the estimator's noise)"
    return f"S1: {measured} {rule} → {decision}"


def _bootstrap_mean_ci(d: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    r = np.random.default_rng(seed)
    idx = r.integers(0, d.size, (n_boot, d.size))
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def s2_verdict(row: dict | None, arrays: dict | None, n_boot: int, seed: int) -> str:
    """The S2 line from the refinement row and its per-utterance SI-SDRs (module doc)."""
    if row is None:
        return "S2: undecided — the refinement run is not stored (see the failed points)"
    d = np.asarray(arrays["two_si_sdr_utt"], np.float64) - np.asarray(arrays["one_si_sdr_utt"], np.float64)
    if d.size < 2:
        return f"S2: undecided — {d.size} test utterance(s); a paired interval needs at least two"
    lo, hi = _bootstrap_mean_ci(d, n_boot, seed)
    decision = "improves" if lo > 0 else ("worsens" if hi < 0 else "undecided (the CI contains 0)")
    return (f"S2: SI-SDR gain of the refinement (two − one stage) {g(float(d.mean()))} dB {fmt_ci(lo, hi)} over {d.size} utterances "
            f"(one stage {g(row['one_si_sdr'])} → two {g(row['two_si_sdr'])} dB; PESQ {g(row['one_pesq'])} → {g(row['two_pesq'])}, "
            f"ESTOI {g(row['one_estoi'])} → {g(row['two_estoi'])}) (rule: bootstrap CI > 0 → improves, < 0 → worsens, "
            f"else undecided) → {decision}")


def _plot_ioc(path, rows, arrays):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (r, a), color in zip(zip(rows, arrays), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        label = f"σ_min {g(r['sigma_min'])}, σ_max {g(r['sigma_max'])}"
        for ax, name in zip(axes, ("ioc_j", "ioc_swap")):
            if name in a:
                ax.errorbar(a["ioc_t"], a[name], yerr=a[f"{name}_se"], fmt="o-", capsize=3, color=color, label=label)
    axes[0].set_ylabel("IoC_J(t) = ‖∂_c D‖² / (‖∂_x D‖² + ‖∂_c D‖²)")
    axes[0].set_ylim(0, 1)
    axes[1].set_ylabel("IoC_Δ(t) = E‖D(c) − D(c′)‖² / E‖D(c) − x‖²")
    for ax in axes:
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Importance of Condition over t, per noise schedule (error bars: ±1 SE)")
    save_figure(fig, path)


def _plot_elbo(path, rows):
    plt = pyplot()
    terms = ("prior", "denoising", "reconstruction", "total")
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for smin in sorted({r["sigma_min"] for r in rows}):
        sel = sorted((r for r in rows if r["sigma_min"] == smin), key=lambda r: r["sigma_max"])
        x = [r["sigma_max"] for r in sel]
        for ax, t in zip(axes, terms):
            ax.errorbar(x, [r[f"elbo_{t}"] for r in sel], yerr=[r[f"elbo_{t}_se"] for r in sel], fmt="o-", capsize=3,
                        label=f"σ_min {g(smin)}")
    for ax, t in zip(axes, terms):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("σ_max")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("nats per complex bin")
    axes[-1].legend(fontsize=7)
    fig.suptitle("ELBO terms of −log p(X | Y, C) against σ_max (error bars: ±1 SE)")
    save_figure(fig, path)


def _plot_refine(path, arrays):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(arrays["m"], arrays["one_curve"], "o-", label="one stage (StoRM)")
    ax.plot(arrays["m"], arrays["two_curve"], "s-", label="two stages (StoRM + refiner)")
    ax.axvline(1.0, color="0.6", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("noise amplitude M (training M* = 1, dashed)")
    ax.set_ylabel("mean SI-SDR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("SI-SDR(M) under mismatch: one and two stages")
    save_figure(fig, path)


def summarize(records, settings) -> Summary:
    title = "S — noise schedule, ELBO, Importance of Condition; refinement (S1, S2)"
    sz = settings["sizes"]
    seed = int(settings["run"]["seed"])
    sched = sorted(((dict(rec["point"]) | rec["row"], arr) for rec, arr in records if rec["point"].get("kind") == "schedule"),
                   key=lambda ra: (ra[0]["sigma_min"], ra[0]["sigma_max"]))
    refine = [(rec["row"], arr) for rec, arr in records if rec["point"].get("kind") == "refine"]
    rows, arrays = [r for r, _ in sched], [a for _, a in sched]
    ref_row, ref_arr = refine[0] if refine else (None, None)
    verdicts = [s1_verdict(rows), s2_verdict(ref_row, ref_arr, int(sz["n_boot"]), seed)]
    keep = ("sigma_min", "sigma_max", "train_steps", "final_loss", "si_sdr", "pesq", "estoi", "ioc_j_mean", "ioc_j_se",
            "ioc_swap_mean", "ioc_swap_se", "elbo_total", "elbo_total_se", "elbo_prior", "elbo_denoising", "elbo_denoising_se",
            "elbo_reconstruction", "elbo_reconstruction_se", "elbo_training_loss", "elbo_weighting_gap", "elbo_weighting_gap_se")
    tables = {"schedules": [{k: r[k] for k in keep if k in r} for r in rows]}
    tables["ioc_curves"] = [{"sigma_min": r["sigma_min"], "sigma_max": r["sigma_max"], "t": float(t),
                             "ioc_j": float(a["ioc_j"][i]), "ioc_j_se": float(a["ioc_j_se"][i]),
                             **({"ioc_swap": float(a["ioc_swap"][i]), "ioc_swap_se": float(a["ioc_swap_se"][i])} if "ioc_swap" in a else {})}
                            for r, a in sched for i, t in enumerate(a["ioc_t"])]
    figs = []
    if rows:
        figs.append(Figure("schedule_ioc.png", "IoC_J(t) (wrt Y and C) and the swap effect IoC_Δ(t) per schedule, on forward-marginal "
                           "samples of the test crops (±1 SE).", lambda p: _plot_ioc(p, rows, arrays)))
        figs.append(Figure("schedule_elbo.png", "The ELBO's terms (nats per complex bin) against σ_max, one line per σ_min (±1 SE).",
                           lambda p: _plot_elbo(p, rows)))
    if ref_row is not None:
        tables["refinement"] = [{k: v for k, v in ref_row.items()}]
        tables["refinement_mismatch"] = [{"m": float(m), "one_stage_si_sdr": float(a), "two_stage_si_sdr": float(b)}
                                         for m, a, b in zip(ref_arr["m"], ref_arr["one_curve"], ref_arr["two_curve"])]
        figs.append(Figure("refine_mismatch.png", "Mean SI-SDR against the noise amplitude M for the one-stage model and its "
                           "two-stage refinement (same crops and noise).", lambda p: _plot_refine(p, ref_arr)))
    notes = [f"{len(sz['sched_sigma_min']) * len(sz['sched_sigma_max'])} schedule(s), each a {sz['sched_score_preset']} score network trained {sz['sched_train_steps']} steps "
             f"(batch {sz['sched_batch']} × {sz['sched_frames']} frames, lr {g(sz['sched_lr'])}) on the frozen predictor of the "
             f"checkpoint; {sz['sched_test_utterances']} test crops of {g(sz['sched_seconds'])} s, sampler N = {sz['sched_sampler_steps']}; "
             f"ELBO with {sz['sched_elbo_samples']} draws per term; IoC at t = {list(sz['sched_ioc_times'])} with "
             f"{sz['sched_ioc_samples']} samples × {sz['sched_ioc_probes']} probe(s). Refiner: {sz['refine_preset']}, "
             f"{sz['refine_train_steps']} steps."]
    return Summary(title, tables, verdicts, figs, notes)


EXPERIMENT = register(Experiment(name="schedule", title="S — noise schedule, ELBO, IoC and refinement (S1, S2)", points=points,
                                 evaluate=evaluate, summarize=summarize, settings=sizes, group_by=("run",)))
