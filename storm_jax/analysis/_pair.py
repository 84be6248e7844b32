"""The spectrograms of a (clean, noisy) pair as the model sees them, shared by the ELBO and the
Importance-of-Condition analyses.

Both work on the compressed, padded spectrograms of the ν-normalised waveforms (the domain the
score network and the SDE live in): ``Y`` from the noisy waveform exactly as
:func:`~storm_jax.pipeline.analysis_input` makes it, ``X`` from the clean waveform divided by the
*same* ν, and the attractor of the forward process — the predictor output ``C = Π(Y)`` for StoRM,
``Y`` itself for a score-only (SGMSE+) model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..audio import compress, pad_frames, stft
from ..model import StormModel, predictor
from ..pipeline import EnhanceConfig, analysis_input


class Pair(NamedTuple):
    """Spectrograms ``[*batch, F, Tp]`` of one or more utterances (see module doc)."""

    X: jax.Array  # clean
    Y: jax.Array  # noisy
    C: jax.Array | None  # predictor output (None for a score-only model)
    attractor: jax.Array  # C, or Y without a predictor
    norm: jax.Array  # ν [*batch]


def _waveforms(name: str, clean, noisy, dtype):
    clean = jnp.asarray(clean, dtype)
    noisy = jnp.asarray(noisy, dtype)
    if clean.shape != noisy.shape or clean.ndim not in (1, 2):
        raise ValueError(f"{name}: clean and noisy must be waveforms [L] or [B, L] of one shape; got {clean.shape} and {noisy.shape}")
    for what, x in (("clean", clean), ("noisy", noisy)):
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"{name}: the {what} waveform holds NaN or Inf")
    if not bool(jnp.all(jnp.max(jnp.abs(noisy), axis=-1) > 0)):
        raise ValueError(f"{name}: a noisy waveform is silent (all zeros): its normalisation factor is 0")
    return clean, noisy


def spectrogram_pair(name: str, model: StormModel, clean, noisy, normalization: str = "max") -> Pair:
    """:class:`Pair` of waveforms ``[L]`` or ``[B, L]`` (``name`` prefixes error messages)."""
    if model.params.get("score") is None:
        raise ValueError(f"{name}: this model has no score network (predictor-only model)")
    rdt = jnp.float64 if jax.tree_util.tree_leaves(model.params["score"])[0].dtype == jnp.float64 else jnp.float32
    clean, noisy = _waveforms(name, clean, noisy, rdt)
    if normalization not in ("max", "rms"):
        raise ValueError(f"{name}: normalization must be 'max' (the reference) or 'rms', got {normalization!r}")
    Y, nu = analysis_input(model, noisy, EnhanceConfig(normalization=normalization))
    sc = model.config.spec
    X = pad_frames(compress(stft(clean / nu[..., None], sc.n_fft, sc.hop), sc.alpha, sc.beta, sc.grad_floor), sc.pad_multiple)
    C = predictor(model, Y) if model.config.has_predictor and model.params.get("predictor") is not None else None
    return Pair(X=X, Y=Y, C=C, attractor=Y if C is None else C, norm=nu)


def check_positive_int(name: str, what: str, n, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name}: {what} must be an integer >= {minimum}, got {n!r}")
    return int(n)
