"""The embedded default corpus: built locally and deterministically, cached on disk.

Nothing is downloaded (DESIGN.md § Data). Speech is synthesized by eSpeak NG
(:mod:`.speech`) from a generated sentence list over many voices; the train/valid/test splits
are disjoint in sentences *and* voices (test voices are unseen in training). Two tasks:

``denoise``
    Each utterance gets one procedural noise (:mod:`.noise`: white, pink, brown, babble of other
    utterances of the same split, mains hum, bursts), types balanced so that every type occurs in
    every split. The stored noise is scaled so that M = 1 gives ``snr_db`` (default 5 dB) over the
    whole utterance (issue 3, item 3).
``dereverb``
    Each utterance is convolved with a simulated room impulse response (:mod:`.reverb`, T60
    0.4–1.0 s as the reference WSJ0-Reverb data). ``clean`` is the direct-path signal and
    ``noise`` the reverberant residual ``reverberant − clean``, so M = 1 is the reverberant
    recording.

Storage: ``<cache>/corpus/<task>-<key>/{train,valid,test}/{clean,noise}/<id>.wav`` (16-bit PCM,
16 kHz) plus ``manifest.json`` (config, per-utterance metadata), written last. ``<key>`` is a
SHA-256 content hash of the generation config, the generator version and the eSpeak NG version,
so a second run reuses the files and a different config gets its own folder. Every file is written
to a temporary name and renamed, so an interrupted build leaves only complete files and resumes
where it stopped. Regenerating gives bit-identical files (tests check this).

The cache root is ``cache_dir`` if given, else ``$STORM_JAX_CACHE``, else the platform's user
cache directory for ``storm-jax`` (``platformdirs.user_cache_dir``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..audio_io import read_audio, write_audio
from ..files import atomic_write
from .dataset import DatasetError, PairDataset
from .mixing import mix_np, scale_to_snr, snr_db
from .noise import NOISE_TYPES, make_noise
from .reverb import ReverbConfig, draw_room, reverberate, simulate_rir
from .speech import DEFAULT_VOICES, Synthesizer, Voice, espeak_version, generate_sentences, trim_silence

__all__ = [
    "SPLITS",
    "TASKS",
    "CorpusConfig",
    "cache_root",
    "corpus_dir",
    "build_corpus",
    "embedded_corpus",
    "export_corpus",
    "build_corpus_main",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
TASKS: tuple[str, ...] = ("denoise", "dereverb")
GENERATOR_VERSION = 1  # bump whenever generation code changes its output

Split = Literal["train", "valid", "test"]
Task = Literal["denoise", "dereverb"]


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What the embedded corpus contains (hashable; its content hash names the cache folder).

    Attributes:
        seed: master seed (sentences, noise, rooms, assignments).
        rate: sample rate in Hz (the model rate, 16 kHz).
        sentences: distinct sentences per split (train, valid, test); disjoint across splits.
        voices: the synthetic speakers, split by position according to ``voice_split``.
        voice_split: how many of ``voices`` go to (train, valid, test), in order.
        repeats: utterances per sentence, each by a different voice of the split when possible.
        duration_range: target utterance length in seconds; the speaking rate of an utterance is
            adjusted (within eSpeak's 80–450 wpm) to land inside it.
        noise_types: procedural noise types (``denoise``), balanced over each split.
        snr_db: SNR at M = 1 in dB (``denoise``).
        peak: peak amplitude of the clean speech.
        margin_s: silence kept before and after the speech, in seconds.
        reverb: rooms for the ``dereverb`` task (not part of the ``denoise`` cache key).
    """

    seed: int = 0
    rate: int = 16000
    sentences: tuple[int, int, int] = (240, 30, 30)
    voices: tuple[Voice, ...] = DEFAULT_VOICES
    voice_split: tuple[int, int, int] = (8, 2, 2)
    repeats: int = 1
    duration_range: tuple[float, float] = (1.5, 3.0)
    noise_types: tuple[str, ...] = NOISE_TYPES
    snr_db: float = 5.0
    peak: float = 0.5
    margin_s: float = 0.1
    reverb: ReverbConfig = ReverbConfig()

    def __post_init__(self):
        problems = []
        if len(self.sentences) != 3 or any(int(n) < 1 for n in self.sentences):
            problems.append(f"sentences must give three positive counts (train, valid, test), got {self.sentences}")
        if len(self.voice_split) != 3 or any(int(n) < 1 for n in self.voice_split):
            problems.append(f"voice_split must give three positive counts, got {self.voice_split}")
        elif sum(self.voice_split) != len(self.voices):
            problems.append(f"voice_split {self.voice_split} sums to {sum(self.voice_split)} but there are {len(self.voices)} voices")
        if len({v.id for v in self.voices}) != len(self.voices):
            problems.append("voices contain duplicates")
        if self.repeats < 1:
            problems.append(f"repeats must be >= 1, got {self.repeats}")
        unknown = [t for t in self.noise_types if t not in NOISE_TYPES]
        if unknown or not self.noise_types or len(set(self.noise_types)) != len(self.noise_types):
            problems.append(f"noise_types must be distinct names from {NOISE_TYPES}, got {self.noise_types}")
        elif len(self.sentences) == 3:
            for split, n in zip(SPLITS, self.sentences):
                if int(n) * self.repeats < len(self.noise_types):
                    problems.append(f"split {split!r} has {int(n) * self.repeats} utterances, fewer than the "
                                    f"{len(self.noise_types)} noise types (each type must occur in every split)")
        lo, hi = self.duration_range
        if not (0 < lo < hi):
            problems.append(f"duration_range must satisfy 0 < low < high, got {self.duration_range}")
        elif lo <= 2 * self.margin_s:
            problems.append(f"duration_range low {lo} s leaves no room for speech within 2 × margin_s {self.margin_s} s")
        if not (0 < self.peak < 1):
            problems.append(f"peak must lie in (0, 1), got {self.peak}")
        if self.rate <= 0:
            problems.append(f"rate must be positive, got {self.rate}")
        if problems:
            raise ValueError("CorpusConfig: " + "; ".join(problems))

    def split_voices(self, split: Split) -> tuple[Voice, ...]:
        """The voices of ``split`` (disjoint across splits)."""
        i = SPLITS.index(split)
        start = sum(self.voice_split[:i])
        return self.voices[start:start + self.voice_split[i]]

    @classmethod
    def tiny(cls, seed: int = 0) -> "CorpusConfig":
        """A very small corpus for tests and demos (20 utterances, builds in a few seconds)."""
        return cls(seed=seed, sentences=(8, 6, 6), voices=DEFAULT_VOICES[:2] + DEFAULT_VOICES[-2:], voice_split=(2, 1, 1),
                   reverb=ReverbConfig(t60_range=(0.4, 0.6), room_min=(6.0, 5.0, 3.0), room_max=(8.0, 6.0, 3.5),
                                       rirs_per_split=(2, 1, 1)))


# ----------------------------------------------------------------------------------- cache keys


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$STORM_JAX_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("STORM_JAX_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("storm-jax"))


def _key_payload(config: CorpusConfig, task: Task) -> dict:
    d = dataclasses.asdict(config)
    if task == "denoise":
        d.pop("reverb")
    else:  # the dereverb task uses neither the noise nor its SNR
        d.pop("noise_types")
        d.pop("snr_db")
    return {"generator": GENERATOR_VERSION, "espeak": espeak_version(), "task": task, "config": d}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown corpus task {task!r}; choose from {', '.join(TASKS)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")


def corpus_dir(config: CorpusConfig = CorpusConfig(), task: Task = "denoise", cache_dir=None) -> Path:
    """Folder of the corpus for ``(config, task)``: ``<cache>/corpus/<task>-<16 hex digits>``."""
    _check_task(task)
    blob = _canonical(_key_payload(config, task)).encode()
    return cache_root(cache_dir) / "corpus" / f"{task}-{hashlib.sha256(blob).hexdigest()[:16]}"


# --------------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class _Item:
    split: str
    index: int  # position within the split
    id: str
    sentence: int  # global sentence index
    text: str
    voice: Voice
    noise_type: str
    rir: int  # RIR index within the split (dereverb)


def _rng(config: CorpusConfig, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(config.seed), *map(int, path)]))


def _plan(config: CorpusConfig) -> dict[str, list[_Item]]:
    """Which sentence, voice, noise type and room each utterance gets (pure in ``config``)."""
    texts = generate_sentences(sum(config.sentences), config.seed)
    plan: dict[str, list[_Item]] = {}
    start = 0
    for si, split in enumerate(SPLITS):
        n_sent = int(config.sentences[si])
        voices = config.split_voices(split)
        n = n_sent * config.repeats
        order = _rng(config, 10, si).permutation(n)
        kinds = [config.noise_types[int(order[k]) % len(config.noise_types)] for k in range(n)]
        n_rirs = config.reverb.rirs_per_split[si]
        rir_order = _rng(config, 11, si).permutation(n)
        items = []
        for rep in range(config.repeats):
            for j in range(n_sent):
                k = len(items)
                voice = voices[(j * config.repeats + rep) % len(voices)]
                items.append(_Item(split, k, f"{split}_{k:04d}", start + j, texts[start + j], voice, kinds[k],
                                   int(rir_order[k]) % n_rirs))
        plan[split] = items
        start += n_sent
    return plan


# ------------------------------------------------------------------------------------- speech


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, x.size // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _speak(syn: Synthesizer, item: _Item, config: CorpusConfig) -> tuple[np.ndarray, Voice]:
    """Speech of ``item`` (float64, peak ``config.peak``, ``margin_s`` of silence on both sides),
    and the voice actually used (rate adjusted so the length falls in ``duration_range``)."""
    lo, hi = config.duration_range
    margin = 2 * config.margin_s
    voice = item.voice
    for _ in range(4):
        x = trim_silence(syn.speak(item.text, voice), config.rate)
        dur = x.size / config.rate + margin
        if lo <= dur <= hi:
            break
        target = float(np.clip(dur, lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))) - margin
        new_rate = int(np.clip(round(voice.rate * (x.size / config.rate) / target), 80, 450))
        if new_rate == voice.rate:
            break
        voice = dataclasses.replace(voice, rate=new_rate)
    x = _fade(np.asarray(x, dtype=np.float64), int(0.005 * config.rate))
    pad = np.zeros(int(round(config.margin_s * config.rate)))
    x = np.concatenate([pad, x, pad])
    return x * (config.peak / np.max(np.abs(x))), voice


# ------------------------------------------------------------------------------------ writing


def _quantize(x: np.ndarray) -> np.ndarray:
    """16-bit PCM values of ``x`` (int16), the exact values read back as ``q / 32768``."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def _write_pcm16(path: Path, q: np.ndarray, rate: int) -> None:
    """Write int16 samples as a 16-bit WAV atomically (:func:`~storm_jax.audio_io.write_audio`)."""
    write_audio(path, q, rate, subtype="PCM_16")


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _paths(root: Path, item_split: str, uid: str) -> tuple[Path, Path]:
    return root / item_split / "clean" / f"{uid}.wav", root / item_split / "noise" / f"{uid}.wav"


def _fit_peak(*signals: np.ndarray, limit: float = 0.999) -> float:
    """Common factor (≤ 1) that keeps every signal within ±``limit``."""
    peak = max(float(np.max(np.abs(s))) for s in signals)
    return min(1.0, limit / peak) if peak > 0 else 1.0


def _denoise_pair(item: _Item, speech: Sequence[np.ndarray], plan: Sequence[_Item], config: CorpusConfig):
    clean = speech[item.index]
    talkers = [speech[o.index] for o in plan if o.sentence != item.sentence and o.voice.name != item.voice.name]
    if not talkers:
        talkers = [speech[o.index] for o in plan if o.sentence != item.sentence]
    rng = _rng(config, 20, SPLITS.index(item.split), item.index)
    noise = scale_to_snr(clean, make_noise(item.noise_type, rng, clean.size, config.rate, talkers), config.snr_db)
    g = _fit_peak(clean, noise)
    return clean * g, noise * g


def _dereverb_pair(item: _Item, dry: np.ndarray, rir, config: CorpusConfig):
    target, reverberant = reverberate(dry, rir)
    scale = config.peak / float(np.max(np.abs(target)))
    target, reverberant = target * scale, reverberant * scale
    residual = reverberant - target
    g = _fit_peak(target, reverberant, residual)
    return target * g, residual * g


def _complete(root: Path, key_payload: dict) -> dict | None:
    """The manifest if ``root`` holds a finished corpus for ``key_payload`` with all its files."""
    mpath = root / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _canonical(manifest.get("key")) != _canonical(key_payload):
        return None
    for u in manifest.get("utterances", []):
        c, n = _paths(root, u["split"], u["id"])
        if not (c.is_file() and n.is_file()):
            return None
    return manifest


def build_corpus(config: CorpusConfig = CorpusConfig(), task: Task = "denoise", cache_dir=None, progress: bool = True) -> Path:
    """Build (or reuse, or finish) the corpus for ``(config, task)``; returns its folder.

    Reuses a complete cached build as is; otherwise synthesizes the speech, then writes every
    missing utterance (existing files, always complete thanks to atomic writes, are kept) and
    finally ``manifest.json``. Shows tqdm progress bars unless ``progress=False``.
    """
    from tqdm import tqdm

    _check_task(task)
    payload = _key_payload(config, task)
    root = corpus_dir(config, task, cache_dir)
    if _complete(root, payload) is not None:
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the corpus cache folder {root}: {err.strerror or err}") from None
    plan = _plan(config)
    items = [it for split in SPLITS for it in plan[split]]
    speech: dict[str, list] = {split: [None] * len(plan[split]) for split in SPLITS}
    voices_used: dict[str, Voice] = {}
    with Synthesizer(config.rate) as syn:
        for it in tqdm(items, desc=f"corpus {task}: speech", unit="utt", disable=not progress):
            speech[it.split][it.index], voices_used[it.id] = _speak(syn, it, config)
    rooms = {(split, r): draw_room(_rng(config, 30, si, r), config.reverb)
             for si, split in enumerate(SPLITS) for r in range(config.reverb.rirs_per_split[si])}
    rirs: dict = {}
    if task == "dereverb":
        needed = sorted({(it.split, it.rir) for it in items if not all(p.is_file() for p in _paths(root, it.split, it.id))},
                        key=lambda k: (SPLITS.index(k[0]), k[1]))
        for key in tqdm(needed, desc="corpus dereverb: rooms", unit="rir", disable=not progress):
            rirs[key] = simulate_rir(rooms[key], config.rate)
    entries = []
    for it in tqdm(items, desc=f"corpus {task}: mixtures", unit="utt", disable=not progress):
        cpath, npath = _paths(root, it.split, it.id)
        if task == "denoise":
            clean, noise = _denoise_pair(it, speech[it.split], plan[it.split], config)
            meta = {"noise_type": it.noise_type}
        else:
            room = rooms[(it.split, it.rir)]
            meta = {"rir": it.rir, **room.as_dict()}
            clean = noise = None
            if (it.split, it.rir) in rirs:
                clean, noise = _dereverb_pair(it, speech[it.split][it.index], rirs[(it.split, it.rir)], config)
        if clean is not None:
            qc, qn = _quantize(clean), _quantize(noise)
            if not cpath.is_file():
                _write_pcm16(cpath, qc, config.rate)
            if not npath.is_file():
                _write_pcm16(npath, qn, config.rate)
            stored_c, stored_n = qc / 32768.0, qn / 32768.0
        else:  # written by an earlier, interrupted build
            stored_c = read_audio(cpath, config.rate).samples.astype(np.float64)
            stored_n = read_audio(npath, config.rate).samples.astype(np.float64)
        v = voices_used[it.id]
        entries.append({
            "id": it.id, "split": it.split, "sentence": it.sentence, "text": it.text,
            "voice": v.name, "voice_id": it.voice.id, "rate_wpm": v.rate, "pitch": v.pitch, "pitch_range": v.range,
            "samples": int(stored_c.size), "snr_db": round(float(snr_db(stored_c, stored_n)), 6), **meta,
        })
    manifest = {"key": payload, "task": task, "rate": config.rate, "splits": list(SPLITS),
                "library_versions": _library_versions(), "utterances": entries}
    _write_text_atomic(root / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return root


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "scipy", "soxr", "soundfile", "pyroomacoustics", "espeakng-loader"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# ------------------------------------------------------------------------------------ loading


def _read_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def embedded_corpus(split: Split = "train", task: Task = "denoise", config: CorpusConfig = CorpusConfig(),
                    cache_dir=None, progress: bool = True) -> PairDataset:
    """The embedded corpus split as a :class:`~storm_jax.data.PairDataset` of clean/noise pairs
    (16 kHz float32; M = 1 is the training amplitude), building it on first use (about a minute
    for the default config on a laptop CPU; afterwards read from the cache).

    ``info`` of each utterance holds ``text``, ``voice``, ``sentence``, ``snr_db`` (at M = 1) and
    ``noise_type`` (denoise) or the room (dereverb).
    """
    _check_split(split)
    root = build_corpus(config, task, cache_dir, progress)
    manifest = _read_manifest(root)
    entries = [u for u in manifest["utterances"] if u["split"] == split]
    rate = int(manifest["rate"])

    def load(i: int):
        c, n = _paths(root, split, entries[i]["id"])
        try:
            return read_audio(c, rate).samples, read_audio(n, rate).samples
        except ValueError as err:
            raise DatasetError(f"embedded corpus at {root} is damaged ({err}); delete the folder to rebuild it") from None

    return PairDataset(f"embedded corpus ({task}) {split}", [u["id"] for u in entries], [u["samples"] for u in entries],
                       load, entries, rate, cache=True)


def export_corpus(dest: str | os.PathLike, config: CorpusConfig = CorpusConfig(), task: Task = "denoise", m: float = 1.0,
                  cache_dir=None, progress: bool = True) -> Path:
    """Write the corpus in the reference layout ``dest/{train,valid,test}/{clean,noisy}/<id>.wav``
    (float WAV, noisy = clean + M·noise) so other tools (e.g. the PyTorch reference) can train on
    the same data. Returns ``dest``."""
    from tqdm import tqdm

    dest = Path(dest)
    for split in SPLITS:
        ds = embedded_corpus(split, task, config, cache_dir, progress)
        for u in tqdm(ds, desc=f"export {split}", unit="utt", disable=not progress):
            write_audio(dest / split / "clean" / f"{u.id}.wav", u.clean, ds.rate)
            write_audio(dest / split / "noisy" / f"{u.id}.wav", mix_np(u.clean, u.noise, m), ds.rate)
    return dest


# ---------------------------------------------------------------------------------------- CLI


def _folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build_corpus_main(argv: Sequence[str] | None = None) -> int:
    """``storm-jax corpus``: build (or locate) the embedded corpus and print a summary.

    Returns a process exit code (0 on success, 2 on bad arguments or a failed build).
    """
    p = argparse.ArgumentParser(prog="storm-jax corpus", description="Build the embedded speech corpus (eSpeak NG speech, "
                                "procedural noise, simulated rooms) in the cache, or locate it.",
                                epilog="example: storm-jax corpus --task all")
    p.add_argument("--task", choices=[*TASKS, "all"], default="denoise", help="which variant to build (default: denoise)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $STORM_JAX_CACHE or the user cache dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"), default=None,
                   help="distinct sentences per split (default 240 30 30)")
    p.add_argument("--repeats", type=int, default=1, help="utterances per sentence (default 1)")
    p.add_argument("--snr", type=float, default=5.0, help="SNR in dB at M = 1 (default 5)")
    p.add_argument("--tiny", action="store_true", help="the tiny test corpus (20 utterances)")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="also write {train,valid,test}/{clean,noisy} WAVs (noisy at --m) to DIR")
    p.add_argument("--m", type=float, default=1.0, help="noise amplitude M for --export (default 1)")
    p.add_argument("--print-path", action="store_true", help="print only the corpus folder(s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        config = CorpusConfig.tiny(args.seed) if args.tiny else CorpusConfig(seed=args.seed)
        changes = {"repeats": args.repeats, "snr_db": args.snr}
        if args.sentences is not None:
            changes["sentences"] = tuple(args.sentences)
        config = dataclasses.replace(config, **changes)
        tasks = TASKS if args.task == "all" else (args.task,)
        for task in tasks:
            t0 = time.perf_counter()
            root = build_corpus(config, task, args.cache_dir, progress=not args.quiet)
            elapsed = time.perf_counter() - t0
            if args.print_path:
                print(root)
                continue
            manifest = _read_manifest(root)
            counts = {s: sum(u["split"] == s for u in manifest["utterances"]) for s in SPLITS}
            secs = {s: sum(u["samples"] for u in manifest["utterances"] if u["split"] == s) / manifest["rate"] for s in SPLITS}
            print(f"{task}: {root}")
            print("  " + ", ".join(f"{s} {counts[s]} utterances ({secs[s] / 60:.1f} min)" for s in SPLITS))
            print(f"  {_folder_size(root) / 1e6:.1f} MB on disk; ready in {elapsed:.1f} s")
            if args.export:
                dest = Path(args.export) / task if len(tasks) > 1 else Path(args.export)
                export_corpus(dest, config, task, args.m, args.cache_dir, progress=not args.quiet)
                print(f"  exported to {dest} (noisy at M = {args.m:g})")
    except (ValueError, OSError, RuntimeError) as err:
        print(f"storm-jax corpus: error: {err}", file=sys.stderr)
        return 2
    return 0
