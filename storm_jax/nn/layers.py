"""Building blocks of NCSN++ in Flax (NHWC layout: ``[batch, freq, time, channels]``).

Each block mirrors a class of the PyTorch reference (``sgmse/backbones/ncsnpp_utils/layerspp.py``,
``layers.py``, ``up_or_down_sampling.py``, ``op/upfirdn2d.py`` of sp-uhh/storm) and uses the same
sub-module and parameter names, so that a reference ``state_dict`` maps onto the parameters
mechanically (see :mod:`storm_jax.nn.keymap`). Parameter shapes are Flax's: convolution kernels
HWIO, dense kernels ``[in, out]``; attention ``NIN`` weights ``W`` are ``[in, out]`` in both.

Computation dtype follows JAX promotion of the inputs and parameters; every constant is a Python
scalar (weakly typed) so that float32 stays float32 and float64 stays float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NIN",
    "AttnBlock",
    "Combine",
    "Conv",
    "Dense",
    "GaussianFourierProjection",
    "GroupNorm",
    "ResnetBlockBigGAN",
    "default_init",
    "downsample_2d",
    "group_count",
    "upfirdn2d",
    "upsample_2d",
]

_SQRT2 = float(np.sqrt(2.0))


# ----------------------------------------------------------------------------------------------
# Initialisers
# ----------------------------------------------------------------------------------------------


def default_init(scale: float = 1.0) -> Callable:
    """DDPM ``default_init``: variance scaling, ``fan_avg``, uniform; ``scale=0`` means ``1e-10``.

    Draws ``U(−a, a)`` with ``a = sqrt(3·scale / ((fan_in + fan_out)/2))`` (reference
    ``layers.default_init``/``variance_scaling``; fans of a HWIO or ``[in, out]`` kernel).
    """
    scale = 1e-10 if scale == 0 else float(scale)
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def _torch_conv_init() -> Callable:
    """PyTorch's default ``Conv2d`` weight init: ``U(±1/sqrt(fan_in))`` (kaiming, a = √5)."""
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def group_count(channels: int) -> int:
    """Number of GroupNorm groups used throughout NCSN++: ``min(C // 4, 32)``."""
    return min(channels // 4, 32)


# ----------------------------------------------------------------------------------------------
# FIR resampling (upfirdn2d)
# ----------------------------------------------------------------------------------------------


def _pad_axis(x: jax.Array, axis: int, pad0: int, pad1: int) -> jax.Array:
    """Zero-pad (positive) or crop (negative) ``x`` along ``axis``."""
    if pad0 < 0:
        x = jax.lax.slice_in_dim(x, -pad0, x.shape[axis], axis=axis)
        pad0 = 0
    if pad1 < 0:
        x = jax.lax.slice_in_dim(x, 0, x.shape[axis] + pad1, axis=axis)
        pad1 = 0
    if pad0 or pad1:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad0, pad1)
        x = jnp.pad(x, widths)
    return x


def _tap_sum(x: jax.Array, coeffs: Sequence[tuple[int, float]], n_out: int, stride: int, axis: int) -> jax.Array:
    """``Σ c · x[o + stride·i]`` over ``(o, c)`` in ``coeffs``, ``i = 0 … n_out − 1``, along ``axis``."""
    out = None
    for offset, c in coeffs:
        term = c * jax.lax.slice_in_dim(x, offset, offset + (n_out - 1) * stride + 1, stride=stride, axis=axis)
        out = term if out is None else out + term
    if out is None:
        shape = list(x.shape)
        shape[axis] = n_out
        out = jnp.zeros(shape, x.dtype)
    return out


def _upfirdn_1d(x: jax.Array, taps: np.ndarray, axis: int, up: int, down: int, pad0: int, pad1: int) -> jax.Array:
    """1-D ``upfirdn`` along ``axis`` with the semantics of the reference ``upfirdn2d_native``:
    insert ``up − 1`` zeros after every sample, pad by ``(pad0, pad1)``, convolve with ``taps``
    (a true convolution: ``y[n] = Σ_j taps[K−1−j]·z[n·down + j]``), keep every ``down``-th sample.
    Output length ``(n·up + pad0 + pad1 − K) // down + 1``.

    Without down-sampling the zero-inserted signal is never formed: output phase ``r`` (samples
    ``up·i + r``) only meets the taps ``j`` with ``(r + j − pad0) ≡ 0 (mod up)``, i.e. it is a short
    correlation of ``x`` itself (polyphase form); the phases are then interleaved. Either way the
    work is a sum over the few taps of (strided) slices, never a loop over samples.
    """
    axis = axis % x.ndim
    n = x.shape[axis]
    k = len(taps)
    flipped = [float(c) for c in taps[::-1]]
    n_full = n * up + pad0 + pad1 - k + 1  # outputs before down-sampling
    if up == 1 or down != 1:
        if up > 1:
            zeros = jnp.zeros_like(x)
            x = jnp.stack([x] + [zeros] * (up - 1), axis=axis + 1)
            x = x.reshape(x.shape[:axis] + (n * up,) + x.shape[axis + 2 :])
        x = _pad_axis(x, axis, pad0, pad1)
        n_out = (n_full - 1) // down + 1
        return _tap_sum(x, [(j, c) for j, c in enumerate(flipped) if c != 0.0], n_out, down, axis)
    # polyphase: y[up·i + r] = Σ_{j ≡ pad0 − r (mod up)} flipped[j] · x[i + (r + j − pad0)/up]
    if n_full % up:
        raise ValueError("polyphase upfirdn needs an output length divisible by the factor")
    n_out = n_full // up
    lo = -min((r + j - pad0) // up for r in range(up) for j in range(k))  # left zero padding of x
    hi = max(0, max((r + j - pad0) // up for r in range(up) for j in range(k)) + n_out - n)
    xp = _pad_axis(x, axis, lo, hi)
    phases = []
    for r in range(up):
        coeffs = [((r + j - pad0) // up + lo, c) for j, c in enumerate(flipped) if c != 0.0 and (r + j - pad0) % up == 0]
        phases.append(_tap_sum(xp, coeffs, n_out, 1, axis))
    y = jnp.stack(phases, axis=axis + 1)
    return y.reshape(y.shape[:axis] + (n_out * up,) + y.shape[axis + 2 :])


def _normalized_taps(k: Sequence[float], gain: float) -> np.ndarray:
    """1-D factor of the reference's 2-D kernel: ``outer(k, k)/Σ outer(k, k) · gain`` equals
    ``(k/Σk·√gain) ⊗ (k/Σk·√gain)`` (``_setup_kernel``); computed in float64."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 1:
        raise ValueError("only separable (1-D) FIR kernels are supported")
    return k / k.sum() * np.sqrt(gain)


def upfirdn2d(
    x: jax.Array, k: Sequence[float], up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0
) -> jax.Array:
    """``upfirdn2d`` of the reference on NHWC input with the separable kernel
    ``outer(k, k)/Σ · gain``: upsample both spatial axes by zero insertion (factor ``up``), pad
    both by ``pad = (p0, p1)``, convolve, downsample by ``down``. Done as two 1-D passes
    (freq, then time)."""
    taps = _normalized_taps(k, gain)
    x = _upfirdn_1d(x, taps, axis=1, up=up, down=down, pad0=pad[0], pad1=pad[1])
    return _upfirdn_1d(x, taps, axis=2, up=up, down=down, pad0=pad[0], pad1=pad[1])


def upsample_2d(x: jax.Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> jax.Array:
    """FIR upsampling (reference ``upsample_2d``): kernel ``outer(k,k)/Σ·factor²``, zero
    insertion, padding ``((p+1)//2 + factor − 1, p//2)`` with ``p = len(k) − factor``
    (``(2, 1)`` for ``[1,3,3,1]``). ``[B, H, W, C] → [B, H·f, W·f, C]``."""
    p = len(k) - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2), gain=factor**2)


def downsample_2d(x: jax.Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> jax.Array:
    """FIR downsampling (reference ``downsample_2d``): kernel ``outer(k,k)/Σ``, padding
    ``((p+1)//2, p//2)`` with ``p = len(k) − factor`` (``(1, 1)`` for ``[1,3,3,1]``), stride
    ``factor``. ``[B, H, W, C] → [B, H/f, W/f, C]``."""
    p = len(k) - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


# ----------------------------------------------------------------------------------------------
# Basic layers
# ----------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """2-D convolution (cross-correlation, stride 1, zero padding ``kernel_size // 2``) with
    params ``kernel`` [k, k, in, out] and ``bias`` [out] (reference ``ddpm_conv3x3``/``conv1x1``,
    ``nn.Conv2d``)."""

    features: int
    kernel_size: int = 3
    kernel_init: Callable = default_init()
    bias_init: Callable = nn.initializers.zeros
    use_bias: bool = True
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        dtype = jnp.result_type(x, kernel)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if k == 1:
            y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0], precision=self.precision)
        else:
            p = k // 2
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(1, 1),
                padding=((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=self.precision,
            )
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(dtype)
        return y


class Dense(nn.Module):
    """Affine map ``y = x·kernel + bias``, ``kernel`` [in, out] (reference ``nn.Linear`` with
    ``default_init`` weight and zero bias)."""

    features: int
    kernel_init: Callable = default_init()
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        dtype = jnp.result_type(x, kernel)
        return jnp.matmul(x.astype(dtype), kernel.astype(dtype), precision=self.precision) + bias.astype(dtype)


class GroupNorm(nn.Module):
    """GroupNorm over NHWC input (``torch.nn.GroupNorm``): channels split into ``num_groups``
    contiguous groups; per sample and group ``y = (x − μ)/sqrt(σ² + eps)·scale + bias`` with the
    biased variance over (H, W, C/G). Params ``scale`` (torch ``weight``) and ``bias``."""

    num_groups: int
    epsilon: float = 1e-6
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        g = self.num_groups
        if c % g:
            raise ValueError(f"{c} channels cannot be split into {g} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        dtype = jnp.result_type(x, scale)
        x = x.astype(dtype)
        b = x.shape[0]
        spatial = tuple(range(1, x.ndim - 1))
        n = math.prod(x.shape[1:-1]) * (c // g)

        def group_mean(per_channel_sum):  # [B, C] -> [B, 1, …, 1, C] (group value per channel)
            m = jnp.sum(per_channel_sum.reshape(b, g, c // g), axis=-1) / n
            return jnp.repeat(m, c // g, axis=-1).reshape((b,) + (1,) * len(spatial) + (c,))

        # two-pass moments: per-channel spatial sums first (cheap, contiguous), then per group
        d = x - group_mean(jnp.sum(x, axis=spatial))
        var = group_mean(jnp.sum(d * d, axis=spatial))
        return d * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(dtype)) + bias.astype(dtype)


class NIN(nn.Module):
    """Network-in-network (per-pixel linear map over channels): ``y = x·W + b``, params ``W``
    [in, out] and ``b`` [out] (reference ``layers.NIN``; ``W`` has ``default_init(init_scale)``,
    default scale 0.1)."""

    num_units: int
    init_scale: float = 0.1
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units), self.param_dtype)
        b = self.param("b", nn.initializers.zeros, (self.num_units,), self.param_dtype)
        dtype = jnp.result_type(x, w)
        return jnp.einsum("...c,cd->...d", x.astype(dtype), w.astype(dtype), precision=self.precision) + b.astype(dtype)


# ----------------------------------------------------------------------------------------------
# NCSN++ blocks
# ----------------------------------------------------------------------------------------------


class GaussianFourierProjection(nn.Module):
    """Gaussian Fourier time embedding (reference ``layerspp.GaussianFourierProjection``).

    ``W ~ N(0, scale²)`` of size ``embedding_size`` is a fixed (``requires_grad=False`` in the
    reference) parameter. For input ``s`` [B] (the network passes ``s = log t``):
    ``proj = s·W·2·π`` (evaluated in that order, π rounded to the compute dtype) and the output is
    ``concat[sin(proj), cos(proj)]`` [B, 2·embedding_size] (sines first).
    """

    embedding_size: int = 256
    scale: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        scale = self.scale
        w = self.param(
            "W", lambda key, shape, dtype: scale * jax.random.normal(key, shape, dtype), (self.embedding_size,), self.param_dtype
        )
        dtype = jnp.result_type(s, w)
        proj = s.astype(dtype)[:, None] * w.astype(dtype)[None, :] * 2 * np.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Input-pyramid combiner (reference ``layerspp.Combine``): ``h = Conv_0(x)`` (1×1, ``dim2``
    outputs), then ``h + y`` (``sum``) or ``concat[h, y]`` (``cat``)."""

    dim2: int
    method: str = "sum"
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = Conv(self.dim2, 1, param_dtype=self.param_dtype, precision=self.precision, name="Conv_0")(x)
        if self.method == "sum":
            return h + y
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        raise ValueError(f"Combine method {self.method!r} not recognized")


class AttnBlock(nn.Module):
    """Self-attention over all positions (reference ``layerspp.AttnBlockpp``).

    ``h = GroupNorm_0(x)``; ``q, k, v = NIN_0(h), NIN_1(h), NIN_2(h)``;
    ``w[p, p'] = softmax_{p'}(q_p·k_{p'} · C^{−1/2})`` over the ``H·W`` positions;
    ``h = NIN_3(Σ_{p'} w[p, p'] v_{p'})``; output ``(x + h)/√2`` if ``skip_rescale`` else ``x + h``.
    ``NIN_3`` is initialised with ``init_scale``.
    """

    skip_rescale: bool = True
    init_scale: float = 0.0
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        kw = {"param_dtype": self.param_dtype, "precision": self.precision}
        h = GroupNorm(group_count(c), 1e-6, self.param_dtype, name="GroupNorm_0")(x)
        q = NIN(c, name="NIN_0", **kw)(h).reshape(b, hh * ww, c)
        k = NIN(c, name="NIN_1", **kw)(h).reshape(b, hh * ww, c)
        v = NIN(c, name="NIN_2", **kw)(h).reshape(b, hh * ww, c)
        w = jnp.einsum("bpc,bqc->bpq", q, k, precision=self.precision) * (int(c) ** (-0.5))
        w = jax.nn.softmax(w, axis=-1)
        h = jnp.einsum("bpq,bqc->bpc", w, v, precision=self.precision).reshape(b, hh, ww, c)
        h = NIN(c, init_scale=self.init_scale, name="NIN_3", **kw)(h)
        x = x.astype(h.dtype)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block (reference ``layerspp.ResnetBlockBigGANpp``), SiLU activation.

    ``h = SiLU(GroupNorm_0(x))``; if ``up``/``down``: FIR-resample both ``h`` and ``x``
    (:func:`upsample_2d`/:func:`downsample_2d`); ``h = Conv_0(h)`` (3×3);
    ``h += Dense_0(SiLU(temb))`` per channel when ``temb`` is given;
    ``h = Conv_1(Dropout(SiLU(GroupNorm_1(h))))`` (3×3, ``init_scale``);
    ``x = Conv_2(x)`` (1×1) when ``in_ch ≠ out_ch`` or resampling; output ``(x + h)/√2``
    (``skip_rescale``) or ``x + h``. GroupNorms have ``min(C//4, 32)`` groups and eps 1e-6.

    ``Dense_0`` (``temb_dim → out_ch``) always exists, as in the reference (which passes
    ``temb_dim = 4·nf`` even to the discriminative net); when ``temb`` is None it is created at
    init but not used.
    """

    out_ch: int | None = None
    temb_dim: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        kw = {"param_dtype": self.param_dtype, "precision": self.precision}
        h = nn.silu(GroupNorm(group_count(in_ch), 1e-6, self.param_dtype, name="GroupNorm_0")(x))
        if self.up:
            h = upsample_2d(h, self.fir_kernel, factor=2)
            x = upsample_2d(x, self.fir_kernel, factor=2)
        elif self.down:
            h = downsample_2d(h, self.fir_kernel, factor=2)
            x = downsample_2d(x, self.fir_kernel, factor=2)
        h = Conv(out_ch, 3, name="Conv_0", **kw)(h)
        if self.temb_dim is not None:
            dense = Dense(out_ch, name="Dense_0", **kw)
            if temb is not None:
                h = h + dense(nn.silu(temb))[:, None, None, :]
            elif self.is_initializing():
                dense(jnp.zeros((1, self.temb_dim), self.param_dtype))  # create the unused params
        h = nn.silu(GroupNorm(group_count(out_ch), 1e-6, self.param_dtype, name="GroupNorm_1")(h))
        if self.dropout > 0.0:
            h = nn.Dropout(self.dropout, deterministic=deterministic, name="Dropout_0")(h)
        h = Conv(out_ch, 3, kernel_init=default_init(self.init_scale), name="Conv_1", **kw)(h)
        if in_ch != out_ch or self.up or self.down:
            x = Conv(out_ch, 1, name="Conv_2", **kw)(x)
        x = x.astype(h.dtype)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h
