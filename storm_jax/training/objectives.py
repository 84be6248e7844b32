"""Training objectives: one pure loss per mode, registered under the mode's name.

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
    With ``predictor_steps = K`` its first K steps are the ``predictor-stage`` objective (the
    ``predictor-only`` loss training the predictor alone): the reference's two-stage recipe.
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
``refine`` [not in the reference: the second seed's two-stage refinement]
    a refinement network R (``StormConfig.refiner``, NCSN++ in discriminative mode) trained on the
    frozen StoRM model's outputs toward the clean target: with fresh draws per step,
    ``x̂ = sampler_N(s_θ; Y, C, z)`` (the reference sampler, ``N = reverse_steps``, no gradient)
    and ``L = mean_b ½·Σ|x̂ + R(x̂) − X|²``; ``loss_score`` is the first stage's
    ``mean_b ½·Σ|x̂ − X|²`` on the same batch, so ``loss < loss_score`` means the refiner improves
    on one stage. Predictor and score network stay as loaded (``init_from`` is required); the
    exported model samples with this N and refines (:func:`~storm_jax.model.refine`).

An :class:`Objective` holds everything mode-specific: its loss, the networks it trains, the model
configuration it trains, the :class:`~storm_jax.training.TrainConfig` options only it uses, the
sampler its validation runs and the objective of each step (stages). The configuration, the step
and the loop ask the registry (:func:`get_objective`) and know no mode by name; a new objective is
one :func:`register_objective` call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..audio import compress, stft
from ..model import StormConfig, StormModel, predictor, refine, score
from ..nn import ncsnpp_config
from ..sampling import SamplerConfig, complex_normal, make_draws, sample_with_score

__all__ = [
    "Objective",
    "LossSettings",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "public_modes",
    "spectrograms",
    "storm_loss",
    "DEFAULT_REVERSE_STEPS",
]

Array = jax.Array

# N of the correct-reverse sampler unless a run sets it (the CRP publication's headline N).
DEFAULT_REVERSE_STEPS = 5


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The static settings a loss reads (hashable: part of the compiled step's static key).

    Attributes:
        weighting: ``a`` in ``L = a·L_pred + (1 − a)·L_score`` (reference 0.5).
        reverse_steps: N of the ``correct-reverse`` sampler.
        logmag_weight, logmag_floor: λ and ε of ``correct-reverse``'s log-magnitude term.
    """

    weighting: float = 0.5
    reverse_steps: int = DEFAULT_REVERSE_STEPS
    logmag_weight: float = 0.0
    logmag_floor: float = 1e-3

    @classmethod
    def of(cls, config) -> "LossSettings":
        """The settings of a :class:`~storm_jax.training.TrainConfig` (its fields of the same names)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


LossFn = Callable[[StormModel, Array, Array, Array, LossSettings], "tuple[Array, dict]"]


def _same_model(m: StormConfig, config) -> StormConfig:
    return dataclasses.replace(m, has_predictor=True, has_score=True, sampler_steps=None)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective.

    Attributes:
        name: the mode name (``storm-jax train --mode NAME``).
        loss: ``loss(model, X, Y, key, settings) -> (L, {"loss", "loss_score", "loss_predictor", …})``,
            a pure function of the model (parameters), the compressed spectrograms ``[B, F, T]``
            and a PRNG key; absent parts are 0.
        trains: the networks whose parameters (and Adam state) the step updates.
        model_config: ``model_config(model, train_config)``: the configuration of the model the
            objective trains (which networks exist, the condition, ``sampler_steps``).
        starts_from: networks of which ``init_from`` must provide at least one (default ``trains``).
        options: the :class:`~storm_jax.training.TrainConfig` fields only this objective uses;
            any other mode refuses them away from their defaults.
        reference: the reference's name of the mode (accepted as an alias), or ``None``.
        public: a mode users choose (``False``: a stage that only :attr:`stage` selects).
        stage: ``stage(train_config, step)``: the name of the objective of optimiser step
            ``step`` (0-based), or ``None`` for this one (default: always this one).
        validation_steps: ``validation_steps(train_config)``: reverse steps of the validation
            sampler (default ``val_steps``).
        needs_init_from: the objective works on a trained model (``init_from`` is required).
    """

    name: str
    loss: LossFn
    trains: tuple[str, ...]
    model_config: Callable[[StormConfig, Any], StormConfig] = _same_model
    starts_from: tuple[str, ...] | None = None
    options: tuple[str, ...] = ()
    reference: str | None = None
    public: bool = True
    stage: Callable[[Any, int], str | None] = lambda config, step: None
    validation_steps: Callable[[Any], int] = lambda config: config.val_steps
    needs_init_from: bool = False


OBJECTIVES: dict[str, Objective] = {}
"""The registry: mode name → :class:`Objective` (public modes and stages)."""


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to :data:`OBJECTIVES` under its name (a name is registered once)."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def public_modes() -> tuple[str, ...]:
    """The modes users choose, in registration order."""
    return tuple(name for name, o in OBJECTIVES.items() if o.public)


def get_objective(mode: str) -> Objective:
    """The registered objective ``mode``; a ``ValueError`` naming the choices otherwise."""
    try:
        return OBJECTIVES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; choose one of {public_modes()}") from None


# ------------------------------------------------------------------------------------ losses


def spectrograms(model_config: StormConfig, clean, noisy):
    """``(X, Y)``: compressed spectrograms ``β·|STFT|^α·e^{i∠}`` of the (already ν-normalised)
    clean and noisy crops ``[B, L]`` → ``[B, F, 1 + L // hop]`` (reference ``Specs.__getitem__``)."""
    sc = model_config.spec
    X = compress(stft(clean, sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor)
    Y = compress(stft(noisy, sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor)
    return X, Y


def _mean_sq(err):
    """``mean_b ½·Σ_{f,τ}|err_b|²``."""
    return jnp.mean(0.5 * jnp.sum(jnp.abs(err) ** 2, axis=(-2, -1)))


def _zero(X):
    return jnp.zeros((), jnp.real(X).dtype)


def _predictor_loss(model, X, Y, key, s: LossSettings):
    C = predictor(model, Y)
    loss = _mean_sq(C - X)
    return loss, {"loss": loss, "loss_score": _zero(X), "loss_predictor": loss}


def _perturbed(model, X, attractor, key):
    """``(t, z, σ(t), x_t)``: ``t ~ U(t_eps, T)``, ``z`` complex normal, ``x_t = μ(X, attractor, t) + σ(t)·z``."""
    sde = model.config.sde
    kt, kz = jax.random.split(key)
    t = jax.random.uniform(kt, (X.shape[0],), jnp.real(X).dtype) * (sde.T - sde.t_eps) + sde.t_eps
    z = complex_normal(kz, X.shape, X.dtype)
    sigma = sde.std(t)[:, None, None]
    return t, z, sigma, sde.mean(X, attractor, t) + sigma * z


def _regeneration_loss(frozen: bool) -> LossFn:
    """``L = a·L_pred + (1 − a)·L_score``, both summed over the batch (``joint``; with ``frozen``
    the predictor output is a constant: ``freeze-predictor``)."""

    def loss_fn(model, X, Y, key, s: LossSettings):
        C = predictor(model, Y)
        if frozen:
            C = jax.lax.stop_gradient(C)
        t, z, sigma, x_t = _perturbed(model, X, C, key)
        err = score(model, x_t, t, Y, C) * sigma + z
        loss_score = 0.5 * jnp.sum(jnp.abs(err) ** 2)
        loss_pred = 0.5 * jnp.sum(jnp.abs(C - X) ** 2)
        loss = s.weighting * loss_pred + (1.0 - s.weighting) * loss_score
        return loss, {"loss": loss, "loss_score": loss_score, "loss_predictor": loss_pred}

    return loss_fn


def _score_only_loss(model, X, Y, key, s: LossSettings):
    t, z, sigma, x_t = _perturbed(model, X, Y, key)
    loss = _mean_sq(score(model, x_t, t, Y, None) * sigma + z)
    return loss, {"loss": loss, "loss_score": loss, "loss_predictor": _zero(X)}


def _correct_reverse_loss(model, X, Y, key, s: LossSettings):
    C = jax.lax.stop_gradient(predictor(model, Y))
    cfg = SamplerConfig(steps=s.reverse_steps)  # the reference sampler (module docstring)
    draws = make_draws(key, X.shape, cfg, X.dtype)
    x_hat = sample_with_score(model.config.sde, lambda x, t: score(model, x, t, Y, C), C, draws, cfg, unroll=True)
    loss_out = _mean_sq(x_hat - X)
    parts = {"loss_score": loss_out, "loss_predictor": _mean_sq(C - X)}
    loss = loss_out
    if s.logmag_weight:
        rdt = jnp.real(X).dtype
        floor = jnp.asarray(s.logmag_floor, rdt)
        parts["loss_logmag"] = _mean_sq(jnp.log(jnp.abs(x_hat) ** 2 + floor) - jnp.log(jnp.abs(X) ** 2 + floor))
        loss = loss + jnp.asarray(s.logmag_weight, rdt) * parts["loss_logmag"]
    return loss, {"loss": loss, **parts}


def _refine_loss(model, X, Y, key, s: LossSettings):
    C = jax.lax.stop_gradient(predictor(model, Y))
    cfg = SamplerConfig(steps=s.reverse_steps)  # the reference sampler (module docstring)
    draws = make_draws(key, X.shape, cfg, X.dtype)
    x_hat = jax.lax.stop_gradient(sample_with_score(model.config.sde, lambda x, t: score(model, x, t, Y, C), C, draws, cfg))
    loss = _mean_sq(refine(model, x_hat) - X)
    return loss, {"loss": loss, "loss_score": _mean_sq(x_hat - X), "loss_predictor": _mean_sq(C - X)}


# The refiner a `refine` run trains when its model config names none ("the tiny preset, or smaller").
DEFAULT_REFINER = "tiny"


def _refine_model(m: StormConfig, config) -> StormConfig:
    return dataclasses.replace(m, has_predictor=True, has_score=True, sampler_steps=config.reverse_steps,
                               refiner=m.refiner if m.refiner is not None else ncsnpp_config(DEFAULT_REFINER))


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
    settings = LossSettings(weighting, reverse_steps, logmag_weight, logmag_floor)
    return get_objective(mode).loss(StormModel(config=model_config, params=params), X, Y, key, settings)


# ------------------------------------------------------------------------------ the registry

register_objective(Objective("joint", _regeneration_loss(frozen=False), trains=("predictor", "score"),
                             reference="regen-joint-training"))
register_objective(Objective(
    "freeze-predictor", _regeneration_loss(frozen=True), trains=("score",), starts_from=("predictor", "score"),
    options=("predictor_steps",), reference="regen-freeze-denoiser",
    stage=lambda config, step: "predictor-stage" if step < config.predictor_steps else None))
register_objective(Objective(
    "predictor-only", _predictor_loss, trains=("predictor",), reference="denoiser-only",
    model_config=lambda m, config: dataclasses.replace(m, has_predictor=True, has_score=False)))
register_objective(Objective(
    "score-only", _score_only_loss, trains=("score",), reference="score-only",
    model_config=lambda m, config: dataclasses.replace(m, has_predictor=False, has_score=True, condition="noisy")))
register_objective(Objective(
    "correct-reverse", _correct_reverse_loss, trains=("score",),
    options=("reverse_steps", "logmag_weight", "logmag_floor"),
    # the exported model records the sampler it was tuned through; validation samples with it
    model_config=lambda m, config: dataclasses.replace(m, has_predictor=True, has_score=True, sampler_steps=config.reverse_steps),
    validation_steps=lambda config: config.reverse_steps))
register_objective(Objective(
    "refine", _refine_loss, trains=("refiner",), starts_from=("score",), options=("reverse_steps",),
    model_config=_refine_model, validation_steps=lambda config: config.reverse_steps, needs_init_from=True))
# freeze-predictor's first `predictor_steps` steps: the predictor-only loss on the two-network model
register_objective(Objective("predictor-stage", _predictor_loss, trains=("predictor",), public=False))
