"""The training state: parameters, Adam per network, the parameter EMA, the run's PRNG key.

Optimiser: Adam (lr 1e-4, PyTorch defaults β = (0.9, 0.999), ε = 1e-8), at a constant learning rate
as the reference, or (``lr_warmup``, ``lr_decay``) warmed up linearly from 0 and then cosine-decayed
to 0 — a schedule the reference does not have, meant for fine-tuning from a plateau. EMA: after every
optimiser step ``ema ← ema − (1 − d)·(ema − θ)`` with ``d = min(decay, (1 + n)/(10 + n))``, n the
number of updates so far (``torch_ema.ExponentialMovingAverage``, ``use_num_updates=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ..model import init_storm
from .config import _NETWORKS, TrainConfig, _diff, model_config_for

__all__ = ["TrainState", "ema_init", "ema_update", "learning_rate", "init_train_state"]

Array = jax.Array


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
    """The learning rate of :class:`~storm_jax.training.TrainConfig` ``config`` (or a
    :class:`~storm_jax.training.StepSpec`): ``lr``, or the schedule of step count k (a network's
    own Adam count) ``lr·k/W`` for ``k < W = lr_warmup``, then ``lr·½(1 + cos(π·min(k − W, D)/D))``
    with ``D = lr_decay``."""
    if not (config.lr_warmup or config.lr_decay):
        return config.lr
    if not config.lr_decay:
        return optax.linear_schedule(0.0, config.lr, config.lr_warmup)
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.lr_warmup, config.lr_warmup + config.lr_decay, 0.0)


def _optimizer(config) -> optax.GradientTransformation:
    """Adam with the PyTorch defaults (β₁ 0.9, β₂ 0.999, ε 1e-8) at :func:`learning_rate`."""
    return optax.adam(learning_rate(config), b1=0.9, b2=0.999, eps=1e-8)


def init_train_state(config: TrainConfig, *, load_init: bool = True) -> TrainState:
    """Fresh state: parameters from ``init_storm(model_config_for(config), fold_in(key(seed), 2³¹ − 1))``,
    replaced network by network by those of ``config.init_from`` when it is set (and
    ``load_init``: without it, only the state's structure, e.g. to restore a checkpoint into)."""
    base = jax.random.key(config.seed)
    model = init_storm(model_config_for(config), jax.random.fold_in(base, 2**31 - 1))
    params = model.params
    if config.init_from is not None and load_init:
        loaded = _load_init(config)
        params = {k: (loaded[k] if loaded.get(k) is not None and v is not None else v) for k, v in params.items()}
    opt = _optimizer(config)
    opt_state = {k: (opt.init(v) if v is not None else None) for k, v in params.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema=ema_init(params), key=jax.random.key_data(base))


def _load_init(config: TrainConfig) -> dict:
    """The parameters of ``config.init_from`` to start from, ``{network: params or None}``.

    The front end must agree with the run's, and so must SDE and condition when the score
    network is loaded (the predictor depends on neither, so a loaded predictor can serve a run
    with another SDE or condition); each network that is loaded (``config.init_networks``,
    default: every network the model has) must have the run's architecture. Networks not loaded
    are ``None`` (they start fresh)."""
    from ..checkpoints import config_to_dict, resolve_model

    spec = config.init_from
    if spec.startswith("preset:"):
        raise ValueError(f"init_from={spec!r}: give a model directory or pretrained[:NAME] (a preset has no trained weights)")
    try:
        model = resolve_model(spec)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init_from: {err}") from None
    run_cfg = model_config_for(config)
    # a guided model's guide network is not part of a run; its conditional network is "score"
    names = config.init_networks if config.init_networks is not None else tuple(
        k for k in _NETWORKS if model.params.get(k) is not None and (k != "refiner" or run_cfg.refiner is not None))
    want, got = config_to_dict(run_cfg), config_to_dict(model.config)
    # score_symmetry is how the score network is used, not what its weights are: fine-tuning a
    # plain network into its odd part (or back) is allowed; an ensemble's predictor may be loaded
    per_network = ("has_predictor", "has_score", "backbone", "score_backbone", "score_symmetry", "score_members", "guidance",
                   "sampler_steps", "refiner")
    score_loaded = "score" in names and run_cfg.has_score
    for k in per_network + (() if score_loaded else ("sde", "condition")):
        want.pop(k, None), got.pop(k, None)
    diff = _diff(got, want)
    if diff:
        raise ValueError(f"init_from={spec}: the model's configuration differs from the run's:\n  " + "\n  ".join(diff))
    if "score" in names and model.config.has_score and model.config.score_members != 1:
        raise ValueError(f"init_from={spec}: the model is an ensemble of {model.config.score_members} score networks; "
                         "start from one member (StormModel.score_member) or load only its predictor (init_networks)")
    out: dict = dict.fromkeys(_NETWORKS)
    for name in names:
        if model.params.get(name) is None:
            raise ValueError(f"init_from={spec}: the model has no {name} network (init_networks={list(names)})")
        if name == "refiner" and run_cfg.refiner is None:
            raise ValueError(f"init_from={spec}: init_networks names the refiner, but this run trains no model with one")
        if {"predictor": run_cfg.has_predictor, "score": run_cfg.has_score, "refiner": run_cfg.refiner is not None}[name]:
            net = f"{name}_net"
            d = _diff(dataclasses.asdict(getattr(model.config, net)()), dataclasses.asdict(getattr(run_cfg, net)()), f"{name}.")
            if d:
                raise ValueError(f"init_from={spec}: the model's {name} network differs from the run's:\n  " + "\n  ".join(d))
            out[name] = model.params[name]
    objective = config.objective
    needed = objective.starts_from or objective.trains
    if not any(out.get(k) is not None for k in needed):
        raise ValueError(f"init_from={spec}: the model has none of the networks this mode uses ({', '.join(needed)})")
    return out
