"""Clean/noise pair datasets (the common type of the embedded corpus and directory datasets).

A dataset is an ordered, immutable sequence of :class:`Utterance` (clean ``s`` and noise ``n``
kept separate, 16 kHz float32), so ``y(M) = s + M·n`` can be formed for any M
(DESIGN.md § Data, point 3). Waveforms are either held in memory or read on access.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from .mixing import mix_np, snr_db

__all__ = ["Utterance", "PairDataset", "DatasetError"]


class DatasetError(ValueError):
    """A dataset cannot be used. ``problems`` lists every problem found (each naming its path);
    ``str(err)`` is a header line followed by one line per problem."""

    def __init__(self, header: str, problems: Sequence[str] = ()):
        self.header = header
        self.problems = tuple(problems)
        lines = [header] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
    """One clean/noise pair.

    Attributes:
        id: unique name within the dataset (file stem for directory datasets).
        clean: ``s``, float32 ``[L]`` at ``rate`` Hz.
        noise: ``n``, float32 ``[L]``; the training amplitude is M = 1.
        rate: sample rate in Hz.
        info: metadata (text, voice, noise type, SNR at M = 1, source paths, …).
    """

    id: str
    clean: np.ndarray
    noise: np.ndarray
    rate: int = 16000
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def noisy(self, m=1.0, power: bool = False) -> np.ndarray:
        """``y(M) = s + M·n`` (``power``: ``s + sqrt(M)·n``), float32 ``[L]``."""
        return mix_np(self.clean, self.noise, m, power)

    def snr_db(self, m=1.0, power: bool = False) -> float:
        """SNR of ``y(M)`` in dB over the whole utterance."""
        return float(snr_db(self.clean, self.noise, m, power))

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.clean.shape[-1] / self.rate


class PairDataset(Sequence[Utterance]):
    """An immutable sequence of :class:`Utterance`.

    Args:
        name: what the dataset is (shown in errors), e.g. ``"embedded corpus (denoise) train"``.
        ids: utterance ids, in order.
        lengths: length in samples of each utterance.
        load: ``load(i) -> (clean, noise)`` float32 arrays of ``lengths[i]`` samples.
        infos: metadata per utterance.
        rate: sample rate in Hz.
        cache: keep loaded waveforms in memory after first access.
    """

    def __init__(self, name: str, ids: Sequence[str], lengths: Sequence[int], load: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 infos: Sequence[Mapping[str, Any]] | None = None, rate: int = 16000, cache: bool = True):
        if len(ids) != len(lengths):
            raise ValueError(f"{name}: {len(ids)} ids but {len(lengths)} lengths")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: utterance ids are not unique")
        self.name = name
        self.ids: tuple[str, ...] = tuple(ids)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.lengths.setflags(write=False)
        self.rate = int(rate)
        self._load = load
        self._infos = tuple(MappingProxyType(dict(i)) for i in (infos if infos is not None else [{}] * len(ids)))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    @classmethod
    def from_arrays(cls, name: str, ids: Sequence[str], clean: Sequence[np.ndarray], noise: Sequence[np.ndarray],
                    infos: Sequence[Mapping[str, Any]] | None = None, rate: int = 16000) -> "PairDataset":
        """A dataset over in-memory waveforms (copied to read-only float32)."""
        if len(clean) != len(noise) or len(clean) != len(ids):
            raise ValueError(f"{name}: {len(ids)} ids, {len(clean)} clean and {len(noise)} noise arrays")
        pairs = []
        for i, (c, n) in enumerate(zip(clean, noise)):
            c = np.array(c, dtype=np.float32)
            n = np.array(n, dtype=np.float32)
            if c.ndim != 1 or c.shape != n.shape:
                raise ValueError(f"{name}: utterance {ids[i]}: clean {c.shape} and noise {n.shape} must be equal 1-D shapes")
            c.setflags(write=False)
            n.setflags(write=False)
            pairs.append((c, n))
        return cls(name, ids, [c.size for c, _ in pairs], lambda i: pairs[i], infos, rate, cache=False)

    def __len__(self) -> int:
        return len(self.ids)

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        c, n = self._load(i)
        if c.shape != (self.lengths[i],) or n.shape != (self.lengths[i],):
            raise DatasetError(f"{self.name}: utterance {self.ids[i]} changed on disk: expected {self.lengths[i]} samples, "
                               f"got clean {c.shape} and noise {n.shape}")
        if self._cache is not None:
            c.setflags(write=False)  # cached arrays are shared by every later access
            n.setflags(write=False)
            self._cache[i] = (c, n)
        return c, n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} utterances")
        i %= len(self)
        c, n = self._pair(i)
        return Utterance(self.ids[i], c, n, self.rate, self._infos[i])

    def info(self, i: int) -> Mapping[str, Any]:
        """Metadata of utterance ``i`` (without loading audio)."""
        return self._infos[int(i)]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "PairDataset":
        """The utterances at ``indices``, in that order."""
        idx = [int(i) % len(self) for i in indices]
        return PairDataset(name or f"{self.name} (subset of {len(idx)})", [self.ids[i] for i in idx], self.lengths[idx],
                           lambda j: self._pair(idx[j]), [self._infos[i] for i in idx], self.rate, cache=False)

    def where(self, **match) -> "PairDataset":
        """The utterances whose ``info`` has all the given key/value pairs (e.g. ``noise_type="hum"``)."""
        keep = [i for i in range(len(self)) if all(self._infos[i].get(k) == v for k, v in match.items())]
        desc = ", ".join(f"{k}={v!r}" for k, v in match.items())
        return self.subset(keep, name=f"{self.name} [{desc}]")

    def __repr__(self) -> str:
        total = float(self.lengths.sum()) / self.rate if len(self) else 0.0
        return f"PairDataset({self.name!r}, {len(self)} utterances, {total:.1f} s at {self.rate} Hz)"
