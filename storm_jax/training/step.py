"""One jit-compiled optimiser step (:func:`train_step`) and its static part (:class:`StepSpec`)."""

from __future__ import annotations

import dataclasses

import jax
import optax

from ..model import StormConfig, StormModel
from .config import TrainConfig, model_config_for
from .objectives import LossSettings, get_objective, spectrograms
from .state import TrainState, _optimizer, ema_update

__all__ = ["StepSpec", "train_step"]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static part of a training step (what the compiled step depends on; changing
    ``steps`` or logging cadence does not recompile).

    Attributes:
        model: the configuration of the trained model (:func:`~storm_jax.training.model_config_for`).
        mode: the objective of this step (a stage such as ``predictor-stage`` included).
        lr, ema_decay, lr_warmup, lr_decay: optimiser and EMA (:class:`~storm_jax.training.TrainConfig`).
        loss: the loss's own settings.
    """

    model: StormConfig
    mode: str
    lr: float
    ema_decay: float
    lr_warmup: int = 0
    lr_decay: int = 0
    loss: LossSettings = LossSettings()

    @classmethod
    def of(cls, config: TrainConfig, step: int | None = None) -> "StepSpec":
        """The spec of step ``step`` (0-based; ``None``: the run's main objective), e.g. in
        ``freeze-predictor`` mode with ``predictor_steps = K`` steps ``< K`` train the predictor
        alone (``predictor-stage``)."""
        objective = config.objective
        mode = objective.name if step is None else objective.stage(config, step) or objective.name
        return cls(model_config_for(config), mode, config.lr, config.ema_decay, config.lr_warmup, config.lr_decay,
                   LossSettings.of(config))


def _step_impl(spec: StepSpec, state: TrainState, clean, noisy) -> tuple[TrainState, dict]:
    """``train_step(StepSpec.of(config), state, clean, noisy) -> (state, losses)``: one
    jit-compiled optimiser step on a batch of ν-normalised waveforms ``[B, L]`` — the gradient of
    the objective's loss, Adam on the networks it trains, then the EMA update
    ``e ← d·e + (1 − d)·θ``; the step key is ``fold_in(state.key, state.step)``."""
    objective = get_objective(spec.mode)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    X, Y = spectrograms(spec.model, clean, noisy)

    def loss(params):
        return objective.loss(StormModel(config=spec.model, params=params), X, Y, key, spec.loss)

    (_, parts), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    opt = _optimizer(spec)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name in objective.trains:  # networks the objective does not train keep params and optimiser state
        updates, opt_state[name] = opt.update(grads[name], state.opt_state[name], state.params[name])
        params[name] = optax.apply_updates(state.params[name], updates)
    ema = ema_update(state.ema, params, spec.ema_decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), parts


train_step = jax.jit(_step_impl, static_argnums=(0,))
