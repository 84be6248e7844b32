"""Reading and writing audio files, with validation and atomic writes.

Every problem is reported as :class:`AudioError` with a one-line message that names the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AudioError", "LoadedAudio", "read_audio", "write_audio", "AUDIO_SUFFIXES", "list_audio"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


class AudioError(ValueError):
    """A file that cannot be used as input; ``str(err)`` is one line naming the file."""


@dataclass(frozen=True)
class LoadedAudio:
    """A mono waveform at the model rate plus what was done to it."""

    path: Path
    samples: np.ndarray  # float32 [L] at ``rate``
    rate: int
    original_rate: int
    notices: tuple[str, ...] = ()


def read_audio(path: str | os.PathLike, rate: int = 16000, *, downmix: bool = False, min_samples: int = 510) -> LoadedAudio:
    """Read ``path`` as a mono float32 waveform at ``rate`` Hz.

    Other sample rates are resampled with soxr (a notice is recorded); multi-channel audio is
    an error unless ``downmix`` (then channels are averaged). Unreadable files, NaN/Inf samples,
    all-zero audio and audio shorter than ``min_samples`` (one STFT frame at the model rate) raise
    :class:`AudioError`.
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types; all mean "cannot read this"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AudioError(f"{path}: unreadable audio file ({msg})") from None
    notices = []
    if data.shape[1] > 1:
        if not downmix:
            raise AudioError(f"{path}: {data.shape[1]} channels; StoRM enhances mono audio (use --downmix to average the channels)")
        notices.append(f"{path}: downmixed {data.shape[1]} channels to mono")
        data = data.mean(axis=1, keepdims=True)
    x = data[:, 0]
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{path}: contains NaN or Inf samples")
    if x.size == 0 or not np.any(x):
        raise AudioError(f"{path}: audio is all zeros (nothing to enhance)")
    if sr != rate:
        import soxr

        x = soxr.resample(x, sr, rate).astype(np.float32)
        notices.append(f"{path}: resampled from {sr} Hz to {rate} Hz")
    if x.size < min_samples:
        raise AudioError(f"{path}: {x.size} samples at {rate} Hz is shorter than one STFT frame ({min_samples} samples)")
    return LoadedAudio(path=path, samples=x, rate=rate, original_rate=int(sr), notices=tuple(notices))


def write_audio(path: str | os.PathLike, samples: np.ndarray, rate: int) -> Path:
    """Write a WAV atomically: to a temporary file in the same folder, then ``os.replace``."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.asarray(samples, dtype=np.float32), rate, subtype="FLOAT", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def list_audio(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (searched recursively for audio suffixes) and list files
    (``.txt``/``.lst`` with one path per line) into an ordered list of paths."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES and q.is_file()))
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    out.append(q if q.is_absolute() else p.parent / q)
        else:
            out.append(p)
    return out
