"""Sizes of the experimental programme (DESIGN.md § Experiments): ``quick`` for a 2-core CPU,
``paper`` for a GPU with a published checkpoint, ``tiny`` for the test suite.

A preset fixes everything that decides *which* points a sweep computes; the model, the data and
the seed are the other settings. All are recorded in each experiment folder's ``settings.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of P0 and E1–E4.

    Attributes:
        name: preset name.
        seconds: length of each utterance crop (the loudest window of that length, in whole
            64-frame blocks: 0.5 s ↦ 8064 samples = 64 frames).
        steps: sampler steps N for P0–E3 (the model's grid and predictor otherwise).
        utterances, paths: P0's utterances × Brownian paths (the bootstrap's two factors).
        grid_points, m_range: P0's log-spaced M grid on ``m_range`` (× M*).
        hs: P0's offsets h for the one-sided slopes at M*(1 ± h).
        jac_utterances, jac_paths: samples of E1–E3.
        rho_hs: E1/E2 offsets for ρ(h).
        svd_steps: trajectory steps (evenly spaced, first and last included) where E1 takes the
            top singular value of J_x; svd_k, svd_matvecs: singular values and Krylov size (E1, E3).
        gain_h, gain_random: E3's one-sided jump Δu = u(M*(1+h)) − u(M*(1−h)) and the number of
            random directions it is compared with.
        ablation_hs: E3's offsets for κ of the plain and the linearized-predictor pipelines.
        e4_steps: E4's nested N (the largest is the discrete reference; all divide it).
        e4_utterances, e4_paths: E4's samples; e4_h: the offset of κ_N; e4_kappa_max_steps: κ_N
            is measured for N up to this; e4_solver: the continuous-time reference (diffrax).
        n_boot: bootstrap replicates of every interval.
        sched_sigma_min, sched_sigma_max: the schedule experiment's grid of (σ_min, σ_max).
        sched_score_preset: NCSN++ preset of the score network trained per schedule;
            sched_train_steps, sched_batch, sched_frames, sched_lr: its training run.
        sched_seconds, sched_test_utterances: the test crops it is measured on;
            sched_sampler_steps: the sampler N of its enhancement (and of the refiner's first stage).
        sched_elbo_samples: Monte Carlo draws per ELBO term; sched_ioc_times, sched_ioc_samples,
            sched_ioc_probes: where and how IoC is estimated.
        refine_preset, refine_train_steps: the refinement network and its run; refine_m: the
            amplitudes of the SI-SDR(M) comparison of one and two stages.
    """

    name: str
    seconds: float
    steps: int
    utterances: int
    paths: int
    grid_points: int
    m_range: tuple[float, float]
    hs: tuple[float, ...]
    jac_utterances: int
    jac_paths: int
    rho_hs: tuple[float, ...]
    svd_steps: int
    svd_k: int
    svd_matvecs: int
    gain_h: float
    gain_random: int
    ablation_hs: tuple[float, ...]
    e4_steps: tuple[int, ...]
    e4_utterances: int
    e4_paths: int
    e4_h: float
    e4_kappa_max_steps: int
    e4_solver: str = "sea"
    n_boot: int = 2000
    sched_sigma_min: tuple[float, ...] = (0.05, 0.1)
    sched_sigma_max: tuple[float, ...] = (0.5, 1.0)
    sched_score_preset: str = "tiny"
    # quick: a tiny score step (batch 4 × 64 frames, freeze-predictor) took 1.26 s and a refine step
    # (the 8-step sampler inside) 3.1 s on the 2-core CPU: 4 × 400 + 200 steps ≈ 44 min of training
    sched_train_steps: int = 400
    sched_batch: int = 4
    sched_frames: int = 64
    sched_lr: float = 5e-4
    sched_seconds: float = 1.0
    sched_test_utterances: int = 8
    sched_sampler_steps: int = 8
    sched_elbo_samples: int = 16
    sched_ioc_times: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0)
    sched_ioc_samples: int = 4
    sched_ioc_probes: int = 1
    refine_preset: str = "tiny"
    refine_train_steps: int = 200
    refine_m: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self):
        finest = max(self.e4_steps)
        bad = [n for n in self.e4_steps if finest % n]
        if bad:
            raise ValueError(f"preset {self.name}: e4_steps {bad} do not divide the finest N = {finest} (nested grids)")
        if len(self.e4_steps) < 3:
            raise ValueError(f"preset {self.name}: E4 needs at least 3 step counts (two to fit, one reference)")
        if min(len(self.hs), len(self.rho_hs), len(self.ablation_hs)) < 2:
            raise ValueError(f"preset {self.name}: every list of offsets h needs at least 2 values")
        bad = [(a, b) for a in self.sched_sigma_min for b in self.sched_sigma_max if not 0 < a < b]
        if bad or not self.sched_sigma_min or not self.sched_sigma_max:
            raise ValueError(f"preset {self.name}: every schedule needs 0 < sigma_min < sigma_max; got {bad or 'an empty grid'}")
        from ..nn import PRESETS as NET_PRESETS

        for name in ("sched_score_preset", "refine_preset"):
            if getattr(self, name) not in NET_PRESETS:
                raise ValueError(f"preset {self.name}: {name}={getattr(self, name)!r} is not an NCSN++ preset ({', '.join(NET_PRESETS)})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", seconds=0.5, steps=3, utterances=1, paths=2, grid_points=3, m_range=(0.5, 2.0),
        hs=(0.1, 0.03, 0.01), jac_utterances=1, jac_paths=1, rho_hs=(0.1, 0.03, 0.01), svd_steps=2, svd_k=1,
        svd_matvecs=3, gain_h=0.03, gain_random=3, ablation_hs=(0.1, 0.03), e4_steps=(2, 4, 8), e4_utterances=1,
        e4_paths=2, e4_h=0.03, e4_kappa_max_steps=4, n_boot=200,
        sched_sigma_min=(0.05,), sched_sigma_max=(0.5, 1.0), sched_score_preset="micro", sched_train_steps=2, sched_batch=2,
        sched_frames=16, sched_seconds=0.25, sched_test_utterances=2, sched_sampler_steps=2, sched_elbo_samples=2,
        sched_ioc_times=(0.5,), sched_ioc_samples=2, refine_preset="micro", refine_train_steps=2, refine_m=(0.5, 1.0),
    ),
    "quick": Preset(
        name="quick", seconds=0.5, steps=8, utterances=2, paths=2, grid_points=7, m_range=(0.25, 4.0),
        hs=(0.1, 0.03, 0.01, 0.003), jac_utterances=2, jac_paths=1, rho_hs=(0.1, 0.03, 0.01),
        svd_steps=2, svd_k=2, svd_matvecs=4, gain_h=0.01, gain_random=4, ablation_hs=(0.1, 0.03),
        e4_steps=(8, 16, 32, 64), e4_utterances=2, e4_paths=1, e4_h=0.03, e4_kappa_max_steps=16,
    ),
    "paper": Preset(
        name="paper", seconds=2.04, steps=30, utterances=50, paths=4, grid_points=41, m_range=(0.25, 4.0),
        hs=(0.3, 0.1, 0.03, 0.01, 0.003, 0.001), jac_utterances=16, jac_paths=2,
        rho_hs=(0.3, 0.1, 0.03, 0.01, 0.003, 0.001), svd_steps=6, svd_k=8, svd_matvecs=24, gain_h=0.003,
        gain_random=32, ablation_hs=(0.1, 0.03, 0.01, 0.003), e4_steps=(8, 15, 30, 60, 120, 240, 480),
        e4_utterances=16, e4_paths=4, e4_h=0.01, e4_kappa_max_steps=240,
        sched_sigma_min=(0.01, 0.05, 0.1), sched_sigma_max=(0.25, 0.5, 1.0, 1.5), sched_train_steps=50_000, sched_batch=8,
        sched_frames=256, sched_lr=1e-4, sched_seconds=4.0, sched_test_utterances=100, sched_sampler_steps=30,
        sched_elbo_samples=64, sched_ioc_times=(0.03, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0), sched_ioc_samples=8, sched_ioc_probes=2,
        refine_train_steps=50_000, refine_m=(0.25, 0.5, 1.0, 2.0, 4.0),
    ),
}
"""The presets. ``quick`` is what ``storm-jax demo`` runs (minutes on a 2-core CPU);
``paper`` is the full programme of DESIGN.md for a GPU."""


def get_preset(name: str) -> Preset:
    """The preset ``name`` (``tiny``, ``quick``, ``paper``), or one read from a JSON file
    ``{"base": "quick", "utterances": 4, ...}`` (a base preset with some sizes changed; the
    file's stem becomes its name). Anything else is a ``ValueError`` naming the problem."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith(".json"):
        return _preset_file(Path(name))
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or a .json file")


def _preset_file(path: Path) -> Preset:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--preset {path}: no such file") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--preset {path}: not a JSON preset ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"--preset {path}: expected a JSON object")
    base = spec.pop("base", "quick")
    if base not in PRESETS:
        raise ValueError(f"--preset {path}: unknown base {base!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        raise ValueError(f"--preset {path}: unknown field(s) {', '.join(unknown)}")
    # JSON has no tuples: lists become the tuples the dataclass holds.
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    spec.setdefault("name", path.stem)
    try:
        return dataclasses.replace(PRESETS[base], **spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--preset {path}: {err}") from None
