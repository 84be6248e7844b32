"""Run folders: resumable orbax checkpoints with a file manifest, the run's fingerprint, export.

A run folder holds ``train_config.json``, ``fingerprint.json`` (what must not change for a run to
be resumed: the configuration without its resumable fields, the data's fingerprint, a digest of
``init_from``'s weights), ``log.jsonl`` and ``checkpoints/STEP`` (orbax: params, EMA, optimiser
state, step, the PRNG key and the batch state, plus ``storm_jax_files.json``, the size and SHA-256
of every file, so a damaged checkpoint is named before orbax reads it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..data import BatchState
from ..files import atomic_write
from ..model import StormModel
from .config import TrainConfig, _defaults, model_config_for
from .state import TrainState, init_train_state

__all__ = ["CheckpointDamaged", "CheckpointFallback", "checkpoint_problem", "load_training_checkpoint", "export_ema_model",
           "saved_steps"]

# Fields of TrainConfig that may change between a run and its resumption.
_RESUMABLE_FIELDS = ("steps", "log_every", "ckpt_every", "val_every", "val_utterances", "val_steps", "keep", "progress")
# Fields recorded in a run's fingerprint only when they differ from their default (runs made before
# they existed keep their fingerprint).
_DEFAULT_OMITTED = ("init_networks", "init_from", "lr_warmup", "lr_decay", "reverse_steps", "logmag_weight", "logmag_floor")


def _params_digest(params: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _fingerprint_dict(config: TrainConfig, data_fp: str, init_digest: str | None = None) -> dict:
    d = config.to_dict()
    for k in _RESUMABLE_FIELDS:
        d.pop(k, None)
    d["data"] = data_fp
    if d.get("init_from") is not None:
        d["init_params"] = init_digest
    defaults = _defaults()
    for k in _DEFAULT_OMITTED:
        if d.get(k) == defaults[k]:
            d.pop(k, None)  # as runs recorded it before the field existed
    return d


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def _manager(out: Path, keep: int):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(out / "checkpoints", options=opts, item_names=("state", "meta"))


def _strip(tree):
    """Drop ``None`` entries of nested dicts (absent networks): orbax stores no empty nodes."""
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in tree.items() if v is not None}
    return tree


def _state_tree(state: TrainState) -> dict:
    return jax.tree_util.tree_map(np.asarray, _strip({"step": state.step, "params": state.params, "opt_state": state.opt_state,
                                                      "ema": state.ema, "key": state.key}))


def _save(mngr, state: TrainState, batch_state: BatchState, extra: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(state.step)
    meta = {"step": step, "batch_state": batch_state.to_dict(), **extra}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    _write_manifest(Path(mngr.directory) / str(step))


_MANIFEST = "storm_jax_files.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(step_dir: Path) -> None:
    """Record size and SHA-256 of every file of a committed checkpoint, so a shard deleted,
    truncated or altered later (a failing disk, a partial copy) is named before orbax reads it."""
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != _MANIFEST}
    _write_atomic(step_dir / _MANIFEST, json.dumps(files, indent=1, sort_keys=True))


def checkpoint_problem(step_dir: str | os.PathLike) -> str | None:
    """What is wrong with the checkpoint folder ``step_dir`` against its manifest (a missing,
    truncated or altered file, named), or ``None`` when it is intact or has no manifest (a
    checkpoint written before manifests, or one cut off between commit and manifest)."""
    step_dir = Path(step_dir)
    f = step_dir / _MANIFEST
    if not f.is_file():
        return None
    try:
        want = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"its manifest {f} is unreadable ({err})"
    for rel, (size, digest) in sorted(want.items()):
        p = step_dir / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != size:
            return f"{p} holds {p.stat().st_size} of its {size} bytes (truncated)"
        if _sha256(p) != digest:
            return f"{p} differs from what was written (checksum)"
    return None


class CheckpointDamaged(ValueError):
    """A checkpoint's files disagree with its manifest (:func:`checkpoint_problem`)."""

    def __init__(self, step_dir: Path, problem: str):
        super().__init__(f"checkpoint {step_dir} is damaged: {problem}")
        self.problem = problem


def _restore(mngr, step: int, template: TrainState) -> tuple[TrainState, dict]:
    import orbax.checkpoint as ocp

    step_dir = Path(mngr.directory) / str(step)
    problem = checkpoint_problem(step_dir)
    if problem:
        raise CheckpointDamaged(step_dir, problem)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), _state_tree(template))
    got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    tree = jax.tree_util.tree_map(jnp.asarray, got["state"])
    # Restore into the template's exact pytree structure (namedtuples of the optax state).
    leaves = jax.tree_util.tree_leaves(tree)
    full = {"step": template.step, "params": template.params, "opt_state": template.opt_state, "ema": template.ema, "key": template.key}
    t = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(full), leaves)
    state = TrainState(step=t["step"], params=t["params"], opt_state=t["opt_state"], ema=t["ema"], key=t["key"])
    return state, dict(got["meta"])


class CheckpointFallback(UserWarning):
    """The newest checkpoint of a run could not be restored; an older one was used."""


def _resume(out: Path, config: TrainConfig, template: TrainState):
    """``(manager, step, (state, meta))`` of the newest checkpoint of ``out`` that restores, or
    ``(manager, None, None)`` when there is none.

    A checkpoint that cannot be restored (a shard deleted or truncated, a missing metadata file,
    as after a failing disk or a partial copy) is moved to ``out/checkpoints-corrupt/STEP`` — kept
    for inspection, never deleted — with a :class:`CheckpointFallback` warning naming it and the
    problem, and the previous one is tried. Orbax only lists committed checkpoints, so a write cut
    off by ``kill -9`` never gets here: it is not a checkpoint yet.
    """
    mngr = _manager(out, config.keep)
    while True:
        step = mngr.latest_step()
        if step is None:
            return mngr, None, None
        try:
            return mngr, step, _restore(mngr, step, template)
        except Exception as err:  # orbax and tensorstore raise many types for a damaged checkpoint
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            why = err.problem if isinstance(err, CheckpointDamaged) else f"{type(err).__name__}: {why}"
            mngr.close()
            src = out / "checkpoints" / str(step)
            dest = out / "checkpoints-corrupt" / str(step)
            n = 1
            while dest.exists():
                dest, n = out / "checkpoints-corrupt" / f"{step}.{n}", n + 1
            dest.parent.mkdir(exist_ok=True)
            os.replace(src, dest)
            older = [s for s in sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())]
            then = f"resuming from checkpoint {older[-1]}" if older else "no older checkpoint: starting from step 0"
            warnings.warn(CheckpointFallback(f"checkpoint {src} cannot be restored ({why}); moved to {dest}; {then}"),
                          stacklevel=3)
            mngr = _manager(out, config.keep)


def _open_run(out: Path) -> tuple[TrainConfig, Any]:
    """``(config, checkpoint manager)`` of a run directory (the caller closes the manager)."""
    cfg_file = out / "train_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{out}: not a storm-jax training directory (no train_config.json)")
    config = _config_from_dict(json.loads(cfg_file.read_text()))
    return config, _manager(out, config.keep)


def _saved(mngr) -> list[int]:
    return sorted(int(s) for s in mngr.all_steps())


def _template(config: TrainConfig) -> TrainState:
    # The template only gives the structure: never reload ``init_from`` (it may have moved).
    return init_train_state(config, load_init=False)


def load_training_checkpoint(out: str | os.PathLike, step: int | None = None) -> tuple[TrainConfig, TrainState, dict]:
    """``(config, state, meta)`` of a run directory's latest (or given) checkpoint."""
    out = Path(out).absolute()
    config, mngr = _open_run(out)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{out}: no checkpoint saved yet")
        state, meta = _restore(mngr, step, _template(config))
    finally:
        mngr.close()
    return config, state, meta


def _config_from_dict(d: dict) -> TrainConfig:
    from ..checkpoints import config_from_dict

    d = dict(d)
    model = config_from_dict(d.pop("model"), "train_config.json")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(model=model, **{k: v for k, v in d.items() if k in names})


def export_ema_model(out: str | os.PathLike, dest: str | os.PathLike, step: int | None = None,
                     average_from: int | None = None) -> Path:
    """Write the EMA weights of a run's checkpoint as a model directory
    (:func:`storm_jax.checkpoints.save_model`), the weights the reference evaluates with.

    With ``average_from = a`` the weights are instead the uniform average of the EMA weights of
    every *saved* checkpoint ``s_k`` with ``a ≤ s_k ≤ step`` (``step``: latest by default),
    ``θ̄ = (1/K)·Σ_k θ_EMA(s_k)`` — checkpoint averaging (Polyak–Ruppert; SWA, Izmailov et al.
    2018) over a longer window than the EMA's ``1/(1 − decay)`` steps. The sum runs in float64.
    Networks a mode keeps frozen are constant across checkpoints, so their average is exact.
    """
    from ..checkpoints import save_model

    if average_from is None:
        config, state, _ = load_training_checkpoint(out, step)
        return save_model(StormModel(config=model_config_for(config), params=state.ema["params"]), dest)
    out = Path(out).absolute()
    config, mngr = _open_run(out)
    try:
        saved = _saved(mngr)
        if not saved:
            raise FileNotFoundError(f"{out}: no checkpoint saved yet")
        last = saved[-1] if step is None else step
        if step is not None and step not in saved:
            raise FileNotFoundError(f"{out}: no checkpoint at step {step} (saved: {saved})")
        window = [s for s in saved if average_from <= s <= last]
        if not window:
            raise ValueError(f"{out}: no saved checkpoint between steps {average_from} and {last} (saved: {saved})")
        template, total = _template(config), None
        for s in window:
            state, _ = _restore(mngr, s, template)
            p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), state.ema["params"])
            total = p if total is None else jax.tree_util.tree_map(np.add, total, p)
    finally:
        mngr.close()
    mean = jax.tree_util.tree_map(lambda a, ref: (a / len(window)).astype(np.asarray(ref).dtype), total, state.ema["params"])
    return save_model(StormModel(config=model_config_for(config), params=mean), dest)


def saved_steps(out: str | os.PathLike) -> list[int]:
    """The steps of a run directory's saved checkpoints, ascending (empty before the first save)."""
    _, mngr = _open_run(Path(out).absolute())
    try:
        return _saved(mngr)
    finally:
        mngr.close()
