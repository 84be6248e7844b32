"""The training loop: :func:`train` runs (or resumes) a run in a folder.

Determinism: the key of step ``k`` is ``fold_in(key(seed), k)`` and the batch of step ``k`` is a
pure function of the :class:`~storm_jax.data.BatchState`; a checkpoint stores params, EMA,
optimiser state, step, the PRNG key and the batch state, so a resumed run reproduces the
uninterrupted one bit for bit on the CPU. The loop knows no objective by name: each step's
:class:`~storm_jax.training.StepSpec` names the objective the registry gives for that step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import jax.numpy as jnp

from ..data import BatchIterator, BatchState, PairDataset, check_batchable, data_fingerprint
from ..files import hold_folder
from .checkpoints import _fingerprint_dict, _params_digest, _resume, _save, _write_atomic
from .config import CheckpointMismatch, TrainConfig, TrainingDiverged, _diff
from .state import init_train_state
from .step import StepSpec, train_step
from .validation import validate, validation_batches

__all__ = ["train", "Terminated"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM during :func:`train`; handled like Ctrl-C (the current state
    is saved, then this propagates)."""


def _note_signal(flag: dict):
    """A SIGTERM handler that only records the signal: raising from inside a handler could land
    in the middle of an orbax write or an XLA call and leave it hung; the loop checks the flag
    between steps and then saves like Ctrl-C."""

    def handler(signum, frame):
        flag["signal"] = signum

    return handler


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"checkpoint directory {out} is not writable ({err.strerror or err})") from None


def _resolve_data(data, split: str) -> PairDataset:
    from ..data import embedded_corpus, folder_dataset

    if isinstance(data, PairDataset):
        return data
    if data is None or data == "embedded":
        return embedded_corpus(split, progress=False)
    return folder_dataset(data, split)


class _Log:
    """Append-only JSON-lines log; on resume, records after the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step is not None and rec.get("step", 0) <= resume_step:
                    keep.append(line)
            _write_atomic(path, "".join(l + "\n" for l in keep))

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    data: str | os.PathLike | PairDataset | None = "embedded",
    valid_data: str | os.PathLike | PairDataset | None = None,
    *,
    stop_after: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train (or resume) a run in directory ``out``; returns a summary dict.

    ``data``: ``"embedded"`` (the embedded corpus' train split), a dataset folder
    (:func:`~storm_jax.data.folder_dataset`) or a :class:`~storm_jax.data.PairDataset`.
    ``valid_data`` likewise (default: the valid split of ``data`` when it is a name/folder).

    Every error that can be detected up front (missing/empty/corrupt dataset, mismatched
    pairs, crop longer than every file, batch larger than the dataset, unwritable ``out``, a
    checkpoint from another configuration or dataset) is raised before the first step.
    Ctrl-C or SIGTERM at any moment saves the last completed step (with the data position that
    belongs to it) and re-raises (:class:`Terminated` for SIGTERM), so nothing is lost.
    A non-finite loss raises :class:`TrainingDiverged` without saving the bad state (the last
    good checkpoint stays). ``stop_after`` ends the call after that many steps of this call (for
    tests of interruption); ``callback(step, losses)`` is called after every step.
    """
    from tqdm import tqdm

    out = Path(out).absolute()  # orbax needs absolute paths
    train_ds = _resolve_data(data, "train")
    if valid_data is None and not isinstance(data, PairDataset):
        valid_data = data
    valid_ds = _resolve_data(valid_data, "valid") if (valid_data is not None and config.val_every >= 0) else None
    bc = config.batch_config()
    check_batchable(train_ds, bc, "training data")
    if valid_ds is not None:
        vbc = validation_batches(config, len(valid_ds))
        check_batchable(valid_ds, dataclasses.replace(vbc, batch_size=1), "validation data")
    state = init_train_state(config)  # loads and checks init_from before anything is written
    _check_writable(out)
    # One process per run folder: a second `train` into the same --out is refused by name and pid
    # (two writers would interleave orbax checkpoints in one folder).
    with hold_folder(out, "training run", "wait for it to finish or use another --out"):
        fp = _fingerprint_dict(config, data_fingerprint(train_ds, bc),
                               _params_digest(state.params) if config.init_from is not None else None)

        fp_file = out / "fingerprint.json"
        mngr = None
        if fp_file.exists():
            old = json.loads(fp_file.read_text())
            diff = _diff(old, fp)
            if diff:
                raise CheckpointMismatch(f"{out} holds checkpoints of a different run; refusing to resume. Differences:\n  "
                                         + "\n  ".join(diff) + "\nUse another --out directory (or delete this one).")
        mngr, latest, restored = _resume(out, config, state)
        batch_state = BatchState()
        if latest is not None:
            state, meta = restored
            batch_state = BatchState.from_dict(meta["batch_state"])
        else:
            _write_atomic(fp_file, json.dumps(fp, indent=2))
        _write_atomic(out / "train_config.json", json.dumps(config.to_dict(), indent=2))
        log = _Log(out / "log.jsonl", latest if latest is not None else 0)

        it = BatchIterator(train_ds, bc, batch_state)
        start = int(state.step)
        last_good = latest
        total = config.steps
        end = total if stop_after is None else min(total, start + stop_after)
        history: list[float] = []
        bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not config.progress, dynamic_ncols=True)
        t0, n_timed = time.perf_counter(), 0
        val = None
        synced = it.state  # the data position that belongs to `state` (a step may be cut off mid-way)
        # SIGTERM (a scheduler or `kill`) saves like Ctrl-C; handlers can only be set in the main thread.
        term: dict = {}
        old_term = signal.signal(signal.SIGTERM, _note_signal(term)) if threading.current_thread() is threading.main_thread() else None
        try:
            while int(state.step) < end:
                if term:
                    raise Terminated(f"signal {term['signal']}")
                pos = it.state
                batch = next(it)
                spec = StepSpec.of(config, int(state.step))  # the objective of this step (a stage or the main one)
                new_state, parts = train_step(spec, state, jnp.asarray(batch.clean), jnp.asarray(batch.noisy))
                parts = {k: float(v) for k, v in parts.items()}
                step = int(new_state.step)
                if not all(math.isfinite(v) for v in parts.values()):
                    log.write({"step": step, "event": "diverged", **{k: repr(v) for k, v in parts.items()}})
                    raise TrainingDiverged(f"non-finite loss at step {step} ({parts}); stopped. "
                                           f"The last good checkpoint is {'step ' + str(last_good) if last_good is not None else 'none (no checkpoint was saved yet)'} in {out / 'checkpoints'}")
                state, synced = new_state, it.state
                history.append(parts["loss"])
                if n_timed == 0:  # the first step of a call includes compilation: time from its end
                    t0 = time.perf_counter()
                n_timed += 1
                rate = (n_timed - 1) / max(time.perf_counter() - t0, 1e-9) if n_timed > 1 else float("nan")
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.4g}", steps_s=f"{rate:.3g}")  # tqdm's own rate includes compilation
                if callback is not None:
                    callback(step, parts)
                if step % config.log_every == 0 or step == end:
                    log.write({"step": step, **parts, "steps_per_s": None if math.isnan(rate) else rate, "epoch": it.state.epoch, "time": time.time()})
                if step % config.ckpt_every == 0 or step == end:
                    _save(mngr, state, it.state, {"data_position_before_step": pos.to_dict()})
                    last_good = step
                if valid_ds is not None and ((config.val_every > 0 and step % config.val_every == 0) or (step == total)):
                    val = validate(config, state, valid_ds)
                    log.write({"step": step, "valid": val})
                    bar.write(f"step {step}: valid " + ", ".join(f"{s} " + " ".join(f"{k}={v:.3f}" for k, v in m.items()) for s, m in val.items()))
        except KeyboardInterrupt:
            if last_good != int(state.step) and int(state.step) > 0:
                _save(mngr, state, synced, {"interrupted": True})
                last_good = int(state.step)
            bar.close()
            saved = f"checkpoint {last_good} in {out / 'checkpoints'}" if last_good is not None else "no checkpoint yet"
            bar.write(f"interrupted at step {int(state.step)}; {saved}: run the same command to resume", file=sys.stderr)
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            bar.close()
            mngr.close()
        return {"step": int(state.step), "losses": history, "validation": val, "out": str(out), "last_checkpoint": last_good}
