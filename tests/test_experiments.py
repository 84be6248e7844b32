"""The instrument: P0 and E1–E4 as resumable sweeps, the report and its verdicts.

The experiments run as a user runs them — the ``storm-jax`` command in a subprocess, on the
embedded corpus at the ``tiny`` preset — with one persistent compilation cache shared by every
subprocess of the session. The model is ``preset:micro`` (random weights, two levels of 8
channels): the instrument is under test, not the shipped model, and it compiles in half the time. Tests that read the full tiny programme share one
run (``programme``) and are grouped on one xdist worker, the kill -9 test with them (it resumes
to the programme's P0 tables)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storm_jax.experiments import EXPERIMENTS, FolderBusy, SettingsMismatch, Store, build_report
from storm_jax.experiments.context import Context
from storm_jax.experiments.presets import PRESETS, get_preset
from storm_jax.experiments.runner import Experiment, Summary, run_experiment, table_csv
from storm_jax.experiments.store import point_id
from storm_jax.files import OutputError, atomic_write

EXP_NAMES = ("p0", "e1", "e2", "e3", "e4")
TAGS = ("P0:", "H1:", "H2:", "H3:", "E4:")
MODEL = ("--checkpoint", "preset:micro")
# The decisions of DESIGN.md § Verdicts (E4 decides on κ∞'s CI).
DECISION = r"→ (kink|smooth|continuous|discontinuous|undecided|non-degenerate|degenerate|CI excludes 0|CI contains 0)\b"


def _env(cache: Path, extra: dict | None = None) -> dict:
    env = {**os.environ, **(extra or {})}
    env["STORM_JAX_COMPILATION_CACHE"] = str(cache)
    # The CLI computes in float32 like a user's run; the suite's x64 switch must not leak in.
    env.pop("JAX_ENABLE_X64", None)
    return env


def _cli(args, cache: Path, *, timeout=900, check=True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "storm_jax.cli", *args], capture_output=True, text=True,
                          env=_env(cache, env), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"storm-jax {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def cache() -> Path:
    # The suite's persistent compilation cache (tests/conftest.py), shared by every subprocess.
    return Path(os.environ["STORM_JAX_COMPILATION_CACHE"])


@pytest.fixture(scope="session")
def programme(tmp_path_factory, cache) -> Path:
    """``storm-jax demo --preset tiny``: all five experiments and the report, in one process, run
    once per session: the tests that read it form one xdist group, and a lock in the workers'
    shared folder makes any other worker wait for that run rather than start its own."""
    import fcntl

    root = tmp_path_factory.getbasetemp().parent
    out = root / "programme" / "run"
    with open(root / "programme.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "report.md").is_file():
            shutil.rmtree(out, ignore_errors=True)
            proc = _cli(["demo", "--preset", "tiny", *MODEL, "--out", str(out), "--quiet"], cache)
            assert "report:" in proc.stdout
    return out


def _tables(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((folder / "tables").glob("*.csv"))}


# ------------------------------------------------------------------------------ the programme


@pytest.mark.xdist_group("programme")
def test_demo_prints_every_verdict(programme):
    text = (programme / "report.md").read_text()
    verdicts = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    lines = [l[2:] for l in verdicts.splitlines() if l.startswith("- ")]
    for tag in TAGS:
        mine = [l for l in lines if l.startswith(tag)]
        assert len(mine) == 1, f"{tag} lines: {mine}"
        # A verdict states numbers and ends in a decision, never "not run".
        assert "not run" not in mine[0]
        assert re.search(r"\d", mine[0]), mine[0]
        assert re.search(DECISION, mine[0]), mine[0]


@pytest.mark.xdist_group("programme")
def test_report_references_exist(programme):
    md = (programme / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    tables = re.findall(r"`([a-z0-9]+/tables/[^`]+\.csv)`", md)
    assert len(figures) >= 8 and len(tables) >= 10
    for rel in figures + tables:
        assert (programme / rel).is_file(), rel
    for rel in figures:
        assert (programme / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel
    for rel in tables:
        assert (programme / rel).with_suffix(".md").is_file()
    html = (programme / "report.html").read_text()
    # Self-contained: every image is embedded.
    srcs = re.findall(r"<img[^>]*src='([^']*)'", html)
    assert len(srcs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    for tag in TAGS:
        assert f"<li>{tag}" in html


@pytest.mark.xdist_group("programme")
@pytest.mark.parametrize("name", EXP_NAMES)
def test_each_experiment_records_its_run(programme, name):
    folder = programme / name
    rec = json.loads((folder / "record.json").read_text())
    assert rec["experiment"] == name and rec["preset"]["name"] == "tiny"
    assert rec["versions"]["jax"] and rec["device"]["platform"] == "cpu"
    assert rec["runs"] and rec["runs"][-1]["wall_s"] > 0 and rec["seconds_per_point_median"] > 0
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["run"]["model"] == "preset:micro" and settings["run"]["data"] == "embedded"
    store = Store(folder)
    n_points = len(EXPERIMENTS[name].points(PRESETS["tiny"]))
    assert len(store.rows()) == n_points and not store.failures()
    points_csv = (folder / "tables" / "points.csv").read_text().splitlines()
    assert len(points_csv) == n_points + 1
    for row in store.rows():
        for k, v in row.items():
            if isinstance(v, float):
                assert np.isfinite(v), (name, k, row)


def _csv(folder: Path, table: str) -> list[dict]:
    import csv

    with open(folder / "tables" / f"{table}.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.xdist_group("programme")
def test_p0_numbers(programme):
    curve = _csv(programme / "p0", "curve")
    assert len(curve) == PRESETS["tiny"].grid_points
    m = np.array([float(r["m"]) for r in curve])
    noisy = np.array([float(r["si_sdr_noisy"]) for r in curve])
    # The noisy input's SI-SDR falls by 20·log10 per decade of M (closed form up to the clean/noise
    # correlation, which the loud embedded crops keep small).
    assert np.all(np.diff(noisy) < 0)
    slope = np.polyfit(np.log10(m), noisy, 1)[0]
    assert -21.0 < slope < -18.5, slope
    kink = _csv(programme / "p0", "kink")
    assert len(kink) == len(PRESETS["tiny"].hs)
    for r in kink:
        assert float(r["kappa_lo"]) <= float(r["kappa"]) <= float(r["kappa_hi"])


@pytest.mark.xdist_group("programme")
def test_e3_factorization_is_exact(programme):
    # ŝ' = K·u + L·v holds to float32 round-off on every stored point.
    rows = Store(programme / "e3").rows()
    res = [r["residual"] for r in rows if "residual" in r]
    assert res and max(res) < 1e-3, res


@pytest.mark.xdist_group("programme")
def test_e4_strong_error_vanishes_at_the_reference(programme):
    rows = _csv(programme / "e4", "errors")
    ns = sorted({int(r["N"]) for r in rows})
    assert ns == sorted(PRESETS["tiny"].e4_steps[:-1]) or ns == sorted(PRESETS["tiny"].e4_steps)
    err = {int(r["N"]): float(r["strong_vs_finest"]) for r in rows}
    assert err[max(err)] == 0.0  # the finest solve is its own reference
    assert all(e > 0 for n, e in err.items() if n != max(err))
    assert err[min(err)] > err[sorted(err)[1]]  # coarser grid, larger error on the shared path


@pytest.mark.xdist_group("programme")
def test_verdict_is_derived_from_stored_numbers(programme, tmp_path):
    """Change stored one-sided slopes so that D⁺ − D⁻ is large and consistent: P0 says "kink"."""
    out = tmp_path / "run"
    shutil.copytree(programme, out)
    before = next(l for l in build_report(out)["verdicts"] if l.startswith("P0:"))
    store = Store(out / "p0")
    for rec, arrays in store.records(with_arrays=True):
        p, row = rec["point"], dict(rec["row"])
        if p["kind"] == "side":
            row["d_si_sdr"] = 50.0 + p["utt"] + 0.1 * p["path"] if p["m"] > 1 else -50.0 - 0.1 * p["path"]
            store.put(p, row, arrays)
    after = next(l for l in build_report(out)["verdicts"] if l.startswith("P0:"))
    assert after != before
    assert after.split(";")[0].endswith("CI excludes 0") or "→ kink" in after, after
    kappa0 = float(re.search(r"κ₀ = ([-0-9.e+]+)", after).group(1))
    assert 99 < kappa0 < 102, after
    # And the tables follow the store.
    summary = {r["functional"]: r for r in _csv(out / "p0", "kink_summary")}
    assert 99 < float(summary["StoRM"]["kappa0"]) < 102


@pytest.mark.xdist_group("programme")
def test_mismatched_arguments_are_refused(programme, cache):
    out = str(programme)
    proc = _cli(["experiment", "p0", "--preset", "tiny", *MODEL, "--out", out, "--seed", "3", "--quiet"], cache, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "seed: stored 0, given 3" in err[0] and str(programme / "p0") in err[0]


# ------------------------------------------------------------------------------ kill -9, resume


def _run_until_first_point(args, cache: Path, folder: Path, env: dict | None = None) -> int:
    """Start ``storm-jax args`` and kill -9 it as soon as its first point is stored; the number
    of points it had stored."""
    proc = subprocess.Popen([sys.executable, "-m", "storm_jax.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(cache, env))
    points = folder / "points"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if points.is_dir() and any(p.suffix == ".npz" for p in points.iterdir()):
                break
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill: {proc.stderr.read()[-2000:]}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return sum(p.suffix == ".npz" for p in points.iterdir())


@pytest.mark.xdist_group("programme")
def test_killed_sweep_resumes_to_the_same_tables(programme, tmp_path, cache):
    """kill -9 after the first stored point, then resume: the tables and rows equal those of the
    programme's uninterrupted P0 (the same command and settings, run inside ``demo``)."""
    args = ["experiment", "p0", "--preset", "tiny", *MODEL, "--quiet"]
    whole, broken = programme, tmp_path / "broken"
    n_points = len(EXPERIMENTS["p0"].points(PRESETS["tiny"]))
    stored = _run_until_first_point([*args, "--out", str(broken)], cache, broken / "p0")
    assert 0 < stored < n_points
    assert not (broken / "p0" / "tables").exists()
    _cli([*args, "--out", str(broken)], cache)
    assert len(Store(broken / "p0").rows()) == n_points
    assert _tables(broken / "p0") == _tables(whole / "p0")
    # The rows are bit-identical, not just their printed tables.
    a = {json.dumps(rec["point"], sort_keys=True): rec["row"] for rec, _ in Store(whole / "p0").records()}
    b = {json.dumps(rec["point"], sort_keys=True): rec["row"] for rec, _ in Store(broken / "p0").records()}
    assert a == b
    # A second resume has nothing to do and changes nothing.
    _cli([*args, "--out", str(broken)], cache)
    assert _tables(broken / "p0") == _tables(whole / "p0")
    rec = json.loads((broken / "p0" / "record.json").read_text())
    assert rec["runs"][-1]["groups"] == []


# ------------------------------------------------------------------------------ scale-out

FOUR_DEVICES = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}


def _rows(folder: Path) -> dict:
    return {json.dumps(rec["point"], sort_keys=True): rec["row"] for rec, _ in Store(folder).records()}


def _agree(a: dict, b: dict, exact: tuple[str, ...], rtol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        for col, x in a[k].items():
            y = b[k][col]
            if col in exact or not isinstance(x, float):
                assert x == y, (k, col, x, y)
            else:
                assert abs(x - y) <= rtol * abs(x), (k, col, x, y)


def test_four_devices_and_a_resume_on_one_agree_with_one_device(tmp_path, cache):
    """P0 with its M lanes sharded over 4 forced CPU devices (one lane per device and call, the
    last call padded) against 1 device at the same lanes per call: StoRM's numbers bit for bit,
    the predictor's SI-SDR derivative to ≤ 1e-6 relative; a 4-device sweep killed after its
    first stored point and resumed on 1 device ends with the same rows. The measured agreement at
    each device's own planned batch (the default) is on the docs' scale-out page."""
    args = ["experiment", "p0", "--preset", "tiny", *MODEL, "--quiet", "--batch", "1"]
    one, four, broken = tmp_path / "one", tmp_path / "four", tmp_path / "broken"
    _cli([*args, "--out", str(one), "--devices", "1"], cache)
    _cli([*args, "--out", str(four)], cache, env=FOUR_DEVICES)
    assert json.loads((four / "p0" / "record.json").read_text())["device"]["sweep_devices"] == 4
    storm = ("si_sdr", "d_si_sdr", "tangent_norm", "si_sdr_noisy")  # bit for bit
    _agree(_rows(one / "p0"), _rows(four / "p0"), storm, 1e-6)
    stored = _run_until_first_point([*args, "--out", str(broken)], cache, broken / "p0", env=FOUR_DEVICES)
    assert 0 < stored < len(EXPERIMENTS["p0"].points(PRESETS["tiny"]))
    _cli([*args, "--out", str(broken), "--devices", "1"], cache)
    _agree(_rows(one / "p0"), _rows(broken / "p0"), storm, 1e-6)
    runs = json.loads((broken / "p0" / "record.json").read_text())["runs"]
    assert runs[-1]["groups"]  # the resume computed the groups the kill left unfinished (a group is computed whole)
    bad = _cli([*args, "--out", str(tmp_path / "x"), "--devices", "3"], cache, check=False)
    assert bad.returncode == 2 and "--devices 3" in bad.stderr and "1 cpu device" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.xdist_group("programme")
def test_two_processes_share_one_sweep(programme, tmp_path, cache):
    """Two local processes joined by ``jax.distributed`` (loopback, bounded in time) split P0's
    groups, meet at a barrier, and process 0 writes the programme's tables; two independent
    shares (a SLURM array's way) do the same without talking, the second writing the tables."""
    import socket

    args = ["experiment", "p0", "--preset", "tiny", *MODEL, "--quiet"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    joined = tmp_path / "joined"
    procs = [subprocess.Popen([sys.executable, "-m", "storm_jax.cli", *args, "--out", str(joined), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cache))
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "P0:" in outs[0][0] and "process 1 of 2: share done" in outs[1][0]
    assert (joined / "p0" / "lock.1").is_file() and (joined / "p0" / "record.1.json").is_file()
    assert _tables(joined / "p0") == _tables(programme / "p0") and _rows(joined / "p0") == _rows(programme / "p0")
    shares = tmp_path / "shares"
    first = _cli([*args, "--out", str(shares), "--num-processes", "2", "--process-id", "1"], cache)
    assert "share 1 of 2: done" in first.stdout and "storm-jax report" in first.stdout
    assert not (shares / "p0" / "tables").exists()
    _cli([*args, "--out", str(shares), "--num-processes", "2", "--process-id", "0"], cache)
    assert _tables(shares / "p0") == _tables(programme / "p0")
    bad = _cli([*args, "--out", str(shares), "--num-processes", "2", "--process-id", "2"], cache, check=False)
    assert bad.returncode == 2 and "--process-id 2" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, words",
    [
        (["experiment", "p0", "--checkpoint", "{tmp}/no-model"], ["--checkpoint", "no-model", "no such model directory"]),
        (["experiment", "e1", "--data", "{tmp}/no-data"], ["--data", "no-data", "no such folder"]),
        (["experiment", "p0", "--preset", "huge"], ["unknown preset 'huge'", "quick"]),
        (["experiment", "p0", "--out", "{tmp}/a-file"], ["a-file", "exists and is not a folder"]),
        (["experiment", "p0", "--out", "{tmp}/a-file/sub"], ["a-file", "which is a file"]),
        (["experiment", "p0", "--out", "{tmp}/other"], ["other/p0", "not an experiment folder"]),
        (["report", "--out", "{tmp}/nothing"], ["nothing", "no such folder"]),
    ],
    ids=["checkpoint", "data", "preset", "out-file", "out-under-file", "out-foreign", "report-missing"],
)
def test_bad_input_is_one_line(tmp_path, cache, args, words):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "other" / "p0").mkdir(parents=True)
    (tmp_path / "other" / "p0" / "notes.txt").write_text("mine")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if args[0] == "experiment" and "--preset" not in args:
        args += ["--preset", "tiny"]
    proc = _cli([*args, "--quiet"] if args[0] == "experiment" else args, cache, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    # Nothing of a refused run is left behind.
    assert (tmp_path / "other" / "p0" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))


# ------------------------------------------------------------------------------ the store


def test_store_refuses_other_settings_and_names_them(tmp_path):
    Store.open(tmp_path / "x", {"run": {"seed": 0, "preset": "tiny"}, "sizes": {"steps": 3}})
    with pytest.raises(SettingsMismatch) as e:
        Store.open(tmp_path / "x", {"run": {"seed": 0, "preset": "quick"}, "sizes": {"steps": 8}})
    assert "run.preset: stored \"tiny\", given \"quick\"" in str(e.value) and "sizes.steps: stored 3, given 8" in str(e.value)
    assert "seed" not in str(e.value)
    Store.open(tmp_path / "x", {"run": {"seed": 0, "preset": "tiny"}, "sizes": {"steps": 3}})  # same: fine


def test_store_lock_refuses_a_second_sweep(tmp_path):
    store = Store.open(tmp_path / "x", {"a": 1})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from storm_jax.experiments import Store\n"
        f"s = Store.open({str(tmp_path / 'x')!r}, {{'a': 1}})\n"
        "with s.lock():\n    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as e:
            with store.lock():
                pass
        assert str(tmp_path / "x") in str(e.value) and f"pid {holder.pid}" in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    with store.lock():  # released with its holder
        pass


def test_point_files_are_atomic_and_round_trip(tmp_path):
    store = Store.open(tmp_path / "x", {"a": 1})
    p = {"utt": 0, "path": 1, "m": 1.03}
    store.put(p, {"v": 0.5}, {"wave": np.arange(4.0)})
    [(rec, arr)] = store.records(with_arrays=True)
    assert rec == {"point": p, "row": {"v": 0.5}} and np.array_equal(arr["wave"], np.arange(4.0))
    assert store.done_ids() == {point_id(p)}
    mode = (tmp_path / "x" / "points" / f"{point_id(p)}.npz").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()
    # A temporary file left by a killed writer is neither a point nor left behind on reopening.
    (tmp_path / "x" / "points" / ".junk.npz.tmp-999999").write_bytes(b"half")
    Store.open(tmp_path / "x", {"a": 1})
    assert not list((tmp_path / "x" / "points").glob(".*")) and len(store.records()) == 1


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_full_disk_leaves_nothing_half_written(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: a clear error naming the file, no partial file."""
    target = tmp_path / "points" / "big.npz"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from storm_jax.files import atomic_write, OutputError\n"
        f"try:\n    atomic_write({str(target)!r}, b'x' * 100000)\n"
        "except OutputError as e:\n    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"cannot write {target}: the disk is full" in proc.stdout
    assert not target.exists() and not list(target.parent.iterdir())


def test_failed_points_are_recorded_and_the_sweep_goes_on(tmp_path):
    """A group that raises FloatingPointError and a point with a NaN result are recorded as failed
    (with the stage), the other points are stored, and the report lists the failures."""

    def points(preset):
        return [{"utt": u, "path": 0, "x": float(i)} for u in range(3) for i in range(2)]

    def evaluate(ctx, group):
        if group[0]["utt"] == 1:
            raise FloatingPointError("non-finite value in stage 'score network' (step 2)")
        return [({"y": float("nan") if (g["utt"], g["x"]) == (2, 1.0) else g["x"] * 2}, {}) for g in group]

    def summarize(records, settings):
        rows = [{**r["point"], **r["row"]} for r, _ in records]
        return Summary(title="fake", tables={"sum": [{"total": sum(r["y"] for r in rows)}]},
                       verdicts=[f"H1: fake total {sum(r['y'] for r in rows)} → decided"], figures=[])

    exp = Experiment(name="fake", title="fake", points=points, evaluate=evaluate, summarize=summarize,
                     settings=lambda preset: {"n": 3})
    EXPERIMENTS["fake"] = exp
    try:
        ctx = Context(model=None, model_spec="none", model_digest="0", clean=np.zeros((3, 4)), noise=np.zeros((3, 4)),
                      ids=("a", "b", "c"), data_spec="none", preset=get_preset("tiny"), seed=0)
        folder = run_experiment(exp, ctx, tmp_path, progress=False)
        store = Store(folder)
        fails = {(f["point"]["utt"], f["point"]["x"]): f["stage"] for f in store.failures()}
        assert fails == {(1, 0.0): "score network", (1, 1.0): "score network", (2, 1.0): "result y"}
        assert len(store.rows()) == 3
        assert "score network" in (folder / "tables" / "failed.md").read_text()
        assert (folder / "tables" / "sum.csv").read_text() == table_csv([{"total": 2.0}])
        # Failed points count as finished: a rerun does not retry them.
        assert run_experiment(exp, ctx, tmp_path, progress=False) == folder
        assert json.loads((folder / "record.json").read_text())["runs"][-1]["groups"] == []
    finally:
        del EXPERIMENTS["fake"]


def test_presets_are_nested_and_validated():
    for p in PRESETS.values():
        finest = max(p.e4_steps)
        assert all(finest % n == 0 for n in p.e4_steps)
    assert PRESETS["paper"].e4_steps == (8, 15, 30, 60, 120, 240, 480)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    import dataclasses

    with pytest.raises(ValueError, match="do not divide"):
        dataclasses.replace(PRESETS["tiny"], e4_steps=(3, 4, 8))


def test_atomic_write_replaces_whole_files(tmp_path):
    f = tmp_path / "a" / "b.txt"
    atomic_write(f, b"one")
    atomic_write(f, b"two")
    assert f.read_bytes() == b"two" and [p.name for p in f.parent.iterdir()] == ["b.txt"]
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(tmp_path / "a" / "b.txt" / "c", b"x")


# -------------------------------------------------------------- the schedule experiment (S1, S2)


def test_schedule_experiment_trains_measures_and_decides(tmp_path, cache):
    """``storm-jax experiment schedule`` at the tiny preset on a saved micro model: one training
    run per schedule and one refinement run (each resumable in ``work/``), the tables and figures,
    S1 and S2 lines in the report that follow the stored numbers, and a rerun that trains nothing."""
    import storm_jax
    from storm_jax.experiments.schedule import s1_verdict, s2_verdict

    model_dir = storm_jax.save_model(storm_jax.init_storm("micro", 0), tmp_path / "micro-model")
    out = tmp_path / "run"
    args = ["experiment", "schedule", "--preset", "tiny", "--checkpoint", str(model_dir), "--out", str(out), "--quiet"]
    proc = _cli(args, cache)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("S1:", "S2:"))]
    assert [l[:3] for l in lines] == ["S1:", "S2:"] and all(re.search(r"→ \w", l) for l in lines), proc.stdout
    folder = out / "schedule"
    for run in ("run-0", "run-1", "refine"):
        assert (folder / "work" / run / "fingerprint.json").is_file() and (folder / "work" / f"{run}-model" / "config.json").is_file()
    assert json.loads((folder / "work" / "run-1-model" / "config.json").read_text())["sde"]["sigma_max"] == 1.0
    assert "refiner" in json.loads((folder / "work" / "refine-model" / "config.json").read_text())
    sched = _csv(folder, "schedules")
    assert [float(r["sigma_max"]) for r in sched] == [0.5, 1.0]
    for r in sched:
        assert 0 <= float(r["ioc_j_mean"]) <= 1 and float(r["ioc_swap_mean"]) >= 0 and np.isfinite(float(r["elbo_total"]))
    assert len(_csv(folder, "ioc_curves")) == 2 and len(_csv(folder, "refinement_mismatch")) == 2
    for png in ("schedule_ioc.png", "schedule_elbo.png", "refine_mismatch.png"):
        assert (folder / "figures" / png).stat().st_size > 5000
    # the verdicts are functions of the stored numbers
    store = Store(folder)
    for rec, arrays in store.records(with_arrays=True):
        p, row = rec["point"], dict(rec["row"])
        if p["kind"] == "schedule":
            row["ioc_j_mean"], row["ioc_j_se"] = (0.1, 0.001) if p["sigma_max"] == 0.5 else (0.6, 0.001)
            store.put(p, row, arrays)
    s1 = next(l for l in build_report(out)["verdicts"] if l.startswith("S1:"))
    assert s1.endswith("→ changes IoC") and "spread 0.5" in s1, s1
    rows = [{"sigma_min": 0.05, "sigma_max": b, "ioc_j_mean": m, "ioc_j_se": 0.1} for b, m in ((0.5, 0.3), (1.0, 0.4))]
    assert s1_verdict(rows).endswith("undecided (within the estimator's noise)")
    row = {k: 1.0 for k in ("one_si_sdr", "two_si_sdr", "one_pesq", "two_pesq", "one_estoi", "two_estoi")}
    assert s2_verdict(row, {"one_si_sdr_utt": np.zeros(6), "two_si_sdr_utt": np.arange(1.0, 7.0)}, 200, 0).endswith("→ improves")
    assert s2_verdict(row, {"one_si_sdr_utt": np.zeros(6), "two_si_sdr_utt": -np.arange(1.0, 7.0)}, 200, 0).endswith("→ worsens")
    # a second run with the same arguments skips every stored point: nothing is trained again
    stamp = (folder / "work" / "run-0" / "log.jsonl").stat().st_mtime_ns
    _cli(args, cache)
    assert (folder / "work" / "run-0" / "log.jsonl").stat().st_mtime_ns == stamp
