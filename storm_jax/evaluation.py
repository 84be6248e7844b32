"""Evaluation of a StoRM model on a dataset: SI-SDR, PESQ, ESTOI of the noisy input, the
predictor output C and the full StoRM output (reverse process from C), mean per system.

As in the reference ``evaluate_model`` (``sgmse/util/inference.py``), each noisy utterance
``y = s + M·n`` is enhanced whole with ``max|y|`` normalisation and the metrics compare the
output to the clean ``s``. To keep the number of compilations small, utterances are zero-padded
at the end to a length bucket of ``(64k − 1)·hop`` samples (``64k`` STFT frames, already a
multiple of the reference ``pad_spec`` multiple 64) and the output is truncated back; zero
padding changes neither ``max|y|`` nor the spectrogram frames away from the end.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .data import BatchConfig, PairDataset, epoch_batches
from .metrics import enhancement_metrics
from .model import StormModel
from .pipeline import EnhanceConfig, enhance
from .sampling import SamplerConfig

__all__ = ["SYSTEMS", "evaluate_dataset", "evaluate_crops", "summarize", "summarize_groups", "format_table", "format_group_table"]

SYSTEMS = ("noisy", "predictor", "storm")


def _systems(model: StormModel) -> tuple[str, ...]:
    out = ["noisy"]
    if model.config.has_predictor:
        out.append("predictor")
    if model.config.has_score:
        out.append("storm")
    return tuple(out)


def _outputs(model: StormModel, y: np.ndarray, key, sampler: SamplerConfig, systems, samples: int = 1) -> dict[str, np.ndarray]:
    res = {"noisy": np.asarray(y)}
    if "predictor" in systems:
        res["predictor"] = enhance(model, y, key, config=EnhanceConfig(predictor_only=True))
    if "storm" in systems:
        res["storm"] = enhance(model, y, key, config=EnhanceConfig(sampler=sampler, samples=samples))
    return res


def summarize(per_utt: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Mean of each metric per system: ``{system: {si_sdr, pesq, estoi}}``."""
    return {s: {k: float(np.mean(v)) for k, v in m.items()} for s, m in per_utt.items()}


def summarize_groups(per_utt: dict[str, dict[str, np.ndarray]], labels) -> dict[str, dict]:
    """Means per group of utterances: ``{label: {"n": count, "systems": summarize(…)}}`` for
    ``labels[i]``, the group of utterance ``i`` (e.g. its noise type), in sorted label order."""
    labels = [str(v) for v in labels]
    n = len(next(iter(next(iter(per_utt.values())).values())))
    if len(labels) != n:
        raise ValueError(f"summarize_groups: {len(labels)} labels for {n} utterances")
    out = {}
    for lab in sorted(set(labels)):
        idx = np.asarray([i for i, v in enumerate(labels) if v == lab])
        out[lab] = {"n": int(idx.size), "systems": summarize({s: {k: v[idx] for k, v in m.items()} for s, m in per_utt.items()})}
    return out


def evaluate_crops(model: StormModel, dataset: PairDataset, batch: BatchConfig, steps: int = 30, key=None) -> dict:
    """Mean metrics over the first batch of ``epoch_batches(dataset, batch)`` (fixed-length crops;
    used for validation during training, one compilation per system)."""
    key = jax.random.key(0) if key is None else key
    b = next(iter(epoch_batches(dataset, batch)))
    systems = _systems(model)
    outs = _outputs(model, b.noisy, key, SamplerConfig(steps=steps), systems)
    per = {s: {k: v for k, v in enhancement_metrics(outs[s], b.clean, rate=model.config.spec.sample_rate).items()} for s in systems}
    return summarize(per)


def _bucket(n: int, hop: int) -> int:
    k = 1
    while (64 * k - 1) * hop < n:
        k += 1
    return (64 * k - 1) * hop


def evaluate_dataset(model: StormModel, dataset: PairDataset, m: float = 1.0, limit: int | None = None, steps: int = 30,
                     seed: int = 0, progress: bool = False, sampler: SamplerConfig | None = None,
                     samples: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Per-utterance metrics ``{system: {si_sdr, pesq, estoi}}`` (arrays of length K) of the first
    ``limit`` utterances of ``dataset`` mixed at amplitude ``m``; utterance ``i`` uses the key
    ``fold_in(key(seed), i)`` for the reverse process. ``sampler`` (default
    ``SamplerConfig(steps=steps)``, the reference ``enhance()`` setting) sets the reverse process,
    e.g. ``SamplerConfig(steps=50, corrector="ald")`` for the reference ``enhancement.py``.
    ``samples`` K > 1 scores the mean of K reverse-process outputs as the StoRM system
    (:class:`~storm_jax.pipeline.EnhanceConfig`)."""
    from tqdm import tqdm

    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError(f"evaluate: nothing to evaluate ({len(dataset)} utterances, limit {limit})")
    systems = _systems(model)
    rate = model.config.spec.sample_rate
    hop = model.config.spec.hop
    sampler = sampler or SamplerConfig(steps=steps)
    per: dict[str, dict[str, list]] = {s: {"si_sdr": [], "pesq": [], "estoi": []} for s in systems}
    for i in tqdm(range(n), desc="evaluate", unit="utt", disable=not progress):
        u = dataset[i]
        y = u.noisy(m).astype(np.float32)
        L = y.size
        yp = np.pad(y, (0, _bucket(L, hop) - L))
        outs = _outputs(model, yp, jax.random.fold_in(jax.random.key(seed), i), sampler, systems, samples)
        for s in systems:
            est = outs[s][:L] if s != "noisy" else y
            met = enhancement_metrics(est, u.clean, rate=rate)
            for k in per[s]:
                per[s][k].append(float(met[k]))
    return {s: {k: np.asarray(v) for k, v in d.items()} for s, d in per.items()}


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the mean metrics per system."""
    lines = ["| system | SI-SDR [dB] | PESQ | ESTOI |", "|---|---:|---:|---:|"]
    for s, m in summary.items():
        lines.append(f"| {s} | {m['si_sdr']:.2f} | {m['pesq']:.3f} | {m['estoi']:.3f} |")
    return "\n".join(lines)


def format_group_table(groups: dict[str, dict], key: str) -> str:
    """A Markdown table of :func:`summarize_groups`' means, one row per group and system."""
    lines = [f"| {key} | n | system | SI-SDR [dB] | PESQ | ESTOI |", "|---|---:|---|---:|---:|---:|"]
    for lab, g in groups.items():
        for s, m in g["systems"].items():
            lines.append(f"| {lab} | {g['n']} | {s} | {m['si_sdr']:.2f} | {m['pesq']:.3f} | {m['estoi']:.3f} |")
    return "\n".join(lines)
