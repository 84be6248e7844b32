"""Validation during training: metrics of the EMA model on centre crops of the valid split."""

from __future__ import annotations

import jax

from ..data import BatchConfig, PairDataset
from ..model import StormModel
from .config import TrainConfig, model_config_for
from .state import TrainState

__all__ = ["validation_batches", "validate"]


def validation_batches(config: TrainConfig, n: int) -> BatchConfig:
    """Centre crops of ``val_frames`` frames of the first ``min(val_utterances, n)`` utterances,
    in order, at the training amplitude M*."""
    return BatchConfig(batch_size=min(config.val_utterances, n), frames=config.val_frames, hop=config.model.spec.hop,
                       crop="centre", shuffle=False, drop_last=True, amplitude="fixed", m=config.m, seed=0)


def validate(config: TrainConfig, state: TrainState, valid_ds: PairDataset) -> dict:
    """``{system: {metric: mean}}`` of the EMA model (:func:`~storm_jax.evaluation.evaluate_crops`),
    sampled with the objective's validation sampler (``val_steps`` reverse steps; a network
    fine-tuned through the reverse process uses the N it was tuned for)."""
    from ..evaluation import evaluate_crops

    model = StormModel(config=model_config_for(config), params=state.ema["params"])
    steps = config.objective.validation_steps(config)
    # crops shorter than the utterance are fine; longer ones are zero-padded symmetrically
    return evaluate_crops(model, valid_ds, validation_batches(config, len(valid_ds)), steps=steps, key=jax.random.key(config.seed))
