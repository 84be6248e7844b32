"""The StoRM model: a predictor network Π and a score network s_θ, as pure functions.

Reference: ``sgmse/model.py``, ``StochasticRegenerationModel`` (``storm-reference.md`` § StoRM
model). One backbone configuration is shared by both networks, as in the reference (a single
kwargs dict is passed to both constructors); the predictor is that backbone in discriminative
mode with 2 input channels, the score network has ``2·(1 + #conditions)`` input channels.

* ``C = Π(Y)``: the predictor's output (no sign change, no time input).
* ``s = s_θ(x, t, Y, C) = −net([x, Y, C], t)`` for ``condition="both"``; ``[x, Y]`` for
  ``"noisy"``; ``[x, C]`` for ``"predictor"`` (the reference's ``post_denoiser``; the seed
  paper's setting in which the score sees only C). The packed real channels are
  ``[Re x, Im x, Re Y, Im Y, Re C, Im C]``, each mapped ``2v − 1`` inside the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .audio import SpecConfig
from .nn import NCSNpp, NCSNppConfig, init_params, ncsnpp_config
from .sde import OUVE

__all__ = ["StormConfig", "StormModel", "init_storm", "param_shapes", "predictor", "score", "CONDITIONS", "SCORE_SYMMETRIES", "storm_config"]

CONDITIONS = ("both", "noisy", "predictor")
SCORE_SYMMETRIES = ("none", "sign")


@dataclasses.dataclass(frozen=True)
class StormConfig:
    """Everything that defines a StoRM model apart from its weights (hashable, static).

    Attributes:
        backbone: NCSN++ settings of the predictor, and of the score network unless
            ``score_backbone`` is set (``input_channels`` and ``discriminative`` are overridden
            per network, see :meth:`predictor_net`).
        sde: the OUVE SDE and its noise schedule.
        spec: STFT and compression settings.
        condition: what the score network sees besides x: ``both`` (Y and C, the reference
            default), ``noisy`` (Y only) or ``predictor`` (C only).
        has_predictor, has_score: ``False`` for the reference's score-only / predictor-only models.
        score_backbone: NCSN++ settings of the score network when it differs from the predictor's
            (the reference builds the two from separate ``backbone_denoiser`` /
            ``backbone_score`` names); ``None``: the same as ``backbone``.
        score_symmetry: ``none`` (the reference) or ``sign``: the score is the network's odd
            part in its inputs, ``½[s_θ(x, t, Y, C) − s_θ(−x, t, −Y, −C)]`` (see :func:`score`);
            not in the reference, two network evaluations per score.
    """

    backbone: NCSNppConfig = dataclasses.field(default_factory=lambda: ncsnpp_config("ncsnpp"))
    sde: OUVE = dataclasses.field(default_factory=OUVE)
    spec: SpecConfig = dataclasses.field(default_factory=SpecConfig)
    condition: Literal["both", "noisy", "predictor"] = "both"
    has_predictor: bool = True
    has_score: bool = True
    score_backbone: NCSNppConfig | None = None
    score_symmetry: Literal["none", "sign"] = "none"

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; choose one of {CONDITIONS}")
        if self.score_symmetry not in SCORE_SYMMETRIES:
            raise ValueError(f"unknown score_symmetry {self.score_symmetry!r}; choose one of {SCORE_SYMMETRIES}")
        if not (self.has_predictor or self.has_score):
            raise ValueError("a StoRM model needs a predictor, a score network, or both")
        if self.condition in ("both", "predictor") and self.has_score and not self.has_predictor:
            raise ValueError(f"condition={self.condition!r} needs a predictor network")

    @property
    def score_inputs(self) -> int:
        """Number of complex channels the score network sees (x plus conditions)."""
        return 3 if self.condition == "both" else 2

    @property
    def frame_multiple(self) -> int:
        """Frame counts must be multiples of this: ``2^(levels − 1)`` of the deeper network."""
        nets = [self.backbone] + ([self.score_backbone] if self.score_backbone is not None else [])
        return max(2 ** (len(b.ch_mult) - 1) for b in nets)

    def predictor_net(self) -> NCSNppConfig:
        """Backbone of Π: discriminative, 2 real input channels (Re Y, Im Y)."""
        return dataclasses.replace(self.backbone, discriminative=True, input_channels=2)

    def score_net(self) -> NCSNppConfig:
        """Backbone of s_θ: time-conditional, ``2·score_inputs`` real input channels."""
        base = self.score_backbone if self.score_backbone is not None else self.backbone
        return dataclasses.replace(base, discriminative=False, input_channels=2 * self.score_inputs)


def storm_config(preset: str = "ncsnpp", score_preset: str | None = None, **overrides: Any) -> StormConfig:
    """A :class:`StormConfig` with the NCSN++ preset ``preset`` (``tiny``, ``small``, ``ncsnpp``,
    ``ncsnpplarge``, ``ncsnpp12M``, ``ncsnpp6M``) for both networks, or ``score_preset`` for the
    score network when given and different; other fields from ``overrides``."""
    score_backbone = None
    if score_preset is not None and score_preset != preset:
        score_backbone = ncsnpp_config(score_preset)
    return StormConfig(backbone=ncsnpp_config(preset), score_backbone=score_backbone, **overrides)


@flax.struct.dataclass
class StormModel:
    """A StoRM model: its static config and a parameter pytree
    ``{"predictor": params or None, "score": params or None}``."""

    config: StormConfig = flax.struct.field(pytree_node=False)
    params: dict

    def astype(self, dtype) -> "StormModel":
        """The same model with every floating parameter cast to ``dtype`` (e.g. float64)."""
        cast = lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p
        return self.replace(params=jax.tree_util.tree_map(cast, self.params))

    def with_score_symmetry(self, symmetry: str) -> "StormModel":
        """The same weights with ``config.score_symmetry = symmetry`` (``none`` or ``sign``)."""
        return self.replace(config=dataclasses.replace(self.config, score_symmetry=symmetry))


def init_storm(config: StormConfig | str, key: Array | int, *, dtype=jnp.float32) -> StormModel:
    """Randomly initialised StoRM model. ``config`` may also be a preset name.

    Parameters are drawn on the host (:func:`storm_jax.nn.init_params`: the reference's
    initialisers, no compilation), predictor and score network from independent halves of
    ``key``. The networks are fully convolutional: any ``T`` that is a multiple of
    ``2^(len(ch_mult)−1)`` works afterwards.
    """
    if isinstance(config, str):
        config = storm_config(config)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    kp, ks = jax.random.split(key)
    params: dict = {"predictor": None, "score": None}
    if config.has_predictor:
        params["predictor"] = jax.tree_util.tree_map(jnp.asarray, init_params(config.predictor_net(), kp, param_dtype=np.dtype(dtype)))
    if config.has_score:
        params["score"] = jax.tree_util.tree_map(jnp.asarray, init_params(config.score_net(), ks, param_dtype=np.dtype(dtype)))
    return StormModel(config=config, params=params)


def param_shapes(config: StormConfig | str, *, dtype=jnp.float32) -> dict:
    """The parameter tree of :func:`init_storm` as ``jax.ShapeDtypeStruct`` leaves, via
    ``jax.eval_shape`` of the Flax initialisers: nothing is compiled or allocated, so paper-size
    presets are cheap (used for parameter counts and for restoring checkpoints)."""
    if isinstance(config, str):
        config = storm_config(config)
    F = config.backbone.image_size  # attention placement is checked against the frequency size
    m = config.frame_multiple
    cdt = jnp.result_type(dtype, jnp.complex64)
    out: dict = {"predictor": None, "score": None}
    key = jax.random.key(0)
    if config.has_predictor:
        x = jax.ShapeDtypeStruct((1, F, m, 1), cdt)
        out["predictor"] = jax.eval_shape(NCSNpp(config.predictor_net()).init, key, x, None)["params"]
    if config.has_score:
        x = jax.ShapeDtypeStruct((1, F, m, config.score_inputs), cdt)
        t = jax.ShapeDtypeStruct((1,), dtype)
        out["score"] = jax.eval_shape(NCSNpp(config.score_net()).init, key, x, t)["params"]
    cast = lambda a: jax.ShapeDtypeStruct(a.shape, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(cast, out)


def _flatten(a, core: int):
    lead = a.shape[: a.ndim - core]
    return a.reshape((-1,) + a.shape[a.ndim - core :]), lead


def predictor(model: StormModel, Y: Complex[Array, "*batch F T"]) -> Complex[Array, "*batch F T"]:
    """Predictor output ``C = Π(Y)`` for compressed noisy spectrograms ``Y`` ``[..., F, T]``
    (``T`` a multiple of ``2^(len(ch_mult)−1)``, F = 256 for the reference front end)."""
    if model.params.get("predictor") is None:
        raise ValueError("this model has no predictor network (score-only model)")
    Y = jnp.asarray(Y)
    flat, lead = _flatten(Y, 2)
    out = NCSNpp(model.config.predictor_net()).apply({"params": model.params["predictor"]}, flat[..., None], None)
    return out.reshape(lead + out.shape[1:])


def score_inputs(model: StormModel, x, Y, C) -> list:
    """The complex channels the score network sees, in the reference order."""
    cond = model.config.condition
    if cond == "both":
        return [x, Y, C]
    if cond == "noisy":
        return [x, Y]
    return [x, C]


def score(
    model: StormModel,
    x: Complex[Array, "*batch F T"],
    t: Float[Array, "*batch"] | float,
    Y: Complex[Array, "*batch F T"] | None,
    C: Complex[Array, "*batch F T"] | None,
) -> Complex[Array, "*batch F T"]:
    """Score ``s_θ(x, t, Y, C) = −net(cat[x, conditions], t)`` (no division by σ; reference
    ``forward_score``). ``t`` is a scalar or has the batch shape of ``x``. Inputs that the
    condition mode does not use may be ``None``.

    With ``config.score_symmetry == "sign"`` it returns the odd part
    ``½[s_θ(x, t, Y, C) − s_θ(−x, t, −Y, −C)]`` (both halves in one network call). When the data
    are polarity-symmetric, ``p(X | Y) = p(−X | −Y)``, the true score of the StoRM forward process
    ``x_t = e^{−θt}X + (1 − e^{−θt})C + σ(t)z`` is odd in ``(x, Y, C)`` jointly, so this
    projection removes the even part of the network's error without changing its target (a
    two-member ensemble by symmetry; C enters as an input, the predictor itself need not be odd).
    """
    if model.params.get("score") is None:
        raise ValueError("this model has no score network (predictor-only model)")
    x = jnp.asarray(x)
    chans = score_inputs(model, x, Y, C)
    if any(c is None for c in chans):
        raise ValueError(f"condition={model.config.condition!r} needs both Y and C where used; got None")
    chans = [jnp.broadcast_to(jnp.asarray(c, x.dtype), x.shape) for c in chans]
    stacked = jnp.stack(chans, axis=-1)  # [..., F, T, D]
    flat, lead = _flatten(stacked, 3)
    rdt = jnp.real(x).dtype
    tb = jnp.broadcast_to(jnp.asarray(t, rdt), lead).reshape(-1)
    net = lambda v, tt: NCSNpp(model.config.score_net()).apply({"params": model.params["score"]}, v, tt)
    if model.config.score_symmetry == "sign":
        b = flat.shape[0]
        both = net(jnp.concatenate([flat, -flat]), jnp.concatenate([tb, tb]))
        out = 0.5 * (both[:b] - both[b:])
    else:
        out = net(flat, tb)
    return -out.reshape(lead + out.shape[1:])
