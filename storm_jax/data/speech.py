"""Speech for the embedded corpus: generated sentences spoken by eSpeak NG.

The ``espeakng-loader`` wheel ships ``libespeak-ng.so`` (``espeakng_loader.get_library_path()``)
and its voice data (``espeakng_loader.get_data_path()``); we call the library's C API through
ctypes (``espeak_Initialize`` in synchronous mode, ``espeak_SetVoiceByName``,
``espeak_SetParameter``, ``espeak_Synth``) in a small worker process (``_espeak_worker.py``),
one freshly forked child per utterance, because the library keeps synthesis state in C static
variables that no API call resets. eSpeak speaks at 22 050 Hz (16-bit); we resample to 16 kHz
with soxr, trim silence at both ends and keep a short margin.

Everything here is deterministic: a sentence list is a function of a seed, and an utterance a
function of (text, voice parameters).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

__all__ = [
    "SpeechError",
    "Voice",
    "DEFAULT_VOICES",
    "generate_sentences",
    "Synthesizer",
    "espeak_version",
    "trim_silence",
]

_WORKER = Path(__file__).with_name("_espeak_worker.py")


class SpeechError(RuntimeError):
    """eSpeak NG is unavailable or failed on a request (the message names the request)."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak NG voice name plus fixed prosody parameters.

    Attributes:
        name: eSpeak NG voice, ``language+variant`` (e.g. ``"en-us+m3"``).
        rate: speaking rate in words per minute (eSpeak range 80–450; 175 is eSpeak's normal).
        pitch: base pitch, 0–100 (50 normal).
        range: pitch range, 0–100 (0 monotone, 50 normal).
        wordgap: extra pause between words in units of 10 ms.
    """

    name: str
    rate: int = 170
    pitch: int = 50
    range: int = 50
    wordgap: int = 0

    @property
    def id(self) -> str:
        """A file-name-safe identifier, unique for distinct parameters."""
        base = self.name.replace("+", "_").replace("-", "").replace(" ", "")
        return f"{base}_r{self.rate}_p{self.pitch}_g{self.range}_w{self.wordgap}"


# Distinct timbres (eSpeak variants), accents and prosody. The corpus splits voices by position
# (see CorpusConfig.voice_split): the last four are held out for validation and test, and their
# variants (m5, f4, m6, f5) appear in no training voice.
DEFAULT_VOICES: tuple[Voice, ...] = (
    Voice("en-us+m1", rate=165, pitch=45, range=55),
    Voice("en+f1", rate=160, pitch=60, range=60),
    Voice("en-gb-scotland+m2", rate=170, pitch=40, range=50),
    Voice("en-029+f2", rate=155, pitch=55, range=65),
    Voice("en-gb-x-rp+m3", rate=175, pitch=50, range=45),
    Voice("en-us-nyc+f3", rate=170, pitch=65, range=55),
    Voice("en-gb-x-gbclan+m4", rate=160, pitch=35, range=60),
    Voice("en-us+m7", rate=180, pitch=48, range=40),
    Voice("en-gb-x-rp+f4", rate=165, pitch=58, range=62),
    Voice("en-us+m5", rate=170, pitch=42, range=52),
    Voice("en+m6", rate=168, pitch=46, range=58),
    Voice("en-us+f5", rate=162, pitch=62, range=50),
)

_DET = ("the", "a", "my", "your", "our", "their", "this", "that", "every", "one")
_ADJ = ("old", "young", "quiet", "bright", "small", "heavy", "green", "cold", "careful", "happy",
        "silver", "wooden", "little", "busy", "gentle", "strange", "tired", "clever", "empty", "warm",
        "yellow", "narrow", "lazy", "proud", "sharp", "sleepy", "friendly", "ancient", "hidden", "noisy")
_NOUN = ("doctor", "teacher", "farmer", "river", "garden", "window", "captain", "kitten", "engine",
         "letter", "market", "painter", "student", "village", "dancer", "pilot", "basket", "bridge",
         "singer", "neighbor", "baker", "lantern", "sailor", "mountain", "violin", "rabbit", "camera",
         "soldier", "station", "library", "orchard", "wagon", "tiger", "kettle", "island", "parrot")
_VERB = ("found", "painted", "carried", "watched", "opened", "followed", "cleaned", "borrowed",
         "visited", "fixed", "moved", "counted", "noticed", "pushed", "greeted", "washed",
         "described", "repaired", "remembered", "chased", "ordered", "delivered", "measured", "packed")
_ADV = ("slowly", "quickly", "twice", "again", "today", "yesterday", "carefully", "at noon",
        "in silence", "before dinner", "after the storm", "on monday", "every morning", "at last",
        "by the door", "near the lake", "in the rain", "without a word")
_NAME = ("Anna", "Peter", "Maria", "Thomas", "Laura", "David", "Sophie", "Martin", "Clara", "Oliver",
         "Helen", "Jonas", "Emma", "Victor", "Nora", "Felix")
_TEMPLATES = (
    "{D} {A} {N} {V} {d} {n} {R}.",
    "{P} {V} {d} {a} {n} {R}.",
    "{D} {N} {V} {d} {a} {n}.",
    "Did {d} {a} {n} see {P} {R}?",
    "{P} and {P2} {V} {d} {n}.",
    "{D} {A} {N} was {a} {R}.",
)


def generate_sentences(n: int, seed: int) -> tuple[str, ...]:
    """``n`` distinct English sentences (4–9 words) drawn from a small grammar.

    A pure function of ``(n, seed)`` (numpy PCG64 generator). Raises ``ValueError`` if the
    grammar cannot give ``n`` distinct sentences.
    """
    if n < 0:
        raise ValueError(f"generate_sentences: n must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E47]))
    seen: dict[str, None] = {}
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"generate_sentences: could not draw {n} distinct sentences (got {len(seen)})")
        template = pick(_TEMPLATES)
        p1 = pick(_NAME)
        p2 = pick(tuple(w for w in _NAME if w != p1))
        s = template.format(D=pick(_DET).capitalize(), A=pick(_ADJ), N=pick(_NOUN), V=pick(_VERB),
                            d=pick(_DET), a=pick(_ADJ), n=pick(_NOUN), R=pick(_ADV), P=p1, P2=p2)
        seen.setdefault(s[0].upper() + s[1:], None)
    return tuple(seen)


def _library_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - dependency is declared
        raise SpeechError("the embedded corpus needs the 'espeakng-loader' package (pip install espeakng-loader)") from err
    lib = espeakng_loader.get_library_path()
    if not os.path.exists(lib):
        raise SpeechError(f"espeakng-loader ships no eSpeak NG library for this platform (looked for {lib})")
    try:
        data = espeakng_loader.get_data_path()
    except RuntimeError as err:
        raise SpeechError(f"espeakng-loader: {err}") from None
    return lib, data


def espeak_version() -> str:
    """Version of the eSpeak NG library shipped by ``espeakng-loader`` (e.g. ``"1.52.0"``).

    Read from the library file name (``libespeak-ng.so.1.52.0``) or the wheel's metadata, without
    loading the library into this process.
    """
    lib, _ = _library_paths()
    folder = Path(lib).parent
    versions = sorted(p.name.split(".so.", 1)[1] for p in folder.glob("libespeak-ng.so.*.*"))
    if versions:
        return versions[-1]
    from importlib.metadata import version

    return "loader-" + version("espeakng-loader")


class Synthesizer:
    """Speaks text with eSpeak NG; a context manager around one worker process.

    ``speak(text, voice)`` returns float32 samples at ``rate`` Hz (default 16 kHz): eSpeak's
    22 050 Hz 16-bit output scaled to [-1, 1), resampled with soxr (VHQ). Thread-safe
    (requests are serialised). The worker forks a fresh child per utterance, so the output is a
    pure function of (text, voice) and independent of the order of requests.
    """

    def __init__(self, rate: int = 16000):
        self.rate = int(rate)
        self._lib, self._data = _library_paths()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request at a time over the worker's pipes

    def __enter__(self) -> "Synthesizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop the worker process (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()

    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
            self._proc = subprocess.Popen([sys.executable, "-I", str(_WORKER)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, env=env)
        return self._proc

    def speak_raw(self, text: str, voice: Voice, seed: int = 0) -> tuple[np.ndarray, int]:
        """eSpeak's own output: int16 samples and their rate (22 050 Hz)."""
        req = dict(lib=self._lib, data=self._data, text=text, voice=voice.name, rate=voice.rate,
                   pitch=voice.pitch, range=voice.range, wordgap=voice.wordgap, seed=int(seed))
        with self._lock:
            proc = self._worker()
            try:
                proc.stdin.write(json.dumps(req).encode() + b"\n")
                proc.stdin.flush()
                tag = _read_exact(proc.stdout, 2)
                if tag == b"OK":
                    sr, n = struct.unpack("<ii", _read_exact(proc.stdout, 8))
                    pcm = np.frombuffer(_read_exact(proc.stdout, 2 * n), dtype="<i2").copy()
                elif tag == b"ER":
                    (n,) = struct.unpack("<i", _read_exact(proc.stdout, 4))
                    raise SpeechError(f"eSpeak NG failed on voice {voice.name!r}, text {text!r}: "
                                      f"{_read_exact(proc.stdout, n).decode(errors='replace')}")
                else:
                    raise SpeechError(f"eSpeak NG worker sent an unexpected reply {tag!r}")
            except (BrokenPipeError, EOFError) as err:
                self.close()
                raise SpeechError(f"eSpeak NG worker died while speaking {text!r} with voice {voice.name!r}: {err}") from None
            if not hasattr(os, "fork"):  # the worker answers once without fork
                self.close()
        if pcm.size == 0:
            raise SpeechError(f"eSpeak NG produced no audio for {text!r} with voice {voice.name!r}")
        return pcm, sr

    def speak(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """Float32 waveform at ``self.rate`` Hz (not trimmed)."""
        pcm, sr = self.speak_raw(text, voice, seed)
        x = pcm.astype(np.float32) / np.float32(32768.0)
        if sr != self.rate:
            import soxr

            x = soxr.resample(x, sr, self.rate, quality="VHQ").astype(np.float32)
        return x


def _read_exact(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError(f"expected {n} bytes, got {len(buf)}")
        buf += chunk
    return buf


def trim_silence(x: np.ndarray, rate: int, threshold: float = 1e-3, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing samples whose magnitude is below ``threshold · max|x|``,
    keeping ``margin_s`` seconds of margin on each side (within the signal)."""
    x = np.asarray(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    loud = np.flatnonzero(np.abs(x) >= threshold * peak)
    margin = int(round(margin_s * rate))
    start = max(int(loud[0]) - margin, 0)
    stop = min(int(loud[-1]) + 1 + margin, x.size)
    return x[start:stop]
