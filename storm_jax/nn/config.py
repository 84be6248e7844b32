"""Static settings of the NCSN++ backbone and its named presets.

The fields mirror the constructor of the PyTorch reference ``NCSNpp`` (``sgmse/backbones/ncsnpp.py``
of sp-uhh/storm, commit 257e963); see ``storm-reference.md`` § NCSN++. Only the options StoRM uses
(and their cheap neighbours) are implemented: BigGAN ResBlocks with FIR resampling, Gaussian
Fourier time embedding, SiLU, ``progressive`` ∈ {``output_skip``, ``none``},
``progressive_input`` ∈ {``input_skip``, ``none``}, ``progressive_combine`` ∈ {``sum``, ``cat``}.
The reference's remaining switches (``nonlinearity='swish'``, ``fir=True``,
``resamp_with_conv=True``, ``spatial_channels=1``) are fixed at their StoRM values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["PRESETS", "NCSNppConfig", "ncsnpp_config"]

_PROGRESSIVE = ("none", "output_skip")
_PROGRESSIVE_INPUT = ("none", "input_skip")
_COMBINE = ("sum", "cat")
_TUPLE_FIELDS = ("ch_mult", "attn_resolutions", "fir_kernel")


@dataclasses.dataclass(frozen=True)
class NCSNppConfig:
    """NCSN++ settings (frozen, hashable: usable as a static jit argument).

    Attributes (reference constructor arguments of the same name):
        nf: base channel count; level ``i`` has ``nf·ch_mult[i]`` channels, the time embedding
            ``4·nf`` features, the Fourier projection ``nf`` frequencies.
        ch_mult: channel multiplier per resolution level (``len(ch_mult)`` levels, each halving
            both spatial axes).
        num_res_blocks: ResBlocks per level in the encoder (``num_res_blocks + 1`` in the decoder).
        attn_resolutions: frequency sizes at which the encoder/decoder levels get a self-attention
            block (the mid block has one unless ``mid_attention`` is off). ``(0,)`` means "mid
            block only".
        fir_kernel: 1-D FIR taps ``k``; the 2-D resampling kernel is ``outer(k, k)/Σ``.
        skip_rescale: residual sums are divided by √2.
        resblock_type: only ``"biggan"``.
        progressive, progressive_input, progressive_combine: output/input pyramids.
        fourier_scale: standard deviation of the (fixed) Fourier frequencies ``W``.
        image_size: the frequency size the net is built for; the attention levels are chosen at
            construction from ``image_size // 2**level`` and checked at run time against the
            actual frequency size, as the reference does (it tests ``h.shape[-2]``).
        embedding_type: only ``"fourier"`` (the reference's ``positional`` path is broken there).
        input_channels: real input channels (2 per complex channel).
        conditional: time conditioning through the Dense layers and ``Dense_0`` of each ResBlock.
        scale_by_sigma: divide the last hidden state by ``t`` before ``output_layer``.
        centered: inputs already centred; otherwise every channel is mapped ``2v − 1``.
        discriminative: predictor mode. As in the reference this *overrides* three settings:
            ``conditional=False``, ``scale_by_sigma=False``, ``input_channels=2``. The stored
            fields are kept as given (the reference's checkpoints also record the score net's
            values for the predictor); read the values actually used from
            :attr:`effective_conditional`, :attr:`effective_scale_by_sigma` and
            :attr:`effective_input_channels`.
        init_scale: scale of the variance-scaling init of the "zero-init" layers (``Conv_1`` of
            the ResBlocks, ``NIN_3``, the output convolutions); ``0`` means ``1e-10``.
        dropout: dropout rate inside the ResBlocks (identity unless ``deterministic=False``).
        mid_attention: the self-attention block between the two mid ResBlocks (the reference
            always has it). Off only for the ``micro`` preset: with two levels its mid block sees
            ``F/2 × T/2`` positions (4096 for a 0.5 s crop), and that one ``O((FT)²)`` attention
            would cost most of the network's time.

    Lists given for the tuple fields (e.g. from JSON) are converted to tuples.
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (0,)
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "output_skip"
    progressive_input: str = "input_skip"
    progressive_combine: str = "sum"
    fourier_scale: float = 16.0
    image_size: int = 256
    embedding_type: str = "fourier"
    input_channels: int = 6
    conditional: bool = True
    scale_by_sigma: bool = True
    centered: bool = False
    discriminative: bool = False
    init_scale: float = 0.0
    dropout: float = 0.0
    mid_attention: bool = True

    def __post_init__(self):
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        for name in ("resblock_type", "progressive", "progressive_input", "progressive_combine", "embedding_type"):
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        if self.resblock_type != "biggan":
            raise ValueError(f"resblock_type {self.resblock_type!r} is not implemented (only 'biggan')")
        if self.embedding_type != "fourier":
            raise ValueError(f"embedding_type {self.embedding_type!r} is not implemented (only 'fourier')")
        if self.progressive not in _PROGRESSIVE:
            raise ValueError(f"progressive {self.progressive!r} is not implemented; choose one of {_PROGRESSIVE}")
        if self.progressive_input not in _PROGRESSIVE_INPUT:
            raise ValueError(
                f"progressive_input {self.progressive_input!r} is not implemented; choose one of {_PROGRESSIVE_INPUT}"
            )
        if self.progressive_combine not in _COMBINE:
            raise ValueError(f"progressive_combine {self.progressive_combine!r} unknown; choose one of {_COMBINE}")
        if self.nf < 4 or not self.ch_mult or min(self.ch_mult) < 1 or self.num_res_blocks < 1:
            raise ValueError("need nf >= 4, a non-empty ch_mult of positive ints and num_res_blocks >= 1")
        if self.input_channels < 2 or self.input_channels % 2:
            raise ValueError(f"input_channels must be a positive even number, got {self.input_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def effective_conditional(self) -> bool:
        """Time conditioning actually used (``False`` for a discriminative net)."""
        return self.conditional and not self.discriminative

    @property
    def effective_scale_by_sigma(self) -> bool:
        """Division by ``t`` actually used (``False`` for a discriminative net)."""
        return self.scale_by_sigma and not self.discriminative

    @property
    def effective_input_channels(self) -> int:
        """Real input channels actually used (2 = Re Y, Im Y for a discriminative net)."""
        return 2 if self.discriminative else self.input_channels

    @property
    def num_resolutions(self) -> int:
        """Number of resolution levels, ``len(ch_mult)``."""
        return len(self.ch_mult)

    @property
    def all_resolutions(self) -> tuple[int, ...]:
        """Frequency size of each level at construction: ``image_size // 2**i``."""
        return tuple(self.image_size // (2**i) for i in range(self.num_resolutions))


# Reference variants (sgmse/backbones/ncsnpp.py: NCSNppLarge, NCSNpp12M, NCSNpp6M) and CPU presets.
_PRESETS: dict[str, dict[str, Any]] = {
    "ncsnpp": {},
    "ncsnpplarge": {"nf": 128, "ch_mult": (1, 1, 2, 2, 2, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,)},
    "ncsnpp12M": {"nf": 96, "ch_mult": (1, 2, 2, 1), "num_res_blocks": 1, "attn_resolutions": (0,)},
    "ncsnpp6M": {"nf": 96, "ch_mult": (1, 1, 1, 1), "num_res_blocks": 1, "attn_resolutions": (0,)},
    # Our own CPU-sized presets (attention only in the mid block).
    "tiny": {"nf": 16, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (0,)},
    "small": {"nf": 32, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 1, "attn_resolutions": (0,)},
    # Two levels of 8 channels: a training step compiles in seconds (fault and resume tests).
    # No mid attention: at this depth it would attend over F/2·T/2 positions and dominate the cost.
    "micro": {"nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (0,), "mid_attention": False},
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)


def ncsnpp_config(name: str = "ncsnpp", **overrides: Any) -> NCSNppConfig:
    """The preset ``name`` (one of :data:`PRESETS`) with fields replaced by ``overrides``.

    ``ncsnpp`` is the reference default (≈27.8 M parameters as a 6-channel score net);
    ``ncsnpplarge``/``ncsnpp12M``/``ncsnpp6M`` are the reference subclasses; ``tiny`` (nf 16,
    ch_mult (1, 2, 2)) and ``small`` (nf 32, ch_mult (1, 2, 2, 2)) are CPU-sized presets of ours.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown NCSN++ preset {name!r}; known presets: {', '.join(PRESETS)}")
    return NCSNppConfig(**{**_PRESETS[name], **overrides})
