"""Speed and memory of the pathwise sensitivities relative to the plain pipeline (issue 5).

Measured side by side in one run, on the same inputs and the same fixed draws:

* ``jvp / plain``: :func:`storm_jax.pathwise_derivative` (value and dŝ/dM in one forward-mode
  pass) against the plain pipeline :func:`storm_jax.enhance_mixture` (target ≤ 2.0);
* ``factorize / plain``: :func:`storm_jax.factorize` with the independent total
  (``check_identity=True``: tangent lanes K·u, L·v and total) and without (K·u, L·v only)
  (target ≤ 3.0);
* the floor: the score network alone, one call, ``jax.jvp`` against plain — the networks take
  nearly all of the time and the tangent of a convolution is another convolution of the same
  size, so on a compute-bound device the pipeline's ``jvp / plain`` cannot go below this;
* peak memory of the jvp at N = 480 against N = 30 sampler steps (target ≤ 1.2): XLA's compiled
  memory analysis, split into the working memory the program needs beyond its inputs and
  outputs (``temp``), and the total with the arguments — whose explicit noise draws
  ``[N, F, T]`` grow with N by construction — and outputs.

The timed functions are the jitted cores behind the public calls, compiled ahead of time, so
compilation and the host-side argument checks are not timed. Calls are interleaved round by
round (plain, jvp, factorize, …) and the median of the rounds is reported.

Weights are random (``init_storm``): speed and memory do not depend on their values.

Usage::

    python benchmarks/bench_sensitivity.py                       # tiny, 0.5 s, N = 8
    python benchmarks/bench_sensitivity.py --presets tiny ncsnpp --steps 8 --ncsnpp-steps 2
    python benchmarks/bench_sensitivity.py --presets ncsnpp --seconds 2.04 --steps 30   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import storm_jax as sj  # noqa: E402
from storm_jax.analysis import _setup, sensitivity  # noqa: E402
from storm_jax.demo import synthetic_example  # noqa: E402


def random_model(preset: str, seed: int = 0, dtype=jnp.float32) -> sj.StormModel:
    """A randomly initialised StoRM model (host-side init, nothing compiled)."""
    return sj.init_storm(preset, seed, dtype=dtype)


def _plain_core(model, clean, noise, m, draws, norm_factor, static):
    return sj.enhance_mixture(model, clean, noise, m, draws, static.enhance_config(norm_factor), static.power)


def _compiled(fn, static_kw: dict, args):
    """AOT-compile ``fn`` (already jitted or not) with static keyword arguments."""
    jf = fn if hasattr(fn, "lower") else jax.jit(fn, static_argnames=tuple(static_kw))
    t0 = time.perf_counter()
    comp = jf.lower(*args, **static_kw).compile()
    return comp, time.perf_counter() - t0


def _time_interleaved(fns: dict, args, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up (first-call allocations)
        jax.block_until_ready(f(*args))
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t0)
    return times


def _network_floor(model, shape, repeats: int) -> dict:
    """The score network alone, one evaluation on ``[1, F, T]`` inputs: plain against ``jax.jvp``
    with tangents on all of ``(x, Y, C)``. Nearly all of the pipeline's time is spent in the
    networks, and the tangent of a convolution is a second convolution of the same size, so this
    ratio is the floor that ``pathwise_derivative / plain`` can reach on the device."""
    r = np.random.default_rng(0)
    cx = lambda: jnp.asarray((r.standard_normal((1, *shape)) + 1j * r.standard_normal((1, *shape))).astype(np.complex64))
    x, Y, C, dx, dY, dC = (cx() for _ in range(6))
    t = jnp.full((1,), 0.5, jnp.float32)
    args = (model, x, Y, C, dx, dY, dC, t)
    plain = jax.jit(lambda mdl, x, Y, C, dx, dY, dC, t: sj.score(mdl, x, t, Y, C)).lower(*args).compile()
    jvp = jax.jit(lambda mdl, x, Y, C, dx, dY, dC, t: jax.jvp(lambda a, b, c: sj.score(mdl, a, t, b, c), (x, Y, C), (dx, dY, dC))
                  ).lower(*args).compile()  # fmt: skip
    times = _time_interleaved({"plain": plain, "jvp": jvp}, args, repeats)
    return {k: statistics.median(v) for k, v in times.items()}


def _mem(comp) -> dict:
    ma = comp.memory_analysis()
    if ma is None:
        return {}
    g = lambda n: int(getattr(ma, n, 0) or 0)
    temp, arg, out, alias = g("temp_size_in_bytes"), g("argument_size_in_bytes"), g("output_size_in_bytes"), g("alias_size_in_bytes")
    return {"temp": temp, "args": arg, "out": out, "total": temp + arg + out - alias}


def _mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def bench_preset(preset: str, seconds: float, steps: int, repeats: int, mem_steps: tuple[int, int], run_memory: bool,
                 mem_what: tuple[str, ...] = ("plain", "jvp", "factorize")) -> dict:  # fmt: skip
    model = random_model(preset)
    clean, noise = synthetic_example(jax.random.key(1), seconds=seconds)
    p = _setup.prepare(model, clean, noise, 1.0, jax.random.key(2), steps=steps)
    args = (p.model, p.clean, p.noise, p.m, p.draws, p.norm_factor)
    comp = {}
    comp["plain"], c_plain = _compiled(_plain_core, {"static": p.static}, args)
    comp["jvp"], c_jvp = _compiled(sensitivity._pathwise_core, {"static": p.static}, args)
    comp["factorize"], c_f3 = _compiled(sensitivity._factorize_core, {"static": p.static, "check_identity": True}, args)
    comp["factorize_2lanes"], c_f2 = _compiled(sensitivity._factorize_core, {"static": p.static, "check_identity": False}, args)
    times = _time_interleaved(comp, args, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = _network_floor(model, p.draws.prior.shape[-2:], repeats)

    # Memory: compile (not run) the jvp and the plain pipeline at N = mem_steps; the draws enter
    # as abstract shapes, so nothing of size N is allocated here.
    mem = {}
    for n in mem_steps if mem_what else ():
        pn = _setup.prepare(model, clean, noise, 1.0, jax.random.key(2), steps=n)
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), pn.draws)
        an_args = (pn.model, pn.clean, pn.noise, pn.m, abstract, pn.norm_factor)
        for name, fn, kw in (
            ("plain", _plain_core, {"static": pn.static}),
            ("jvp", sensitivity._pathwise_core, {"static": pn.static}),
            ("factorize", sensitivity._factorize_core, {"static": pn.static, "check_identity": True}),
        ):
            if name not in mem_what:
                continue
            c, _ = _compiled(fn, kw, an_args)
            mem[(name, n)] = _mem(c)
    peak = {}
    if run_memory and jax.devices()[0].platform == "gpu":
        # Measured peaks on the device (each in a fresh state of the allocator's counter is not
        # available: report the running peak after each, jvp at the small N first).
        for n in mem_steps:
            pn = _setup.prepare(model, clean, noise, 1.0, jax.random.key(2), steps=n)
            c, _ = _compiled(sensitivity._pathwise_core, {"static": pn.static}, (pn.model, pn.clean, pn.noise, pn.m, pn.draws, pn.norm_factor))
            jax.block_until_ready(c(pn.model, pn.clean, pn.noise, pn.m, pn.draws, pn.norm_factor))
            peak[n] = jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0)
            del pn
    return dict(preset=preset, steps=steps, seconds=seconds, frames=p.draws.prior.shape[-1], times=times, med=med, floor=floor,
                compile=dict(plain=c_plain, jvp=c_jvp, factorize=c_f3, factorize_2lanes=c_f2), mem=mem, peak=peak,
                mem_steps=mem_steps)  # fmt: skip


def peak_run(preset: str, seconds: float, steps: int) -> None:
    """Fresh-process measurement for one N: run the jvp once and read the device allocator's
    peak (meaningful on a GPU; run with ``XLA_FLAGS=--xla_gpu_autotune_level=0`` so that
    autotuning scratch buffers do not count), then print the compiled memory analyses."""
    model = random_model(preset)
    clean, noise = synthetic_example(jax.random.key(1), seconds=seconds)
    p = _setup.prepare(model, clean, noise, 1.0, jax.random.key(2), steps=steps)
    args = (p.model, p.clean, p.noise, p.m, p.draws, p.norm_factor)
    dev = jax.devices()[0]
    before = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0)
    c, _ = _compiled(sensitivity._pathwise_core, {"static": p.static}, args)
    jax.block_until_ready(c(*args))
    after = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0)
    draws_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(p.draws))
    print(f"PEAK preset={preset} N={steps} jvp_peak_MiB={after / 2**20:.1f} (before {before / 2**20:.1f}) "
          f"draws_MiB={draws_bytes / 2**20:.1f} peak_minus_draws_MiB={(after - draws_bytes) / 2**20:.1f}", flush=True)  # fmt: skip
    for name, fn, kw in (
        ("plain", _plain_core, {"static": p.static}),
        ("jvp", sensitivity._pathwise_core, {"static": p.static}),
        ("factorize", sensitivity._factorize_core, {"static": p.static, "check_identity": True}),
    ):
        m = _mem(_compiled(fn, kw, args)[0])
        print(f"MEM preset={preset} N={steps} {name}: " + ", ".join(f"{k}={_mib(v)} MiB" for k, v in m.items()), flush=True)


def report(r: dict) -> str:
    med = r["med"]
    lines = [
        f"### preset `{r['preset']}`: {r['seconds']} s of audio (256 × {r['frames']} bins), N = {r['steps']}, "
        f"float32, {jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
        "",
        "| computation | median time [s] | ratio to plain | target | compile [s] |",
        "| --- | --- | --- | --- | --- |",
    ]
    targets = {"plain": "", "jvp": "≤ 2.0", "factorize": "≤ 3.0", "factorize_2lanes": "≤ 3.0"}
    labels = {
        "plain": "plain pipeline (ŝ)",
        "jvp": "pathwise_derivative (ŝ, dŝ/dM)",
        "factorize": "factorize, 3 lanes (K·u, L·v, independent total)",
        "factorize_2lanes": "factorize, 2 lanes (K·u, L·v; total = sum)",
    }
    for k in ("plain", "jvp", "factorize", "factorize_2lanes"):
        lines.append(f"| {labels[k]} | {med[k]:.4f} | {med[k] / med['plain']:.2f} | {targets[k]} | {r['compile'][k]:.1f} |")
    fl = r["floor"]
    lines.append(f"| score network alone, one call: jvp / plain (the floor) | {fl['jvp']:.4f} / {fl['plain']:.4f} | "
                 f"{fl['jvp'] / fl['plain']:.2f} |  |  |")
    lo, hi = r["mem_steps"]
    if r["mem"] or r["peak"]:
        lines += ["", f"| memory (XLA compiled analysis) [MiB] | N = {lo} | N = {hi} | ratio {hi}/{lo} |", "| --- | --- | --- | --- |"]
    for name in ("plain", "jvp", "factorize"):
        if (name, lo) not in r["mem"]:
            continue
        a, b = r["mem"][(name, lo)], r["mem"][(name, hi)]
        if not a:
            continue
        lines.append(f"| {name}: working memory (temp) | {_mib(a['temp'])} | {_mib(b['temp'])} | {b['temp'] / max(a['temp'], 1):.3f} |")
        lines.append(f"| {name}: total incl. arguments (draws ∝ N) and outputs | {_mib(a['total'])} | {_mib(b['total'])} | {b['total'] / max(a['total'], 1):.3f} |")
    if r["peak"]:
        a, b = r["peak"][lo], r["peak"][hi]
        lines.append(f"| jvp: measured device peak (running) | {_mib(a)} | {_mib(b)} | {b / max(a, 1):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny"], help="NCSN++ presets (tiny, small, ncsnpp, …)")
    ap.add_argument("--seconds", type=float, default=0.5, help="audio length (0.5 s → 64 frames)")
    ap.add_argument("--steps", type=int, default=8, help="sampler steps N for the timings")
    ap.add_argument("--ncsnpp-steps", type=int, default=None, help="N for the large presets (default: --steps)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    ap.add_argument("--mem-steps", type=int, nargs=2, default=(30, 480), help="the two N of the memory comparison")
    ap.add_argument("--run-memory", action="store_true", help="also run the jvp at both N and read the device peak (GPU)")
    ap.add_argument("--mem-what", nargs="*", default=["plain", "jvp", "factorize"],
                    help="computations whose memory is compared at the two N (none: skip; each costs 2 compilations)")
    ap.add_argument("--peak", type=int, default=None, metavar="N",
                    help="only measure the jvp's device peak at N steps in this (fresh) process, then exit")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, devices: {jax.devices()}", flush=True)
    if args.peak is not None:
        for preset in args.presets:
            peak_run(preset, args.seconds, args.peak)
        return
    for preset in args.presets:
        steps = args.steps if (args.ncsnpp_steps is None or preset in ("tiny", "small")) else args.ncsnpp_steps
        r = bench_preset(preset, args.seconds, steps, args.repeats, tuple(args.mem_steps), args.run_memory, tuple(args.mem_what))
        print(report(r), flush=True)
        print(flush=True)


if __name__ == "__main__":
    main()
