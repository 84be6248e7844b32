"""Training StoRM: the reference losses, Adam + parameter EMA, resumable orbax checkpoints.

The package's modules, from the inside out:

* :mod:`~storm_jax.training.objectives` — one pure loss per mode, registered under its name
  (the reference's four modes and ``correct-reverse``; :func:`storm_loss` evaluates any of them);
* :mod:`~storm_jax.training.config` — :class:`TrainConfig`, everything that defines a run;
* :mod:`~storm_jax.training.state` — :class:`TrainState`, Adam per network and the EMA;
* :mod:`~storm_jax.training.step` — :func:`train_step`, one jit-compiled optimiser step;
* :mod:`~storm_jax.training.checkpoints` — run folders: checkpoints, fingerprint, export;
* :mod:`~storm_jax.training.validation` — metrics of the EMA model during a run;
* :mod:`~storm_jax.training.loop` — :func:`train`, resumable, interruptible.
"""

from .checkpoints import CheckpointDamaged, CheckpointFallback, checkpoint_problem, export_ema_model, load_training_checkpoint, saved_steps
from .config import MODES, CheckpointMismatch, TrainConfig, TrainingDiverged, model_config_for
from .loop import Terminated, train
from .objectives import DEFAULT_REVERSE_STEPS, OBJECTIVES, LossSettings, Objective, get_objective, register_objective, spectrograms, storm_loss
from .state import TrainState, ema_init, ema_update, init_train_state, learning_rate
from .step import StepSpec, train_step

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
    "Objective",
    "LossSettings",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "DEFAULT_REVERSE_STEPS",
    "ema_init",
    "ema_update",
    "learning_rate",
    "init_train_state",
    "train_step",
    "StepSpec",
    "train",
    "load_training_checkpoint",
    "export_ema_model",
    "saved_steps",
]
