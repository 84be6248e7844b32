"""Map between PyTorch reference ``state_dict`` keys and our Flax parameter tree.

Derived from :func:`storm_jax.nn.ncsnpp.module_layout` (the reference's construction walk), so it
covers every preset without hard-coded key lists. Reference key order (``state_dict`` and
``model.parameters()`` order, which the EMA ``shadow_params`` list follows): ``output_layer``
first (registered before ``all_modules`` in ``NCSNpp.__init__``), then ``all_modules.{i}`` in
list order, each module's parameters in attribute-registration order (ResBlock: ``GroupNorm_0,
Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2``; attention: ``GroupNorm_0, NIN_0 … NIN_3``;
``weight`` before ``bias``, ``W`` before ``b``).

Transforms (torch tensor → our array):
    ``conv``: ``[O, I, kH, kW] → [kH, kW, I, O]`` (transpose (2, 3, 1, 0));
    ``linear``: ``[out, in] → [in, out]``;
    ``identity``: unchanged (GroupNorm ``weight → scale``, biases, ``NIN.W`` which the reference
    already stores as ``[in, out]``, the Fourier ``W``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from .config import NCSNppConfig
from .ncsnpp import ModuleSpec, module_layout

__all__ = ["TRANSFORMS", "count_params", "reference_keys", "reference_shapes", "to_flax", "to_torch", "torch_key_map"]

TRANSFORMS = ("conv", "linear", "identity")

# one entry: (torch key suffix, flax path suffix, transform, torch shape)
_Entry = tuple[str, tuple[str, ...], str, tuple[int, ...]]


def _conv(tname: str, fname: str, cin: int, cout: int, k: int) -> list[_Entry]:
    return [
        (f"{tname}.weight", (fname, "kernel"), "conv", (cout, cin, k, k)),
        (f"{tname}.bias", (fname, "bias"), "identity", (cout,)),
    ]


def _norm(tname: str, fname: str, ch: int) -> list[_Entry]:
    return [
        (f"{tname}.weight", (fname, "scale"), "identity", (ch,)),
        (f"{tname}.bias", (fname, "bias"), "identity", (ch,)),
    ]


def _module_entries(spec: ModuleSpec, temb_dim: int) -> list[_Entry]:
    """Parameters of one ``all_modules`` entry, in reference registration order, with the
    torch key and flax path relative to the module."""
    k = spec.kind
    if k == "fourier":
        return [("W", ("W",), "identity", (spec.out_ch,))]
    if k == "dense":
        return [
            ("weight", ("kernel",), "linear", (spec.out_ch, spec.in_ch)),
            ("bias", ("bias",), "identity", (spec.out_ch,)),
        ]
    if k == "conv3x3":
        return [(s[len("X.") :], p[1:], tr, sh) for s, p, tr, sh in _conv("X", "X", spec.in_ch, spec.out_ch, 3)]
    if k == "groupnorm":
        return [(s[len("X.") :], p[1:], tr, sh) for s, p, tr, sh in _norm("X", "X", spec.in_ch)]
    if k == "combine":
        return _conv("Conv_0", "Conv_0", spec.in_ch, spec.out_ch, 1)
    if k == "attn":
        c = spec.in_ch
        out = _norm("GroupNorm_0", "GroupNorm_0", c)
        for j in range(4):
            out += [
                (f"NIN_{j}.W", (f"NIN_{j}", "W"), "identity", (c, c)),
                (f"NIN_{j}.b", (f"NIN_{j}", "b"), "identity", (c,)),
            ]
        return out
    if k == "resblock":
        i, o = spec.in_ch, spec.out_ch
        out = _norm("GroupNorm_0", "GroupNorm_0", i)
        out += _conv("Conv_0", "Conv_0", i, o, 3)
        out += [
            ("Dense_0.weight", ("Dense_0", "kernel"), "linear", (o, temb_dim)),
            ("Dense_0.bias", ("Dense_0", "bias"), "identity", (o,)),
        ]
        out += _norm("GroupNorm_1", "GroupNorm_1", o)
        out += _conv("Conv_1", "Conv_1", o, o, 3)
        if i != o or spec.up or spec.down:
            out += _conv("Conv_2", "Conv_2", i, o, 1)
        return out
    raise AssertionError(k)


def _entries(config: NCSNppConfig) -> list[_Entry]:
    """All parameters of the net, in reference order (keys without prefix)."""
    out: list[_Entry] = _conv("output_layer", "output_layer", config.effective_input_channels, 2, 1)
    for idx, spec in enumerate(module_layout(config)):
        for key, path, tr, shape in _module_entries(spec, 4 * config.nf):
            out.append((f"all_modules.{idx}.{key}", (f"all_modules_{idx}",) + path, tr, shape))
    return out


def reference_keys(config: NCSNppConfig) -> list[str]:
    """The reference ``state_dict`` keys of the net (``output_layer`` first, then
    ``all_modules.*`` in list order), without any checkpoint prefix."""
    return [e[0] for e in _entries(config)]


def reference_shapes(config: NCSNppConfig) -> dict[str, tuple[int, ...]]:
    """Reference (torch) tensor shape of each key of :func:`reference_keys`."""
    return {e[0]: e[3] for e in _entries(config)}


def torch_key_map(config: NCSNppConfig, prefix: str = "") -> dict[str, tuple[tuple[str, ...], str]]:
    """``{prefix + torch key: (flax param path, transform)}`` for every reference parameter,
    in reference order. ``transform`` ∈ :data:`TRANSFORMS` (see the module docstring)."""
    return {prefix + key: (path, tr) for key, path, tr, _ in _entries(config)}


def _forward(a: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return np.transpose(a, (2, 3, 1, 0))
    if transform == "linear":
        return np.transpose(a, (1, 0))
    return a


def _backward(a: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return np.transpose(a, (3, 2, 0, 1))
    if transform == "linear":
        return np.transpose(a, (1, 0))
    return a


def to_flax(
    state: Mapping[str, Any], config: NCSNppConfig, prefix: str = "", strict: bool = True
) -> dict[str, Any]:
    """Convert a reference ``state_dict`` (numpy arrays or anything ``np.asarray`` accepts; keys
    with ``prefix``) into our nested parameter dict (numpy arrays, dtypes kept; pass as
    ``{'params': ...}`` to ``NCSNpp(config).apply``).

    Raises ``KeyError`` for a missing key and ``ValueError`` for a shape mismatch; with
    ``strict`` also for keys starting with ``prefix`` that the net does not have.
    """
    params: dict[str, Any] = {}
    for key, path, tr, shape in _entries(config):
        full = prefix + key
        if full not in state:
            raise KeyError(f"missing reference parameter {full!r}")
        a = np.asarray(state[full])
        if tuple(a.shape) != shape:
            raise ValueError(f"{full}: expected torch shape {shape}, got {tuple(a.shape)}")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(_forward(a, tr))
    if strict:
        known = {prefix + e[0] for e in _entries(config)}
        extra = [k for k in state if k.startswith(prefix) and k not in known]
        if extra:
            raise ValueError(f"{len(extra)} unexpected keys under prefix {prefix!r}, e.g. {extra[:3]}")
    return params


def to_torch(params: Mapping[str, Any], config: NCSNppConfig, prefix: str = "") -> dict[str, np.ndarray]:
    """Inverse of :func:`to_flax`: ``{prefix + torch key: numpy array in torch layout}`` in
    reference order (exact: only transposes)."""
    out: dict[str, np.ndarray] = {}
    for key, path, tr, shape in _entries(config):
        node: Any = params
        for p in path:
            node = node[p]
        a = np.ascontiguousarray(_backward(np.asarray(node), tr))
        if tuple(a.shape) != shape:
            raise ValueError(f"{key}: expected torch shape {shape}, got {tuple(a.shape)}")
        out[prefix + key] = a
    return out


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree (arrays or ``jax.ShapeDtypeStruct``)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))
