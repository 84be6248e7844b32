"""Deterministic, resumable training batches of random crops (the reference data pipeline).

Per example, as the reference ``Specs.__getitem__`` (storm-reference.md § Data pipeline):

1. ``y = s + M·n`` over the whole utterance (``M`` fixed, or drawn so that the SNR is uniform in
   a range — the reference trained over −6…14 dB; the kink study trains at a fixed amplitude);
2. ``ν = max|y|`` of the *whole* noisy utterance (``normalize="noisy"``; or ``"none"``: ν = 1);
3. a crop of ``(frames − 1)·hop`` samples (256 frames → 32 640): random start
   ``int(U(0, L − T))`` (``crop="random"``, training) or ``int((L − T)/2)`` (``"centre"``,
   validation); shorter utterances are zero-padded symmetrically (``pad//2`` left, the rest right);
4. clean, noisy and noise crops divided by ν.

Determinism and resumption: the order of an epoch is a permutation drawn from
``SeedSequence([seed, epoch])`` and the crop offset and SNR of the example at position ``p`` of
epoch ``e`` from ``SeedSequence([seed, e, p])``. A batch is therefore a pure function of
``(dataset, config, state)`` with ``state = (epoch, batch)`` (:class:`BatchState`) — save the
state with a checkpoint, and resuming from it reproduces the uninterrupted stream bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np

from .dataset import DatasetError, PairDataset
from .mixing import m_for_snr, snr_db

__all__ = ["BatchConfig", "BatchState", "Batch", "make_batch", "BatchIterator", "epoch_batches", "batches_per_epoch", "check_batchable", "data_fingerprint"]


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """How batches are cut.

    Attributes:
        batch_size: examples per batch (reference 8).
        frames: STFT frames per crop (reference 256); the crop has ``(frames − 1)·hop`` samples.
        hop: STFT hop in samples (reference 128).
        crop: ``"random"`` (training) or ``"centre"`` (validation).
        shuffle: draw a new permutation of the utterances each epoch (else dataset order).
        drop_last: drop an epoch's final incomplete batch (keeps shapes static for ``jit``).
        amplitude: ``"fixed"`` (every example at ``m``) or ``"snr_range"`` (M drawn so that the
            SNR of the whole utterance is uniform in ``snr_range_db``).
        m: the fixed amplitude (M* = 1 is the training amplitude of the corpus).
        snr_range_db: the SNR range in dB for ``"snr_range"`` (reference −6…14).
        power: mix as ``s + sqrt(M)·n`` instead of ``s + M·n``.
        normalize: ``"noisy"`` (divide by max|y| of the whole utterance, reference) or ``"none"``.
        seed: seed of the permutations, crop offsets and SNR draws.
    """

    batch_size: int = 8
    frames: int = 256
    hop: int = 128
    crop: Literal["random", "centre"] = "random"
    shuffle: bool = True
    drop_last: bool = True
    amplitude: Literal["fixed", "snr_range"] = "fixed"
    m: float = 1.0
    snr_range_db: tuple[float, float] = (-6.0, 14.0)
    power: bool = False
    normalize: Literal["noisy", "none"] = "noisy"
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.frames < 2:
            problems.append(f"frames must be >= 2, got {self.frames}")
        if self.hop < 1:
            problems.append(f"hop must be >= 1, got {self.hop}")
        if self.crop not in ("random", "centre"):
            problems.append(f"crop must be 'random' or 'centre', got {self.crop!r}")
        if self.amplitude not in ("fixed", "snr_range"):
            problems.append(f"amplitude must be 'fixed' or 'snr_range', got {self.amplitude!r}")
        if not (np.isfinite(self.m) and self.m >= 0):
            problems.append(f"m must be finite and >= 0, got {self.m}")
        lo, hi = self.snr_range_db
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            problems.append(f"snr_range_db must be finite with low <= high, got {self.snr_range_db}")
        if self.normalize not in ("noisy", "none"):
            problems.append(f"normalize must be 'noisy' or 'none', got {self.normalize!r}")
        if problems:
            raise ValueError("BatchConfig: " + "; ".join(problems))

    @property
    def samples(self) -> int:
        """Crop length in samples, ``(frames − 1)·hop`` (32 640 for the reference)."""
        return (self.frames - 1) * self.hop


@dataclasses.dataclass(frozen=True)
class BatchState:
    """Position in the batch stream: the next batch is number ``batch`` of epoch ``epoch``.

    Together with the dataset and :class:`BatchConfig` (whose ``seed`` fixes all randomness) it
    determines every later batch. Serialise with :meth:`to_dict`/:meth:`from_dict` (JSON) or
    :meth:`to_array`/:meth:`from_array` (int64 ``[2]``, e.g. inside an orbax checkpoint).
    """

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    @classmethod
    def from_dict(cls, d) -> "BatchState":
        return cls(int(d["epoch"]), int(d["batch"]))

    def to_array(self) -> np.ndarray:
        return np.array([self.epoch, self.batch], dtype=np.int64)

    @classmethod
    def from_array(cls, a) -> "BatchState":
        a = np.asarray(a)
        return cls(int(a[0]), int(a[1]))


class Batch(NamedTuple):
    """One batch (NumPy; ``B`` examples of ``T = (frames − 1)·hop`` samples).

    Attributes:
        clean: ``s/ν``, float32 ``[B, T]`` (the target x).
        noisy: ``y(M)/ν = (s + M·n)/ν``, float32 ``[B, T]`` (the input y).
        noise: ``n/ν`` (unscaled by M), float32 ``[B, T]``; ``noisy ≈ clean + M·noise`` up to rounding.
        m: the amplitude M of each example, float32 ``[B]``.
        norm: the factor ν, float32 ``[B]``.
        index: dataset index of each example, int64 ``[B]``.
        start: crop start in the utterance, int64 ``[B]`` (negative: left zero padding of that length).
    """

    clean: np.ndarray
    noisy: np.ndarray
    noise: np.ndarray
    m: np.ndarray
    norm: np.ndarray
    index: np.ndarray
    start: np.ndarray


def batches_per_epoch(n_items: int, config: BatchConfig) -> int:
    """Number of batches in one epoch over ``n_items`` utterances."""
    return n_items // config.batch_size if config.drop_last else -(-n_items // config.batch_size)


def check_batchable(dataset: PairDataset, config: BatchConfig, what: str | None = None) -> None:
    """Raise :class:`DatasetError` naming the dataset (prefixed by ``what``, e.g. "training
    data") when no batch can be cut: an empty dataset, ``batch_size`` above its size, or a crop
    longer than every utterance."""
    where = f"{what}: {dataset.name}" if what else dataset.name
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty; nothing to batch")
    if config.batch_size > n:
        raise DatasetError(f"{where}: batch_size {config.batch_size} is larger than the dataset ({n} utterances)")
    longest = int(np.max(dataset.lengths))
    if config.samples > longest:
        rate = dataset.rate
        raise DatasetError(f"{where}: a crop of {config.frames} frames ({config.samples} samples, {config.samples / rate:.2f} s) "
                           f"is longer than every utterance (longest {longest} samples, {longest / rate:.2f} s); "
                           f"use at most {longest // config.hop + 1} frames")


def _order(n: int, config: BatchConfig, epoch: int) -> np.ndarray:
    if not config.shuffle:
        return np.arange(n)
    return np.random.default_rng(np.random.SeedSequence([int(config.seed), int(epoch)])).permutation(n)


def _example(dataset: PairDataset, i: int, config: BatchConfig, rng: np.random.Generator):
    u = dataset[i]
    if config.amplitude == "fixed":
        m = float(config.m)
    else:
        target = rng.uniform(*config.snr_range_db)
        m = float(m_for_snr(target, snr_db(u.clean, u.noise), config.power))
    y = u.noisy(m, config.power)
    nu = float(np.max(np.abs(y))) if config.normalize == "noisy" else 1.0
    if nu == 0.0:
        raise DatasetError(f"{dataset.name}: utterance {u.id} is silent at M = {m}; cannot normalise by max|y|")
    length, target_len = u.clean.size, config.samples
    if length >= target_len:
        start = int(rng.uniform(0, length - target_len)) if config.crop == "random" else int((length - target_len) / 2)
        cut = slice(start, start + target_len)
        c, yy, n = u.clean[cut], y[cut], u.noise[cut]
    else:
        pad = target_len - length
        start = -(pad // 2)
        widths = (pad // 2, pad - pad // 2)
        c, yy, n = (np.pad(a, widths) for a in (u.clean, y, u.noise))
    inv = np.float32(nu)
    return c / inv, yy / inv, n / inv, m, nu, start


def make_batch(dataset: PairDataset, config: BatchConfig, state: BatchState = BatchState()) -> tuple[Batch, BatchState]:
    """The batch at ``state`` and the state of the next one (pure in its arguments; module doc)."""
    check_batchable(dataset, config)
    n = len(dataset)
    per_epoch = batches_per_epoch(n, config)
    if not (0 <= state.batch < per_epoch) or state.epoch < 0:
        raise ValueError(f"BatchState {state} is outside an epoch of {per_epoch} batches")
    order = _order(n, config, state.epoch)
    positions = range(state.batch * config.batch_size, min((state.batch + 1) * config.batch_size, n))
    cols = []
    for p in positions:
        rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), int(state.epoch), p, 1]))
        cols.append((int(order[p]), *_example(dataset, int(order[p]), config, rng)))
    idx, c, y, nz, m, nu, start = zip(*cols)
    batch = Batch(np.stack(c).astype(np.float32), np.stack(y).astype(np.float32), np.stack(nz).astype(np.float32),
                  np.asarray(m, np.float32), np.asarray(nu, np.float32), np.asarray(idx, np.int64), np.asarray(start, np.int64))
    nxt = BatchState(state.epoch, state.batch + 1) if state.batch + 1 < per_epoch else BatchState(state.epoch + 1, 0)
    return batch, nxt


class BatchIterator(Iterator[Batch]):
    """Endless stream of batches (epoch after epoch) starting at ``state``.

    ``iterator.state`` is the position of the *next* batch: store it with a checkpoint and build
    a new iterator from it to resume exactly. Bad configurations (empty dataset, batch larger than
    the dataset, crop longer than every utterance) raise :class:`DatasetError` here, before any
    batch is drawn.
    """

    def __init__(self, dataset: PairDataset, config: BatchConfig = BatchConfig(), state: BatchState = BatchState()):
        check_batchable(dataset, config)
        per_epoch = batches_per_epoch(len(dataset), config)
        if not (0 <= state.batch < per_epoch) or state.epoch < 0:
            raise ValueError(f"BatchState {state} is outside an epoch of {per_epoch} batches")
        self.dataset = dataset
        self.config = config
        self.state = state

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.dataset), self.config)

    def __next__(self) -> Batch:
        batch, self.state = make_batch(self.dataset, self.config, self.state)
        return batch


def epoch_batches(dataset: PairDataset, config: BatchConfig, epoch: int = 0) -> Iterator[Batch]:
    """The batches of one epoch, in order (for validation use ``crop="centre"``,
    ``shuffle=False`` and ``drop_last=False``)."""
    state = BatchState(epoch, 0)
    for _ in range(batches_per_epoch(len(dataset), config)):
        batch, state = make_batch(dataset, config, state)
        yield batch


def data_fingerprint(dataset: PairDataset, config: BatchConfig) -> str:
    """A short hash of the batch config, the dataset name and its utterance ids and lengths — store
    it with a checkpoint and compare on resume to refuse a different data stream."""
    blob = json.dumps({"config": dataclasses.asdict(config), "name": dataset.name, "ids": list(dataset.ids),
                       "lengths": dataset.lengths.tolist()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
