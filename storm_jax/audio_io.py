"""Reading and writing audio files, with validation and atomic writes.

Every problem is reported as :class:`AudioError` with a one-line message that names the file.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write

__all__ = ["AudioError", "LoadedAudio", "read_audio", "write_audio", "wav_frame_counts", "AUDIO_SUFFIXES", "list_audio"]

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
    warnings: tuple[str, ...] = ()


def wav_frame_counts(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(frames the header promises, frames the file holds)`` of a RIFF/WAVE file, from its
    ``fmt `` block alignment and its ``data`` chunk's declared size against the bytes present;
    ``None`` for anything else (other formats, RF64, streaming headers with an unknown size).
    libsndfile reads a truncated file's frames silently: this is how a cut-off copy is caught."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            align, pos = None, 12
            while pos + 8 <= size:
                f.seek(pos)
                tag, n = struct.unpack("<4sI", f.read(8))
                if tag == b"fmt ":
                    fmt = f.read(min(n, 16))
                    if len(fmt) >= 14:
                        align = struct.unpack("<H", fmt[12:14])[0]
                elif tag == b"data":
                    if not align or n in (0, 0xFFFFFFFF):
                        return None
                    present = max(0, size - (pos + 8))
                    return n // align, min(n, present) // align
                pos += 8 + n + (n & 1)  # chunks are word-aligned
    except OSError:
        return None
    return None


def read_audio(path: str | os.PathLike, rate: int = 16000, *, downmix: bool = False, min_samples: int = 510,
               allow_truncated: bool = False) -> LoadedAudio:
    """Read ``path`` as a mono float32 waveform at ``rate`` Hz.

    Other sample rates are resampled with soxr (a notice is recorded); multi-channel audio is
    an error unless ``downmix`` (then channels are averaged). Unreadable files, NaN/Inf samples,
    all-zero audio and audio shorter than ``min_samples`` (one STFT frame at the model rate) raise
    :class:`AudioError`; so does a WAV whose header promises more frames than the file holds
    (:func:`wav_frame_counts`), unless ``allow_truncated`` (then the frames present are read and
    a warning is recorded).
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    warnings = []
    counts = wav_frame_counts(path)
    if counts is not None and counts[1] < counts[0]:
        msg = f"{path}: truncated WAV: the header promises {counts[0]} frames but the file holds {counts[1]}"
        if not allow_truncated:
            raise AudioError(f"{msg} (an interrupted copy?); use --allow-truncated to enhance the frames present")
        warnings.append(f"{msg}; enhancing the {counts[1]} frames present")
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
    return LoadedAudio(path=path, samples=x, rate=rate, original_rate=int(sr), notices=tuple(notices), warnings=tuple(warnings))


def write_audio(path: str | os.PathLike, samples: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    """Write a WAV atomically: encoded in memory, then :func:`storm_jax.files.atomic_write` (a
    temporary file in the same folder, fsync, ``os.replace``; the umask's permissions). Writing
    the bytes ourselves keeps the OS error (libsndfile reports a full disk as "System error"):
    any failure is an :class:`~storm_jax.files.OutputError` naming ``path``, nothing half-written."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples), rate, subtype=subtype, format="WAV")
    return atomic_write(path, buf.getvalue())


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
