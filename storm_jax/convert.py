"""Import and export PyTorch Lightning checkpoints of the reference (sp-uhh/storm, sgmse).

What is read (``storm-reference.md`` § Checkpoints, § StoRM model; reference ``sgmse/model.py``
and ``train.py`` at commit 257e963):

* ``state_dict``: ``StochasticRegenerationModel`` keys ``denoiser_net.*`` (predictor Π) and
  ``score_net.*`` (score network); ``ScoreModel`` (``--mode score-only``) and
  ``DiscriminativeModel`` (``--mode denoiser-only``) keys ``dnn.*``. Within a net the keys are
  those of :func:`storm_jax.nn.reference_keys` (``output_layer`` first, then ``all_modules.*``).
* ``ema``: the ``torch_ema`` (0.3) state ``{decay, num_updates, shadow_params, collected_params}``.
  ``shadow_params`` is positional, in ``model.parameters()`` order: the modules are registered
  ``denoiser_net`` then ``score_net`` (``StochasticRegenerationModel.__init__``), and inside
  ``NCSNpp.__init__`` ``output_layer`` is assigned before ``all_modules``, so the order is the
  predictor's keys then the score net's, each in :func:`~storm_jax.nn.reference_keys` order (the
  reference's evaluation, ``model.eval()``, copies these over the raw weights). ``torch_ema``
  0.3 keeps every parameter, including the frozen Fourier ``W``.
* ``hyper_parameters``: Lightning's ``save_hyperparameters`` dict of the ``__init__`` arguments
  plus the ``**kwargs`` train.py passes (argparse groups of model, SDE and data module):
  ``backbone_denoiser``/``backbone_score`` (StoRM) or ``backbone`` (dnn), ``sde``, ``t_eps``,
  ``condition``, ``theta``, ``sigma_min``, ``sigma_max``, ``n_fft``, ``hop_length``, ``window``,
  ``spec_factor``, ``spec_abs_exponent``, NCSN++ constructor kwargs when given, and
  ``input_channels``/``discriminative`` *as last set for the score net* (one dict is passed to
  both constructors and changed on the way), so the predictor's settings are taken from its role.
  It also pickles the class ``sgmse.data_module.SpecsDataModule`` (``data_module_cls``).

Loading is safe: ``torch.load(weights_only=True)`` with an explicit allow-list
(:data:`STAND_IN_GLOBALS`) whose entries are replaced by inert stand-in classes; a checkpoint
whose pickle names any other global (e.g. ``os.system``) is refused with
:class:`UnsafeCheckpointError` before anything is unpickled (zip archives are scanned first), and
``weights_only`` itself never imports or calls anything outside the allow-list.

torch is an optional dependency (``pip install 'storm-jax[torch]'``), imported lazily here.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import re
import zipfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from .audio import SpecConfig
from .files import atomic_path
from .model import StormConfig, StormModel
from .nn import NCSNppConfig, ncsnpp_config, reference_shapes, to_flax, to_torch
from .sde import OUVE

__all__ = [
    "SUPPORTED_BACKBONES",
    "STAND_IN_GLOBALS",
    "ReferenceCheckpoint",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "config_from_hparams",
    "hparams_from_config",
    "read_checkpoint",
    "import_checkpoint",
    "export_checkpoint",
]

SUPPORTED_BACKBONES = ("ncsnpp", "ncsnpplarge", "ncsnpp12M", "ncsnpp6M")
"""Reference backbone registry names we can import (``sgmse/backbones/ncsnpp.py``)."""

STAND_IN_GLOBALS = (
    "sgmse.data_module.SpecsDataModule",
    "sgmse.data_module.Specs",
    "sgmse.model.ScoreModel",
    "sgmse.model.DiscriminativeModel",
    "sgmse.model.StochasticRegenerationModel",
    "sgmse.sdes.OUVESDE",
    "sgmse.backbones.ncsnpp.NCSNpp",
    "sgmse.backbones.ncsnpp.NCSNppLarge",
    "sgmse.backbones.ncsnpp.NCSNpp12M",
    "sgmse.backbones.ncsnpp.NCSNpp6M",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)
"""Globals a reference checkpoint may name; each is mapped to an inert stand-in (a class that
stores nothing and runs nothing; ``AttributeDict`` becomes an ``OrderedDict``)."""

_PREFIXES = {"predictor": "denoiser_net.", "score": "score_net."}
_DNN = "dnn."
_CONDITIONS = {"both": "both", "noisy": "noisy", "post_denoiser": "predictor"}
_FIXED = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions")  # set by the subclasses' constructors
_BACKBONE_FIELDS = tuple(f.name for f in dataclasses.fields(NCSNppConfig) if f.name not in ("input_channels", "discriminative", "mid_attention"))
# reference NCSN++ options fixed in our implementation: (hparams key, the only supported value)
_FIXED_OPTIONS = {"nonlinearity": "swish", "fir": True, "resamp_with_conv": True, "spatial_channels": 1}
_TORCH_HINT = "importing or exporting PyTorch checkpoints needs torch: pip install 'storm-jax[torch]'"


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle names globals outside :data:`STAND_IN_GLOBALS`; nothing was run."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model its hyper-parameters describe."""


# ------------------------------------------------------------------------------------------------
# stand-ins and safe loading
# ------------------------------------------------------------------------------------------------


class _StandIn:
    """Inert replacement for a pickled reference class: accepts anything, stores nothing."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self):
        return f"<stand-in for {self.qualified_name}>"


def _stand_in(name: str):
    if name.endswith(".AttributeDict"):
        # a dict subclass; weights_only fills only exact dict types, so it becomes an OrderedDict
        return collections.OrderedDict
    short = name.rsplit(".", 1)[1]
    return type(short, (_StandIn,), {"qualified_name": name, "__module__": __name__})


_STAND_INS: dict[str, Any] = {}


def _stand_ins(names: Iterable[str]) -> list[tuple[Any, str]]:
    out = []
    for name in names:
        if name not in _STAND_INS:
            _STAND_INS[name] = _stand_in(name)
        out.append((_STAND_INS[name], name))
    return out


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(_TORCH_HINT) from None
    return torch


def _refuse(path: Path, names: Iterable[str]) -> UnsafeCheckpointError:
    names = sorted(set(names))
    return UnsafeCheckpointError(
        f"{path}: refused to load: its pickle references {', '.join(names)}, which is not on the allow-list of "
        f"stand-in classes (storm_jax.convert.STAND_IN_GLOBALS); nothing was executed. If you trust this file and the "
        f"names are harmless data classes, pass allow=[...] (CLI: --allow NAME) to map them to inert stand-ins."
    )


def _torch_load(path: Path, allow: Iterable[str] = ()) -> Any:
    """``torch.load(weights_only=True)`` with the stand-ins; a clear error for unsafe, truncated
    or foreign files (each naming ``path``)."""
    torch = _torch()
    ser = torch.serialization
    if not hasattr(ser, "safe_globals"):
        raise ImportError(f"importing checkpoints needs torch >= 2.5 (found {torch.__version__}): {_TORCH_HINT}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    allowed = tuple(STAND_IN_GLOBALS) + tuple(allow)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{path}: not a PyTorch checkpoint (empty file)")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: truncated or corrupt PyTorch checkpoint (zip archive without a central directory)")
        try:
            unsafe = ser.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # noqa: BLE001 - any failure to scan means an unreadable archive
            raise ValueError(f"{path}: truncated or corrupt PyTorch checkpoint ({str(err).splitlines()[0]})") from None
        bad = [g for g in unsafe if g not in allowed]
        if bad:
            raise _refuse(path, bad)
    elif head[:1] != b"\x80":
        raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with ser.safe_globals(_stand_ins(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        names = re.findall(r"GLOBAL ([\w.]+)", msg)
        if names or "Unsupported global" in msg:
            raise _refuse(path, names or ["<unknown>"]) from None
        raise ValueError(f"{path}: truncated or corrupt PyTorch checkpoint ({msg.splitlines()[0]})") from None
    except (EOFError, RuntimeError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: truncated or corrupt PyTorch checkpoint ({str(err).splitlines()[0] or type(err).__name__})") from None


# ------------------------------------------------------------------------------------------------
# hyper-parameters <-> StormConfig
# ------------------------------------------------------------------------------------------------


def _backbone(name: Any, hp: Mapping[str, Any], where: str) -> NCSNppConfig:
    if name not in SUPPORTED_BACKBONES:
        raise ValueError(f"{where}: backbone {name!r} is not supported; supported backbones: {', '.join(SUPPORTED_BACKBONES)}")
    for key, value in _FIXED_OPTIONS.items():
        if key in hp and hp[key] != value:
            raise ValueError(f"{where}: {key}={hp[key]!r} is not supported (only {value!r})")
    over = {k: hp[k] for k in _BACKBONE_FIELDS if k in hp and hp[k] is not None}
    if name != "ncsnpp":  # NCSNppLarge & co. pass these to NCSNpp themselves
        over = {k: v for k, v in over.items() if k not in _FIXED}
    try:
        return ncsnpp_config(name, **over)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: backbone settings not supported: {err}") from None


def _get(hp: Mapping[str, Any], key: str, default: Any) -> Any:
    """``hp[key]``, or ``default`` when absent or ``None`` (an argparse option left unset)."""
    value = hp.get(key)
    return default if value is None else value


def config_from_hparams(hp: Mapping[str, Any], layout: str, where: str = "checkpoint", dnn_role: str | None = None) -> StormConfig:
    """The :class:`StormConfig` a reference checkpoint's ``hyper_parameters`` describe.

    ``layout`` is ``"storm"`` (``StochasticRegenerationModel``) or ``"dnn"`` (``ScoreModel`` /
    ``DiscriminativeModel``; ``dnn_role`` ``"score"`` or ``"predictor"``). Missing entries take
    the reference defaults (``SpecsDataModule``: ``spec_factor`` 0.15, ``spec_abs_exponent`` 0.5,
    n_fft 510, hop 128; ``OUVESDE`` θ 1.5, σ_min 0.05, σ_max 0.5; ``t_eps`` 0.03; backbone
    ``ncsnpp``; ``condition`` ``both``).
    """
    sde_name = hp.get("sde", "ouve")
    if sde_name not in ("ouve", "ouvesde"):
        raise ValueError(f"{where}: SDE {sde_name!r} is not supported (only 'ouve')")
    if hp.get("window", "hann") != "hann":
        raise ValueError(f"{where}: STFT window {hp['window']!r} is not supported (only 'hann')")
    if hp.get("return_time", False):
        raise ValueError(f"{where}: time-domain models (return_time=True) are not supported")
    try:
        sde = OUVE(
            theta=float(_get(hp, "theta", 1.5)),
            sigma_min=float(_get(hp, "sigma_min", 0.05)),
            sigma_max=float(_get(hp, "sigma_max", 0.5)),
            t_eps=float(_get(hp, "t_eps", 0.03)),
        )
        spec = SpecConfig(
            n_fft=int(_get(hp, "n_fft", 510)),
            hop=int(_get(hp, "hop_length", 128)),
            alpha=float(_get(hp, "spec_abs_exponent", 0.5)),
            beta=float(_get(hp, "spec_factor", 0.15)),
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if layout == "storm":
        names = {"predictor": hp.get("backbone_denoiser", "ncsnpp"), "score": hp.get("backbone_score", "ncsnpp")}
        present = {r: n not in ("none", None) for r, n in names.items()}
        used = {n for r, n in names.items() if present[r]}
        if len(used) > 1:
            raise ValueError(f"{where}: predictor and score backbones differ ({names['predictor']!r} vs {names['score']!r}); not supported")
        cond = hp.get("condition", "both")
        if cond not in _CONDITIONS:
            raise ValueError(f"{where}: unknown condition {cond!r}; the reference knows {', '.join(_CONDITIONS)}")
        kw = dict(condition=_CONDITIONS[cond], has_predictor=present["predictor"], has_score=present["score"])
        backbone = _backbone(used.pop() if used else "ncsnpp", hp, where)
    elif layout == "dnn":
        backbone = _backbone(hp.get("backbone", "ncsnpp"), hp, where)
        if dnn_role == "predictor":
            kw = dict(condition="both", has_predictor=True, has_score=False)
        else:
            kw = dict(condition="noisy", has_predictor=False, has_score=True)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    try:
        return StormConfig(backbone=backbone, sde=sde, spec=spec, **kw)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def hparams_from_config(config: StormConfig, layout: str | None = None) -> dict[str, Any]:
    """A plain ``hyper_parameters`` dict for ``config`` in the reference's vocabulary (inverse of
    :func:`config_from_hparams`). The backbone is written as ``ncsnpp`` with every constructor
    argument explicit, so the reference builds the same network whatever preset it came from.
    ``data_module_cls`` is the *name* ``"sgmse.data_module.SpecsDataModule"`` (a string, to keep
    the pickle free of classes: the reference's ``load_from_checkpoint`` needs
    ``data_module_cls=SpecsDataModule`` passed explicitly)."""
    layout = layout or _default_layout(config)
    if config.score_backbone is not None and config.has_predictor and config.has_score:
        raise ValueError("the reference's hyper-parameters give both networks one set of backbone arguments; "
                         "a model whose score network has its own backbone (score_backbone) cannot be written in its layout")
    if config.refiner is not None:
        raise ValueError("the reference has no refinement stage; export the one-stage model "
                         "(dataclasses.replace(model.config, refiner=None) and the params without 'refiner')")
    if config.score_symmetry != "none" and config.has_score:
        raise ValueError(f"the reference has no score symmetry; a model with score_symmetry={config.score_symmetry!r} "
                         "would score differently there (write model.with_score_symmetry('none') to export its plain network)")
    if config.score_members != 1 and config.has_score:
        raise ValueError(f"the reference has one score network; a score ensemble of {config.score_members} members cannot be "
                         "written in its layout (export one member: model.score_member(i))")
    if config.guidance is not None:
        raise ValueError("the reference has no condition guidance; export the conditional network alone "
                         "(model.without_guidance()) or the guide (model.guide_model())")
    nets = [n for n, has in ((config.backbone, config.has_predictor), (config.score_net(), config.has_score)) if has]
    if any(not n.mid_attention for n in nets):
        raise ValueError("the reference's NCSN++ always has the mid attention block; a network with mid_attention=False "
                         "(the micro preset) cannot be written in its layout")
    b = dataclasses.asdict(config.backbone if config.has_predictor else config.score_net())  # the network it has
    backbone_kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in b.items() if k in _BACKBONE_FIELDS}
    hp: dict[str, Any] = {}
    if layout == "storm":
        hp.update(
            backbone_denoiser="ncsnpp" if config.has_predictor else "none",
            backbone_score="ncsnpp" if config.has_score else "none",
            mode="regen-joint-training",
            condition={v: k for k, v in _CONDITIONS.items()}[config.condition],
        )
        discriminative, channels = False, 2 * config.score_inputs
    else:
        hp["backbone"] = "ncsnpp"
        discriminative = not config.has_score
        channels = 4
    hp.update(
        sde="ouve",
        t_eps=config.sde.t_eps,
        data_module_cls="sgmse.data_module.SpecsDataModule",
        theta=config.sde.theta,
        sigma_min=config.sde.sigma_min,
        sigma_max=config.sde.sigma_max,
        n_fft=config.spec.n_fft,
        hop_length=config.spec.hop,
        window="hann",
        spec_factor=config.spec.beta,
        spec_abs_exponent=config.spec.alpha,
        spatial_channels=1,
        **backbone_kw,
        input_channels=channels,
        discriminative=discriminative,
    )
    return hp


def _default_layout(config: StormConfig) -> str:
    if config.has_predictor and config.has_score:
        return "storm"
    if config.has_score and config.condition != "noisy":
        return "storm"
    return "dnn"


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReferenceCheckpoint:
    """Everything :func:`read_checkpoint` takes from a reference ``.ckpt``.

    Attributes:
        path: the file.
        layout: ``"storm"`` (``denoiser_net.``/``score_net.``) or ``"dnn"``.
        config: the model the hyper-parameters and tensors describe.
        raw: ``{"predictor": params|None, "score": params|None}`` from ``state_dict`` (numpy).
        ema: the same tree from ``ema.shadow_params``, or ``None`` if the file has no EMA.
        hyper_parameters: the dict as stored (stand-in classes replaced by their names).
        ema_meta: ``decay`` and ``num_updates`` of the EMA state (empty without EMA).
    """

    path: Path
    layout: str
    config: StormConfig
    raw: dict
    ema: dict | None
    hyper_parameters: dict
    ema_meta: dict

    def model(self, ema: bool = True, dtype=jnp.float32) -> StormModel:
        """A :class:`StormModel` with the EMA weights (``ema=True``, the reference's evaluation
        weights; the raw ones with a warning if the file has none) or the raw ``state_dict``."""
        params = self.raw
        if ema:
            if self.ema is None:
                warnings.warn(f"{self.path}: no EMA state in the checkpoint; using the raw state_dict weights", stacklevel=3)
            else:
                params = self.ema
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return StormModel(config=self.config, params=params).astype(dtype)


def _plain(value: Any) -> Any:
    """Hyper-parameter values with stand-ins replaced by their qualified names."""
    if isinstance(value, type) and issubclass(value, _StandIn):
        return value.qualified_name
    if isinstance(value, _StandIn):
        return value.qualified_name
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _numpy(t: Any) -> np.ndarray:
    torch = _torch()
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def _nets(config: StormConfig, layout: str) -> list[tuple[str, str, NCSNppConfig]]:
    """``(role, prefix, net config)`` in ``model.parameters()`` order (predictor first)."""
    out = []
    if config.has_predictor:
        out.append(("predictor", _PREFIXES["predictor"] if layout == "storm" else _DNN, config.predictor_net()))
    if config.has_score:
        out.append(("score", _PREFIXES["score"] if layout == "storm" else _DNN, config.score_net()))
    return out


def _expected(config: StormConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """Expected ``state_dict`` keys (in ``parameters()`` order) and torch shapes."""
    out: dict[str, tuple[int, ...]] = {}
    for _role, prefix, net in _nets(config, layout):
        out.update({prefix + k: s for k, s in reference_shapes(net).items()})
    return out


def _list(names: list[str], limit: int = 12) -> str:
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], path: Path, what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (checkpoint {tuple(state[k].shape)}, expected {expected[k]})" for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        lines = [f"{path}: the {what} does not match the model its hyper-parameters describe"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_list(shapes)}")
        raise CheckpointMismatchError("\n".join(lines))


def _split(state: Mapping[str, np.ndarray], config: StormConfig, layout: str) -> dict:
    params: dict = {"predictor": None, "score": None}
    for role, prefix, net in _nets(config, layout):
        params[role] = to_flax(state, net, prefix=prefix, strict=False)
    return params


def _layout(state: Mapping[str, Any], hp: Mapping[str, Any], path: Path) -> tuple[str, str | None]:
    keys = list(state)
    if any(k.startswith(p) for k in keys for p in _PREFIXES.values()):
        return "storm", None
    if any(k.startswith(_DNN) for k in keys):
        if "discriminative" in hp:
            return "dnn", "predictor" if hp["discriminative"] else "score"
        w = state.get(_DNN + "output_layer.weight")
        return "dnn", "predictor" if w is not None and w.shape[1] == 2 else "score"
    raise ValueError(
        f"{path}: not a StoRM/SGMSE checkpoint: no state_dict key starts with 'denoiser_net.', 'score_net.' or 'dnn.' "
        f"(first keys: {_list(keys, 4) or 'none'})"
    )


def read_checkpoint(path: str | os.PathLike, *, allow: Iterable[str] = ()) -> ReferenceCheckpoint:
    """Read a reference ``.ckpt`` safely (see the module docstring) and check it against the
    model its ``hyper_parameters`` describe. ``allow`` adds trusted global names to the stand-in
    allow-list. Raises :class:`UnsafeCheckpointError`, :class:`CheckpointMismatchError` (listing
    missing and unexpected keys and shape mismatches by name) or ``ValueError`` for truncated or
    foreign files and unsupported settings, each naming the file."""
    path = Path(path)
    ck = _torch_load(path, allow)
    if not isinstance(ck, Mapping) or "state_dict" not in ck:
        top = ", ".join(map(str, list(ck)[:6])) if isinstance(ck, Mapping) else type(ck).__name__
        raise ValueError(f"{path}: not a PyTorch Lightning checkpoint (no 'state_dict' entry; found {top})")
    state = {str(k): _numpy(v) for k, v in ck["state_dict"].items()}
    hp = _plain(dict(ck.get("hyper_parameters") or {}))
    layout, role = _layout(state, hp, path)
    config = config_from_hparams(hp, layout, where=str(path), dnn_role=role)
    expected = _expected(config, layout)
    _check(state, expected, path, "state_dict")
    raw = _split(state, config, layout)
    ema = None
    ema_meta: dict = {}
    ema_state = ck.get("ema")
    if ema_state is not None:
        shadow = list(ema_state.get("shadow_params") or [])
        keys = list(expected)
        if len(shadow) != len(keys):
            raise CheckpointMismatchError(
                f"{path}: the EMA holds {len(shadow)} shadow parameters but the model has {len(keys)} "
                f"(expected the predictor's then the score net's parameters in model.parameters() order)"
            )
        ema_dict = {k: _numpy(v) for k, v in zip(keys, shadow)}
        _check(ema_dict, expected, path, "EMA shadow_params list (in model.parameters() order)")
        ema = _split(ema_dict, config, layout)
        ema_meta = {"decay": ema_state.get("decay"), "num_updates": ema_state.get("num_updates")}
    return ReferenceCheckpoint(path=path, layout=layout, config=config, raw=raw, ema=ema, hyper_parameters=hp, ema_meta=ema_meta)


def import_checkpoint(path: str | os.PathLike, *, ema: bool = True, dtype=jnp.float32, allow: Iterable[str] = ()) -> StormModel:
    """Import a PyTorch Lightning ``.ckpt`` of the reference as a :class:`StormModel` (the same
    object :func:`~storm_jax.init_storm` and :func:`~storm_jax.load_model` return).

    ``ema=True`` (default) takes the EMA ``shadow_params``, the weights the reference evaluates
    with; ``ema=False`` the raw ``state_dict``. Parameters are cast to ``dtype``. See
    :func:`read_checkpoint` for errors and the module docstring for what is read."""
    return read_checkpoint(path, allow=allow).model(ema=ema, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def _torch_state(params: dict, config: StormConfig, layout: str) -> dict[str, Any]:
    torch = _torch()
    out: dict[str, Any] = {}
    for role, prefix, net in _nets(config, layout):
        if params.get(role) is None:
            raise ValueError(f"the model's {role} parameters are missing")
        host = jax.tree_util.tree_map(np.asarray, params[role])
        for k, v in to_torch(host, net, prefix=prefix).items():
            out[k] = torch.from_numpy(np.array(v, copy=True, order="C"))
    return out


def export_checkpoint(
    model: StormModel,
    path: str | os.PathLike,
    *,
    raw: StormModel | None = None,
    layout: Literal["storm", "dnn"] | None = None,
    hyper_parameters: Mapping[str, Any] | None = None,
    ema_decay: float = 0.999,
    num_updates: int = 0,
) -> Path:
    """Write ``model`` as a reference-layout PyTorch Lightning checkpoint.

    Contents: ``state_dict`` (the ``raw`` model's weights if given, else ``model``'s) with the
    reference keys (``denoiser_net.``/``score_net.`` for ``layout="storm"``, ``dnn.`` for a
    single-network ``"dnn"`` checkpoint; default: ``storm`` unless the model is a lone predictor
    or a lone ``noisy`` score net), an ``ema`` entry (``torch_ema`` state whose
    ``shadow_params`` are ``model``'s weights in the reference ``model.parameters()`` order),
    ``hyper_parameters`` as a plain dict (:func:`hparams_from_config`, updated with
    ``hyper_parameters``), and Lightning's bookkeeping entries. Importing the result gives back
    every tensor bit for bit. The file is written atomically.
    """
    torch = _torch()
    config = model.config
    layout = layout or _default_layout(config)
    if layout == "dnn" and config.has_predictor and config.has_score:
        raise ValueError("a 'dnn' checkpoint holds one network; this model has two (use layout='storm')")
    if raw is not None and raw.config != config:
        raise ValueError("raw and EMA models must have the same config")
    ema_state = _torch_state(model.params, config, layout)
    state = _torch_state(raw.params, config, layout) if raw is not None else {k: v.clone() for k, v in ema_state.items()}
    hp = hparams_from_config(config, layout)
    if hyper_parameters:
        hp = {**dict(hyper_parameters), **hp}
    ck = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.8.3",
        "state_dict": state,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hp,
        "ema": {"decay": float(ema_decay), "num_updates": int(num_updates), "shadow_params": list(ema_state.values()), "collected_params": None},
    }
    path = Path(path).absolute()
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)
    return path
