"""The fault catalogue: every way a user's run can go wrong ends in one clear line, nothing lost.

Each case runs the ``storm-jax`` command in a subprocess, as a user would, and asserts the exit
code, that one line of stderr names the file or folder and the problem, that stderr holds no
traceback, and that nothing is left half-written (no partial output, no temporary file). The
training cases kill, terminate and damage a run of the ``micro`` preset and check that resuming
ends bit-for-bit where an uninterrupted run ends. Numerical faults are in ``test_analysis.py``
(they need the analysis' small models, not a subprocess).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

RATE = 16000
TRAIN = ["--preset", "micro", "--batch-size", "2", "--frames", "32", "--ckpt-every", "2", "--keep", "10", "--log-every", "1",
         "--val-every", "-1", "--quiet"]
STEPS = 6


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def jax_cache() -> Path:
    # The suite's persistent compilation cache (tests/conftest.py), shared by every subprocess.
    return Path(os.environ["STORM_JAX_COMPILATION_CACHE"])


def _env(cache: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)  # the command computes in float32, as for a user
    if cache is not None:
        env["STORM_JAX_COMPILATION_CACHE"] = str(cache)
    return env


def _cmd(args) -> list[str]:
    return [sys.executable, "-m", "storm_jax.cli", *map(str, args)]


def cli(args, *, cache=None, preexec_fn=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args), capture_output=True, text=True, env=_env(cache), timeout=timeout, preexec_fn=preexec_fn)


def one_clear_line(proc, code: int, *words) -> str:
    """The exit code is ``code``, stderr has no traceback, and one of its lines holds every word."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if all(str(w) in l for w in words)]
    assert lines, (words, proc.stderr[-3000:])
    return lines[0]


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files (``.NAME.tmp-PID`` and the like) anywhere under ``folder``."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".orbax-checkpoint-tmp")]


def _tone(n: int, rate: int = RATE) -> np.ndarray:
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ------------------------------------------------------------------------------ input files


def _truncated(path: Path):
    sf.write(path, _tone(8000), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * 3000])  # header + 3000 of the 8000 frames


def _with(value):
    def make(path: Path):
        x = _tone(8000)
        x[100] = value
        sf.write(path, x, RATE, subtype="FLOAT")

    return make


INPUT_FAULTS = {
    # name: (make(path) or None for a missing file, words of the message)
    "missing": (None, ["no such file"]),
    "empty": (lambda p: p.write_bytes(b""), ["empty file"]),
    "not-audio": (lambda p: p.write_text("these are not samples\n" * 20), ["unreadable audio file"]),
    "nan": (_with(np.nan), ["NaN or Inf"]),
    "inf": (_with(np.inf), ["NaN or Inf"]),
    "silent": (lambda p: sf.write(p, np.zeros(8000, np.float32), RATE), ["all zeros"]),
    "one-sample": (lambda p: sf.write(p, np.full(1, 0.5, np.float32), RATE), ["shorter than one STFT frame"]),
    "stereo": (lambda p: sf.write(p, np.stack([_tone(8000), _tone(8000)], 1), RATE), ["2 channels", "--downmix"]),
    "truncated": (_truncated, ["truncated WAV", "8000 frames", "holds 3000", "--allow-truncated"]),
}


@pytest.mark.parametrize("fault", list(INPUT_FAULTS))
def test_bad_input_file(tmp_path, fault):
    make, words = INPUT_FAULTS[fault]
    src = tmp_path / f"{fault}.wav"
    if make is not None:
        make(src)
    out = tmp_path / "out"
    proc = cli(["enhance", src, "-o", out, "--steps", "2", "--quiet"])
    one_clear_line(proc, 1, src, *words)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_truncated_wav_allowed_is_enhanced_with_a_warning(tmp_path, jax_cache):
    src = tmp_path / "cut.wav"
    _truncated(src)
    out = tmp_path / "out"
    proc = cli(["enhance", src, "-o", out, "--steps", "2", "--quiet", "--allow-truncated"], cache=jax_cache)
    line = one_clear_line(proc, 0, src, "truncated WAV", "8000 frames", "3000")
    assert line.startswith("warning:")
    x, rate = sf.read(out / "cut.wav")
    assert rate == RATE and x.shape == (3000,) and np.all(np.isfinite(x))
    # Written files get the permissions the umask gives (not the 0600 of a temporary file).
    assert (out / "cut.wav").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert no_leftovers(out) == []


# ------------------------------------------------------------------------------ outputs


@pytest.fixture()
def good_wav(tmp_path) -> Path:
    src = tmp_path / "good.wav"
    sf.write(src, _tone(8000), RATE)
    return src


@pytest.mark.parametrize(
    "target, words",
    [("a-file", ["exists and is not a folder"]), ("a-file/sub", ["lies under", "which is a file"])],
    ids=["output-is-a-file", "output-under-a-file"],
)
def test_output_path_is_checked_up_front(tmp_path, good_wav, target, words):
    (tmp_path / "a-file").write_text("mine")
    proc = cli(["enhance", good_wav, "-o", tmp_path / target, "--steps", "2", "--quiet"])
    one_clear_line(proc, 2, "--output", tmp_path / target, *words)
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check cannot fail as root")
def test_unwritable_output_folder(tmp_path, good_wav):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = cli(["enhance", good_wav, "-o", out / "sub", "--steps", "2", "--quiet"])
        one_clear_line(proc, 2, out, "not writable")
    finally:
        out.chmod(0o700)


def _limit_file_size(limit: int):
    def pre():
        # RLIMIT_FSIZE stands in for a full disk (EFBIG on the write that crosses it).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def test_full_disk_while_enhancing(tmp_path, good_wav, jax_cache):
    out = tmp_path / "out"
    proc = cli(["enhance", good_wav, "-o", out, "--steps", "2", "--quiet"], cache=jax_cache, preexec_fn=_limit_file_size(20000))
    one_clear_line(proc, 2, out / "good.wav", "the disk is full")
    assert not (out / "good.wav").exists() and no_leftovers(out) == []


def test_model_directory_whose_config_and_weights_disagree(tmp_path, good_wav):
    from storm_jax.checkpoints import pretrained_path

    model = tmp_path / "model"
    shutil.copytree(pretrained_path(), model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["backbone"]["nf"] = 2 * cfg["backbone"]["nf"]
    (model / "config.json").write_text(json.dumps(cfg))
    proc = cli(["enhance", good_wav, "-o", tmp_path / "out", "--checkpoint", model, "--quiet"])
    one_clear_line(proc, 2, model / "params", "do not match config.json")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    r = np.random.default_rng(0)
    for split in ("train",):
        for sub in ("clean", "noisy"):
            (root / split / sub).mkdir(parents=True)
        for k in range(3):
            clean = (_tone(6000) * (1 + 0.3 * k)).astype(np.float32)
            sf.write(root / split / "clean" / f"u{k}.wav", clean, RATE, subtype="FLOAT")
            sf.write(root / split / "noisy" / f"u{k}.wav", clean + (0.1 * r.standard_normal(6000)).astype(np.float32), RATE,
                     subtype="FLOAT")
    return root


def _train_args(data: Path, out: Path, steps: int = STEPS) -> list:
    return ["train", "--data", data, "--out", out, "--steps", steps, *TRAIN]


def _state(out: Path):
    from storm_jax.training import load_training_checkpoint

    _, state, meta = load_training_checkpoint(out)
    return state, meta


def _same_state(a: Path, b: Path):
    (sa, ma), (sb, mb) = _state(a), _state(b)
    assert int(sa.step) == int(sb.step) == STEPS
    la = jax.tree_util.tree_leaves((sa.params, sa.ema, sa.opt_state, sa.key))
    lb = jax.tree_util.tree_leaves((sb.params, sb.ema, sb.opt_state, sb.key))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert ma["batch_state"] == mb["batch_state"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, train_data, jax_cache) -> Path:
    """An uninterrupted run of STEPS steps (checkpoints 2, 4, 6)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    proc = cli(_train_args(train_data, out), cache=jax_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _steps_done(out: Path) -> list[int]:
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.is_dir() else []


def _start_and_signal(args, cache, out: Path, sig, when) -> subprocess.Popen:
    """Start ``args`` and send ``sig`` as soon as ``when(out)`` holds (polled every 2 ms)."""
    proc = subprocess.Popen(_cmd(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cache))
    deadline = time.monotonic() + 600
    try:
        while not when(out):
            if proc.poll() is not None:
                raise AssertionError(f"finished before the signal: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting to send the signal")
            time.sleep(0.002)
        proc.send_signal(sig)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _log_steps(out: Path) -> list[int]:
    f = out / "log.jsonl"
    if not f.is_file():
        return []
    steps = []
    for line in f.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step"))
        except json.JSONDecodeError:
            pass
    return steps


def _resume_matches(args, out: Path, reference: Path, cache):
    proc = cli(args, cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _same_state(out, reference)
    assert no_leftovers(out) == []
    assert [s for s in _log_steps(out) if s is not None] == list(range(1, STEPS + 1))  # each step logged once
    return proc


@pytest.mark.xdist_group("reference-run")  # one uninterrupted run serves them all
def test_kill_9_during_a_step_resumes_bit_identical(tmp_path, train_data, reference_run, jax_cache):
    out = tmp_path / "run"
    args = _train_args(train_data, out)
    # Right after step 3 is logged: the process is inside step 4 (checkpoint 2 is the last).
    proc = _start_and_signal(args, jax_cache, out, signal.SIGKILL, lambda o: 3 in _log_steps(o))
    assert proc.returncode == -signal.SIGKILL
    assert _steps_done(out) and max(_steps_done(out)) < STEPS
    _resume_matches(args, out, reference_run, jax_cache)


@pytest.mark.xdist_group("reference-run")  # one uninterrupted run serves them all
def test_sigterm_during_a_step_saves_and_resumes_bit_identical(tmp_path, train_data, reference_run, jax_cache):
    out = tmp_path / "run"
    args = _train_args(train_data, out)
    proc = _start_and_signal(args, jax_cache, out, signal.SIGTERM, lambda o: 1 in _log_steps(o))
    assert proc.returncode == 143, proc.stderr.read()[-3000:] if proc.stderr else ""
    err = proc.stderr.read()
    assert "Traceback" not in err and "run the same command to resume" in err, err[-3000:]
    assert max(_steps_done(out)) < STEPS
    _resume_matches(args, out, reference_run, jax_cache)


@pytest.mark.xdist_group("reference-run")  # one uninterrupted run serves them all
def test_kill_9_during_a_checkpoint_write_resumes_bit_identical(tmp_path, train_data, reference_run, jax_cache):
    """kill -9 while orbax writes checkpoint 4 (its temporary folder exists, not yet committed)."""
    out = tmp_path / "run"
    args = _train_args(train_data, out)
    writing = lambda o: (o / "checkpoints").is_dir() and any(p.name.startswith("4.orbax-checkpoint-tmp") for p in (o / "checkpoints").iterdir())
    proc = _start_and_signal(args, jax_cache, out, signal.SIGKILL, writing)
    assert proc.returncode == -signal.SIGKILL
    assert 4 not in _steps_done(out) or (out / "checkpoints" / "4" / "_CHECKPOINT_METADATA").exists()
    _resume_matches(args, out, reference_run, jax_cache)


def _shard(step_dir: Path) -> Path:
    """The largest data file of a checkpoint's state (an OCDBT shard)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.xdist_group("reference-run")
@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, train_data, reference_run, jax_cache, damage):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    # Damage the last checkpoint (6): the resume falls back to 4 and trains 5 and 6 again.
    shard = _shard(out / "checkpoints" / "6")
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = cli(_train_args(train_data, out), cache=jax_cache)
    line = one_clear_line(proc, 0, out / "checkpoints" / "6", "cannot be restored", "resuming from checkpoint 4")
    assert line.startswith("warning:")
    assert (out / "checkpoints-corrupt" / "6").is_dir()  # kept for inspection, not deleted
    _same_state(out, reference_run)


def _hold_after(args, cache, ready) -> subprocess.Popen:
    """Start ``args``; once ``ready()`` holds, freeze the process with SIGSTOP (it keeps its lock)."""
    proc = subprocess.Popen(_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(cache))
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    return proc


def test_second_training_run_into_one_folder_is_refused(tmp_path, train_data, jax_cache):
    out = tmp_path / "run"
    args = _train_args(train_data, out, steps=1000)
    first = _hold_after(args, jax_cache, lambda: 1 in _log_steps(out))
    try:
        proc = cli(args, cache=jax_cache)
        one_clear_line(proc, 2, out, "in use by another training run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        first.wait(120)
    assert first.returncode == 143  # the first run went on, and saved its last step on SIGTERM
    assert _steps_done(out)


def test_second_sweep_into_one_folder_is_refused(tmp_path, jax_cache):
    out = tmp_path / "results"
    args = ["experiment", "p0", "--preset", "tiny", "--checkpoint", "preset:micro", "--out", out, "--quiet"]
    lock = out / "p0" / "lock"
    first = _hold_after(args, jax_cache, lambda: lock.is_file() and lock.read_text().strip() != "")
    try:
        proc = cli(args, cache=jax_cache)
        one_clear_line(proc, 2, out / "p0", "in use by another sweep", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


# ------------------------------------------------------------------------------ the page


def test_troubleshooting_page_lists_every_message():
    """Each message of the catalogue is on the troubleshooting page, with what to do."""
    page = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    phrases = {w for _, words in INPUT_FAULTS.values() for w in words if not any(c.isdigit() for c in w)}
    phrases |= {"exists and is not a folder", "which is a file", "is not writable", "the disk is full", "do not match config.json",
                "in use by another training run", "in use by another sweep", "cannot be restored", "checkpoints-corrupt",
                "resuming from checkpoint", "run the same command to resume", "is damaged", "holds points computed with other settings",
                "m must be > 0", "both silent", "non-finite values first appear at stage", "enhancing the K frames present"}
    missing = sorted(p for p in phrases if p not in page)
    assert not missing, missing
