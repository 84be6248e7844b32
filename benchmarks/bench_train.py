"""Training throughput: jit-compiled StoRM training steps per second for several presets and
modes, measured side by side in one process on the same batch shape.

    python benchmarks/bench_train.py                       # tiny and ncsnpp, batch 2 × 64 frames
    python benchmarks/bench_train.py --presets tiny small ncsnpp --batch 4 --frames 128 --steps 5
    python benchmarks/bench_train.py --presets tiny --modes joint freeze-predictor correct-reverse --reverse-steps 5

For each preset: build the initial :class:`~storm_jax.training.TrainState` (host-side init), compile
one :func:`~storm_jax.training.train_step` (timed separately), then time ``--steps`` further steps
on random ν-normalised waveforms (blocking on the result). Prints one JSON line per preset and a
summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def bench(preset: str, batch: int, frames: int, steps: int, mode: str = "joint", reverse_steps: int | None = None) -> dict:
    from storm_jax.model import storm_config
    from storm_jax.nn import count_params
    from storm_jax.training import StepSpec, TrainConfig, init_train_state, train_step

    extra = {"reverse_steps": reverse_steps} if mode == "correct-reverse" and reverse_steps is not None else {}
    cfg = TrainConfig(model=storm_config(preset), mode=mode, batch_size=batch, frames=frames, steps=steps, progress=False, **extra)
    state = init_train_state(cfg)
    spec = StepSpec.of(cfg)
    n = (frames - 1) * cfg.model.spec.hop
    r = np.random.default_rng(0)
    clean = jnp.asarray(0.3 * r.standard_normal((batch, n)), jnp.float32)
    noisy = clean + jnp.asarray(0.1 * r.standard_normal((batch, n)), jnp.float32)
    t0 = time.perf_counter()
    state, parts = train_step(spec, state, clean, noisy)
    jax.block_until_ready(parts["loss"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, parts = train_step(spec, state, clean, noisy)
    jax.block_until_ready((state.params, parts["loss"]))
    wall = time.perf_counter() - t0
    return {"preset": preset, "mode": cfg.mode + (f" (N = {cfg.reverse_steps})" if cfg.mode == "correct-reverse" else ""), "params": count_params(state.params), "batch": batch, "frames": frames, "steps": steps,
            "compile_and_first_step_s": round(compile_s, 2), "s_per_step": round(wall / steps, 3),
            "steps_per_s": round(steps / wall, 4), "loss": float(parts["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "ncsnpp"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["joint"], help="training modes (storm_jax.training.MODES)")
    p.add_argument("--reverse-steps", type=int, default=None, help="N of the correct-reverse loss (default: TrainConfig's)")
    args = p.parse_args(argv)
    print(json.dumps({"device": str(jax.devices()[0]), "cpu": platform.processor() or platform.machine(), "jax": jax.__version__}))
    rows = []
    for preset in args.presets:
        for mode in args.modes:
            row = bench(preset, args.batch, args.frames, args.steps, mode, args.reverse_steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| preset | mode | params | batch × frames | compile + 1st step [s] | s/step | steps/s | s/step ÷ first mode's |\n"
          "|---|---|---:|---|---:|---:|---:|---:|")
    first = {}
    for r in rows:
        base = first.setdefault(r["preset"], r["s_per_step"])
        print(f"| {r['preset']} | {r['mode']} | {r['params']:,} | {r['batch']} × {r['frames']} | {r['compile_and_first_step_s']} | "
              f"{r['s_per_step']} | {r['steps_per_s']} | {r['s_per_step'] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
