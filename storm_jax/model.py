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

__all__ = ["StormConfig", "StormModel", "init_storm", "param_shapes", "predictor", "refine", "score", "score_ensemble", "score_guidance", "CONDITIONS", "SCORE_SYMMETRIES", "storm_config"]

CONDITIONS = ("both", "noisy", "predictor")
"""What the score network sees besides x: Y and C (the reference), only Y, or only C (then L·v = 0)."""
SCORE_SYMMETRIES = ("none", "sign")
"""``none`` (the reference) or ``sign``: the network's odd part ``½[s(x, t, Y, C) − s(−x, t, −Y, −C)]``."""


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
        score_members: ``E ≥ 1`` score networks of one architecture whose scores are averaged,
            ``s = (1/E)·Σ_e s_θe`` (a score-level ensemble, see :func:`score_ensemble`); their
            parameters carry a leading axis of size ``E``. 1 (the reference): a plain tree.
        guidance: condition guidance weight ``w``, or ``None`` (the reference): with a weight the
            model holds a second score network ``s_φ(x, t, C)`` that sees only C
            (``params["guide"]``) and the score is ``(1 + w)·s_θ(x, t, Y, C) − w·s_φ(x, t, C)``
            (see :func:`score_guidance`); needs ``condition="both"``. ``w = 0`` is the plain
            score, ``w = −1`` the C-only network's.
        sampler_steps: ``None`` (a score estimate, any sampler) or the N of the reference sampler
            (reverse-diffusion predictor, no corrector) the score network was fine-tuned through
            (``correct-reverse`` training, :mod:`storm_jax.training`): the network is then a part of
            that N-step map rather than a score, and the command-line samplers default to this N.
        refiner: NCSN++ settings of a refinement network R (second seed: two-stage refinement),
            or ``None`` (the reference: one stage). With one, the model's output is
            ``x̂ + R(x̂)`` — R discriminative on the reverse process's output x̂ (2 real input
            channels), trained by ``--mode refine`` toward the clean target with the first stage
            frozen (:func:`refine`); ``params["refiner"]`` holds its weights.
    """

    backbone: NCSNppConfig = dataclasses.field(default_factory=lambda: ncsnpp_config("ncsnpp"))
    sde: OUVE = dataclasses.field(default_factory=OUVE)
    spec: SpecConfig = dataclasses.field(default_factory=SpecConfig)
    condition: Literal["both", "noisy", "predictor"] = "both"
    has_predictor: bool = True
    has_score: bool = True
    score_backbone: NCSNppConfig | None = None
    score_symmetry: Literal["none", "sign"] = "none"
    score_members: int = 1
    guidance: float | None = None
    sampler_steps: int | None = None
    refiner: NCSNppConfig | None = None

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; choose one of {CONDITIONS}")
        if self.score_symmetry not in SCORE_SYMMETRIES:
            raise ValueError(f"unknown score_symmetry {self.score_symmetry!r}; choose one of {SCORE_SYMMETRIES}")
        if isinstance(self.score_members, bool) or not isinstance(self.score_members, (int, np.integer)) or self.score_members < 1:
            raise ValueError(f"score_members must be an integer >= 1, got {self.score_members!r}")
        if not (self.has_predictor or self.has_score):
            raise ValueError("a StoRM model needs a predictor, a score network, or both")
        if self.sampler_steps is not None and (isinstance(self.sampler_steps, bool) or not isinstance(self.sampler_steps, (int, np.integer))
                                               or self.sampler_steps < 1):
            raise ValueError(f"sampler_steps must be a positive integer or None, got {self.sampler_steps!r}")
        if self.guidance is not None:
            if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float, np.number)) or not np.isfinite(self.guidance):
                raise ValueError(f"guidance must be a finite number or None, got {self.guidance!r}")
            object.__setattr__(self, "guidance", float(self.guidance))
            if not (self.condition == "both" and self.has_score and self.has_predictor):
                raise ValueError(f"guidance needs a score network that sees Y and C (condition='both') and a predictor; "
                                 f"got condition={self.condition!r}, has_predictor={self.has_predictor}, has_score={self.has_score}")
        if self.condition in ("both", "predictor") and self.has_score and not self.has_predictor:
            raise ValueError(f"condition={self.condition!r} needs a predictor network")
        if self.refiner is not None and not self.has_score:
            raise ValueError("a refiner refines the reverse process's output: it needs a score network")

    @property
    def score_inputs(self) -> int:
        """Number of complex channels the score network sees (x plus conditions)."""
        return 3 if self.condition == "both" else 2

    @property
    def frame_multiple(self) -> int:
        """Frame counts must be multiples of this: ``2^(levels − 1)`` of the deeper network."""
        nets = [self.backbone] + [b for b in (self.score_backbone, self.refiner) if b is not None]
        return max(2 ** (len(b.ch_mult) - 1) for b in nets)

    def predictor_net(self) -> NCSNppConfig:
        """Backbone of Π: discriminative, 2 real input channels (Re Y, Im Y)."""
        return dataclasses.replace(self.backbone, discriminative=True, input_channels=2)

    def score_net(self) -> NCSNppConfig:
        """Backbone of s_θ: time-conditional, ``2·score_inputs`` real input channels."""
        base = self.score_backbone if self.score_backbone is not None else self.backbone
        return dataclasses.replace(base, discriminative=False, input_channels=2 * self.score_inputs)

    def refiner_net(self) -> NCSNppConfig:
        """Backbone of the refiner R: discriminative, 2 real input channels (Re x̂, Im x̂)."""
        if self.refiner is None:
            raise ValueError("this model has no refiner")
        return dataclasses.replace(self.refiner, discriminative=True, input_channels=2)

    def guide_net(self) -> NCSNppConfig:
        """Backbone of the guide network s_φ (with ``guidance``): the score network's, seeing
        ``[x, C]`` (4 real input channels)."""
        return dataclasses.replace(self.score_net(), input_channels=4)

    def guide_config(self) -> "StormConfig":
        """The configuration of the guide network as a StoRM model of its own (``condition =
        "predictor"``, one score network, no guidance)."""
        return dataclasses.replace(self, condition="predictor", score_members=1, guidance=None)


def storm_config(preset: str = "ncsnpp", score_preset: str | None = None, **overrides: Any) -> StormConfig:
    """A :class:`StormConfig` with the NCSN++ preset ``preset`` (``micro``, ``tiny``, ``small``,
    ``ncsnpp``, ``ncsnpplarge``, ``ncsnpp12M``, ``ncsnpp6M``) for both networks, or ``score_preset`` for the
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

    def score_member(self, i: int) -> "StormModel":
        """Member ``i`` of a score ensemble as a model of its own (``score_members = 1``)."""
        E = self.config.score_members
        if not 0 <= i < E:
            raise IndexError(f"score member {i} of a model with {E} score member(s)")
        if E == 1:
            return self
        one = jax.tree_util.tree_map(lambda a: a[i], self.params["score"])
        return StormModel(config=dataclasses.replace(self.config, score_members=1), params={**self.params, "score": one})

    def with_guidance(self, weight: float) -> "StormModel":
        """The same networks with guidance weight ``weight`` (the model must hold a guide network)."""
        if self.config.guidance is None:
            raise ValueError("this model has no guide network (build one with score_guidance)")
        return self.replace(config=dataclasses.replace(self.config, guidance=weight))

    def guide_model(self) -> "StormModel":
        """The guide network s_φ(x, t, C) with this model's predictor, as a model of its own."""
        if self.config.guidance is None:
            raise ValueError("this model has no guide network")
        return StormModel(config=self.config.guide_config(), params={"predictor": self.params["predictor"], "score": self.params["guide"]})

    def without_guidance(self) -> "StormModel":
        """The conditional network alone (``guidance=None``, the guide network dropped)."""
        params = {k: v for k, v in self.params.items() if k != "guide"}
        return StormModel(config=dataclasses.replace(self.config, guidance=None), params=params)


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
        one = lambda k: jax.tree_util.tree_map(jnp.asarray, init_params(config.score_net(), k, param_dtype=np.dtype(dtype)))
        if config.score_members == 1:
            params["score"] = one(ks)
        else:  # independent members from independent keys, stacked on a leading axis
            members = [one(k) for k in jax.random.split(ks, config.score_members)]
            params["score"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)
    if config.guidance is not None:
        kg = jax.random.fold_in(ks, 1 << 20)  # the other networks' draws stay as without a guide
        params["guide"] = jax.tree_util.tree_map(jnp.asarray, init_params(config.guide_net(), kg, param_dtype=np.dtype(dtype)))
    if config.refiner is not None:
        kr = jax.random.fold_in(ks, 1 << 21)  # likewise: adding a refiner leaves the other draws
        params["refiner"] = jax.tree_util.tree_map(jnp.asarray, init_params(config.refiner_net(), kr, param_dtype=np.dtype(dtype)))
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
        if config.score_members > 1:
            E = config.score_members
            out["score"] = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((E,) + a.shape, a.dtype), out["score"])
    if config.guidance is not None:
        x = jax.ShapeDtypeStruct((1, F, m, 2), cdt)
        out["guide"] = jax.eval_shape(NCSNpp(config.guide_net()).init, key, x, jax.ShapeDtypeStruct((1,), dtype))["params"]
    if config.refiner is not None:
        x = jax.ShapeDtypeStruct((1, F, m, 1), cdt)
        out["refiner"] = jax.eval_shape(NCSNpp(config.refiner_net()).init, key, x, None)["params"]
    cast = lambda a: jax.ShapeDtypeStruct(a.shape, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(cast, out)


def _flatten(a, core: int):
    lead = a.shape[: a.ndim - core]
    return a.reshape((-1,) + a.shape[a.ndim - core :]), lead


@jax.jit
def predictor(model: StormModel, Y: Complex[Array, "*batch F T"]) -> Complex[Array, "*batch F T"]:
    """Predictor output ``C = Π(Y)`` for compressed noisy spectrograms ``Y`` ``[..., F, T]``
    (``T`` a multiple of ``2^(len(ch_mult)−1)``, F = 256 for the reference front end).

    Jitted (one compilation per config and shape; inside a trace it inlines): called eagerly,
    a network of a few hundred operations would otherwise compile each one on its own."""
    if model.params.get("predictor") is None:
        raise ValueError("this model has no predictor network (score-only model)")
    Y = jnp.asarray(Y)
    flat, lead = _flatten(Y, 2)
    out = NCSNpp(model.config.predictor_net()).apply({"params": model.params["predictor"]}, flat[..., None], None)
    return out.reshape(lead + out.shape[1:])


@jax.jit
def refine(model: StormModel, x: Complex[Array, "*batch F T"]) -> Complex[Array, "*batch F T"]:
    """The model's output from the reverse process's output x̂: ``x̂ + R(x̂)`` with the refiner
    R (``config.refiner``; a residual: NCSN++'s output layer is initialised at a small scale, so a
    fresh tiny refiner moves x̂ by about 4e-6 of its norm and training starts from the one-stage
    output), or x̂ itself for a one-stage model. Jitted like :func:`predictor`."""
    if model.config.refiner is None:
        return x
    if model.params.get("refiner") is None:
        raise ValueError("this model's config has a refiner but its parameters have none")
    x = jnp.asarray(x)
    flat, lead = _flatten(x, 2)
    out = NCSNpp(model.config.refiner_net()).apply({"params": model.params["refiner"]}, flat[..., None], None)
    return x + out.reshape(lead + out.shape[1:])


def score_inputs(model: StormModel, x, Y, C) -> list:
    """The complex channels the score network sees, in the reference order."""
    cond = model.config.condition
    if cond == "both":
        return [x, Y, C]
    if cond == "noisy":
        return [x, Y]
    return [x, C]


@jax.jit
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

    With ``config.score_members = E > 1`` it returns the mean of the ``E`` members' scores,
    ``(1/E)·Σ_e s_θe(x, t, Y, C)`` (each member's odd part with ``sign``): independently trained
    networks share the target and average out part of their errors (:func:`score_ensemble`).

    With ``config.guidance = w`` it returns ``(1 + w)·s_θ(x, t, Y, C) − w·s_φ(x, t, C)``, where
    s_φ is the guide network that sees only C (:func:`score_guidance`; the symmetry applies to
    both networks, the ensemble to s_θ).

    Jitted like :func:`predictor` (the config is static, ``t`` is traced).
    """
    if model.params.get("score") is None:
        raise ValueError("this model has no score network (predictor-only model)")
    cfg = model.config
    x = jnp.asarray(x)
    chans = score_inputs(model, x, Y, C)
    if any(c is None for c in chans):
        raise ValueError(f"condition={cfg.condition!r} needs both Y and C where used; got None")
    rdt = jnp.real(x).dtype

    def packed(cs):
        stacked = jnp.stack([jnp.broadcast_to(jnp.asarray(c, x.dtype), x.shape) for c in cs], axis=-1)  # [..., F, T, D]
        return _flatten(stacked, 3)

    flat, lead = packed(chans)
    tb = jnp.broadcast_to(jnp.asarray(t, rdt), lead).reshape(-1)
    out = _network_output(cfg.score_net(), model.params["score"], cfg.score_members, cfg.score_symmetry, flat, tb)
    if cfg.guidance is not None and cfg.guidance != 0.0:
        flat_c, _ = packed([x, C])
        guide = _network_output(cfg.guide_net(), model.params["guide"], 1, cfg.score_symmetry, flat_c, tb)
        out = (1.0 + cfg.guidance) * out - cfg.guidance * guide
    return -out.reshape(lead + out.shape[1:])


def _network_output(net_config: NCSNppConfig, params, members: int, symmetry: str, flat, tb):
    """``net(v, t)`` of one score network (the mean over ``members`` stacked networks), or its
    odd part ``½[net(v, t) − net(−v, t)]`` with ``symmetry="sign"`` (both halves in one call)."""
    apply = lambda p, v, tt: NCSNpp(net_config).apply({"params": p}, v, tt)
    if members == 1:
        net = lambda v, tt: apply(params, v, tt)
    else:  # score-level ensemble: the members' outputs averaged (one vmapped call)
        net = lambda v, tt: jnp.mean(jax.vmap(apply, in_axes=(0, None, None))(params, v, tt), axis=0)
    if symmetry == "sign":
        b = flat.shape[0]
        both = net(jnp.concatenate([flat, -flat]), jnp.concatenate([tb, tb]))
        return 0.5 * (both[:b] - both[b:])
    return net(flat, tb)


def _same_leaves(a, b) -> bool:
    """Whether two parameter trees of one structure hold equal arrays, bit for bit."""
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def score_ensemble(models: list[StormModel] | tuple[StormModel, ...], names: list[str] | None = None) -> StormModel:
    """One model whose score is the mean of the score networks of ``models`` (each may itself be
    an ensemble; their members are concatenated): ``s = (1/E)·Σ_e s_θe`` (:func:`score`).

    The models must share everything but the score weights: the same configuration (apart from
    ``score_members``) and the same predictor, bit for bit, so that C, the SDE and the score's
    target are one. Typical use: networks trained from different seeds on the same frozen
    predictor. Raises ``ValueError`` naming (by ``names``, default "model i") the first model
    that differs and how.
    """
    models = list(models)
    if not models:
        raise ValueError("score_ensemble: no models given")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"score_ensemble: {len(names)} names for {len(models)} models")
    first = models[0]
    if not first.config.has_score:
        raise ValueError(f"score_ensemble: {names[0]} has no score network")
    for name, m in zip(names, models):
        if m.config.guidance is not None:  # its guide network would be kept from one model, dropped from the others
            raise ValueError(f"score_ensemble: {name} has a guide network; join the conditional networks first, then add the guide (score_guidance)")
    base = dataclasses.replace(first.config, score_members=1)
    for i, m in enumerate(models[1:], start=1):
        cfg = dataclasses.replace(m.config, score_members=1)
        if cfg != base:
            diff = [f.name for f in dataclasses.fields(base) if getattr(cfg, f.name) != getattr(base, f.name)]
            raise ValueError(f"score_ensemble: {names[i]} differs from {names[0]} in its configuration ({', '.join(diff)})")
        if first.config.has_predictor and not _same_leaves(m.params["predictor"], first.params["predictor"]):
            raise ValueError(f"score_ensemble: {names[i]} has another predictor than {names[0]} (the members must share one, bit for bit)")
    stacks = [m.params["score"] if m.config.score_members > 1 else jax.tree_util.tree_map(lambda a: a[None], m.params["score"]) for m in models]
    score_params = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *stacks)
    E = sum(m.config.score_members for m in models)
    return StormModel(config=dataclasses.replace(first.config, score_members=E), params={**first.params, "score": score_params})


def score_guidance(model: StormModel, guide: StormModel, weight: float, names: tuple[str, str] = ("model", "guide")) -> StormModel:
    """Condition guidance: one model whose score is ``(1 + w)·s_θ(x, t, Y, C) − w·s_φ(x, t, C)``.

    ``model`` has a score network that sees Y and C (``condition="both"``); ``guide`` one that
    sees only C (``condition="predictor"``), trained on the same predictor with the same SDE. If
    the networks were exact, ``s_θ − s_φ = ∇ₓ log p(Y | x_t, C)``, so the guided score is that of
    ``p(x_t | C)·p(Y | x_t, C)^{1+w}``: ``w > 0`` weights the evidence of the noisy input above
    its share in the posterior (classifier-free guidance, Ho & Salimans 2022, with C as the
    condition kept in both terms), ``w = 0`` is the plain model and ``w = −1`` the C-only one.

    The models must share the predictor (bit for bit), the SDE, the spectrogram settings and the
    score network's backbone; ``model`` may be a score ensemble, ``guide`` must be one network;
    neither may be fine-tuned through a sampler (``sampler_steps``: not a score).
    The result takes ``model``'s score symmetry for both networks. Raises ``ValueError`` naming
    (by ``names``) the model that does not fit and why.
    """
    a, b = names
    mc, gc = model.config, guide.config
    if mc.condition != "both" or not mc.has_score:
        raise ValueError(f"score_guidance: {a} must have a score network that sees Y and C (condition='both'), got condition={mc.condition!r}")
    if gc.condition != "predictor" or not gc.has_score:
        raise ValueError(f"score_guidance: {b} must have a score network that sees only C (condition='predictor'), got condition={gc.condition!r}")
    if mc.guidance is not None or gc.guidance is not None:
        raise ValueError(f"score_guidance: {a if mc.guidance is not None else b} already has a guide network")
    if gc.score_members != 1:
        raise ValueError(f"score_guidance: {b} is an ensemble of {gc.score_members} score networks; the guide must be one network")
    for name, cfg in ((a, mc), (b, gc)):
        if cfg.sampler_steps is not None:  # its network is part of an N-step map, not a score
            raise ValueError(f"score_guidance: {name} was fine-tuned through its {cfg.sampler_steps}-step sampler (correct-reverse), "
                             "so its network is not a score to combine; guide score-matching networks")
    for field in ("sde", "spec", "backbone"):
        if getattr(mc, field) != getattr(gc, field):
            raise ValueError(f"score_guidance: {b} differs from {a} in its {field}")
    if gc.score_net() != mc.guide_net():
        raise ValueError(f"score_guidance: {b}'s score network has another backbone than {a}'s")
    if not _same_leaves(model.params["predictor"], guide.params["predictor"]):
        raise ValueError(f"score_guidance: {b} has another predictor than {a} (the two must share one, bit for bit)")
    config = dataclasses.replace(mc, guidance=weight)
    return StormModel(config=config, params={**model.params, "guide": guide.params["score"]})
