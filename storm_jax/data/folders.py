"""Directory datasets: a user's copy of the reference corpora as clean/noise pairs.

Layouts (``layout="auto"`` picks the one present under ``root``):

``reference``
    ``root/{train,valid,test}/{clean,noisy}/<name>.wav`` — the layout of the reference data
    module (its ``voicebank`` format, which StoRM's VB-DMD recipe produces).
``wsj0``
    ``root/{tr,cv,tt}/{clean,noisy}/`` (the reference's ``wsj0``/``vctk`` formats, e.g. WSJ0-CHiME3).
``reverb_wsj0``
    ``root/{tr,cv,tt}/{anechoic,reverb}/`` (WSJ0-Reverb).
``voicebank``
    VoiceBank-DEMAND as distributed (Valentini-Botinhao et al., DataShare 10283/2791):
    ``clean_trainset_28spk_wav``/``noisy_trainset_28spk_wav`` (or ``…_56spk_wav``) and
    ``clean_testset_wav``/``noisy_testset_wav``. The corpus has no validation set; as in the
    common recipe, speakers p226 and p287 are held out of the training set as ``valid``.

Pairs are matched by their path relative to the ``clean``/``noisy`` folders (without suffix) and
kept as ``clean`` and ``noise = noisy − clean``, so ``y(M) = clean + M·noise`` can be formed for
any M (M = 1 is the recording itself). Validation runs up front and reports *every* problem at
once, each with its path: missing or empty folders, folders without audio, unmatched names,
unreadable files, wrong sample rates, multi-channel audio, differing lengths, NaN/silent audio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence


from ..audio_io import AUDIO_SUFFIXES, AudioError, read_audio
from .dataset import DatasetError, PairDataset

__all__ = ["LAYOUTS", "VOICEBANK_VALID_SPEAKERS", "detect_layout", "check_folder_dataset", "folder_dataset"]

LAYOUTS: tuple[str, ...] = ("reference", "wsj0", "reverb_wsj0", "voicebank")
VOICEBANK_VALID_SPEAKERS: tuple[str, ...] = ("p226", "p287")

_SPLIT_DIRS = {
    "reference": {"train": "train", "valid": "valid", "test": "test"},
    "wsj0": {"train": "tr", "valid": "cv", "test": "tt"},
    "reverb_wsj0": {"train": "tr", "valid": "cv", "test": "tt"},
}
_PAIR_DIRS = {"reference": ("clean", "noisy"), "wsj0": ("clean", "noisy"), "reverb_wsj0": ("anechoic", "reverb")}
_VB_TRAIN = (("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"), ("clean_trainset_56spk_wav", "noisy_trainset_56spk_wav"))
_VB_TEST = ("clean_testset_wav", "noisy_testset_wav")

Layout = Literal["auto", "reference", "wsj0", "reverb_wsj0", "voicebank"]
Split = Literal["train", "valid", "test"]


def _root_problem(root: Path) -> str | None:
    if not root.exists():
        return f"{root}: dataset folder does not exist"
    if not root.is_dir():
        return f"{root}: not a folder"
    try:
        if not any(root.iterdir()):
            return f"{root}: dataset folder is empty"
    except OSError as err:
        return f"{root}: cannot list the folder ({err.strerror or err})"
    return None


def detect_layout(root: str | os.PathLike) -> str:
    """The layout found under ``root`` (see module doc); raises :class:`DatasetError` if none."""
    root = Path(root)
    problem = _root_problem(root)
    if problem:
        raise DatasetError(f"cannot use {root} as a dataset", [problem])
    if any((root / c).is_dir() for c, _ in (*_VB_TRAIN, _VB_TEST)):
        return "voicebank"
    if any((root / s).is_dir() for s in _SPLIT_DIRS["reference"].values()):
        return "reference"
    for layout in ("wsj0", "reverb_wsj0"):
        if any((root / s / _PAIR_DIRS[layout][0]).is_dir() for s in _SPLIT_DIRS[layout].values()):
            return layout
    if any((root / s).is_dir() for s in _SPLIT_DIRS["wsj0"].values()):
        return "wsj0"
    entries = sorted(p.name for p in root.iterdir())[:10]
    raise DatasetError(f"cannot recognise the dataset layout of {root}", [
        f"{root}: expected {{train,valid,test}}/{{clean,noisy}} (reference), {{tr,cv,tt}}/{{clean,noisy}} (wsj0), "
        f"{{tr,cv,tt}}/{{anechoic,reverb}} (reverb_wsj0) or VoiceBank-DEMAND's clean_trainset_28spk_wav, noisy_trainset_28spk_wav, "
        f"clean_testset_wav, noisy_testset_wav; found {', '.join(entries) if entries else 'nothing'}"])


def _audio_files(folder: Path) -> dict[str, Path]:
    """Audio files under ``folder`` (recursively), keyed by relative path without suffix."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not p.name.startswith("."):
            out[p.relative_to(folder).with_suffix("").as_posix()] = p
    return out


def _folders(root: Path, split: str, layout: str) -> tuple[Path, Path, tuple[str, ...] | None, bool]:
    """(clean dir, noisy dir, speaker filter, keep-or-drop filter) for ``split``."""
    if layout == "voicebank":
        if split == "test":
            return root / _VB_TEST[0], root / _VB_TEST[1], None, True
        clean, noisy = next(((root / c, root / n) for c, n in _VB_TRAIN if (root / c).is_dir()), (root / _VB_TRAIN[0][0], root / _VB_TRAIN[0][1]))
        return clean, noisy, VOICEBANK_VALID_SPEAKERS, split == "valid"
    sdir = root / _SPLIT_DIRS[layout][split]
    c, n = _PAIR_DIRS[layout]
    return sdir / c, sdir / n, None, True


def _scan(root: Path, split: str, layout: str, rate: int, resample: bool, downmix: bool, read: bool):
    """Validate one split; returns ``(pairs, problems, samples)``: ``pairs[i] = (key, clean path,
    noisy path)`` and, when ``read``, ``samples[i] = (clean, noisy)`` float32 arrays."""
    import soundfile as sf

    problems: list[str] = []
    clean_dir, noisy_dir, speakers, keep = _folders(root, split, layout)
    files = {}
    for d in (clean_dir, noisy_dir):
        if not d.is_dir():
            problems.append(f"{d}: missing folder ({layout} layout, split {split!r})")
            files[d] = {}
            continue
        found = _audio_files(d)
        if speakers is not None:
            found = {k: v for k, v in found.items() if (k.split("/")[-1].split("_")[0] in speakers) == keep}
        if not found:
            what = f" of speakers {'/'.join(speakers)}" if speakers is not None and keep else ""
            problems.append(f"{d}: no audio files{what} ({', '.join(AUDIO_SUFFIXES)})")
        files[d] = found
    cf, nf = files[clean_dir], files[noisy_dir]
    if cf and nf:
        for k in sorted(set(cf) - set(nf)):
            problems.append(f"{cf[k]}: no matching file in {noisy_dir}")
        for k in sorted(set(nf) - set(cf)):
            problems.append(f"{nf[k]}: no matching file in {clean_dir}")
    pairs, samples = [], []
    for k in sorted(set(cf) & set(nf)):
        cp, np_ = cf[k], nf[k]
        infos = {}
        for p in (cp, np_):
            try:
                infos[p] = sf.info(str(p))
            except Exception as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                problems.append(f"{p}: unreadable audio file ({msg})")
        if len(infos) < 2:
            continue
        ci, ni = infos[cp], infos[np_]
        bad = False
        if ci.samplerate != ni.samplerate:
            problems.append(f"{np_}: sample rate {ni.samplerate} Hz differs from its clean file's {ci.samplerate} Hz ({cp})")
            bad = True
        else:
            for p, i in ((cp, ci), (np_, ni)):
                if i.samplerate != rate and not resample:
                    problems.append(f"{p}: sample rate {i.samplerate} Hz, expected {rate} Hz (pass resample=True to resample on loading)")
                    bad = True
        for p, i in ((cp, ci), (np_, ni)):
            if i.channels != 1 and not downmix:
                problems.append(f"{p}: {i.channels} channels; expected mono (pass downmix=True to average the channels)")
                bad = True
        if ci.frames != ni.frames:
            problems.append(f"{np_}: {ni.frames} samples but its clean file {cp} has {ci.frames} (lengths must match)")
            bad = True
        if bad:
            continue
        if read:
            try:
                c = read_audio(cp, rate, downmix=downmix).samples
                y = read_audio(np_, rate, downmix=downmix).samples
            except AudioError as err:
                problems.append(str(err))
                continue
            if c.shape != y.shape:  # pragma: no cover - equal frames and rates give equal lengths
                problems.append(f"{np_}: {y.size} samples after resampling but {cp} has {c.size}")
                continue
            samples.append((c, y))
        pairs.append((k, cp, np_))
    return pairs, problems, samples


def check_folder_dataset(root: str | os.PathLike, splits: Sequence[str] = ("train", "valid", "test"), layout: Layout = "auto",
                         rate: int = 16000, resample: bool = False, downmix: bool = False) -> list[str]:
    """Every problem of the dataset under ``root`` (all ``splits``), each naming its path; an
    empty list means the dataset loads. Reads every file once."""
    root = Path(root)
    problem = _root_problem(root)
    if problem:
        return [problem]
    try:
        layout = detect_layout(root) if layout == "auto" else layout
    except DatasetError as err:
        return list(err.problems)
    out = []
    for split in splits:
        out.extend(_scan(root, split, layout, rate, resample, downmix, read=True)[1])
    return out


def folder_dataset(root: str | os.PathLike, split: Split = "train", layout: Layout = "auto", rate: int = 16000,
                   resample: bool = False, downmix: bool = False, preload: bool = True) -> PairDataset:
    """Load one split of a directory dataset as clean/noise pairs (``noise = noisy − clean``).

    Validates first (every file is read once) and raises :class:`DatasetError` listing all
    problems with their paths. With ``preload`` the waveforms stay in memory; otherwise they are
    read again on access (for corpora larger than memory).
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; choose from train, valid, test")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    root = Path(root)
    problem = _root_problem(root)
    if problem:
        raise DatasetError(f"cannot use {root} as a dataset", [problem])
    layout = detect_layout(root) if layout == "auto" else layout
    pairs, problems, samples = _scan(root, split, layout, rate, resample, downmix, read=True)
    if problems:
        raise DatasetError(f"dataset {root} (layout {layout}, split {split!r}) has {len(problems)} problem"
                           f"{'s' if len(problems) != 1 else ''}:", problems)
    if not pairs:  # pragma: no cover - an empty split is reported as a problem above
        raise DatasetError(f"dataset {root} (layout {layout}, split {split!r}) has no pairs")
    ids = [k for k, _, _ in pairs]
    lengths = [c.size for c, _ in samples]
    infos = [{"clean_path": str(cp), "noisy_path": str(np_)} for _, cp, np_ in pairs]
    if layout == "voicebank":
        for info, (k, _, _) in zip(infos, pairs):
            info["speaker"] = k.split("/")[-1].split("_")[0]
    name = f"{root.name} ({layout}) {split}"
    if preload:
        noise = [y - c for c, y in samples]
        return PairDataset.from_arrays(name, ids, [c for c, _ in samples], noise, infos, rate)
    paths = [(cp, np_) for _, cp, np_ in pairs]
    del samples

    def load(i: int):
        c = read_audio(paths[i][0], rate, downmix=downmix).samples
        y = read_audio(paths[i][1], rate, downmix=downmix).samples
        return c, y - c

    return PairDataset(name, ids, lengths, load, infos, rate, cache=False)
