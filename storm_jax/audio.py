"""Audio transforms of the StoRM pipeline, in pure ``jnp`` and differentiable.

Everything here matches the PyTorch reference (sp-uhh/storm, ``sgmse/data_module.py`` and
``sgmse/util/other.py``; facts in ``storm-reference.md`` § Data pipeline):

* STFT: ``torch.stft(n_fft=510, hop_length=128, window=hann_window(510, periodic=True),
  center=True, pad_mode="reflect", normalized=False, return_complex=True)`` → 256 bins.
* iSTFT: ``torch.istft`` with the same settings and ``length=T_orig`` (window-sum-square
  normalised overlap-add, centre padding removed, then truncated or zero-extended).
* Amplitude compression ``c̃ = β·|c|^α·e^{i∠c}`` and its inverse ``c = (|c̃|/β)^{1/α}·e^{i∠c̃}``.
* Right zero-padding of the frame axis to a multiple of 64 (``pad_spec``).
* Input normalisation (``max`` as the reference, ``frozen`` at a given factor, ``rms``).

Spectrograms are complex arrays shaped ``[..., F, T]`` (frequency, frames), waveforms are real
arrays shaped ``[..., L]`` (samples at 16 kHz).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

__all__ = [
    "SpecConfig",
    "hann_window",
    "stft",
    "istft",
    "compress",
    "decompress",
    "pad_frames",
    "unpad_frames",
    "normalization_factor",
    "NORMALIZATIONS",
]

NORMALIZATIONS = ("max", "frozen", "rms")


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """Settings of the spectral front end (reference defaults).

    Attributes:
        n_fft: FFT size (510 → 256 bins).
        hop: hop length in samples (128).
        alpha: amplitude-compression exponent α (``spec_abs_exponent``, 0.5).
        beta: amplitude scale β (``spec_factor``; the data module's default 0.15, the reference
            argparse default 0.33 — imported checkpoints carry their own).
        pad_multiple: the frame axis is zero-padded on the right to a multiple of this (64),
            because the U-Net halves it ``len(ch_mult) - 1`` times.
        sample_rate: Hz (16000).
        grad_floor: radius ε below which the derivative of ``|c|^α`` is frozen at its value on
            the circle ``|c| = ε`` (see :func:`compress`).
    """

    n_fft: int = 510
    hop: int = 128
    alpha: float = 0.5
    beta: float = 0.15
    pad_multiple: int = 64
    sample_rate: int = 16000
    grad_floor: float = 1e-8

    def __post_init__(self):
        if self.n_fft < 2 or self.hop < 1 or self.hop > self.n_fft:
            raise ValueError(f"SpecConfig: need 1 <= hop <= n_fft, got n_fft={self.n_fft}, hop={self.hop}")
        if not (0.0 < self.alpha <= 1.0):
            raise ValueError(f"SpecConfig: alpha must lie in (0, 1], got {self.alpha}")
        if self.beta <= 0.0:
            raise ValueError(f"SpecConfig: beta must be positive, got {self.beta}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


def hann_window(n: int, dtype=jnp.float32) -> Float[Array, " n"]:
    """Periodic Hann window ``w[k] = ½ − ½·cos(2πk/n)``, ``k = 0 … n−1`` (``torch.hann_window``)."""
    k = jnp.arange(n, dtype=dtype)
    return 0.5 - 0.5 * jnp.cos(2.0 * math.pi * k / n)


def _real_dtype(x) -> jnp.dtype:
    return jnp.finfo(jnp.result_type(x, jnp.float32)).dtype


def stft(
    x: Float[Array, "... L"], n_fft: int = 510, hop: int = 128
) -> Complex[Array, "... F T"]:
    """Short-time Fourier transform, equal to ``torch.stft`` with the reference settings.

    ``X[f, τ] = Σ_k w[k]·x̃[τ·hop + k]·e^{−2πi f k / n_fft}`` where ``x̃`` is ``x`` reflect-padded by
    ``n_fft // 2`` on both sides (``center=True``) and ``w`` the periodic Hann window.
    Shapes: ``[..., L] → [..., n_fft//2 + 1, 1 + L // hop]``. Needs ``L > n_fft // 2``.
    """
    x = jnp.asarray(x)
    length = x.shape[-1]
    half = n_fft // 2
    if length <= half:
        raise ValueError(f"stft: signal of {length} samples is too short for n_fft={n_fft} (need > {half})")
    rdt = _real_dtype(x)
    x = x.astype(rdt)
    pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
    xp = jnp.pad(x, pad, mode="reflect")
    n_frames = 1 + length // hop
    idx = jnp.arange(n_frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
    frames = xp[..., idx] * hann_window(n_fft, rdt)  # [..., T, n_fft]
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)  # [..., T, F]
    return jnp.swapaxes(spec, -1, -2)


def istft(
    X: Complex[Array, "... F T"], length: int, n_fft: int = 510, hop: int = 128
) -> Float[Array, "... L"]:
    """Inverse STFT, equal to ``torch.istft(..., center=True, length=length)``.

    Overlap-add of ``w·irfft(X[:, τ])`` divided by the window-sum-square envelope
    ``Σ_τ w²[n − τ·hop]``, with the first ``n_fft // 2`` samples (centre padding) removed and the
    result truncated (or zero-extended) to ``length`` samples. As in the reference pipeline,
    extra zero frames (time padding) are part of the envelope; call this on the padded
    spectrogram to reproduce the reference's order of operations.
    """
    X = jnp.asarray(X)
    n_frames = X.shape[-1]
    rdt = _real_dtype(X.real)
    win = hann_window(n_fft, rdt)
    frames = jnp.fft.irfft(jnp.swapaxes(X, -1, -2), n=n_fft, axis=-1) * win  # [..., T, n_fft]
    n_out = n_fft + hop * (n_frames - 1)
    y = _overlap_add(frames, hop, n_out)
    env = _overlap_add(jnp.broadcast_to(win * win, (n_frames, n_fft)), hop, n_out)
    start = n_fft // 2
    stop = min(start + length, n_out)
    y = y[..., start:stop]
    env = env[start:stop]
    # Same guard as torch.istft: the envelope must not vanish where samples are returned.
    y = y / jnp.where(env > 1e-11, env, 1.0)
    if stop - start < length:
        y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - (stop - start))])
    return y


def _overlap_add(frames: Float[Array, "... T n"], hop: int, n_out: int) -> Float[Array, "... n_out"]:
    """``out[τ·hop + k] += frames[τ, k]`` without scatter: frames are cut into ``hop``-long
    blocks, and block ``j`` of every frame is added with a shift of ``j`` blocks."""
    n_frames, n = frames.shape[-2], frames.shape[-1]
    n_blocks = -(-n // hop)
    frames = jnp.pad(frames, [(0, 0)] * (frames.ndim - 1) + [(0, n_blocks * hop - n)])
    blocks = frames.reshape(*frames.shape[:-1], n_blocks, hop)  # [..., T, J, hop]
    total = n_frames + n_blocks - 1
    out = jnp.zeros((*frames.shape[:-2], total, hop), frames.dtype)
    for j in range(n_blocks):
        out = out.at[..., j : j + n_frames, :].add(blocks[..., j, :])
    return out.reshape(*out.shape[:-2], total * hop)[..., :n_out]


# ---------------------------------------------------------------------------------------------
# Amplitude compression with a finite derivative at c = 0
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _power_law(p: float, floor: float, c):
    """``|c|^p·e^{i∠c} = c·|c|^{p−1}`` (exact value, 0 at c = 0 for p > 0)."""
    r = jnp.abs(c)
    safe_r = jnp.where(r > 0, r, 1.0)
    return jnp.where(r > 0, c * safe_r ** (p - 1.0), jnp.zeros_like(c))


@_power_law.defjvp
def _power_law_jvp(p, floor, primals, tangents):
    (c,), (dc,) = primals, tangents
    out = _power_law(p, floor, c)
    # d(c·r^{p−1}) = r^{p−1}·[dc + (p−1)·c·Re(c̄·dc)/r²], evaluated at ρ = max(r, floor):
    # exact wherever |c| ≥ floor; inside that disc it is the derivative on its rim (bounded).
    rho = jnp.maximum(jnp.abs(c), floor)
    proj = jnp.real(jnp.conj(c) * dc)
    dout = rho ** (p - 1.0) * (dc + (p - 1.0) * c * proj / (rho * rho))
    return out, dout.astype(out.dtype)


def _as_complex(x):
    x = jnp.asarray(x)
    return x if jnp.iscomplexobj(x) else x.astype(jnp.result_type(x, jnp.complex64))


def compress(
    spec: Complex[Array, "... F T"], alpha: float = 0.5, beta: float = 0.15, grad_floor: float = 1e-8
) -> Complex[Array, "... F T"]:
    """Amplitude compression ``c̃ = β·|c|^α·e^{i∠c}`` (reference ``spec_fwd``).

    ``|c|^α`` has an infinite slope at ``c = 0`` for α < 1. The value is exact everywhere
    (0 at c = 0); the derivative (``jvp`` and, by transposition, ``vjp``) is exact for
    ``|c| ≥ grad_floor`` and, inside that disc, equals the derivative at radius ``grad_floor``,
    so its operator norm is at most ``β·grad_floor^{α−1}`` (1.5·10³ at the defaults) and it is
    never NaN/Inf. Only tangents at bins with ``|c| < grad_floor`` (1e-8 relative to a
    max-normalised waveform, i.e. exact silence) are affected.
    """
    if alpha == 1.0:
        return beta * jnp.asarray(spec)
    return beta * _power_law(float(alpha), float(grad_floor), _as_complex(spec))


def decompress(
    spec: Complex[Array, "... F T"], alpha: float = 0.5, beta: float = 0.15, grad_floor: float = 1e-8
) -> Complex[Array, "... F T"]:
    """Inverse compression ``c = (|c̃|/β)^{1/α}·e^{i∠c̃}`` (reference ``spec_back``).

    For α ≤ 1 the exponent ``1/α ≥ 1`` so the map is C¹; the same guarded derivative as in
    :func:`compress` removes the 0/0 of ``d|c̃|`` at ``c̃ = 0``.
    """
    if alpha == 1.0:
        return jnp.asarray(spec) / beta
    return _power_law(1.0 / float(alpha), float(grad_floor), _as_complex(spec) / beta)


# ---------------------------------------------------------------------------------------------
# Padding and normalisation
# ---------------------------------------------------------------------------------------------


def pad_frames(spec: Complex[Array, "... F T"], multiple: int = 64) -> Complex[Array, "... F Tp"]:
    """Zero-pad the frame axis on the right to a multiple of ``multiple`` (reference ``pad_spec``)."""
    n = spec.shape[-1]
    extra = (-n) % multiple
    if extra == 0:
        return spec
    return jnp.pad(spec, [(0, 0)] * (spec.ndim - 1) + [(0, extra)])


def unpad_frames(spec: Complex[Array, "... F Tp"], n_frames: int) -> Complex[Array, "... F T"]:
    """Remove right padding added by :func:`pad_frames`."""
    return spec[..., :n_frames]


def normalization_factor(
    y: Float[Array, "... L"],
    mode: Literal["max", "frozen", "rms"] = "max",
    factor: float | Array | None = None,
    rms_target: float = 0.1,
) -> Float[Array, "..."]:
    """The factor ν by which the noisy waveform is divided before the STFT (and the output multiplied).

    * ``max``: ``ν = max_n |y[n]|`` (reference). Piecewise smooth in y: its derivative follows
      the arg-max sample, which can switch as the input changes (a genuine kink of the pipeline).
    * ``frozen``: ``ν = factor`` (a constant; derivatives w.r.t. y do not flow through it).
    * ``rms``: ``ν = rms(y) / rms_target`` (smooth away from y = 0; ``rms_target`` 0.1 ≈ −20 dBFS).

    Shapes: ``[..., L] → [...]``.
    """
    y = jnp.asarray(y)
    if mode == "max":
        return jnp.max(jnp.abs(y), axis=-1)
    if mode == "frozen":
        if factor is None:
            raise ValueError("normalization='frozen' needs a factor (e.g. max|y| at the reference amplitude)")
        return jnp.broadcast_to(jax.lax.stop_gradient(jnp.asarray(factor, y.dtype)), y.shape[:-1])
    if mode == "rms":
        return jnp.sqrt(jnp.mean(y * y, axis=-1)) / rms_target
    raise ValueError(f"unknown normalization {mode!r}; choose one of {NORMALIZATIONS}")
