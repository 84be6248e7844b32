"""Training StoRM: the reference losses, Adam + parameter EMA, resumable orbax checkpoints.

Reference: ``sgmse/model.py`` (``StochasticRegenerationModel._step``/``_loss``,
``ScoreModel._step``, ``DiscriminativeModel._loss``) and ``train.py`` (``--mode``);
``storm-reference.md`` § StoRM model. For a batch of compressed spectrograms ``X`` (clean) and
``Y`` (noisy), ``[B, F, T]``:

* ``C = Π(Y)`` (predictor output; ``stop_gradient`` in ``freeze-predictor`` mode),
* ``t ~ U(t_eps, T)`` per example, ``z`` complex standard normal (each part N(0, ½)),
* ``x_t = μ(X, C, t) + σ(t)·z`` with ``μ = e^{−θt}·X + (1 − e^{−θt})·C`` (the OUVE mean drawn
  toward the predictor output — the reference passes ``sde_input = y_denoised``),
* ``s = s_θ(x_t, t, Y, C)``, ``err = σ(t)·s + z``,
* ``L_score = ½·Σ|err|²`` and ``L_pred = ½·Σ|C − X|²``, both **summed over the batch** (the
  reference's ``_reduce_op = 0.5·torch.sum``),
* ``L = a·L_pred + (1 − a)·L_score`` with ``a = 0.5`` (``weighting_denoiser_to_score``).

Modes (reference names in brackets):

``joint`` [regen-joint-training]
    both networks trained; the score loss back-propagates into Π through C.
``freeze-predictor`` [regen-freeze-denoiser]
    C is constant (``no_grad`` in the reference); only s_θ changes; L still contains L_pred.
``predictor-only`` [denoiser-only]
    ``DiscriminativeModel``: ``L = mean_b ½·Σ_{f,τ}|C_b − X_b|²`` (mean over the batch).
``score-only`` [score-only]
    ``ScoreModel`` (SGMSE+): the attractor is Y itself, ``μ = e^{−θt}·X + (1 − e^{−θt})·Y``,
    the score sees ``[x_t, Y]`` (``condition="noisy"``), ``L = mean_b ½·Σ|σ·s + z|²``.
``correct-reverse`` [not in the reference: CRP, Lay et al. 2023, "Single and few-step diffusion
for generative speech enhancement", arXiv 2309.09677]
    the second training stage of CRP applied to StoRM: the predictor is frozen and the score
    network, usually trained by ``freeze-predictor`` first (``init_from``), is fine-tuned through
    the reverse process itself. With fresh draws per step, ``x̂ = sampler_N(s_θ; Y, C, z)`` — the
    reference sampler (reverse-diffusion predictor, no corrector, ``dt = 1/N``,
    ``N = reverse_steps``) from ``x_T = C + σ(T)·z`` — and ``L = mean_b ½·Σ|x̂ − X|²``, the
    predictor's loss on the sampler's output, back-propagated through all N steps. This corrects
    the errors of the discretisation and of the score where they matter for the output; the
    network then no longer estimates a score, so sample with exactly this sampler (``--steps N``).
    (The publication's code, github.com/sp-uhh/sgmse_crp, runs the earlier steps without
    gradient and back-propagates through the last one only, from a random start time and N; here
    the whole fixed sampler is differentiated, which costs N network backward passes per step.)
    With ``logmag_weight`` λ > 0 (not in CRP) the loss adds
    ``λ·mean_b ½·Σ(log(|x̂|² + ε) − log(|X|² + ε))²``, which sees the attenuation of quieter speech
    bins that the complex error, ruled by the loudest bins, hardly does (:func:`storm_loss`).

Optimiser: Adam (lr 1e-4, PyTorch defaults β = (0.9, 0.999), ε = 1e-8), at a constant learning rate
as the reference, or (``lr_warmup``, ``lr_decay``) warmed up linearly from 0 and then cosine-decayed
to 0 — a schedule the reference does not have, meant for fine-tuning from a plateau. EMA: after every
optimiser step ``ema ← ema − (1 − d)·(ema − θ)`` with ``d = min(decay, (1 + n)/(10 + n))``, n the
number of updates so far (``torch_ema.ExponentialMovingAverage``, ``use_num_updates=True``).

Determinism: the key of step ``k`` is ``fold_in(key(seed), k)`` and the batch of step ``k`` is a
pure function of the :class:`~storm_jax.data.BatchState`; a checkpoint stores params, EMA,
optimiser state, step, the PRNG key and the batch state, so a resumed run reproduces the
uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .audio import compress, stft
from .data import BatchConfig, BatchIterator, BatchState, PairDataset, check_batchable, data_fingerprint
from .files import atomic_write, hold_folder
from .model import StormConfig, StormModel, init_storm, predictor, score, storm_config
from .sampling import SamplerConfig, complex_normal, make_draws, sample_with_score

__all__ = [
    "MODES",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "CheckpointMismatch",
    "CheckpointFallback",
    "CheckpointDamaged",
    "checkpoint_problem",
    "Terminated",
    "model_config_for",
    "spectrograms",
    "storm_loss",
    "ema_init",
    "ema_update",
    "init_train_state",
    "train_step",
    "StepSpec",
    "train",
    "load_training_checkpoint",
    "export_ema_model",
    "saved_steps",
]

MODES = ("joint", "freeze-predictor", "predictor-only", "score-only", "correct-reverse")
"""Training modes: the reference's regen-joint-training, regen-freeze-denoiser, denoiser-only and
score-only (SGMSE+), and ``correct-reverse`` (the predictor's loss on the N-step sampler output)."""
_MODE_ALIASES = {
    "regen-joint-training": "joint",
    "regen-freeze-denoiser": "freeze-predictor",
    "denoiser-only": "predictor-only",
    "frozen-predictor": "freeze-predictor",
}

# Fields of TrainConfig that may change between a run and its resumption.
_RESUMABLE_FIELDS = ("steps", "log_every", "ckpt_every", "val_every", "val_utterances", "val_steps", "keep", "progress")
# N of the correct-reverse sampler unless a run sets it (the CRP publication's headline N).
DEFAULT_REVERSE_STEPS = 5
# Fields recorded in a run's fingerprint only when they differ from their default (runs made before
# they existed keep their fingerprint).
_DEFAULT_OMITTED = {"init_networks": None, "init_from": None, "lr_warmup": 0, "lr_decay": 0, "reverse_steps": DEFAULT_REVERSE_STEPS,
                    "logmag_weight": 0.0, "logmag_floor": 1e-3}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM during :func:`train`; handled like Ctrl-C (the current state
    is saved, then this propagates)."""


def _note_signal(flag: dict):
    """A SIGTERM handler that only records the signal: raising from inside a handler could land
    in the middle of an orbax write or an XLA call and leave it hung; the loop checks the flag
    between steps and then saves like Ctrl-C."""

    def handler(signum, frame):
        flag["signal"] = signum

    return handler


class CheckpointMismatch(ValueError):
    """A checkpoint directory belongs to a run with a different configuration or data."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (hashable, static).

    Attributes:
        model: the StoRM configuration (backbone, SDE, front end, condition); adjusted to the
            mode by :func:`model_config_for` (predictor-only: no score network; score-only: no
            predictor, ``condition="noisy"``).
        mode: one of :data:`MODES` (reference names are accepted too).
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
            log-magnitude term added to its loss (:func:`storm_loss`; 0: the plain CRP loss).
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
        mode = _MODE_ALIASES.get(self.mode, self.mode)
        object.__setattr__(self, "mode", mode)
        problems = []
        if mode not in MODES:
            problems.append(f"unknown mode {self.mode!r}; choose one of {MODES}")
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
        mult = self.model.frame_multiple
        for name in ("frames", "val_frames"):
            v = getattr(self, name)
            if isinstance(v, (int, np.integer)) and v % mult:
                problems.append(f"{name}={v} must be a multiple of {mult} (2^(levels-1) of the deeper network)")
        if self.predictor_steps and mode != "freeze-predictor":
            problems.append(f"predictor_steps={self.predictor_steps} needs mode='freeze-predictor'")
        if not isinstance(self.reverse_steps, (int, np.integer)) or self.reverse_steps < 1:
            problems.append(f"reverse_steps must be a positive integer, got {self.reverse_steps!r}")
        elif self.reverse_steps != DEFAULT_REVERSE_STEPS and mode != "correct-reverse":
            problems.append(f"reverse_steps={self.reverse_steps} is used only by mode='correct-reverse'")
        if not (math.isfinite(self.logmag_weight) and self.logmag_weight >= 0):
            problems.append(f"logmag_weight must be finite and >= 0, got {self.logmag_weight}")
        elif self.logmag_weight and mode != "correct-reverse":
            problems.append(f"logmag_weight={self.logmag_weight} is used only by mode='correct-reverse'")
        if not (math.isfinite(self.logmag_floor) and self.logmag_floor > 0):
            problems.append(f"logmag_floor must be finite and > 0, got {self.logmag_floor}")
        for name in ("lr_warmup", "lr_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.predictor_steps, (int, np.integer)) or self.predictor_steps < 0:
            problems.append(f"predictor_steps must be an integer >= 0, got {self.predictor_steps!r}")
        if self.init_networks is not None:
            nets = tuple(self.init_networks)
            object.__setattr__(self, "init_networks", nets)
            if not nets or any(n not in ("predictor", "score") for n in nets) or len(set(nets)) != len(nets):
                problems.append(f"init_networks must name 'predictor' and/or 'score' once each, got {list(nets)}")
            if self.init_from is None:
                problems.append("init_networks needs init_from")
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

    def batch_config(self) -> BatchConfig:
        """Training batches: random crops, fixed amplitude M*, normalised by max|y| (reference)."""
        return BatchConfig(batch_size=self.batch_size, frames=self.frames, hop=self.model.spec.hop, crop="random",
                           amplitude="fixed", m=self.m, seed=self.seed)

    def to_dict(self) -> dict:
        """JSON-ready dict (the model config in the :mod:`storm_jax.checkpoints` format)."""
        from .checkpoints import config_to_dict

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["model"] = config_to_dict(self.model)
        return json.loads(json.dumps(d))


def model_config_for(config: TrainConfig) -> StormConfig:
    """The model configuration a mode trains (reference ``train.py``: ``denoiser-only`` builds a
    ``DiscriminativeModel``, ``score-only`` a ``ScoreModel`` conditioned on Y; ``correct-reverse``
    records its ``reverse_steps`` as ``sampler_steps``, the other modes train a score)."""
    m = config.model
    if config.mode == "predictor-only":
        return dataclasses.replace(m, has_predictor=True, has_score=False)
    if config.mode == "score-only":
        return dataclasses.replace(m, has_predictor=False, has_score=True, condition="noisy")
    if config.mode == "correct-reverse":  # the exported model records the sampler it was tuned through
        return dataclasses.replace(m, has_predictor=True, has_score=True, sampler_steps=config.reverse_steps)
    return dataclasses.replace(m, has_predictor=True, has_score=True, sampler_steps=None)


# ------------------------------------------------------------------------------------ losses


def spectrograms(model_config: StormConfig, clean, noisy):
    """``(X, Y)``: compressed spectrograms ``β·|STFT|^α·e^{i∠}`` of the (already ν-normalised)
    clean and noisy crops ``[B, L]`` → ``[B, F, 1 + L // hop]`` (reference ``Specs.__getitem__``)."""
    sc = model_config.spec
    X = compress(stft(clean, sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor)
    Y = compress(stft(noisy, sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor)
    return X, Y


def storm_loss(params: dict, model_config: StormConfig, mode: str, weighting: float, X, Y, key,
               reverse_steps: int = DEFAULT_REVERSE_STEPS, logmag_weight: float = 0.0,
               logmag_floor: float = 1e-3) -> tuple[Array, dict]:
    """The training loss of ``mode`` (module docstring) and its parts.

    Args:
        params: ``{"predictor": …, "score": …}``.
        X, Y: compressed clean and noisy spectrograms ``[B, F, T]``.
        key: PRNG key; split into ``(k_t, k_z)`` for ``t ~ U(t_eps, T)`` and ``z`` (in
            ``correct-reverse`` mode: the sampler's draws, :func:`~storm_jax.sampling.make_draws`).
        reverse_steps: N of the ``correct-reverse`` sampler.
        logmag_weight, logmag_floor: ``correct-reverse`` only: λ and ε of the log-magnitude term
            ``L = mean_b ½·Σ|x̂ − X|² + λ·mean_b ½·Σ(log(|x̂|² + ε) − log(|X|² + ε))²`` (squared
            magnitudes of the compressed spectrograms). Not in CRP: the complex error is ruled by
            the loud bins, while PESQ also weighs the attenuation of quieter speech, which this
            term sees; ε = 1e-3 is about the median |X|² of the embedded corpus' crops.

    Returns:
        ``(loss, {"loss", "loss_score", "loss_predictor"})`` (absent parts are 0). In
        ``correct-reverse`` mode ``loss_score`` is the sampler output's ``mean_b ½·Σ|x̂ − X|²``
        (the loss itself unless λ > 0, when ``loss_logmag`` holds the unweighted log-magnitude
        term) and ``loss_predictor`` the frozen predictor's ``mean_b ½·Σ|C − X|²`` on the same
        batch, so ``loss_score < loss_predictor`` means the reverse process ends closer to X than C.
    """
    model = StormModel(config=model_config, params=params)
    sde = model_config.sde
    B = X.shape[0]
    rdt = jnp.real(X).dtype
    zero = jnp.zeros((), rdt)

    def per_example(err):
        return jnp.mean(0.5 * jnp.sum(jnp.abs(err) ** 2, axis=(-2, -1)))

    if mode == "predictor-only":
        C = predictor(model, Y)
        loss = per_example(C - X)
        return loss, {"loss": loss, "loss_score": zero, "loss_predictor": loss}
    if mode == "correct-reverse":
        C = jax.lax.stop_gradient(predictor(model, Y))
        cfg = SamplerConfig(steps=reverse_steps)  # the reference sampler (module docstring)
        draws = make_draws(key, X.shape, cfg, X.dtype)
        x_hat = sample_with_score(sde, lambda x, t: score(model, x, t, Y, C), C, draws, cfg, unroll=True)
        loss_out = per_example(x_hat - X)
        parts = {"loss_score": loss_out, "loss_predictor": per_example(C - X)}
        loss = loss_out
        if logmag_weight:
            floor = jnp.asarray(logmag_floor, rdt)
            parts["loss_logmag"] = per_example(jnp.log(jnp.abs(x_hat) ** 2 + floor) - jnp.log(jnp.abs(X) ** 2 + floor))
            loss = loss + jnp.asarray(logmag_weight, rdt) * parts["loss_logmag"]
        return loss, {"loss": loss, **parts}
    kt, kz = jax.random.split(key)
    t = jax.random.uniform(kt, (B,), rdt) * (sde.T - sde.t_eps) + sde.t_eps
    z = complex_normal(kz, X.shape, X.dtype)
    if mode == "score-only":
        C = None
        attractor = Y
    else:
        C = predictor(model, Y)
        if mode == "freeze-predictor":
            C = jax.lax.stop_gradient(C)
        attractor = C
    sigma = sde.std(t)[:, None, None]
    x_t = sde.mean(X, attractor, t) + sigma * z
    s = score(model, x_t, t, Y, C)
    err = s * sigma + z
    if mode == "score-only":
        loss = jnp.mean(0.5 * jnp.sum(jnp.abs(err) ** 2, axis=(-2, -1)))
        return loss, {"loss": loss, "loss_score": loss, "loss_predictor": zero}
    loss_score = 0.5 * jnp.sum(jnp.abs(err) ** 2)
    loss_pred = 0.5 * jnp.sum(jnp.abs(C - X) ** 2)
    loss = weighting * loss_pred + (1.0 - weighting) * loss_score
    return loss, {"loss": loss, "loss_score": loss_score, "loss_predictor": loss_pred}


Array = jax.Array

# --------------------------------------------------------------------------------------- EMA


def ema_init(params) -> dict:
    """EMA state ``{"params": copy of params, "count": 0}``."""
    return {"params": jax.tree_util.tree_map(jnp.array, params), "count": jnp.zeros((), jnp.int32)}


def ema_update(ema: dict, params, decay: float) -> dict:
    """``n ← n + 1``, ``d = min(decay, (1 + n)/(10 + n))``, ``ema ← ema − (1 − d)·(ema − params)``
    (``torch_ema.ExponentialMovingAverage.update`` with ``use_num_updates=True``)."""
    n = ema["count"] + 1
    nf = n.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + nf) / (10.0 + nf))

    def upd(e, p):
        return e - (1.0 - d).astype(e.dtype) * (e - p)

    return {"params": jax.tree_util.tree_map(upd, ema["params"], params), "count": n}


# ------------------------------------------------------------------------------ train state


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree).

    Attributes:
        step: optimiser steps done.
        params: ``{"predictor": …, "score": …}`` (``None`` for an absent network).
        opt_state: ``{"predictor": Adam state, "score": Adam state}`` — one optimiser per network,
            each advanced only on the steps that train it (as ``torch.optim.Adam``, which keeps a
            step count per parameter and skips parameters without gradient).
        ema: :func:`ema_init` state.
        key: the run's base PRNG key data (``uint32[2]``); step k uses ``fold_in(key, k)``.
    """

    step: Array
    params: dict
    opt_state: Any
    ema: dict
    key: Array


def learning_rate(config) -> float | optax.Schedule:
    """The learning rate of :class:`TrainConfig` ``config`` (or a :class:`StepSpec`): ``lr``, or the
    schedule of step count k (a network's own Adam count) ``lr·k/W`` for ``k < W = lr_warmup``,
    then ``lr·½(1 + cos(π·min(k − W, D)/D))`` with ``D = lr_decay``."""
    if not (config.lr_warmup or config.lr_decay):
        return config.lr
    if not config.lr_decay:
        return optax.linear_schedule(0.0, config.lr, config.lr_warmup)
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.lr_warmup, config.lr_warmup + config.lr_decay, 0.0)


def _optimizer(config) -> optax.GradientTransformation:
    """Adam with the PyTorch defaults (β₁ 0.9, β₂ 0.999, ε 1e-8) at :func:`learning_rate`."""
    return optax.adam(learning_rate(config), b1=0.9, b2=0.999, eps=1e-8)


def init_train_state(config: TrainConfig) -> TrainState:
    """Fresh state: parameters from ``init_storm(model_config_for(config), fold_in(key(seed), 2³¹ − 1))``,
    replaced network by network by those of ``config.init_from`` when it is set."""
    base = jax.random.key(config.seed)
    model = init_storm(model_config_for(config), jax.random.fold_in(base, 2**31 - 1))
    params = model.params
    if config.init_from is not None:
        loaded = _load_init(config)
        params = {k: (loaded[k] if loaded.get(k) is not None and v is not None else v) for k, v in params.items()}
    opt = _optimizer(config)
    opt_state = {k: (opt.init(v) if v is not None else None) for k, v in params.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema=ema_init(params), key=jax.random.key_data(base))


_TRAINED = {"joint": ("predictor", "score"), "freeze-predictor": ("score",), "predictor-only": ("predictor",),
            "score-only": ("score",), "predictor-stage": ("predictor",), "correct-reverse": ("score",)}


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static part of a training step (what the compiled step depends on; changing
    ``steps`` or logging cadence does not recompile)."""

    model: StormConfig
    mode: str
    lr: float
    ema_decay: float
    weighting: float
    lr_warmup: int = 0
    lr_decay: int = 0
    reverse_steps: int = DEFAULT_REVERSE_STEPS
    logmag_weight: float = 0.0
    logmag_floor: float = 1e-3

    @classmethod
    def of(cls, config: TrainConfig, step: int | None = None) -> "StepSpec":
        """The spec of step ``step`` (0-based): in ``freeze-predictor`` mode with
        ``predictor_steps = K``, steps ``< K`` train the predictor alone (``predictor-stage``)."""
        mode = config.mode
        if mode == "freeze-predictor" and step is not None and step < config.predictor_steps:
            mode = "predictor-stage"
        return cls(model_config_for(config), mode, config.lr, config.ema_decay, config.weighting,
                   config.lr_warmup, config.lr_decay, config.reverse_steps, config.logmag_weight, config.logmag_floor)


def _step_impl(config: StepSpec, state: TrainState, clean, noisy) -> tuple[TrainState, dict]:
    """``train_step(StepSpec.of(config), state, clean, noisy) -> (state, losses)``: one
    jit-compiled optimiser step on a batch of ν-normalised waveforms ``[B, L]`` — the gradient of
    :func:`storm_loss` for the mode, Adam on the networks the mode trains, then the EMA update
    ``e ← d·e + (1 − d)·θ``; the step key is ``fold_in(state.key, state.step)``."""
    mcfg = config.model
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    X, Y = spectrograms(mcfg, clean, noisy)
    grad_fn = jax.value_and_grad(storm_loss, has_aux=True)
    loss_mode = "predictor-only" if config.mode == "predictor-stage" else config.mode
    (_, parts), grads = grad_fn(state.params, mcfg, loss_mode, config.weighting, X, Y, key, config.reverse_steps,
                                  config.logmag_weight, config.logmag_floor)
    opt = _optimizer(config)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name in _TRAINED[config.mode]:  # networks not trained in this mode keep params and optimiser state
        updates, opt_state[name] = opt.update(grads[name], state.opt_state[name], state.params[name])
        params[name] = optax.apply_updates(state.params[name], updates)
    ema = ema_update(state.ema, params, config.ema_decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), parts


train_step = jax.jit(_step_impl, static_argnums=(0,))


# ------------------------------------------------------------------------------ checkpoints


def _load_init(config: TrainConfig) -> dict:
    """The parameters of ``config.init_from`` to start from, ``{network: params or None}``.

    The front end must agree with the run's, and so must SDE and condition when the score
    network is loaded (the predictor depends on neither, so a loaded predictor can serve a run
    with another SDE or condition); each network that is loaded (``config.init_networks``,
    default: every network the model has) must have the run's architecture. Networks not loaded
    are ``None`` (they start fresh)."""
    from .checkpoints import config_to_dict, resolve_model

    spec = config.init_from
    if spec.startswith("preset:"):
        raise ValueError(f"init_from={spec!r}: give a model directory or pretrained[:NAME] (a preset has no trained weights)")
    try:
        model = resolve_model(spec)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init_from: {err}") from None
    run_cfg = model_config_for(config)
    # a guided model's guide network is not part of a run; its conditional network is "score"
    names = config.init_networks if config.init_networks is not None else tuple(k for k in ("predictor", "score") if model.params.get(k) is not None)
    want, got = config_to_dict(run_cfg), config_to_dict(model.config)
    # score_symmetry is how the score network is used, not what its weights are: fine-tuning a
    # plain network into its odd part (or back) is allowed; an ensemble's predictor may be loaded
    per_network = ("has_predictor", "has_score", "backbone", "score_backbone", "score_symmetry", "score_members", "guidance",
                   "sampler_steps")
    score_loaded = "score" in names and run_cfg.has_score
    for k in per_network + (() if score_loaded else ("sde", "condition")):
        want.pop(k, None), got.pop(k, None)
    diff = _diff(got, want)
    if diff:
        raise ValueError(f"init_from={spec}: the model's configuration differs from the run's:\n  " + "\n  ".join(diff))
    if "score" in names and model.config.has_score and model.config.score_members != 1:
        raise ValueError(f"init_from={spec}: the model is an ensemble of {model.config.score_members} score networks; "
                         "start from one member (StormModel.score_member) or load only its predictor (init_networks)")
    out: dict = {"predictor": None, "score": None}
    for name in names:
        if model.params.get(name) is None:
            raise ValueError(f"init_from={spec}: the model has no {name} network (init_networks={list(names)})")
        if run_cfg.has_predictor if name == "predictor" else run_cfg.has_score:
            net = "predictor_net" if name == "predictor" else "score_net"
            d = _diff(dataclasses.asdict(getattr(model.config, net)()), dataclasses.asdict(getattr(run_cfg, net)()), f"{name}.")
            if d:
                raise ValueError(f"init_from={spec}: the model's {name} network differs from the run's:\n  " + "\n  ".join(d))
            out[name] = model.params[name]
    trained = _TRAINED[config.mode] if config.mode != "freeze-predictor" else ("predictor", "score")
    if not any(out.get(k) is not None for k in trained):
        raise ValueError(f"init_from={spec}: the model has none of the networks this mode uses ({', '.join(trained)})")
    return out


def _params_digest(params: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _fingerprint_dict(config: TrainConfig, data_fp: str, init_digest: str | None = None) -> dict:
    d = config.to_dict()
    for k in _RESUMABLE_FIELDS:
        d.pop(k, None)
    d["data"] = data_fp
    if d.get("init_from") is not None:
        d["init_params"] = init_digest
    for k, default in _DEFAULT_OMITTED.items():
        if d.get(k) == default:
            d.pop(k, None)  # as runs recorded it before the field existed
    return d


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs requested {vb!r}")
    return out


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"checkpoint directory {out} is not writable ({err.strerror or err})") from None


def _manager(out: Path, keep: int):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(out / "checkpoints", options=opts, item_names=("state", "meta"))


def _strip(tree):
    """Drop ``None`` entries of nested dicts (absent networks): orbax stores no empty nodes."""
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in tree.items() if v is not None}
    return tree


def _state_tree(state: TrainState) -> dict:
    return jax.tree_util.tree_map(np.asarray, _strip({"step": state.step, "params": state.params, "opt_state": state.opt_state,
                                                      "ema": state.ema, "key": state.key}))


def _save(mngr, state: TrainState, batch_state: BatchState, extra: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(state.step)
    meta = {"step": step, "batch_state": batch_state.to_dict(), **extra}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    _write_manifest(Path(mngr.directory) / str(step))


_MANIFEST = "storm_jax_files.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(step_dir: Path) -> None:
    """Record size and SHA-256 of every file of a committed checkpoint, so a shard deleted,
    truncated or altered later (a failing disk, a partial copy) is named before orbax reads it."""
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != _MANIFEST}
    _write_atomic(step_dir / _MANIFEST, json.dumps(files, indent=1, sort_keys=True))


def checkpoint_problem(step_dir: str | os.PathLike) -> str | None:
    """What is wrong with the checkpoint folder ``step_dir`` against its manifest (a missing,
    truncated or altered file, named), or ``None`` when it is intact or has no manifest (a
    checkpoint written before manifests, or one cut off between commit and manifest)."""
    step_dir = Path(step_dir)
    f = step_dir / _MANIFEST
    if not f.is_file():
        return None
    try:
        want = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"its manifest {f} is unreadable ({err})"
    for rel, (size, digest) in sorted(want.items()):
        p = step_dir / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != size:
            return f"{p} holds {p.stat().st_size} of its {size} bytes (truncated)"
        if _sha256(p) != digest:
            return f"{p} differs from what was written (checksum)"
    return None


class CheckpointDamaged(ValueError):
    """A checkpoint's files disagree with its manifest (:func:`checkpoint_problem`)."""

    def __init__(self, step_dir: Path, problem: str):
        super().__init__(f"checkpoint {step_dir} is damaged: {problem}")
        self.problem = problem


def _restore(mngr, step: int, template: TrainState) -> tuple[TrainState, dict]:
    import orbax.checkpoint as ocp

    step_dir = Path(mngr.directory) / str(step)
    problem = checkpoint_problem(step_dir)
    if problem:
        raise CheckpointDamaged(step_dir, problem)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), _state_tree(template))
    got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    tree = jax.tree_util.tree_map(jnp.asarray, got["state"])
    # Restore into the template's exact pytree structure (namedtuples of the optax state).
    leaves = jax.tree_util.tree_leaves(tree)
    full = {"step": template.step, "params": template.params, "opt_state": template.opt_state, "ema": template.ema, "key": template.key}
    t = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(full), leaves)
    state = TrainState(step=t["step"], params=t["params"], opt_state=t["opt_state"], ema=t["ema"], key=t["key"])
    return state, dict(got["meta"])


class CheckpointFallback(UserWarning):
    """The newest checkpoint of a run could not be restored; an older one was used."""


def _resume(out: Path, config: TrainConfig, template: TrainState):
    """``(manager, step, (state, meta))`` of the newest checkpoint of ``out`` that restores, or
    ``(manager, None, None)`` when there is none.

    A checkpoint that cannot be restored (a shard deleted or truncated, a missing metadata file,
    as after a failing disk or a partial copy) is moved to ``out/checkpoints-corrupt/STEP`` — kept
    for inspection, never deleted — with a :class:`CheckpointFallback` warning naming it and the
    problem, and the previous one is tried. Orbax only lists committed checkpoints, so a write cut
    off by ``kill -9`` never gets here: it is not a checkpoint yet.
    """
    mngr = _manager(out, config.keep)
    while True:
        step = mngr.latest_step()
        if step is None:
            return mngr, None, None
        try:
            return mngr, step, _restore(mngr, step, template)
        except Exception as err:  # orbax and tensorstore raise many types for a damaged checkpoint
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            why = err.problem if isinstance(err, CheckpointDamaged) else f"{type(err).__name__}: {why}"
            mngr.close()
            src = out / "checkpoints" / str(step)
            dest = out / "checkpoints-corrupt" / str(step)
            n = 1
            while dest.exists():
                dest, n = out / "checkpoints-corrupt" / f"{step}.{n}", n + 1
            dest.parent.mkdir(exist_ok=True)
            os.replace(src, dest)
            older = [s for s in sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())]
            then = f"resuming from checkpoint {older[-1]}" if older else "no older checkpoint: starting from step 0"
            warnings.warn(CheckpointFallback(f"checkpoint {src} cannot be restored ({why}); moved to {dest}; {then}"),
                          stacklevel=3)
            mngr = _manager(out, config.keep)


def _open_run(out: Path) -> tuple[TrainConfig, Any]:
    """``(config, checkpoint manager)`` of a run directory (the caller closes the manager)."""
    cfg_file = out / "train_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{out}: not a storm-jax training directory (no train_config.json)")
    config = _config_from_dict(json.loads(cfg_file.read_text()))
    return config, _manager(out, config.keep)


def _saved(mngr) -> list[int]:
    return sorted(int(s) for s in mngr.all_steps())


def _template(config: TrainConfig) -> TrainState:
    # The template only gives the structure: never reload ``init_from`` (it may have moved).
    return init_train_state(dataclasses.replace(config, init_from=None, init_networks=None))


def load_training_checkpoint(out: str | os.PathLike, step: int | None = None) -> tuple[TrainConfig, TrainState, dict]:
    """``(config, state, meta)`` of a run directory's latest (or given) checkpoint."""
    out = Path(out).absolute()
    config, mngr = _open_run(out)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{out}: no checkpoint saved yet")
        state, meta = _restore(mngr, step, _template(config))
    finally:
        mngr.close()
    return config, state, meta


def _config_from_dict(d: dict) -> TrainConfig:
    from .checkpoints import config_from_dict

    d = dict(d)
    model = config_from_dict(d.pop("model"), "train_config.json")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(model=model, **{k: v for k, v in d.items() if k in names})


def export_ema_model(out: str | os.PathLike, dest: str | os.PathLike, step: int | None = None,
                     average_from: int | None = None) -> Path:
    """Write the EMA weights of a run's checkpoint as a model directory
    (:func:`storm_jax.checkpoints.save_model`), the weights the reference evaluates with.

    With ``average_from = a`` the weights are instead the uniform average of the EMA weights of
    every *saved* checkpoint ``s_k`` with ``a ≤ s_k ≤ step`` (``step``: latest by default),
    ``θ̄ = (1/K)·Σ_k θ_EMA(s_k)`` — checkpoint averaging (Polyak–Ruppert; SWA, Izmailov et al.
    2018) over a longer window than the EMA's ``1/(1 − decay)`` steps. The sum runs in float64.
    Networks a mode keeps frozen are constant across checkpoints, so their average is exact.
    """
    from .checkpoints import save_model

    if average_from is None:
        config, state, _ = load_training_checkpoint(out, step)
        return save_model(StormModel(config=model_config_for(config), params=state.ema["params"]), dest)
    out = Path(out).absolute()
    config, mngr = _open_run(out)
    try:
        saved = _saved(mngr)
        if not saved:
            raise FileNotFoundError(f"{out}: no checkpoint saved yet")
        last = saved[-1] if step is None else step
        if step is not None and step not in saved:
            raise FileNotFoundError(f"{out}: no checkpoint at step {step} (saved: {saved})")
        window = [s for s in saved if average_from <= s <= last]
        if not window:
            raise ValueError(f"{out}: no saved checkpoint between steps {average_from} and {last} (saved: {saved})")
        template, total = _template(config), None
        for s in window:
            state, _ = _restore(mngr, s, template)
            p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), state.ema["params"])
            total = p if total is None else jax.tree_util.tree_map(np.add, total, p)
    finally:
        mngr.close()
    mean = jax.tree_util.tree_map(lambda a, ref: (a / len(window)).astype(np.asarray(ref).dtype), total, state.ema["params"])
    return save_model(StormModel(config=model_config_for(config), params=mean), dest)


def saved_steps(out: str | os.PathLike) -> list[int]:
    """The steps of a run directory's saved checkpoints, ascending (empty before the first save)."""
    _, mngr = _open_run(Path(out).absolute())
    try:
        return _saved(mngr)
    finally:
        mngr.close()


# ------------------------------------------------------------------------------------ train


def _resolve_data(data, split: str) -> PairDataset:
    from .data import embedded_corpus, folder_dataset

    if isinstance(data, PairDataset):
        return data
    if data is None or data == "embedded":
        return embedded_corpus(split, progress=False)
    return folder_dataset(data, split)


class _Log:
    """Append-only JSON-lines log; on resume, records after the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step is not None and rec.get("step", 0) <= resume_step:
                    keep.append(line)
            _write_atomic(path, "".join(l + "\n" for l in keep))

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    data: str | os.PathLike | PairDataset | None = "embedded",
    valid_data: str | os.PathLike | PairDataset | None = None,
    *,
    stop_after: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train (or resume) a run in directory ``out``; returns a summary dict.

    ``data``: ``"embedded"`` (the embedded corpus' train split), a dataset folder
    (:func:`~storm_jax.data.folder_dataset`) or a :class:`~storm_jax.data.PairDataset`.
    ``valid_data`` likewise (default: the valid split of ``data`` when it is a name/folder).

    Every error that can be detected up front (missing/empty/corrupt dataset, mismatched
    pairs, crop longer than every file, batch larger than the dataset, unwritable ``out``, a
    checkpoint from another configuration or dataset) is raised before the first step.
    Ctrl-C or SIGTERM at any moment saves the last completed step (with the data position that
    belongs to it) and re-raises (:class:`Terminated` for SIGTERM), so nothing is lost.
    A non-finite loss raises :class:`TrainingDiverged` without saving the bad state (the last
    good checkpoint stays). ``stop_after`` ends the call after that many steps of this call (for
    tests of interruption); ``callback(step, losses)`` is called after every step.
    """
    from tqdm import tqdm

    out = Path(out).absolute()  # orbax needs absolute paths
    train_ds = _resolve_data(data, "train")
    if valid_data is None and not isinstance(data, PairDataset):
        valid_data = data
    valid_ds = _resolve_data(valid_data, "valid") if (valid_data is not None and config.val_every >= 0) else None
    bc = config.batch_config()
    check_batchable(train_ds, bc, "training data")
    if valid_ds is not None:
        vbc = _valid_batch_config(config, len(valid_ds))
        check_batchable(valid_ds, dataclasses.replace(vbc, batch_size=1), "validation data")
    state = init_train_state(config)  # loads and checks init_from before anything is written
    _check_writable(out)
    # One process per run folder: a second `train` into the same --out is refused by name and pid
    # (two writers would interleave orbax checkpoints in one folder).
    with hold_folder(out, "training run", "wait for it to finish or use another --out"):
        fp = _fingerprint_dict(config, data_fingerprint(train_ds, bc),
                               _params_digest(state.params) if config.init_from is not None else None)

        fp_file = out / "fingerprint.json"
        mngr = None
        if fp_file.exists():
            old = json.loads(fp_file.read_text())
            diff = _diff(old, fp)
            if diff:
                raise CheckpointMismatch(f"{out} holds checkpoints of a different run; refusing to resume. Differences:\n  "
                                         + "\n  ".join(diff) + "\nUse another --out directory (or delete this one).")
        mngr, latest, restored = _resume(out, config, state)
        batch_state = BatchState()
        if latest is not None:
            state, meta = restored
            batch_state = BatchState.from_dict(meta["batch_state"])
        else:
            _write_atomic(fp_file, json.dumps(fp, indent=2))
        _write_atomic(out / "train_config.json", json.dumps(config.to_dict(), indent=2))
        log = _Log(out / "log.jsonl", latest if latest is not None else 0)

        it = BatchIterator(train_ds, bc, batch_state)
        spec_first, spec_main = StepSpec.of(config, 0), StepSpec.of(config)
        start = int(state.step)
        last_good = latest
        total = config.steps
        end = total if stop_after is None else min(total, start + stop_after)
        history: list[float] = []
        bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not config.progress, dynamic_ncols=True)
        t0, n_timed = time.perf_counter(), 0
        val = None
        synced = it.state  # the data position that belongs to `state` (a step may be cut off mid-way)
        # SIGTERM (a scheduler or `kill`) saves like Ctrl-C; handlers can only be set in the main thread.
        term: dict = {}
        old_term = signal.signal(signal.SIGTERM, _note_signal(term)) if threading.current_thread() is threading.main_thread() else None
        try:
            while int(state.step) < end:
                if term:
                    raise Terminated(f"signal {term['signal']}")
                pos = it.state
                batch = next(it)
                spec = spec_first if int(state.step) < config.predictor_steps else spec_main
                new_state, parts = train_step(spec, state, jnp.asarray(batch.clean), jnp.asarray(batch.noisy))
                parts = {k: float(v) for k, v in parts.items()}
                step = int(new_state.step)
                if not all(math.isfinite(v) for v in parts.values()):
                    log.write({"step": step, "event": "diverged", **{k: repr(v) for k, v in parts.items()}})
                    raise TrainingDiverged(f"non-finite loss at step {step} ({parts}); stopped. "
                                           f"The last good checkpoint is {'step ' + str(last_good) if last_good is not None else 'none (no checkpoint was saved yet)'} in {out / 'checkpoints'}")
                state, synced = new_state, it.state
                history.append(parts["loss"])
                if n_timed == 0:  # the first step of a call includes compilation: time from its end
                    t0 = time.perf_counter()
                n_timed += 1
                rate = (n_timed - 1) / max(time.perf_counter() - t0, 1e-9) if n_timed > 1 else float("nan")
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.4g}", steps_s=f"{rate:.3g}")  # tqdm's own rate includes compilation
                if callback is not None:
                    callback(step, parts)
                if step % config.log_every == 0 or step == end:
                    log.write({"step": step, **parts, "steps_per_s": None if math.isnan(rate) else rate, "epoch": it.state.epoch, "time": time.time()})
                if step % config.ckpt_every == 0 or step == end:
                    _save(mngr, state, it.state, {"data_position_before_step": pos.to_dict()})
                    last_good = step
                if valid_ds is not None and ((config.val_every > 0 and step % config.val_every == 0) or (step == total)):
                    val = _validate(config, state, valid_ds)
                    log.write({"step": step, "valid": val})
                    bar.write(f"step {step}: valid " + ", ".join(f"{s} " + " ".join(f"{k}={v:.3f}" for k, v in m.items()) for s, m in val.items()))
        except KeyboardInterrupt:
            if last_good != int(state.step) and int(state.step) > 0:
                _save(mngr, state, synced, {"interrupted": True})
                last_good = int(state.step)
            bar.close()
            saved = f"checkpoint {last_good} in {out / 'checkpoints'}" if last_good is not None else "no checkpoint yet"
            bar.write(f"interrupted at step {int(state.step)}; {saved}: run the same command to resume", file=sys.stderr)
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            bar.close()
            mngr.close()
        return {"step": int(state.step), "losses": history, "validation": val, "out": str(out), "last_checkpoint": last_good}


def _valid_batch_config(config: TrainConfig, n: int) -> BatchConfig:
    return BatchConfig(batch_size=min(config.val_utterances, n), frames=config.val_frames, hop=config.model.spec.hop,
                       crop="centre", shuffle=False, drop_last=True, amplitude="fixed", m=config.m, seed=0)


def _validate(config: TrainConfig, state: TrainState, valid_ds: PairDataset) -> dict:
    """Metrics of the EMA model on centre crops of the first ``val_utterances`` utterances."""
    from .evaluation import evaluate_crops

    model = StormModel(config=model_config_for(config), params=state.ema["params"])
    vbc = _valid_batch_config(config, len(valid_ds))
    # a network fine-tuned through the reverse process is validated with the sampler it was tuned for
    steps = config.reverse_steps if config.mode == "correct-reverse" else config.val_steps
    # crops shorter than the utterance are fine; longer ones are zero-padded symmetrically
    return evaluate_crops(model, valid_ds, vbc, steps=steps, key=jax.random.key(config.seed))
