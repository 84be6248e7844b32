"""NCSN++ backbone (Flax) with PyTorch-reference parameter names and checkpoint key map."""

from .config import PRESETS, NCSNppConfig, ncsnpp_config
from .keymap import (
    count_params,
    reference_keys,
    reference_shapes,
    to_flax,
    to_torch,
    torch_key_map,
)
from .ncsnpp import NCSNpp, init_params, module_layout

__all__ = [
    "PRESETS",
    "NCSNpp",
    "NCSNppConfig",
    "count_params",
    "init_params",
    "module_layout",
    "ncsnpp_config",
    "reference_keys",
    "reference_shapes",
    "to_flax",
    "to_torch",
    "torch_key_map",
]
