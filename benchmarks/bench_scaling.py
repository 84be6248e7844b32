"""Sweep throughput: M lanes batched on one device against a loop, and points/s against the
device count (issue 32), measured side by side in one run.

The work is P0's lane function (:func:`storm_jax.experiments.p0._curve_lanes`: ŝ, dŝ/dM and the
SI-SDRs at K values of M on one utterance and one Brownian path) run through
:func:`storm_jax.experiments.sharding.map_lanes`, as a sweep runs it.

* ``batch / loop`` (one device): all K lanes in one vmapped call against K calls of one lane,
  calls interleaved round by round, medians (target ≥ 1.5 at the ``tiny`` preset).
* ``points/s`` against 1, 2, 4 devices: each count in its own process (the CPU device count is
  fixed at start-up by ``XLA_FLAGS=--xla_force_host_platform_device_count``; on a GPU host
  ``--devices`` picks real devices), K lanes spread over the devices; scaling efficiency
  ``pps(n) / (n · pps(1))`` (target ≥ 0.8 on real devices; forced CPU devices share the host's
  cores, so there it measures the sharding overhead, not a speed-up).

Usage::

    python benchmarks/bench_scaling.py                   # shipped model, K = 8, N = 8, 1/2/4 CPU devices
    python benchmarks/bench_scaling.py --counts 1 2 4 8 --real-devices   # on a multi-GPU host
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def _setup(args):
    import jax.numpy as jnp

    from storm_jax.experiments.context import load_context
    from storm_jax.experiments.presets import get_preset

    ctx = load_context(get_preset("tiny"), args.checkpoint, progress=False, devices=args.devices)
    clean, noise = jnp.asarray(ctx.clean[0]), jnp.asarray(ctx.noise[0])
    ms = np.linspace(0.5, 2.0, args.lanes)
    return ctx, (ctx.model, clean, noise, ctx.path_key(0, 0)), ms


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def child(args) -> dict:
    """Points/s of K lanes on this process's devices (the device-count sweep's one point)."""
    import jax

    from storm_jax.experiments.p0 import _curve_lanes
    from storm_jax.experiments.sharding import map_lanes

    ctx, lane_args, ms = _setup(args)
    run = lambda: jax.block_until_ready(map_lanes(_curve_lanes, ms, *lane_args, mesh=ctx.mesh, static={"steps": args.steps}))
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = _time(run, args.repeats)
    med = statistics.median(times)
    return {"devices": ctx.mesh.size, "platform": jax.devices()[0].platform, "first_call_s": first, "median_s": med,
            "spread_s": max(times) - min(times), "points_per_s": len(ms) / med}


def batch_vs_loop(args) -> dict:
    import jax

    from storm_jax.experiments.p0 import _curve_lanes
    from storm_jax.experiments.sharding import map_lanes, sweep_mesh

    _, lane_args, ms = _setup(args)
    mesh = sweep_mesh(1)
    calls = {
        "batched": lambda: jax.block_until_ready(map_lanes(_curve_lanes, ms, *lane_args, mesh=mesh, batch=len(ms),
                                                           static={"steps": args.steps})),
        "loop": lambda: jax.block_until_ready(map_lanes(_curve_lanes, ms, *lane_args, mesh=mesh, batch=1,
                                                        static={"steps": args.steps})),
    }
    for f in calls.values():  # compile both first
        f()
    times = {k: [] for k in calls}
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        for k, f in calls.items():
            times[k] += _time(f, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"lanes": len(ms), "batched_s": med["batched"], "loop_s": med["loop"],
            "batched_points_per_s": len(ms) / med["batched"], "loop_points_per_s": len(ms) / med["loop"],
            "speedup": med["loop"] / med["batched"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="model (default: the shipped model)")
    p.add_argument("--lanes", type=int, default=8, help="M values per group (K)")
    p.add_argument("--steps", type=int, default=8, help="sampler steps N")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="device counts")
    p.add_argument("--real-devices", action="store_true", help="use the host's devices (GPUs) instead of forced CPU devices")
    p.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    res = {"batch_vs_loop": batch_vs_loop(args), "devices": []}
    b = res["batch_vs_loop"]
    print(f"one device, K = {b['lanes']} lanes, N = {args.steps}: batched {b['batched_points_per_s']:.2f} points/s, "
          f"loop {b['loop_points_per_s']:.2f} points/s → batch / loop = {b['speedup']:.2f} (target ≥ 1.5)")
    flags = os.environ.get("XLA_FLAGS", "")
    for n in args.counts:
        env = dict(os.environ)
        cmd = [sys.executable, __file__, "--child", "--lanes", str(args.lanes), "--steps", str(args.steps), "--repeats",
               str(args.repeats), "--devices", str(n)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        if not args.real_devices:
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}"
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.strip().splitlines()[-1]
        res["devices"].append(json.loads(out))
    base = res["devices"][0]["points_per_s"] / res["devices"][0]["devices"]
    print("| devices | platform | points/s | median s | spread s | efficiency |")
    print("|---|---|---|---|---|---|")
    for r in res["devices"]:
        r["efficiency"] = r["points_per_s"] / (r["devices"] * base)
        print(f"| {r['devices']} | {r['platform']} | {r['points_per_s']:.2f} | {r['median_s']:.3f} | {r['spread_s']:.3f} | "
              f"{r['efficiency']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
