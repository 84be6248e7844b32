"""Embedded corpus, directory datasets, mixing and batches (issue 3, items 1–3)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from storm_jax import mix as public_mix
from storm_jax.data import (
    DEFAULT_VOICES,
    NOISE_TYPES,
    SPLITS,
    BatchConfig,
    BatchIterator,
    BatchState,
    CorpusConfig,
    DatasetError,
    PairDataset,
    Synthesizer,
    build_corpus,
    build_corpus_main,
    check_folder_dataset,
    corpus_dir,
    embedded_corpus,
    epoch_batches,
    folder_dataset,
    generate_sentences,
    m_for_snr,
    make_batch,
    mix_np,
    snr_db,
    snr_for_m,
)
from storm_jax.data import noise as noise_mod
from storm_jax.data.reverb import ReverbConfig, draw_room, simulate_rir

TINY = CorpusConfig.tiny()


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus-cache")
    for task in ("denoise", "dereverb"):
        build_corpus(TINY, task, d, progress=False)
    return d


@pytest.fixture(scope="module")
def tiny(cache) -> dict[str, PairDataset]:
    return {s: embedded_corpus(s, "denoise", TINY, cache, progress=False) for s in SPLITS}


# ---------------------------------------------------------------------------------- speech


def test_default_config_meets_issue_minimums():
    cfg = CorpusConfig()
    assert len(cfg.voices) >= 8 and sum(cfg.sentences) >= 300
    sentences = generate_sentences(sum(cfg.sentences), cfg.seed)
    assert len(set(sentences)) == sum(cfg.sentences)
    variants = {s: {v.name.split("+")[1] for v in cfg.split_voices(s)} for s in SPLITS}
    # test (and valid) voices are unseen in training: not even their timbre variant is used there
    assert not (variants["test"] & variants["train"]) and not (variants["valid"] & variants["train"])
    assert all(n % 1 == 0 and n > 0 for n in cfg.voice_split)


def test_sentences_are_a_function_of_the_seed():
    a, b, c = generate_sentences(40, 3), generate_sentences(40, 3), generate_sentences(40, 4)
    assert a == b and a != c and len(set(a)) == 40


def test_espeak_synthesis_is_deterministic_and_order_independent():
    text_a, text_b = "The quick brown fox jumps over the lazy dog.", "A second sentence comes here."
    voice = DEFAULT_VOICES[0]  # en-us+m1: in one library instance, repeats of a text differ even in length
    with Synthesizer() as syn:
        a1 = syn.speak(text_a, voice)
        syn.speak(text_b, DEFAULT_VOICES[0])
        a2 = syn.speak(text_a, voice)
    with Synthesizer() as syn:
        a3 = syn.speak(text_a, voice)
    assert a1.dtype == np.float32 and 1.0 < a1.size / 16000 < 5.0
    assert a1.tobytes() == a2.tobytes() == a3.tobytes()


# ---------------------------------------------------------------------------------- corpus


def test_corpus_regeneration_is_bit_identical(cache, tmp_path):
    for task in ("denoise", "dereverb"):
        first = corpus_dir(TINY, task, cache)
        second = build_corpus(TINY, task, tmp_path, progress=False)
        assert first.name == second.name  # same content hash
        d1, d2 = _tree_digest(first), _tree_digest(second)
        assert len(d1) == 2 * 20 + 1 and d1 == d2
    # a different seed is a different corpus in a different folder
    assert corpus_dir(dataclasses.replace(TINY, seed=1), "denoise", cache) != corpus_dir(TINY, "denoise", cache)


def test_corpus_cache_is_reused_and_resumes(cache, tmp_path):
    root = build_corpus(TINY, "denoise", tmp_path, progress=False)
    digest = _tree_digest(root)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert build_corpus(TINY, "denoise", tmp_path, progress=False) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # nothing rewritten
    # simulate an interrupted build: files and manifest missing; the rebuild restores them exactly
    for rel in ("train/clean/train_0003.wav", "test/noise/test_0001.wav", "manifest.json"):
        (root / rel).unlink()
    build_corpus(TINY, "denoise", tmp_path, progress=False)
    assert _tree_digest(root) == digest
    assert not list(root.rglob("*.tmp*"))


def test_splits_are_disjoint_in_sentences_and_voices(tiny):
    texts = {s: {u["text"] for u in (tiny[s].info(i) for i in range(len(tiny[s])))} for s in SPLITS}
    voices = {s: {tiny[s].info(i)["voice_id"] for i in range(len(tiny[s]))} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not texts[a] & texts[b], (a, b)
                assert not voices[a] & voices[b], (a, b)
    assert [len(tiny[s]) for s in SPLITS] == list(TINY.sentences)


def test_every_noise_type_in_every_split(tiny):
    for s in SPLITS:
        kinds = {tiny[s].info(i)["noise_type"] for i in range(len(tiny[s]))}
        assert kinds == set(NOISE_TYPES), s
        assert len(tiny[s].where(noise_type="hum")) >= 1


def test_corpus_waveforms(tiny):
    lo, hi = TINY.duration_range
    for s in SPLITS:
        for u in tiny[s]:
            assert u.clean.dtype == np.float32 and u.noise.shape == u.clean.shape and u.rate == 16000
            assert lo <= u.duration <= hi
            # clean peak at `peak`, unless a spiky noise needed both scaled down to stay below full scale
            peak_c, peak_n = float(np.max(np.abs(u.clean))), float(np.max(np.abs(u.noise)))
            assert abs(peak_c - TINY.peak) < 2e-4 or (peak_c < TINY.peak and abs(peak_n - 0.999) < 2e-4)
            # M = 1 is the configured SNR over the whole utterance (16-bit storage: ±0.001 dB)
            assert abs(u.snr_db(1.0) - TINY.snr_db) < 1e-3
            assert abs(u.info["snr_db"] - u.snr_db()) < 1e-5


def test_dereverb_variant(cache):
    ds = embedded_corpus("valid", "dereverb", TINY, cache, progress=False)
    assert len(ds) == TINY.sentences[1]
    for u in ds:
        lo, hi = TINY.reverb.t60_range
        assert lo <= u.info["t60"] <= hi
        # the reverberant residual carries substantial energy (direct-to-reverberant ratio < 0 dB here)
        assert -30.0 < u.snr_db() < 5.0
        peak_c = float(np.max(np.abs(u.clean)))
        assert abs(peak_c - TINY.peak) < 2e-4 or (peak_c < TINY.peak and abs(np.max(np.abs(u.noisy())) - 0.999) < 2e-4
                                                  or abs(np.max(np.abs(u.noise)) - 0.999) < 2e-4)


def test_rir_t60_and_determinism():
    cfg = ReverbConfig(t60_range=(0.5, 0.5), room_min=(6.0, 5.0, 3.0), room_max=(6.0, 5.0, 3.0))
    room = draw_room(np.random.default_rng(0), cfg)
    r1, r2 = simulate_rir(room), simulate_rir(room)
    assert np.array_equal(r1.full, r2.full)
    import pyroomacoustics as pra

    t60 = pra.experimental.measure_rt60(r1.full, fs=16000)
    assert 0.5 * 0.7 < t60 < 0.5 * 2.0  # Sabine's formula is approximate for the image-source method
    assert np.argmax(np.abs(r1.direct)) == np.argmax(np.abs(r1.full))  # aligned direct paths


def test_export_round_trips_through_the_folder_loader(cache, tmp_path):
    from storm_jax.data import export_corpus

    export_corpus(tmp_path / "export", TINY, "denoise", m=2.0, cache_dir=cache, progress=False)
    ours = embedded_corpus("test", "denoise", TINY, cache, progress=False)
    loaded = folder_dataset(tmp_path / "export", "test")
    assert loaded.ids == ours.ids
    for a, b in zip(loaded, ours):
        assert np.array_equal(a.clean, b.clean)
        assert np.allclose(a.noise, 2.0 * b.noise, atol=1e-7)  # exported noisy = clean + 2·noise


def test_corpus_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="fewer than the 6 noise types"):
        CorpusConfig(sentences=(8, 2, 6))
    with pytest.raises(ValueError, match="voice_split"):
        CorpusConfig(voice_split=(8, 2, 1))
    with pytest.raises(ValueError, match="unknown split"):
        embedded_corpus("dev")


def test_cli_hook(cache, capsys):
    assert build_corpus_main(["--tiny", "--cache-dir", str(cache), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train 8 utterances" in out and "test 6 utterances" in out
    assert build_corpus_main(["--tiny", "--cache-dir", str(cache), "--print-path", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(corpus_dir(TINY, "denoise", cache))
    assert build_corpus_main(["--tiny", "--cache-dir", str(cache), "--sentences", "1", "1", "1", "--quiet"]) == 2
    assert "fewer than the 6 noise types" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- noise


def _slope(x, rate=16000, band=(100.0, 4000.0)):
    from scipy.signal import welch

    f, p = welch(x, fs=rate, nperseg=4096)
    keep = (f >= band[0]) & (f <= band[1])
    return np.polyfit(np.log10(f[keep]), np.log10(p[keep]), 1)[0]


def test_noise_generators():
    n = 4 * 16000
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    for kind in NOISE_TYPES:
        talkers = [np.sin(np.arange(9000) * 0.05 * (k + 1)) for k in range(5)]
        a = noise_mod.make_noise(kind, rng(), n, 16000, talkers)
        b = noise_mod.make_noise(kind, rng(), n, 16000, talkers)
        assert a.shape == (n,) and np.array_equal(a, b), kind
        assert np.sqrt(np.mean(a**2)) == pytest.approx(1.0, rel=1e-9), kind
    # spectral slopes (PSD ∝ f^slope): white 0, pink −1, brown −2 (±0.15)
    assert abs(_slope(noise_mod.white(rng(), n))) < 0.15
    assert abs(_slope(noise_mod.pink(rng(), n)) + 1.0) < 0.15
    assert abs(_slope(noise_mod.brown(rng(), n)) + 2.0) < 0.15
    # hum: the strongest frequency is the 50 or 60 Hz fundamental or one of its harmonics
    h = noise_mod.hum(rng(), n)
    spec = np.abs(np.fft.rfft(h))
    peak = np.fft.rfftfreq(n, 1 / 16000)[np.argmax(spec)]
    assert min(peak % 50, 50 - peak % 50) < 1 or min(peak % 60, 60 - peak % 60) < 1
    # bursts are non-stationary: frame energies vary far more than for stationary white noise
    def cv(x):
        e = np.square(x[: n // 400 * 400].reshape(-1, 400)).mean(1)
        return e.std() / e.mean()

    assert cv(noise_mod.bursts(rng(), n)) > 5 * cv(noise_mod.white(rng(), n))
    with pytest.raises(ValueError, match="unknown noise type"):
        noise_mod.make_noise("rain", rng(), n)


# ---------------------------------------------------------------------------------- mixing


@pytest.mark.parametrize("m", [0.0, 0.25, 0.5, 1.0, 1.7, 2.0, 4.0])
def test_mix_at_any_m(tiny, m):
    u = tiny["train"][0]
    y = np.asarray(public_mix(jnp.asarray(u.clean), jnp.asarray(u.noise), m))
    assert np.allclose(y, u.clean + np.float32(m) * u.noise, atol=1e-7)
    assert np.allclose(mix_np(u.clean, u.noise, m), y, atol=1e-7)
    if m > 0:
        # SNR(M) = SNR(1) − 20·log10(M): M = 2 is 6.02 dB more noise
        noise_part = y.astype(np.float64) - u.clean
        measured = 10 * np.log10(np.sum(u.clean.astype(np.float64) ** 2) / np.sum(noise_part**2))
        assert measured == pytest.approx(TINY.snr_db - 20 * np.log10(m), abs=2e-3)
        assert float(snr_for_m(m, u.snr_db())) == pytest.approx(float(snr_db(u.clean, u.noise, m)), abs=1e-9)


def test_mix_m2_is_6db_more_noise_and_power_option(tiny):
    u = tiny["valid"][2]
    assert u.snr_db(1.0) - u.snr_db(2.0) == pytest.approx(20 * np.log10(2), abs=1e-9)  # 6.0206 dB
    assert u.snr_db(1.0) - u.snr_db(2.0, power=True) == pytest.approx(10 * np.log10(2), abs=1e-9)
    assert m_for_snr(u.snr_db(1.0) - 20 * np.log10(2), u.snr_db(1.0)) == pytest.approx(2.0, rel=1e-12)
    # dy/dM = noise, exactly, through the public jnp function
    grad = jax.jacfwd(lambda m: public_mix(jnp.asarray(u.clean), jnp.asarray(u.noise), m))(1.0)
    assert np.array_equal(np.asarray(grad), u.noise)


# ---------------------------------------------------------------------------------- folders


def _wav(path: Path, x, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, dtype=np.float32), rate, subtype="FLOAT")


def _signal(seed, n=8000):
    r = np.random.default_rng(seed)
    return (0.3 * np.sin(np.arange(n) * 0.03 * (1 + seed % 5)) + 0.01 * r.standard_normal(n)).astype(np.float32)


def _make_pairs(clean_dir: Path, noisy_dir: Path, names, n=8000, rate=16000):
    for k, name in enumerate(names):
        c = _signal(k, n)
        _wav(clean_dir / f"{name}.wav", c, rate)
        _wav(noisy_dir / f"{name}.wav", c + 0.05 * _signal(100 + k, n), rate)


@pytest.mark.parametrize("layout,dirs", [
    ("reference", {"train": ("train/clean", "train/noisy"), "valid": ("valid/clean", "valid/noisy"), "test": ("test/clean", "test/noisy")}),
    ("wsj0", {"train": ("tr/clean", "tr/noisy"), "valid": ("cv/clean", "cv/noisy"), "test": ("tt/clean", "tt/noisy")}),
    ("reverb_wsj0", {"train": ("tr/anechoic", "tr/reverb"), "valid": ("cv/anechoic", "cv/reverb"), "test": ("tt/anechoic", "tt/reverb")}),
])
def test_folder_layouts(tmp_path, layout, dirs):
    for split, (c, n) in dirs.items():
        _make_pairs(tmp_path / c, tmp_path / n, [f"{split}_{i}" for i in range(3)])
    assert check_folder_dataset(tmp_path) == []
    for split, (c, n) in dirs.items():
        for preload in (True, False):
            ds = folder_dataset(tmp_path, split, preload=preload)
            assert ds.name.endswith(f"({layout}) {split}") and len(ds) == 3
            u = ds[1]
            clean = sf.read(str(tmp_path / c / f"{split}_1.wav"), dtype="float32")[0]
            noisy = sf.read(str(tmp_path / n / f"{split}_1.wav"), dtype="float32")[0]
            assert np.array_equal(u.clean, clean)
            assert np.array_equal(u.noise, noisy - clean)  # noise = noisy − clean, so M = 1 is the recording
            assert np.array_equal(u.noisy(1.0), clean + (noisy - clean))


def test_voicebank_layout(tmp_path):
    train = ["p226_001", "p226_002", "p230_001", "p287_004", "p239_010"]
    _make_pairs(tmp_path / "clean_trainset_28spk_wav", tmp_path / "noisy_trainset_28spk_wav", train)
    _make_pairs(tmp_path / "clean_testset_wav", tmp_path / "noisy_testset_wav", ["p232_001", "p257_003"])
    ds = {s: folder_dataset(tmp_path, s) for s in SPLITS}
    assert ds["train"].ids == ("p230_001", "p239_010")
    assert ds["valid"].ids == ("p226_001", "p226_002", "p287_004")  # held-out speakers p226, p287
    assert ds["test"].ids == ("p232_001", "p257_003")
    assert ds["valid"].info(0)["speaker"] == "p226"


def test_voicebank_48k_needs_resample(tmp_path):
    _make_pairs(tmp_path / "clean_testset_wav", tmp_path / "noisy_testset_wav", ["p232_001"], n=48000, rate=48000)
    with pytest.raises(DatasetError, match="48000 Hz, expected 16000 Hz"):
        folder_dataset(tmp_path, "test")
    ds = folder_dataset(tmp_path, "test", resample=True)
    assert ds.lengths[0] == 16000


def test_missing_and_empty_dataset_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        folder_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataset folder is empty"):
        folder_dataset(tmp_path / "empty")
    (tmp_path / "odd" / "something").mkdir(parents=True)
    with pytest.raises(DatasetError, match="cannot recognise the dataset layout") as err:
        folder_dataset(tmp_path / "odd")
    assert "found something" in str(err.value)
    assert check_folder_dataset(tmp_path / "nope") == [f"{tmp_path / 'nope'}: dataset folder does not exist"]


def test_all_problems_reported_at_once(tmp_path):
    root = tmp_path / "data"
    c, n = root / "train" / "clean", root / "train" / "noisy"
    _make_pairs(c, n, ["good", "short", "only_clean", "corrupt", "rate", "stereo", "silent"])
    (n / "only_clean.wav").unlink()                                      # mismatched pair
    _wav(n / "only_noisy.wav", _signal(9))                               # mismatched pair
    _wav(n / "short.wav", _signal(1, 7000))                              # differing lengths
    (c / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")  # corrupt file
    _wav(n / "rate.wav", _signal(4, 8000), rate=22050)                   # sample rates differ within the pair
    _wav(c / "rate.wav", _signal(4, 8000), rate=22050)
    _wav(c / "rate.wav", _signal(4, 8000), rate=8000)
    sf.write(str(n / "stereo.wav"), np.stack([_signal(5), _signal(6)], 1), 16000)  # two channels
    _wav(c / "silent.wav", np.zeros(8000))                               # all-zero audio
    (root / "valid" / "clean").mkdir(parents=True)                       # folder with no audio
    (root / "valid" / "noisy").mkdir(parents=True)
    _wav(root / "valid" / "noisy" / "x.txt.wav", _signal(3))
    (root / "valid" / "noisy" / "notes.txt").write_text("not audio")
    with pytest.raises(DatasetError) as err:
        folder_dataset(root, "train")
    msg = str(err.value)
    assert msg.splitlines()[0].startswith(f"dataset {root} (layout reference, split 'train') has 7 problems")
    expected = [
        f"{c / 'only_clean.wav'}: no matching file in {n}",
        f"{n / 'only_noisy.wav'}: no matching file in {c}",
        f"{n / 'short.wav'}: 7000 samples but its clean file {c / 'short.wav'} has 8000",
        f"{c / 'corrupt.wav'}: unreadable audio file",
        f"{n / 'rate.wav'}: sample rate 22050 Hz differs from its clean file's 8000 Hz",
        f"{n / 'stereo.wav'}: 2 channels; expected mono",
        f"{c / 'silent.wav'}: audio is all zeros",
    ]
    for e in expected:
        assert e in msg, e
    assert len(err.value.problems) == 7 and "good" not in msg
    problems = check_folder_dataset(root)
    assert len(problems) == 7 + 1 + 2  # plus valid: a clean folder without audio; test: two missing folders
    assert f"{root / 'valid' / 'clean'}: no audio files (.wav, .flac, .ogg, .aiff, .aif)" in problems
    assert check_folder_dataset(root, splits=["test"]) == [f"{root / 'test' / 'clean'}: missing folder (reference layout, split 'test')",
                       f"{root / 'test' / 'noisy'}: missing folder (reference layout, split 'test')"]


# ---------------------------------------------------------------------------------- batches


def test_batches_reference_crop_and_normalisation(tiny):
    ds = tiny["train"]
    cfg = BatchConfig(batch_size=4, seed=3)
    assert cfg.samples == 32640  # (256 − 1)·128
    batch, state = make_batch(ds, cfg)
    assert batch.clean.shape == batch.noisy.shape == batch.noise.shape == (4, 32640)
    assert batch.clean.dtype == np.float32 and state == BatchState(0, 1)
    for b in range(4):
        u = ds[int(batch.index[b])]
        y = u.clean + np.float32(1.0) * u.noise
        nu = np.max(np.abs(y))  # max|y| of the whole utterance, before cropping
        assert batch.norm[b] == nu
        start = int(batch.start[b])
        if start >= 0:
            assert 0 <= start <= u.clean.size - 32640
            assert np.array_equal(batch.clean[b], u.clean[start:start + 32640] / nu)
            assert np.array_equal(batch.noisy[b], y[start:start + 32640] / nu)
        else:  # shorter than the crop: zero-padded symmetrically (pad//2 on the left)
            pad = 32640 - u.clean.size
            assert start == -(pad // 2)
            assert np.array_equal(batch.clean[b, pad // 2: pad // 2 + u.clean.size], u.clean / nu)
            assert not batch.clean[b, : pad // 2].any() and not batch.clean[b, pad // 2 + u.clean.size:].any()
        assert np.allclose(batch.noisy[b], batch.clean[b] + batch.m[b] * batch.noise[b], atol=1e-6)
    assert sorted(set(batch.index.tolist())) == sorted(batch.index.tolist())  # no repeats within an epoch


def test_centre_crop_validation_batches(tiny):
    ds = tiny["valid"]
    cfg = BatchConfig(batch_size=4, frames=100, crop="centre", shuffle=False, drop_last=False)
    batches = list(epoch_batches(ds, cfg))
    assert [len(b.index) for b in batches] == [4, 2]
    assert np.concatenate([b.index for b in batches]).tolist() == list(range(len(ds)))
    for b in batches:
        for k, i in enumerate(b.index):
            assert b.start[k] == int((ds.lengths[i] - cfg.samples) / 2)


def test_batches_deterministic_and_resume_bit_identical(tiny, cache):
    ds = tiny["train"]
    cfg = BatchConfig(batch_size=3, frames=64, seed=11, amplitude="snr_range")
    it = BatchIterator(ds, cfg)
    assert it.batches_per_epoch == 2
    stream = [next(it) for _ in range(7)]  # crosses three epoch boundaries
    again = [next(BatchIterator(ds, cfg)) for _ in range(1)]
    assert all(np.array_equal(a, b) for a, b in zip(stream[0], again[0]))
    it = BatchIterator(ds, cfg)
    for _ in range(3):
        next(it)
    saved = json.dumps(it.state.to_dict())  # stored with a checkpoint; the process dies here
    assert BatchState.from_array(it.state.to_array()) == it.state
    # resume in a "new process": the dataset is loaded afresh from the cache
    fresh = embedded_corpus("train", "denoise", TINY, cache, progress=False)
    resumed = BatchIterator(fresh, cfg, BatchState.from_dict(json.loads(saved)))
    for k in range(3, 7):
        b = next(resumed)
        for field, x, y in zip(b._fields, b, stream[k]):
            assert x.tobytes() == y.tobytes(), (k, field)
    # a different seed gives a different stream
    other = next(BatchIterator(ds, dataclasses.replace(cfg, seed=12)))
    assert not np.array_equal(other.clean, stream[0].clean)
    # SNR-range training: the whole-utterance SNR of every example lies in the range
    for b in stream:
        for k, i in enumerate(b.index):
            u = ds[int(i)]
            assert -6.0 - 1e-4 <= u.snr_db(float(b.m[k])) <= 14.0 + 1e-4


def test_impossible_batch_configs(tiny):
    ds = tiny["test"]
    with pytest.raises(DatasetError, match="batch_size 7 is larger than the dataset"):
        BatchIterator(ds, BatchConfig(batch_size=7))
    longest = int(ds.lengths.max())
    frames = longest // 128 + 2
    with pytest.raises(DatasetError, match=f"crop of {frames} frames .* longer than every utterance"):
        BatchIterator(ds, BatchConfig(batch_size=2, frames=frames))
    BatchIterator(ds, BatchConfig(batch_size=2, frames=longest // 128 + 1))  # the longest still fits
    with pytest.raises(DatasetError, match="empty"):
        BatchIterator(ds.subset([]), BatchConfig(batch_size=1))
    with pytest.raises(ValueError, match="outside an epoch"):
        BatchIterator(ds, BatchConfig(batch_size=2), BatchState(0, 3))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchConfig(batch_size=0)


def test_cache_root_env(monkeypatch, tmp_path):
    from storm_jax.data import cache_root

    monkeypatch.setenv("STORM_JAX_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and corpus_dir(TINY).parent == tmp_path / "corpus"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("STORM_JAX_CACHE")
    assert "storm-jax" in str(cache_root())
    assert os.fspath(cache_root()) != os.fspath(tmp_path)
