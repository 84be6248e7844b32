"""What every experiment needs: the model, the utterances (cropped to one shape), the keys.

Randomness is explicit: the Brownian path of utterance i and path p is drawn from
``fold_in(fold_in(key(seed), i), p)`` and probe or Krylov start vectors from further
``fold_in``-s, so a point's result depends on the point alone, never on the order or batch it
ran in — which is what lets a killed sweep resume to the same tables and a later scale-out split
the points freely.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..model import StormModel
from .presets import Preset

__all__ = ["Context", "load_context", "crop_length"]


def crop_length(model: StormModel, seconds: float) -> int:
    """Samples of a crop of about ``seconds`` that fills whole padding blocks exactly:
    ``hop·(64·b − 1)`` (``1 + L/hop`` frames, a multiple of 64, so no padding is analysed)."""
    sc = model.config.spec
    frames = max(1, round(seconds * sc.sample_rate / sc.hop / sc.pad_multiple)) * sc.pad_multiple
    return sc.hop * (frames - 1)


def _crop(clean: np.ndarray, noise: np.ndarray, length: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``length``-sample window (starting on the hop grid) with the most clean-speech energy;
    zero-padded at the end when the utterance is shorter."""
    if clean.shape[-1] <= length:
        pad = length - clean.shape[-1]
        return np.pad(clean, (0, pad)), np.pad(noise, (0, pad))
    energy = np.concatenate([[0.0], np.cumsum(clean.astype(np.float64) ** 2)])
    starts = np.arange(0, clean.shape[-1] - length + 1, hop)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return clean[best : best + length], noise[best : best + length]


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """The inputs shared by the experiments of one run.

    Attributes:
        model: the StoRM model; model_spec: how it was named (``--checkpoint``);
            model_digest: SHA-1 of its configuration and parameters.
        clean, noise: ``[U, L]`` float32 crops of the first U utterances of the test split.
        ids: their utterance ids; data_spec: ``embedded`` or the dataset folder.
        preset: the sizes; seed: the master seed.
        memo: results shared between experiments of one process (:meth:`memoized`).
        work: the running experiment's folder for state that outlives a killed run (set by the
            runner; ``None`` outside a run).
        mesh: the local devices the lanes of a group are sharded over (``--devices``; default
            all); batch: lanes per device per call (``--batch``; ``None``: planned from memory).
        share: ``(index, count, coordinated)``: this process computes the groups whose index is
            ``index`` mod ``count``; ``coordinated`` when ``jax.distributed`` joins the processes
            (then they meet at a barrier and process 0 writes the tables). None of these enters a
            result or the settings, so a sweep resumes on any device or process count.
    """

    model: StormModel
    model_spec: str
    model_digest: str
    clean: np.ndarray
    noise: np.ndarray
    ids: tuple[str, ...]
    data_spec: str
    preset: Preset
    seed: int
    memo: dict = dataclasses.field(default_factory=dict, repr=False)
    work: Path | None = None
    mesh: Any = None
    batch: int | None = None
    share: tuple[int, int, bool] = (0, 1, False)

    def over_m(self, fn, ms, args: tuple, static: dict | None = None, batch: int | None = None):
        """:func:`~storm_jax.experiments.sharding.map_lanes` of ``fn(m, *args, **static)`` over
        the M lanes ``ms``, sharded over :attr:`mesh`, ``batch`` (else :attr:`batch`, else the
        memory plan, made once per function, lane count and static settings) lanes per device."""
        from .sharding import map_lanes, plan_batch, sweep_mesh

        static = dict(static or {})
        mesh = self.mesh if self.mesh is not None else self.memoized(("mesh",), sweep_mesh)
        ms = np.asarray(ms)
        key = ("plan", fn, len(ms), mesh.size, tuple(sorted(static.items())))
        batch = batch or self.batch or self.memoized(key, lambda: plan_batch(fn, ms, *args, mesh=mesh, static=static))
        return map_lanes(fn, ms, *args, mesh=mesh, batch=batch, static=static)

    def memoized(self, key: tuple, compute):
        """``compute()``, remembered under ``key`` for this run (one entry per key; E1 and E2
        share their probes this way). Results are pure functions of the point, so a memo never
        changes a number — only how often it is computed."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def path_key(self, utt: int, path: int):
        """Key of the Brownian path of (utterance, path)."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), utt), path)

    def aux_key(self, utt: int, path: int, what: int):
        """A second key of (utterance, path) for probes (1), Krylov starts (2), random directions (3)."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed + 7919), utt * 1000 + path), what)

    def settings(self) -> dict:
        """The run's settings (shared by every experiment of one ``--out``)."""
        from .. import __version__

        return {
            "model": self.model_spec,
            "model_digest": self.model_digest,
            "data": self.data_spec,
            "utterances": list(self.ids),
            "samples_per_utterance": int(self.clean.shape[-1]),
            "preset": self.preset.name,
            "seed": self.seed,
            "storm_jax": __version__,
        }


def _digest(model: StormModel) -> str:
    from ..checkpoints import config_to_dict

    import json

    h = hashlib.sha1(json.dumps(config_to_dict(model.config), sort_keys=True, default=str).encode())
    for leaf in jax.tree_util.tree_leaves(model.params):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def load_context(preset: Preset, checkpoint: str | None = None, data: str | None = None, seed: int = 0,
                 progress: bool = True, *, devices: int | None = None, batch: int | None = None,
                 share: tuple[int, int, bool] = (0, 1, False)) -> Context:
    """Resolve ``--checkpoint`` (default the shipped model) and ``--data`` (``embedded`` or a
    dataset folder with a ``test`` split) into a :class:`Context` holding as many utterances as
    the preset's largest experiment needs. Bad names raise ``FileNotFoundError``/``ValueError``
    with the path in the message."""
    from ..checkpoints import default_model_spec, resolve_model

    spec = checkpoint or default_model_spec()
    if not (spec.startswith("preset:") or spec.startswith("pretrained")) and not Path(spec).exists():
        raise FileNotFoundError(f"--checkpoint {spec}: no such model directory")
    model = resolve_model(spec)
    if not model.config.has_score:
        raise ValueError(f"--checkpoint {spec}: the model has no score network; the experiments need the reverse process")
    n = max(preset.utterances, preset.jac_utterances, preset.e4_utterances)
    data_spec = data or "embedded"
    if data_spec == "embedded":
        from ..data import embedded_corpus

        ds = embedded_corpus("test", progress=progress)
    else:
        root = Path(data_spec)
        if not root.exists():
            raise FileNotFoundError(f"--data {root}: no such folder")
        from ..data import folder_dataset

        ds = folder_dataset(root, "test", resample=True, downmix=True)
        data_spec = str(root.absolute())
    if len(ds) < n:
        raise ValueError(f"--data {data_spec}: the test split holds {len(ds)} utterances, the preset {preset.name!r} needs {n}")
    length = crop_length(model, preset.seconds)
    hop = model.config.spec.hop
    pairs = [_crop(np.asarray(ds[i].clean, np.float32), np.asarray(ds[i].noise, np.float32), length, hop) for i in range(n)]
    clean = np.stack([c for c, _ in pairs]).astype(np.float32)
    noise = np.stack([z for _, z in pairs]).astype(np.float32)
    silent = [ds.ids[i] for i in range(n) if not np.any(clean[i])]
    if silent:
        raise ValueError(f"--data {data_spec}: utterances {silent} have silent clean speech (SI-SDR is undefined)")
    if batch is not None and batch < 1:
        raise ValueError(f"--batch {batch}: need at least one lane per device")
    from .sharding import sweep_mesh

    return Context(model=model, model_spec=spec, model_digest=_digest(model), clean=clean, noise=noise,
                   ids=tuple(ds.ids[:n]), data_spec=data_spec, preset=preset, seed=int(seed), mesh=sweep_mesh(devices),
                   batch=batch, share=share)
