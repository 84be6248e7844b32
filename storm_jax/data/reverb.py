"""Room impulse responses for the dereverberation variant (pyroomacoustics image-source method).

As in the reference's WSJ0-Reverb data (T60 uniform in 0.4–1.0 s, storm-reference.md § Data /
the sgmse reverb recipe): a shoebox room with random dimensions, one source and one microphone at
random positions; wall absorption and image-source order from Sabine's formula
(``pyroomacoustics.inverse_sabine``). The *target* is the same source/microphone pair simulated
with ``max_order = 0`` (direct path only, so it carries the same propagation delay and
attenuation), the *reverberant* signal uses the full RIR.

Determinism: pyroomacoustics sums image sources in parallel threads and the float result depends
on the thread count, so :func:`simulate_rir` runs with one thread.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

__all__ = ["ReverbConfig", "Room", "RIR", "draw_room", "simulate_rir", "reverberate"]


@dataclasses.dataclass(frozen=True)
class ReverbConfig:
    """How rooms are drawn.

    Attributes:
        t60_range: reverberation time T60 in seconds, drawn uniformly (reference 0.4–1.0 s).
        room_min, room_max: shoebox dimensions (x, y, z) in metres, each drawn uniformly.
        wall_margin: minimum distance in metres of source and microphone from every wall.
        min_distance: minimum source–microphone distance in metres.
        rirs_per_split: how many distinct RIRs each split (train, valid, test) draws; utterances
            cycle through them. Each RIR costs ≈ 0.3–1.5 s of CPU.
    """

    t60_range: tuple[float, float] = (0.4, 1.0)
    room_min: tuple[float, float, float] = (5.0, 4.0, 2.6)
    room_max: tuple[float, float, float] = (10.0, 8.0, 4.0)
    wall_margin: float = 0.5
    min_distance: float = 1.0
    rirs_per_split: tuple[int, int, int] = (12, 4, 4)

    def __post_init__(self):
        lo, hi = self.t60_range
        if not (0 < lo <= hi):
            raise ValueError(f"ReverbConfig: t60_range must satisfy 0 < low <= high, got {self.t60_range}")
        if any(a > b for a, b in zip(self.room_min, self.room_max)):
            raise ValueError(f"ReverbConfig: room_min {self.room_min} exceeds room_max {self.room_max}")
        if any(d <= 2 * self.wall_margin for d in self.room_min):
            raise ValueError(f"ReverbConfig: room_min {self.room_min} leaves no space inside wall_margin {self.wall_margin}")
        if any(k < 1 for k in self.rirs_per_split):
            raise ValueError(f"ReverbConfig: rirs_per_split must be >= 1 each, got {self.rirs_per_split}")


@dataclasses.dataclass(frozen=True)
class Room:
    """A drawn geometry: shoebox ``room`` dimensions, ``source`` and ``mic`` positions (metres)
    and the requested ``t60`` (seconds)."""

    room: tuple[float, float, float]
    source: tuple[float, float, float]
    mic: tuple[float, float, float]
    t60: float

    def as_dict(self) -> dict:
        """JSON-friendly metadata (rounded to 0.1 mm / 1 µs)."""
        return {"t60": round(self.t60, 6), "room": [round(v, 4) for v in self.room],
                "source": [round(v, 4) for v in self.source], "mic": [round(v, 4) for v in self.mic]}


@dataclasses.dataclass(frozen=True)
class RIR:
    """A simulated source–microphone pair.

    Attributes:
        full: the room impulse response (float64, at the simulation rate).
        direct: the direct-path-only response of the same pair (same delay and attenuation).
        room: the geometry it was simulated for.
        max_order: image-source order used (from Sabine's formula).
    """

    full: np.ndarray
    direct: np.ndarray
    room: Room
    max_order: int


@contextlib.contextmanager
def _one_thread():
    import pyroomacoustics as pra

    old = pra.constants.get("num_threads")
    pra.constants.set("num_threads", 1)
    try:
        yield
    finally:
        pra.constants.set("num_threads", old)


def draw_room(rng: np.random.Generator, config: ReverbConfig = ReverbConfig()) -> Room:
    """Draw room dimensions, T60 and source/microphone positions (uniform, ``config`` ranges)."""
    room = tuple(float(rng.uniform(a, b)) for a, b in zip(config.room_min, config.room_max))
    t60 = float(rng.uniform(*config.t60_range))
    m = config.wall_margin
    for _ in range(1000):
        src = tuple(float(rng.uniform(m, d - m)) for d in room)
        mic = tuple(float(rng.uniform(m, d - m)) for d in room)
        if np.linalg.norm(np.subtract(src, mic)) >= config.min_distance:
            return Room(room, src, mic, t60)
    raise ValueError(f"draw_room: cannot place source and microphone {config.min_distance} m apart in room {room}")


def simulate_rir(room: Room, rate: int = 16000) -> RIR:
    """Image-source simulation of ``room`` (full and direct-path-only responses; module doc)."""
    import pyroomacoustics as pra

    e_absorption, max_order = pra.inverse_sabine(room.t60, room.room)
    responses = []
    with _one_thread():
        for order in (max_order, 0):
            r = pra.ShoeBox(list(room.room), fs=rate, materials=pra.Material(e_absorption), max_order=order)
            r.add_source(list(room.source))
            r.add_microphone(list(room.mic))
            r.compute_rir()
            responses.append(np.asarray(r.rir[0][0], dtype=np.float64))
    return RIR(full=responses[0], direct=responses[1], room=room, max_order=int(max_order))


def reverberate(dry: np.ndarray, rir: RIR) -> tuple[np.ndarray, np.ndarray]:
    """``(target, reverberant)``: ``dry ⊛ rir.direct`` and ``dry ⊛ rir.full``, both cut to
    ``len(dry)`` (float64; the two are time-aligned since they share the direct-path delay)."""
    from scipy.signal import fftconvolve

    dry = np.asarray(dry, dtype=np.float64)
    n = dry.size
    return fftconvolve(dry, rir.direct)[:n], fftconvolve(dry, rir.full)[:n]
