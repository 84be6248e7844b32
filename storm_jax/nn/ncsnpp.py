"""NCSN++ (Song et al. 2021) as used by StoRM, in Flax.

Mirrors ``NCSNpp`` of the PyTorch reference (``sgmse/backbones/ncsnpp.py``, sp-uhh/storm 257e963;
``storm-reference.md`` § NCSN++). The reference keeps its layers in one ``nn.ModuleList``
``all_modules`` and consumes them in order in ``forward``; here :func:`module_layout` is that
construction walk (one entry per list index), the Flax sub-modules are named
``all_modules_{index}`` after it, and the forward pass consumes the entries in the same order.
The checkpoint key map (:mod:`storm_jax.nn.keymap`) is derived from the same walk.

Forward pass, for complex input ``x`` [B, F, T, D] and times ``t`` [B]:

1. pack to real channels ``[Re x₀, Im x₀, Re x₁, Im x₁, …]`` (NHWC [B, F, T, 2D]); map
   ``x ↦ 2x − 1`` unless ``centered`` (every channel, imaginary parts included);
2. time embedding (conditional nets): ``temb = Dense₂(SiLU(Dense₁(Fourier(log t))))``;
3. U-Net: input 3×3 conv, per level ResBlocks (+ attention where configured) and a down
   ResBlock combined (``Combine``) with the FIR-downsampled input pyramid; mid block
   ResBlock–Attention–ResBlock; decoder ResBlocks on ``concat[h, skip]`` and the output pyramid
   (``GroupNorm → SiLU → 3×3 conv`` to ``2D`` channels, FIR-upsampled and summed across levels);
4. if ``scale_by_sigma``: ``h ← h / t`` (t itself, not σ(t)); then the 1×1 ``output_layer``
   (2D → 2 channels; its bias is not divided by t);
5. output ``ch₀ + i·ch₁`` [B, F, T].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import NCSNppConfig
from .layers import (
    AttnBlock,
    Combine,
    Conv,
    Dense,
    GaussianFourierProjection,
    GroupNorm,
    ResnetBlockBigGAN,
    _torch_conv_init,
    default_init,
    downsample_2d,
    group_count,
    upsample_2d,
)

__all__ = ["ModuleSpec", "NCSNpp", "init_params", "module_layout"]


class ModuleSpec(NamedTuple):
    """One entry of the reference's ``all_modules`` list.

    kind: ``fourier`` | ``dense`` | ``conv3x3`` | ``resblock`` | ``attn`` | ``combine`` |
    ``groupnorm``; ``in_ch``/``out_ch``: channel counts (for ``fourier``: ``nf`` and ``nf``);
    ``up``/``down``: resampling ResBlock; ``init_scale``: of the zero-init convolutions.
    """

    kind: str
    in_ch: int
    out_ch: int
    up: bool = False
    down: bool = False
    init_scale: float = 1.0


def module_layout(config: NCSNppConfig) -> tuple[ModuleSpec, ...]:
    """The reference's ``all_modules`` list for ``config``, entry ``i`` = ``all_modules.{i}``.

    Walks the construction logic of the reference ``NCSNpp.__init__`` (with ``discriminative``
    overrides applied): Fourier projection; two Linear layers if conditional; input 3×3 conv;
    encoder levels (``num_res_blocks`` ResBlocks, attention where ``image_size // 2**level`` is in
    ``attn_resolutions``, then a down ResBlock and a ``Combine`` except at the last level); mid
    ResBlock, attention (unless ``mid_attention`` is off), ResBlock; decoder levels (``num_res_blocks + 1`` ResBlocks on
    concatenated skips, attention, output-pyramid GroupNorm + 3×3 conv, an up ResBlock except at
    level 0); a final GroupNorm + conv when there is no output pyramid.
    """
    c = config
    nf = c.nf
    total = c.effective_input_channels
    specs: list[ModuleSpec] = [ModuleSpec("fourier", nf, nf)]
    if c.effective_conditional:
        specs.append(ModuleSpec("dense", 2 * nf, 4 * nf))
        specs.append(ModuleSpec("dense", 4 * nf, 4 * nf))
    specs.append(ModuleSpec("conv3x3", total, nf))
    hs_c = [nf]
    in_ch = nf
    for i_level in range(c.num_resolutions):
        for _ in range(c.num_res_blocks):
            out_ch = nf * c.ch_mult[i_level]
            specs.append(ModuleSpec("resblock", in_ch, out_ch, init_scale=c.init_scale))
            in_ch = out_ch
            if c.all_resolutions[i_level] in c.attn_resolutions:
                specs.append(ModuleSpec("attn", in_ch, in_ch, init_scale=c.init_scale))
            hs_c.append(in_ch)
        if i_level != c.num_resolutions - 1:
            specs.append(ModuleSpec("resblock", in_ch, in_ch, down=True, init_scale=c.init_scale))
            if c.progressive_input == "input_skip":
                specs.append(ModuleSpec("combine", total, in_ch))
                if c.progressive_combine == "cat":
                    in_ch *= 2
            hs_c.append(in_ch)
    in_ch = hs_c[-1]
    specs.append(ModuleSpec("resblock", in_ch, in_ch, init_scale=c.init_scale))
    if c.mid_attention:
        specs.append(ModuleSpec("attn", in_ch, in_ch, init_scale=c.init_scale))
    specs.append(ModuleSpec("resblock", in_ch, in_ch, init_scale=c.init_scale))
    for i_level in reversed(range(c.num_resolutions)):
        for _ in range(c.num_res_blocks + 1):
            out_ch = nf * c.ch_mult[i_level]
            specs.append(ModuleSpec("resblock", in_ch + hs_c.pop(), out_ch, init_scale=c.init_scale))
            in_ch = out_ch
        if c.all_resolutions[i_level] in c.attn_resolutions:
            specs.append(ModuleSpec("attn", in_ch, in_ch, init_scale=c.init_scale))
        if c.progressive == "output_skip":
            specs.append(ModuleSpec("groupnorm", in_ch, in_ch))
            specs.append(ModuleSpec("conv3x3", in_ch, total, init_scale=c.init_scale))
        if i_level != 0:
            specs.append(ModuleSpec("resblock", in_ch, in_ch, up=True, init_scale=c.init_scale))
    assert not hs_c
    if c.progressive != "output_skip":
        specs.append(ModuleSpec("groupnorm", in_ch, in_ch))
        specs.append(ModuleSpec("conv3x3", in_ch, total, init_scale=c.init_scale))
    return tuple(specs)


class NCSNpp(nn.Module):
    """NCSN++ score network / predictor (reference ``NCSNpp``).

    Attributes:
        config: the static settings (:class:`~storm_jax.nn.config.NCSNppConfig`).
        param_dtype: dtype of freshly initialised parameters (float32; float64 with x64).
        precision: ``jax.lax.Precision`` for convolutions and matmuls (None = backend default;
            use ``"highest"`` on accelerators that would otherwise use reduced-precision
            float32 arithmetic).

    ``__call__(x, t=None, *, deterministic=True)``: ``x`` complex [B, F, T, D] with
    ``2D = config.effective_input_channels``, ``F`` and ``T`` divisible by
    ``2**(len(ch_mult) − 1)``; ``t`` [B] (or a scalar, broadcast) for time-conditional nets, None
    for discriminative ones. Returns complex [B, F, T]. The compute dtype is that of ``x``'s real
    part promoted with the parameters; ``t`` is cast to ``x``'s real dtype first.

    Initialisation follows the reference: ``default_init`` (variance scaling, fan_avg, uniform)
    for all convolutions, Dense layers and NIN weights (scale 1; 0.1 for ``NIN_0..2``;
    ``init_scale`` — i.e. 1e-10 by default — for ``Conv_1`` of the ResBlocks, ``NIN_3`` and the
    output-pyramid convolutions), zero biases, GroupNorm scale 1, Fourier ``W`` ~ N(0,
    fourier_scale²), and PyTorch's default U(±1/sqrt(fan_in)) for the ``output_layer`` kernel.
    One deliberate difference: the ``output_layer`` bias starts at 0 (PyTorch draws it uniformly),
    so that at initialisation the output is small (≈1e-5) but not swamped by a constant — it still
    depends on the input. :func:`init_params` draws the same distributions on the host without
    compiling anything.
    """

    config: NCSNppConfig
    param_dtype: Any = jnp.float32
    precision: Any = None

    def _make(self, index: int, spec: ModuleSpec) -> nn.Module:
        """Instantiate the module for ``all_modules.{index}``."""
        c = self.config
        name = f"all_modules_{index}"
        kw = {"param_dtype": self.param_dtype, "precision": self.precision}
        if spec.kind == "fourier":
            return GaussianFourierProjection(spec.out_ch, c.fourier_scale, self.param_dtype, name=name)
        if spec.kind == "dense":
            return Dense(spec.out_ch, name=name, **kw)
        if spec.kind == "conv3x3":
            return Conv(spec.out_ch, 3, kernel_init=default_init(spec.init_scale), name=name, **kw)
        if spec.kind == "groupnorm":
            return GroupNorm(group_count(spec.in_ch), 1e-6, self.param_dtype, name=name)
        if spec.kind == "combine":
            return Combine(spec.out_ch, c.progressive_combine, name=name, **kw)
        if spec.kind == "attn":
            return AttnBlock(c.skip_rescale, spec.init_scale, name=name, **kw)
        if spec.kind == "resblock":
            return ResnetBlockBigGAN(
                out_ch=spec.out_ch,
                temb_dim=4 * c.nf,
                up=spec.up,
                down=spec.down,
                dropout=c.dropout,
                fir_kernel=c.fir_kernel,
                skip_rescale=c.skip_rescale,
                init_scale=spec.init_scale,
                name=name,
                **kw,
            )
        raise AssertionError(spec.kind)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
        c = self.config
        x = jnp.asarray(x)
        if not jnp.iscomplexobj(x):
            raise TypeError(f"NCSNpp expects complex input [B, F, T, D], got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"NCSNpp expects input [B, F, T, D], got shape {x.shape}")
        b, nfreq, ntime, d = x.shape
        total = c.effective_input_channels
        if 2 * d != total:
            raise ValueError(f"input has {d} complex channels = {2 * d} real ones; the net expects {total}")
        m = 2 ** (c.num_resolutions - 1)
        if nfreq % m or ntime % m:
            raise ValueError(f"F = {nfreq} and T = {ntime} must be divisible by 2**(levels-1) = {m}")

        real_dtype = jnp.finfo(x.dtype).dtype  # complex64 -> float32, complex128 -> float64
        specs = module_layout(c)
        mods = [self._make(i, s) for i, s in enumerate(specs)]
        cursor = iter(range(len(specs)))

        def take(kind: str) -> nn.Module:
            i = next(cursor)
            assert specs[i].kind == kind, (i, specs[i].kind, kind)
            return mods[i]

        def attention_here(h: jax.Array, i_level: int) -> bool:
            """Run-time rule of the reference (frequency size in ``attn_resolutions``) checked
            against the construction-time rule (``image_size // 2**level``)."""
            runtime = h.shape[1] in c.attn_resolutions
            built = c.all_resolutions[i_level] in c.attn_resolutions
            if runtime != built:
                raise ValueError(
                    f"attention placement depends on the frequency size: the net was built for "
                    f"image_size={c.image_size} (attn_resolutions={c.attn_resolutions}) but level "
                    f"{i_level} sees F={h.shape[1]}; use inputs with F = image_size"
                )
            return built

        # 1. pack [Re0, Im0, Re1, Im1, ...]
        h_in = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1).reshape(b, nfreq, ntime, 2 * d)

        # 2. time embedding (the Fourier module is created even when unused)
        fourier = take("fourier")
        tt = None
        if t is not None:
            tt = jnp.broadcast_to(jnp.asarray(t).astype(real_dtype), (b,))
            temb = fourier(jnp.log(tt))
        else:
            temb = None
            if self.is_initializing():
                fourier(jnp.ones((1,), real_dtype))
        if c.effective_conditional:
            if temb is None:
                raise ValueError("a time-conditional NCSN++ needs t")
            temb = take("dense")(temb)
            temb = take("dense")(nn.silu(temb))
        else:
            temb = None
        if c.effective_scale_by_sigma and tt is None:
            raise ValueError("scale_by_sigma needs t")

        if not c.centered:
            h_in = 2 * h_in - 1.0

        # 3. encoder
        input_pyramid = h_in if c.progressive_input != "none" else None
        hs = [take("conv3x3")(h_in)]
        for i_level in range(c.num_resolutions):
            for _ in range(c.num_res_blocks):
                h = take("resblock")(hs[-1], temb, deterministic)
                if attention_here(h, i_level):
                    h = take("attn")(h)
                hs.append(h)
            if i_level != c.num_resolutions - 1:
                h = take("resblock")(hs[-1], temb, deterministic)
                if c.progressive_input == "input_skip":
                    input_pyramid = downsample_2d(input_pyramid, c.fir_kernel, factor=2)
                    h = take("combine")(input_pyramid, h)
                hs.append(h)

        h = hs[-1]
        h = take("resblock")(h, temb, deterministic)
        if c.mid_attention:
            h = take("attn")(h)
        h = take("resblock")(h, temb, deterministic)

        # decoder
        pyramid = None
        for i_level in reversed(range(c.num_resolutions)):
            for _ in range(c.num_res_blocks + 1):
                h = take("resblock")(jnp.concatenate([h, hs.pop()], axis=-1), temb, deterministic)
            if attention_here(h, i_level):
                h = take("attn")(h)
            if c.progressive == "output_skip":
                pyramid_h = nn.silu(take("groupnorm")(h))
                pyramid_h = take("conv3x3")(pyramid_h)
                if i_level == c.num_resolutions - 1:
                    pyramid = pyramid_h
                else:
                    pyramid = upsample_2d(pyramid, c.fir_kernel, factor=2) + pyramid_h
            if i_level != 0:
                h = take("resblock")(h, temb, deterministic)
        assert not hs

        if c.progressive == "output_skip":
            h = pyramid
        else:
            h = nn.silu(take("groupnorm")(h))
            h = take("conv3x3")(h)
        assert next(cursor, None) is None

        # 4. scale by t, output layer
        if c.effective_scale_by_sigma:
            h = h / tt.astype(h.dtype)[:, None, None, None]
        out = Conv(
            2,
            1,
            kernel_init=_torch_conv_init(),
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="output_layer",
        )(h)
        # 5. complex output
        return jax.lax.complex(out[..., 0], out[..., 1])



# ----------------------------------------------------------------------------------------------
# Host-side initialisation (no XLA compilation)
# ----------------------------------------------------------------------------------------------


def _init_rule(spec: ModuleSpec, sub: tuple[str, ...], config: NCSNppConfig) -> tuple[str, float]:
    """Initial distribution of parameter ``sub`` (path inside ``all_modules_i``), as created by
    :class:`NCSNpp`: ``("vs", scale)`` = ``default_init(scale)``, ``("normal", σ)``, ``("ones", 0)``
    or ``("zeros", 0)``."""
    leaf = sub[-1]
    if spec.kind == "fourier":
        return "normal", config.fourier_scale
    if leaf == "scale":
        return "ones", 0.0
    if leaf in ("bias", "b"):
        return "zeros", 0.0
    owner = sub[0] if len(sub) > 1 else ""
    if spec.kind == "attn":
        return "vs", (spec.init_scale if owner == "NIN_3" else 0.1)
    if spec.kind == "resblock" and owner == "Conv_1":
        return "vs", spec.init_scale
    if spec.kind == "conv3x3":
        return "vs", spec.init_scale
    return "vs", 1.0


def init_params(config: NCSNppConfig, key: Any = 0, *, param_dtype: Any = np.float32) -> dict:
    """Fresh parameters drawn on the host with NumPy: same tree and same distributions as
    ``NCSNpp(config).init(key, x, t)['params']`` (not the same numbers), without compiling anything.

    ``NCSNpp.init`` under ``jit`` compiles one threefry draw per parameter, which on a CPU takes
    tens of seconds even for the ``tiny`` preset; this function takes milliseconds (``ncsnpp``:
    about a second). ``key`` is a JAX PRNG key (typed or raw) or an int seed; it must be concrete
    (not traced). Distributions: ``default_init(s)`` = U(±sqrt(3s/fan_avg)) with ``s = 1e-10`` for
    ``s = 0``; the Fourier ``W`` ~ N(0, fourier_scale²); ``output_layer`` kernel
    U(±1/sqrt(fan_in)); GroupNorm scales 1; all biases 0.
    """
    if isinstance(key, (int, np.integer)):
        seed = [int(key)]
    else:
        k = jnp.asarray(key) if not jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key) else key
        data = jax.random.key_data(k) if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key) else k
        seed = [int(v) for v in np.asarray(data).ravel()]
    rng = np.random.default_rng(seed)
    d = config.effective_input_channels // 2
    m = 2 ** (config.num_resolutions - 1)
    f = config.image_size if config.image_size % m == 0 else m  # F = image_size: attention placement
    x = jax.ShapeDtypeStruct((1, f, m, d), jnp.complex64)
    t = None if config.discriminative else jax.ShapeDtypeStruct((1,), jnp.float32)
    abstract = jax.eval_shape(NCSNpp(config).init, jax.random.key(0), x, t)["params"]
    specs = module_layout(config)

    def draw(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        if path[0] == "output_layer":
            kind, scale = ("zeros", 0.0) if path[-1] == "bias" else ("fan_in", 1.0 / 3.0)
        else:
            kind, scale = _init_rule(specs[int(path[0].rsplit("_", 1)[1])], path[1:], config)
        if kind == "zeros":
            return np.zeros(shape, param_dtype)
        if kind == "ones":
            return np.ones(shape, param_dtype)
        if kind == "normal":
            return (scale * rng.standard_normal(shape)).astype(param_dtype)
        rf = int(np.prod(shape[:-2]))
        fan_in, fan_out = shape[-2] * rf, shape[-1] * rf
        scale = 1e-10 if scale == 0 else scale
        var = scale / fan_in if kind == "fan_in" else scale / ((fan_in + fan_out) / 2)
        return (np.sqrt(3 * var) * rng.uniform(-1.0, 1.0, shape)).astype(param_dtype)

    def walk(tree, path):
        if isinstance(tree, dict):
            return {k: walk(v, path + (k,)) for k, v in tree.items()}
        return jnp.asarray(draw(path, tuple(tree.shape)))

    return walk(dict(abstract), ())
