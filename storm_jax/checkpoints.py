"""Saving and loading StoRM models: a ``config.json`` plus an orbax checkpoint of the parameters.

Layout of a model directory::

    config.json          StormConfig as JSON (format version, backbone, sde, spec, condition)
    params/              orbax StandardCheckpointer tree {"predictor": …, "score": …[, "guide": …]}

Writes go to a temporary sibling directory which is renamed into place, so a crash never leaves
a half-written model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .audio import SpecConfig
from .files import umask_mode
from .model import StormConfig, StormModel, init_storm, param_shapes
from .nn import NCSNppConfig, ncsnpp_config
from .sde import OUVE

__all__ = ["config_to_dict", "config_from_dict", "save_model", "load_model", "resolve_model", "default_model_spec", "pretrained_path", "PRETRAINED_DIR", "DEFAULT_PRETRAINED"]

_FORMAT = "storm-jax/model/1"


def config_to_dict(config: StormConfig) -> dict:
    """JSON-ready dict of a :class:`StormConfig` (tuples become lists)."""
    d = dataclasses.asdict(config)
    for net in ("backbone", "score_backbone", "refiner"):
        if d.get(net) is not None and d[net]["mid_attention"]:
            del d[net]["mid_attention"]  # the reference's mid block: files and run fingerprints as before
    if d["score_backbone"] is None:
        del d["score_backbone"]  # one backbone: the files of older versions, unchanged
    if d["score_symmetry"] == "none":
        del d["score_symmetry"]  # the reference's plain score: files and run fingerprints as before
    if d["score_members"] == 1:
        del d["score_members"]  # one score network, as the reference
    if d["guidance"] is None:
        del d["guidance"]  # no guide network, as the reference
    if d["sampler_steps"] is None:
        del d["sampler_steps"]  # a score network trained by score matching, as the reference
    if d["refiner"] is None:
        del d["refiner"]  # one stage, as the reference
    d["format"] = _FORMAT
    return d


def _build(cls, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {sorted(unknown)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)


def config_from_dict(d: dict, where: str = "config") -> StormConfig:
    """Inverse of :func:`config_to_dict`; ``where`` names the source in error messages."""
    d = dict(d)
    fmt = d.pop("format", _FORMAT)
    if fmt != _FORMAT:
        raise ValueError(f"{where}: unsupported model format {fmt!r} (expected {_FORMAT!r})")
    try:
        return StormConfig(
            backbone=_build(NCSNppConfig, d.pop("backbone"), where),
            sde=_build(OUVE, d.pop("sde"), where),
            spec=_build(SpecConfig, d.pop("spec"), where),
            score_backbone=_build(NCSNppConfig, sb, where) if (sb := d.pop("score_backbone", None)) is not None else None,
            refiner=_build(NCSNppConfig, rb, where) if (rb := d.pop("refiner", None)) is not None else None,
            **d,
        )
    except KeyError as err:
        raise ValueError(f"{where}: missing field {err}") from None
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def save_model(model: StormModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path`` (replaced atomically if it exists)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; a model directory is shared like any folder
        (tmp / "config.json").write_text(json.dumps(config_to_dict(model.config), indent=2))
        tree = {k: v for k, v in model.params.items() if v is not None}
        tree = jax.tree_util.tree_map(np.asarray, tree)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", tree)
            ckptr.wait_until_finished()
        marker = tmp / "params" / "commit_success.txt"
        if marker.is_file():  # orbax writes the temporary path into it; a model directory is portable
            marker.write_text("Checkpoint commit was successful")
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


PRETRAINED_DIR = Path(__file__).parent / "assets" / "pretrained"
"""Where the shipped pretrained models live (one model directory each)."""

DEFAULT_PRETRAINED = "tiny-embedded"
"""The shipped model :func:`load_model` loads without an argument: the ``tiny`` preset trained on
the embedded corpus (denoise task) at the fixed amplitude M* = 1 (README § Pretrained model)."""


def pretrained_path(name: str = DEFAULT_PRETRAINED) -> Path | None:
    """Directory of the shipped pretrained model ``name``, or ``None`` if it is not installed."""
    p = PRETRAINED_DIR / name
    return p if (p / "config.json").is_file() else None


def load_model(path: str | os.PathLike | None = None, dtype=jnp.float32) -> StormModel:
    """Load a model directory written by :func:`save_model` (parameters cast to ``dtype``);
    without ``path``, the shipped pretrained model (:data:`DEFAULT_PRETRAINED`); ``"pretrained:NAME"``
    (as the CLI's ``--checkpoint``), the shipped model ``NAME`` unless a directory of that name exists."""
    import orbax.checkpoint as ocp

    spec = None if path is None else str(path)
    if (spec is None or spec == "pretrained" or spec.startswith("pretrained:")) and not (spec and Path(spec).exists()):
        name = spec.split(":", 1)[1] if spec and ":" in spec else DEFAULT_PRETRAINED
        path = pretrained_path(name)
        if path is None:
            raise FileNotFoundError(f"no pretrained model {name!r} is installed in {PRETRAINED_DIR}; pass a model directory")
    path = Path(path).absolute()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: not a storm-jax model directory (no config.json)")
    try:
        cfg = config_from_dict(json.loads(cfg_file.read_text()), where=str(cfg_file))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file}: invalid JSON ({err})") from None
    # Restore against the abstract tree of a freshly built model so structure and shapes are checked.
    abstract = param_shapes(cfg)
    target = {k: v for k, v in abstract.items() if v is not None}
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(path / "params", target)
        except Exception as err:
            raise ValueError(f"{path / 'params'}: parameters do not match config.json ({str(err).splitlines()[0]})") from None
    # orbax restores the stored shapes whatever the target says: compare them with the config's.
    try:
        bad = [f"{jax.tree_util.keystr(k)} is {tuple(np.shape(a))}, config.json needs {tuple(t.shape)}"
               for (k, a), t in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree_util.tree_leaves(target))
               if tuple(np.shape(a)) != tuple(t.shape)]
        same_tree = jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(target)
    except Exception:
        bad, same_tree = [], False
    if not same_tree or bad:
        why = f"{len(bad)} tensor(s) differ, first {bad[0]}" if bad else "the parameter trees differ"
        raise ValueError(f"{path / 'params'}: parameters do not match config.json ({why})")
    params = {"predictor": restored.get("predictor"), "score": restored.get("score")}
    if cfg.guidance is not None:
        params["guide"] = restored["guide"]
    if cfg.refiner is not None:
        params["refiner"] = restored["refiner"]
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return StormModel(config=cfg, params=params).astype(dtype)


def default_model_spec() -> str:
    """The spec used when none is given: the shipped model if installed, else ``preset:tiny``."""
    return "pretrained" if pretrained_path() is not None else "preset:tiny"


def resolve_model(spec: str | None, key=None) -> StormModel:
    """A model from a CLI-style spec: a model directory, ``pretrained[:NAME]`` (a shipped model),
    or ``preset:NAME`` (random weights, for testing the plumbing). ``None`` means the shipped
    pretrained model when it is installed, else ``preset:tiny``."""
    if spec is None:
        spec = default_model_spec()
    if spec.startswith("preset:"):
        name = spec.split(":", 1)[1]
        ncsnpp_config(name)  # validates the name
        return init_storm(name, jax.random.key(0) if key is None else key)
    return load_model(spec)
