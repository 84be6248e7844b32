"""Waveform → waveform enhancement, and the pure map ``M ↦ ŝ(M)`` every analysis differentiates.

Order of operations (reference ``StochasticRegenerationModel.enhance``; ``storm-reference.md``
§ Data pipeline and § Details that decide bit-level parity)::

    ν = max|y|                       (or a frozen / rms factor)
    Y = pad₆₄(β·|STFT(y/ν)|^α·e^{i∠})
    C = Π(Y)
    x̂ = reverse process from C + σ(1)·z, conditioned on (Y, C)
    ŝ = ν · iSTFT(decompress(x̂), length = L)   (over the padded spectrogram, then truncated)

With ``y(M) = clean + M·noise`` and the draws held fixed, ``M ↦ ŝ(M)`` is a deterministic,
differentiable function (:func:`enhance_mixture`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .audio import compress, decompress, istft, normalization_factor, pad_frames, stft
from .model import StormModel, predictor, refine
from .sampling import Draws, SamplerConfig, make_draws, sample

__all__ = [
    "EnhanceConfig",
    "Enhanced",
    "mix",
    "spec_shape",
    "analysis_input",
    "synthesis",
    "enhance_spectrogram",
    "enhance_waveform",
    "enhance_mixture",
    "draws_for",
    "enhance",
]


@dataclasses.dataclass(frozen=True)
class EnhanceConfig:
    """How a waveform is enhanced.

    Attributes:
        sampler: the reverse process (:class:`~storm_jax.sampling.SamplerConfig`).
        normalization: ``max`` (reference), ``frozen`` (divide by ``norm_factor``) or ``rms``.
        norm_factor: the factor for ``frozen``.
        predictor_only: return the predictor output C instead of running the reverse process.
        samples: K, the number of reverse-process samples :func:`enhance` averages in the
            waveform domain, ``ŝ = (1/K)·Σ_k ŝ_k`` — a Monte Carlo estimate of the mean of the
            model's output distribution given y (the posterior mean under the learned reverse
            process), which keeps what the samples share and shrinks their departure from it by
            1/K in power. 1 (default) is the reference: one sample. Sample k uses the key
            ``key`` for k = 0 and ``fold_in(key, k)`` after, so the K-sample estimate averages
            the first K of any longer run and K = 1 is the single-sample output.
            :func:`enhance_waveform` follows one explicit noise path and accepts only 1.
    """

    sampler: SamplerConfig = SamplerConfig()
    normalization: Literal["max", "frozen", "rms"] = "max"
    norm_factor: float | None = None
    predictor_only: bool = False
    samples: int = 1

    def __post_init__(self):
        if self.normalization == "frozen" and self.norm_factor is None:
            raise ValueError("EnhanceConfig: normalization='frozen' needs norm_factor")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"EnhanceConfig: samples must be a positive integer, got {self.samples!r}")


class Enhanced(NamedTuple):
    """Everything the pipeline computes for one input (a pytree: ``jvp`` gives its tangents).

    Attributes:
        waveform: ŝ ``[..., L]`` (de-normalised).
        spec: x̂ ``[..., F, Tp]`` — compressed, padded, normalised domain (the sampler output).
        C: predictor output ``[..., F, Tp]``.
        Y: compressed noisy input ``[..., F, Tp]``.
        norm: normalisation factor ν ``[...]``.
    """

    waveform: Array
    spec: Array
    C: Array
    Y: Array
    norm: Array


def mix(clean: Float[Array, "... L"], noise: Float[Array, "... L"], m, power: bool = False) -> Float[Array, "... L"]:
    """Noisy input ``y(M) = clean + M·noise`` (or ``clean + sqrt(M)·noise`` with ``power``)."""
    m = jnp.asarray(m)
    scale = jnp.sqrt(m) if power else m
    return jnp.asarray(clean) + scale[..., None] * jnp.asarray(noise)


def spec_shape(model: StormModel, n_samples: int, batch: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Shape ``[*batch, F, Tp]`` of the padded spectrogram of an ``n_samples``-long waveform."""
    sc = model.config.spec
    frames = 1 + n_samples // sc.hop
    frames += (-frames) % sc.pad_multiple
    return (*batch, sc.n_freqs, frames)


def analysis_input(model: StormModel, y: Float[Array, "... L"], config: EnhanceConfig = EnhanceConfig()):
    """``(Y, ν)``: the compressed, padded spectrogram of ``y/ν`` and the factor ν."""
    sc = model.config.spec
    y = jnp.asarray(y)
    nu = normalization_factor(y, config.normalization, config.norm_factor)
    Y = compress(stft(y / nu[..., None], sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor)
    return pad_frames(Y, sc.pad_multiple), nu


def synthesis(model: StormModel, spec: Complex[Array, "... F Tp"], length: int, nu) -> Float[Array, "... L"]:
    """``ν·iSTFT(decompress(spec), length)`` over the padded spectrogram (reference order)."""
    sc = model.config.spec
    x = istft(decompress(spec, sc.alpha, sc.beta, sc.grad_floor), length, sc.n_fft, sc.hop)
    return jnp.asarray(nu)[..., None] * x


def enhance_spectrogram(model: StormModel, Y, draws: Draws | Array, config: SamplerConfig = SamplerConfig(), predictor_only: bool = False):
    """``(x̂, C)`` for a compressed padded noisy spectrogram ``Y`` (x̂ refined by the model's
    refiner when it has one, :func:`~storm_jax.model.refine`)."""
    C = predictor(model, Y) if model.config.has_predictor else None
    if predictor_only or not model.config.has_score:
        if C is None:
            raise ValueError("predictor_only needs a predictor network")
        return C, C
    # a two-stage model refines the reverse process's output (identity for one stage)
    return refine(model, sample(model, Y, C if C is not None else Y, draws, config)), C


def enhance_waveform(model: StormModel, y: Float[Array, "... L"], draws: Draws | Array, config: EnhanceConfig = EnhanceConfig()) -> Enhanced:
    """Enhance waveform(s) ``y`` ``[..., L]`` with the given draws (or PRNG key). Pure and
    differentiable in ``y`` and the parameters."""
    if config.samples != 1:
        raise ValueError(f"enhance_waveform follows one noise path; config.samples = {config.samples} "
                         "(average several samples with enhance(..., config=EnhanceConfig(samples=K)))")
    y = jnp.asarray(y)
    Y, nu = analysis_input(model, y, config)
    spec, C = enhance_spectrogram(model, Y, draws, config.sampler, config.predictor_only)
    wav = synthesis(model, spec, y.shape[-1], nu)
    return Enhanced(waveform=wav, spec=spec, C=C if C is not None else Y, Y=Y, norm=nu)


def enhance_mixture(model: StormModel, clean, noise, m, draws: Draws | Array, config: EnhanceConfig = EnhanceConfig(), power: bool = False) -> Enhanced:
    """The map ``M ↦ ŝ(M)`` on a fixed Brownian path: enhance ``y(M) = clean + M·noise``.

    ``m`` is a scalar (or a batch of scalars matching the leading axes of ``clean``); the draws
    do not depend on M, so ``jax.jvp`` in ``m`` gives the exact pathwise derivative dŝ/dM.
    """
    return enhance_waveform(model, mix(clean, noise, m, power), draws, config)


def draws_for(model: StormModel, n_samples: int, key: Array, config: SamplerConfig = SamplerConfig(), batch: tuple[int, ...] = (), dtype=jnp.complex64) -> Draws:
    """Noise draws for enhancing ``n_samples``-long waveform(s) with leading shape ``batch``."""
    return make_draws(key, spec_shape(model, n_samples, batch), config, dtype)


_enhance_jit = jax.jit(enhance_waveform, static_argnames=("config",))


def enhance(
    model: StormModel,
    y,
    key: Array | int | None = 0,
    *,
    steps: int | None = None,
    corrector: str | None = None,
    config: EnhanceConfig | None = None,
) -> np.ndarray:
    """Enhance a waveform ``y`` ``[L]`` or ``[B, L]`` (16 kHz) and return a NumPy array.

    ``key`` is a PRNG key or an integer seed; ``steps``/``corrector`` override ``config.sampler``.
    With ``config.samples = K > 1`` the K reverse-process outputs are averaged (see
    :class:`EnhanceConfig`); the work grows K-fold.
    """
    config = config or EnhanceConfig()
    sampler = config.sampler
    if steps is not None:
        sampler = dataclasses.replace(sampler, steps=steps)
    if corrector is not None:
        sampler = dataclasses.replace(sampler, corrector=corrector)
    config = dataclasses.replace(config, sampler=sampler)
    if key is None or isinstance(key, int):
        key = jax.random.key(0 if key is None else key)
    leaves = jax.tree_util.tree_leaves(model.params)
    rdt = leaves[0].dtype if leaves else jnp.float32
    y = jnp.asarray(np.asarray(y), rdt)
    cdt = jnp.result_type(rdt, jnp.complex64)
    K = 1 if config.predictor_only else config.samples
    one = dataclasses.replace(config, samples=1)  # one compiled path for any K

    def _one(k):
        draws = draws_for(model, y.shape[-1], key if k == 0 else jax.random.fold_in(key, k), sampler, y.shape[:-1], cdt)
        return np.asarray(_enhance_jit(model, y, draws, one).waveform)

    if K == 1:
        return _one(0)
    return np.mean(np.stack([_one(k) for k in range(K)]), axis=0)
