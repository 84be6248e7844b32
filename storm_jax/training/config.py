"""The configuration of a training run (:class:`TrainConfig`) and the model it trains."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from ..data import BatchConfig
from ..model import StormConfig, storm_config
from .objectives import DEFAULT_REVERSE_STEPS, OBJECTIVES, get_objective, public_modes

__all__ = ["MODES", "TrainConfig", "model_config_for", "TrainingDiverged", "CheckpointMismatch"]

MODES = public_modes()
"""The built-in training modes: the reference's regen-joint-training, regen-freeze-denoiser, denoiser-only and
score-only (SGMSE+), and ``correct-reverse`` (the predictor's loss on the N-step sampler output)."""


def _aliases() -> dict[str, str]:
    out = {o.reference: o.name for o in OBJECTIVES.values() if o.reference and o.reference != o.name}
    out["frozen-predictor"] = "freeze-predictor"
    return out


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class CheckpointMismatch(ValueError):
    """A checkpoint directory belongs to a run with a different configuration or data."""


_NETWORKS = ("predictor", "score", "refiner")  # the networks a run may take from a model (not a guide)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (hashable, static).

    Attributes:
        model: the StoRM configuration (backbone, SDE, front end, condition); adjusted to the
            mode by :func:`model_config_for` (predictor-only: no score network; score-only: no
            predictor, ``condition="noisy"``).
        mode: one of :data:`MODES` (reference names are accepted too); the objective of
            :mod:`storm_jax.training.objectives` registered under that name.
        lr: Adam learning rate (reference 1e-4); the peak rate when a schedule is set.
        lr_warmup, lr_decay: learning-rate schedule, counted in the steps that train each network
            (a network's own Adam step count, so in ``freeze-predictor`` mode with
            ``predictor_steps`` the score network's schedule starts when it starts training):
            ``lr·k/W`` for the first ``W = lr_warmup`` steps, then ``lr·½(1 + cos(π·j/D))`` over
            the next ``D = lr_decay`` steps (``j`` steps after the warm-up), then 0. Both 0
            (default): constant ``lr``, the reference. ``lr_warmup`` alone warms up to a
            constant ``lr``.
        ema_decay: parameter EMA decay (reference 0.999).
        weighting: ``a`` in ``L = a·L_pred + (1 − a)·L_score`` (reference 0.5).
        batch_size, frames: examples per batch and STFT frames per crop (reference 8, 256);
            ``frames`` must be a multiple of ``2^(len(ch_mult) − 1)``.
        m: the fixed training amplitude M* (``y = s + M*·n``; 1 for the embedded corpus).
        seed: seed of the parameters, the PRNG stream and the batch order.
        steps: total optimiser steps of the run (may be raised when resuming).
        predictor_steps: with ``mode="freeze-predictor"``, the first ``predictor_steps`` steps
            train the predictor alone with the ``predictor-only`` loss (reference
            ``denoiser-only``), the rest train the score network with that predictor frozen
            (reference ``regen-freeze-denoiser`` loading the pretrained denoiser) — the
            reference's two-stage recipe in one run. 0: the predictor stays at its
            initialisation.
        log_every: steps between JSON-lines log records.
        ckpt_every: steps between checkpoints (and one at the end).
        keep: checkpoints kept.
        val_every: steps between validations (0: only at the end; −1: never).
        val_utterances: validation utterances (centre crops of ``val_frames`` frames).
        val_frames: frames of each validation crop.
        val_steps: reverse steps N of the validation sampler.
        progress: show a tqdm progress bar.
        init_from: start from the weights of a model directory (``storm-jax export``,
            ``storm-jax import-ckpt``, ``pretrained[:NAME]``) instead of a fresh initialisation —
            fine-tuning (e.g. a lower learning rate after a plateau, or a published checkpoint on
            new data). Networks the model directory lacks start fresh; the EMA starts at the
            loaded weights and the optimiser state is new. The run's fingerprint records a digest
            of the loaded weights, so a changed model directory is not resumed silently.
        init_networks: the networks to take from ``init_from`` (``("predictor",)``,
            ``("score",)`` or both; default: all it has). The others start fresh — e.g. a
            larger score network (``StormConfig.score_backbone``) trained on a frozen,
            already-trained predictor.
        reverse_steps: N of the sampler the ``correct-reverse`` loss runs (and back-propagates
            through); its validation samples with the same N. Unused by the other modes.
        logmag_weight, logmag_floor: ``correct-reverse`` only: weight λ and floor ε of the
            log-magnitude term added to its loss (:func:`~storm_jax.training.storm_loss`; 0: the
            plain CRP loss).

    A field that only some objective uses (its ``options``) is refused with any other mode
    unless it keeps its default.
    """

    model: StormConfig = dataclasses.field(default_factory=lambda: storm_config("tiny"))
    mode: str = "joint"
    lr: float = 1e-4
    ema_decay: float = 0.999
    weighting: float = 0.5
    batch_size: int = 8
    frames: int = 256
    m: float = 1.0
    seed: int = 0
    steps: int = 1000
    predictor_steps: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep: int = 2
    val_every: int = 0
    val_utterances: int = 4
    val_frames: int = 256
    val_steps: int = 30
    progress: bool = True
    init_from: str | None = None
    init_networks: tuple[str, ...] | None = None
    lr_warmup: int = 0
    lr_decay: int = 0
    reverse_steps: int = DEFAULT_REVERSE_STEPS
    logmag_weight: float = 0.0
    logmag_floor: float = 1e-3

    def __post_init__(self):
        mode = _aliases().get(self.mode, self.mode)
        object.__setattr__(self, "mode", mode)
        problems = []
        modes = public_modes()  # the built-in MODES and any objective registered since
        if mode not in modes:
            problems.append(f"unknown mode {self.mode!r}; choose one of {modes}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be finite and > 0, got {self.lr}")
        if not (0 <= self.ema_decay < 1):
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not (0 <= self.weighting <= 1):
            problems.append(f"weighting must be in [0, 1], got {self.weighting}")
        for name in ("batch_size", "frames", "steps", "log_every", "ckpt_every", "keep", "val_utterances", "val_frames", "val_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "steps" else 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        try:  # the trained model's networks (a refine run's refiner too)
            mult = (model_config_for(self) if mode in modes else self.model).frame_multiple
        except ValueError:  # an invalid option the checks below name
            mult = self.model.frame_multiple
        for name in ("frames", "val_frames"):
            v = getattr(self, name)
            if isinstance(v, (int, np.integer)) and v % mult:
                problems.append(f"{name}={v} must be a multiple of {mult} (2^(levels-1) of the deeper network)")
        if not isinstance(self.reverse_steps, (int, np.integer)) or self.reverse_steps < 1:
            problems.append(f"reverse_steps must be a positive integer, got {self.reverse_steps!r}")
        if not (math.isfinite(self.logmag_weight) and self.logmag_weight >= 0):
            problems.append(f"logmag_weight must be finite and >= 0, got {self.logmag_weight}")
        if not (math.isfinite(self.logmag_floor) and self.logmag_floor > 0):
            problems.append(f"logmag_floor must be finite and > 0, got {self.logmag_floor}")
        for name in ("lr_warmup", "lr_decay", "predictor_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")
        if mode in modes:
            problems += _foreign_options(self, mode)
        if self.init_networks is not None:
            nets = tuple(self.init_networks)
            object.__setattr__(self, "init_networks", nets)
            if not nets or any(n not in _NETWORKS for n in nets) or len(set(nets)) != len(nets):
                problems.append(f"init_networks must name 'predictor', 'score' and/or 'refiner' once each, got {list(nets)}")
            if self.init_from is None:
                problems.append("init_networks needs init_from")
        if mode in modes and get_objective(mode).needs_init_from and self.init_from is None:
            problems.append(f"mode={mode!r} works on a trained model: give init_from (a model directory or pretrained[:NAME])")
        if not (math.isfinite(self.m) and self.m >= 0):
            problems.append(f"m must be finite and >= 0, got {self.m}")
        if self.model.score_members != 1:
            problems.append(f"model.score_members={self.model.score_members}: train each score network on its own "
                            "(different seeds) and join them with score_ensemble / storm-jax ensemble")
        if self.model.guidance is not None:
            problems.append(f"model.guidance={self.model.guidance}: train the conditional and the C-only (condition='predictor') "
                            "score networks on their own and join them with score_guidance / storm-jax guide")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @property
    def objective(self):
        """The :class:`~storm_jax.training.objectives.Objective` of :attr:`mode`."""
        return get_objective(self.mode)

    def batch_config(self) -> BatchConfig:
        """Training batches: random crops, fixed amplitude M*, normalised by max|y| (reference)."""
        return BatchConfig(batch_size=self.batch_size, frames=self.frames, hop=self.model.spec.hop, crop="random",
                           amplitude="fixed", m=self.m, seed=self.seed)

    def to_dict(self) -> dict:
        """JSON-ready dict (the model config in the :mod:`storm_jax.checkpoints` format)."""
        from ..checkpoints import config_to_dict

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["model"] = config_to_dict(self.model)
        return json.loads(json.dumps(d))


def _defaults() -> dict:
    """``{field: default}`` of :class:`TrainConfig`."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _foreign_options(config: TrainConfig, mode: str) -> list[str]:
    """A problem per field that only other objectives use and that is set away from its default."""
    defaults = _defaults()
    users: dict[str, list[str]] = {}
    for o in OBJECTIVES.values():
        if o.public:
            for name in o.options:
                users.setdefault(name, []).append(o.name)
    own = get_objective(mode).options
    return [f"{name}={getattr(config, name)} is used only by " + " or ".join(f"mode={m!r}" for m in modes)
            for name, modes in users.items() if name not in own and getattr(config, name) != defaults[name]]


def model_config_for(config: TrainConfig) -> StormConfig:
    """The model configuration a mode trains (its objective's ``model_config``: reference
    ``train.py``'s ``denoiser-only`` builds a ``DiscriminativeModel``, ``score-only`` a
    ``ScoreModel`` conditioned on Y; ``correct-reverse`` records its ``reverse_steps`` as
    ``sampler_steps``, the other modes train a score)."""
    return config.objective.model_config(config.model, config)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``"key: checkpoint A vs requested B"`` for each leaf where two nested config dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs requested {vb!r}")
    return out
