"""Continuous-time solvers against the scan sampler, side by side in one run (issue 6).

On one StoRM model, one spectrogram and one shared Brownian path
(:func:`storm_jax.brownian_path`), at equal step count N:

* ``diffrax Euler + StepTo / scan sampler``: :func:`storm_jax.solve_reverse` with
  ``solver="euler"`` against :func:`storm_jax.sample` fed the same path (target ≤ 1.3). Both
  compute the same numbers (checked here, ≤ 1e-5 in float32);
* cost per step of Heun, ReversibleHeun, SEA and ShARK relative to Euler (score evaluations per
  step: Euler, SEA, ReversibleHeun 1; Heun 2; ShARK 2);
* the forward-mode tangent (``jax.jvp`` in C through ``adjoint=ForwardMode``) of every solver
  against a central finite difference in float64 (a correctness check, not a timing).

The timed functions are compiled ahead of time; calls are interleaved round by round and the
median is reported, so both sides see the same machine load.

Usage::

    python benchmarks/bench_continuous.py                        # tiny, N = 30, 64 frames
    python benchmarks/bench_continuous.py --preset ncsnpp --steps 8 --frames 64   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import storm_jax as sj
from storm_jax.sampling import SamplerConfig

SOLVERS = ("euler", "heun", "reversible_heun", "sea", "shark")


def _inputs(model, frames: int, dtype):
    F = model.config.spec.n_freqs
    shape = (F, frames)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    cn = lambda k, s: (s * (jax.random.normal(k, shape) + 1j * jax.random.normal(jax.random.fold_in(k, 1), shape))).astype(dtype)
    Y = cn(k1, 0.3)
    C = 0.8 * Y + cn(k2, 0.05)
    return Y, C, shape, k3


def _time(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_speed(preset: str, steps: int, frames: int, repeats: int) -> str:
    model = sj.init_storm(preset, 0)
    Y, C, shape, kp = _inputs(model, frames, jnp.complex64)
    path = sj.brownian_path(kp, shape, finest=steps, dtype=jnp.float32)
    cfg = SamplerConfig(steps=steps)
    scan = jax.jit(lambda Y, C, path: sj.sample(model, Y, C, path, cfg)).lower(Y, C, path).compile()
    comp = {"scan": lambda: scan(Y, C, path)}
    for s in SOLVERS:
        c = jax.jit(lambda Y, C, path, s=s: sj.solve_reverse(model, Y, C, path, s, steps, "reference")).lower(Y, C, path).compile()
        comp[s] = lambda c=c: c(Y, C, path)
    diff = float(jnp.max(jnp.abs(comp["scan"]() - comp["euler"]())) / jnp.max(jnp.abs(comp["scan"]())))
    med = _time(comp, repeats)
    dev = jax.devices()[0]
    lines = [
        f"### preset `{preset}`: 256 × {frames} bins, N = {steps}, float32, {dev.device_kind} ({dev.platform})",
        "",
        f"scan sampler vs diffrax Euler, same path: max |Δ| / max |x̂| = {diff:.2e}",
        "",
        "| computation | median time [s] | ratio | target |",
        "| --- | --- | --- | --- |",
        f"| scan sampler (`sample`) | {med['scan']:.4f} | 1.00 | |",
        f"| diffrax Euler + StepTo | {med['euler']:.4f} | {med['euler'] / med['scan']:.2f} (Euler / scan) | ≤ 1.3 |",
    ]
    for s in SOLVERS[1:]:
        lines.append(f"| diffrax {s} | {med[s]:.4f} | {med[s] / med['euler']:.2f} (per step, / Euler) | |")
    return "\n".join(lines)


def check_tangents(preset: str, steps: int, frames: int) -> str:
    """jvp in C of every solver against a central difference (float64)."""
    model = sj.init_storm(preset, 0, dtype=jnp.float64)
    Y, C, shape, kp = _inputs(model, frames, jnp.complex128)
    path = sj.brownian_path(kp, shape, finest=steps, dtype=jnp.float64)
    v = (0.1 * jax.random.normal(jax.random.key(9), shape)).astype(jnp.complex128)
    rows = ["", f"| solver | ‖jvp − central FD‖ / ‖jvp‖ (float64, ε = 1e-5, N = {steps}) |", "| --- | --- |"]
    for s in SOLVERS:
        f = jax.jit(lambda c, s=s: sj.solve_reverse(model, Y, c, path, s, steps, "reference"))
        _, dx = jax.jit(lambda c, v: jax.jvp(f, (c,), (v,)))(C, v)
        eps = 1e-5
        fd = (f(C + eps * v) - f(C - eps * v)) / (2 * eps)
        rows.append(f"| {s} | {float(jnp.linalg.norm(dx - fd) / jnp.linalg.norm(dx)):.1e} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tangent-steps", type=int, default=4, help="N of the float64 tangent check (0: skip)")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # for the float64 tangent check; timings are float32
    print(f"jax {jax.__version__}, devices: {jax.devices()}", flush=True)
    print(bench_speed(args.preset, args.steps, args.frames, args.repeats), flush=True)
    if args.tangent_steps:
        print(check_tangents(args.preset, args.tangent_steps, args.frames), flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
