"""``storm-jax experiment``, ``storm-jax report`` and ``storm-jax demo`` (the main job)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..files import OutputError, check_output_folder

__all__ = ["add_commands", "enable_compilation_cache", "script_main"]

EXPERIMENT_ORDER = ("p0", "e1", "e2", "e3", "e4")


def enable_compilation_cache(path: str | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``path`` (default
    ``$STORM_JAX_COMPILATION_CACHE``, else ``<user cache>/storm-jax/jax-compilation``), so a second
    run — and the test suite — do not compile again."""
    import jax
    import platformdirs

    root = Path(path or os.environ.get("STORM_JAX_COMPILATION_CACHE") or Path(platformdirs.user_cache_dir("storm-jax")) / "jax-compilation")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return root  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", str(root))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return root


def _load_experiments():
    from . import EXPERIMENTS  # registers every experiment

    return EXPERIMENTS


def run_named(names, args, *, progress: bool = True) -> Path:
    """Run the experiments ``names`` into ``args.out`` (shared context, one after another); the
    caller builds the report, which writes every table and figure."""
    from .context import load_context
    from .presets import get_preset
    from .runner import run_experiment

    exps = _load_experiments()
    preset = get_preset(args.preset)
    out = check_output_folder(args.out, "--out")
    ctx = load_context(preset, args.checkpoint, args.data, args.seed, progress=progress, devices=args.devices,
                       batch=args.batch, share=getattr(args, "share", (0, 1, False)))
    for name in names:
        t0 = time.perf_counter()
        run_experiment(exps[name], ctx, out, progress=progress, outputs=False)
        if progress:
            print(f"{name}: done in {time.perf_counter() - t0:.0f} s → {out / name}", file=sys.stderr)
    return out


def _start(args) -> None:
    """The compilation cache, then this process's share of the sweep (joining ``jax.distributed``
    before any computation when asked to)."""
    from .sharding import process_share

    enable_compilation_cache(args.compilation_cache)
    args.share = process_share(args.coordinator, args.num_processes, args.process_id)


def _report_or_wait(args, names):
    """The report when this process writes it (process 0 of a coordinated run, or any share that
    finds every point stored); else ``None`` after one line saying who does."""
    from .presets import get_preset
    from .report import build_report
    from .runner import pending_points

    index, count, coordinated = args.share
    if count > 1:
        if coordinated and index > 0:
            print(f"process {index} of {count}: share done; process 0 writes the report under {args.out}")
            return None
        preset = get_preset(args.preset)
        left = sum(pending_points(_load_experiments()[n], preset, args.out) for n in names)
        if left:
            print(f"share {index} of {count}: done; {left} points of other shares remain — "
                  f"storm-jax report --out {args.out} once they have finished")
            return None
    return build_report(args.out)


def cmd_experiment(args) -> int:
    _start(args)
    run_named([args.name], args, progress=not args.quiet)
    report = _report_or_wait(args, [args.name])
    if report is None:
        return 0
    print(f"{args.name}: tables and figures in {Path(args.out) / args.name}; report {report['md']}")
    for line in report["verdicts"]:
        print(line)
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    _load_experiments()
    report = build_report(args.out)
    print(f"wrote {report['md']} and {report['html']}")
    for line in report["verdicts"]:
        print(line)
    return 0


def cmd_demo(args) -> int:
    """P0 and E1–E4 at the quick preset on the shipped model and the embedded corpus, then the report."""
    _start(args)
    t0 = time.perf_counter()
    run_named(list(EXPERIMENT_ORDER), args, progress=not args.quiet)
    report = _report_or_wait(args, list(EXPERIMENT_ORDER))
    if report is None:
        return 0
    print(f"storm-jax demo: P0 and E1–E4 ({args.preset} preset) in {time.perf_counter() - t0:.0f} s")
    print(f"report: {report['md']} (and {report['html']})")
    for line in report["verdicts"]:
        print(line)
    return 0


def script_main(names, argv=None, description: str | None = None) -> int:
    """The entry point of the scripts in the top-level ``experiments/`` folder: run ``names``
    (one experiment, or all of them for ``run_all``) with the ``storm-jax experiment`` options,
    then build the report. Errors are one line and exit code 2, as with the command."""
    names = [names] if isinstance(names, str) else list(names)
    p = argparse.ArgumentParser(description=description or f"Run {', '.join(names)} and rebuild the report.")
    _common(p, "results")
    args = p.parse_args(argv)
    try:
        _start(args)
        t0 = time.perf_counter()
        run_named(names, args, progress=not args.quiet)
        report = _report_or_wait(args, names)
    except (ValueError, FileNotFoundError, OutputError) as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        return 2
    if report is None:
        return 0
    print(f"{', '.join(names)} in {time.perf_counter() - t0:.0f} s; report {report['md']} (and {report['html']})")
    for line in report["verdicts"]:
        print(line)
    return 0


def _common(p: argparse.ArgumentParser, out_default: str | None):
    p.add_argument("--preset", default="quick", help="quick (CPU minutes), paper (GPU, the full programme), tiny (tests) or a JSON file {\"base\": \"quick\", ...}")
    p.add_argument("--out", default=out_default, required=out_default is None, help="output folder (resumable)")
    p.add_argument("--checkpoint", default=None, help="model directory, pretrained[:NAME] or preset:NAME (default: the shipped model)")
    p.add_argument("--data", default=None, help="'embedded' (default) or a dataset folder with a test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="shard each point group's M lanes over the first N local devices (default: all)")
    p.add_argument("--batch", type=int, default=None, metavar="B",
                   help="lanes per device per call (default: the largest that fits the device memory)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: the jax.distributed coordinator (or $JAX_COORDINATOR_ADDRESS; SLURM is detected)")
    p.add_argument("--num-processes", type=int, default=None, metavar="P",
                   help="processes sharing the sweep (with --coordinator: jax.distributed; without: independent shares, "
                        "e.g. a SLURM array)")
    p.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index, 0 … P-1")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="JAX persistent compilation cache (default $STORM_JAX_COMPILATION_CACHE or the user cache folder)")


def add_commands(sub) -> None:
    ex = sub.add_parser("experiment", help="run one experiment (p0, e1, e2, e3, e4, schedule) as a resumable sweep",
                        description="Run P0, E1–E4 or the schedule experiment (S1, S2: trains a score network per noise "
                                    "schedule and a refiner; about an hour at the quick preset) into OUT/<name>/ "
                                    "(resumable: finished points are kept, an interrupted training run resumes), then "
                                    "rebuild OUT/report.md. Example: storm-jax experiment p0 --preset quick --out results")
    ex.add_argument("name", choices=EXPERIMENT_ORDER + ("schedule",))
    _common(ex, None)
    ex.set_defaults(func=cmd_experiment)

    rp = sub.add_parser("report", help="gather the experiments under --out into report.md and report.html",
                        description="Example: storm-jax report --out results")
    rp.add_argument("--out", required=True)
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the main job: P0 and E1–E4 (quick preset) on the shipped model, then the report",
                       description="Example: storm-jax demo --out outputs/demo")
    _common(d, "outputs/demo")
    d.set_defaults(func=cmd_demo)
