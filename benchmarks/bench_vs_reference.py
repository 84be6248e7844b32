"""storm-jax against the PyTorch reference: one utterance enhanced with paper-size NCSN++
networks (``ncsnpp``, both networks), N = 30 reverse-diffusion steps, no corrector (the
reference's ``StochasticRegenerationModel.enhance`` defaults), on the same CPU with the same
thread count (issue 32; target ≥ 1.5× the reference's speed).

Both sides run the same network: the reference model is built with the paper's
hyper-parameters and random weights, saved as a Lightning-style checkpoint and imported with
:func:`storm_jax.import_checkpoint` (so the architecture is the reference's, checked by the
importer). Runs are interleaved round by round (reference, storm-jax, reference, …) and the
median and spread of each side are reported; storm-jax's first call (compile) is reported
apart. The figures are timings of whole enhancements (analysis, predictor, N score
evaluations, synthesis); the outputs differ only by the noise draws.

Usage (torch 2.13 CPU and torch_ema 0.3 installed, a checkout of the reference at commit 257e963)::

    python benchmarks/bench_vs_reference.py /tmp/ref/storm --seconds 1 --rounds 3

The reference is imported from the directory given, with the stand-ins of
``tests/fixtures/make_import_fixtures.py`` (no CUDA extension, no training-only packages).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _fixtures():
    spec = importlib.util.spec_from_file_location("make_import_fixtures", ROOT / "tests" / "fixtures" / "make_import_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference", help="checkout of the PyTorch reference (github sp-uhh/storm)")
    p.add_argument("--seconds", type=float, default=1.0, help="utterance length")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (XLA uses the same cores)")
    args = p.parse_args(argv)
    if not (Path(args.reference) / "sgmse" / "model.py").is_file():
        p.error(f"{args.reference}: not a checkout of the reference (no sgmse/model.py)")

    fx = _fixtures()
    fx._install_stand_ins(str(Path(args.reference).resolve()))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from sgmse.data_module import SpecsDataModule
    from sgmse.model import StochasticRegenerationModel

    ref = StochasticRegenerationModel(
        backbone_denoiser="ncsnpp", backbone_score="ncsnpp", sde="ouve", lr=1e-4, ema_decay=0.999, t_eps=0.03, nolog=True,
        num_eval_files=10, loss_type_denoiser="mse", loss_type_score="mse", data_module_cls=SpecsDataModule,
        mode="regen-joint-training", condition="both", weighting_denoiser_to_score=0.5, spatial_channels=1,
        **fx.SDE_ARGS, **fx.DATA_ARGS)
    ref.eval()
    n_params = sum(q.numel() for q in ref.parameters())

    import jax

    import storm_jax as sj

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ref.ckpt"
        torch.save(fx._checkpoint(ref, ema=False), ckpt)
        model = sj.import_checkpoint(ckpt)
    ours = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(model.params))

    y = fx.waveform(300, int(16000 * args.seconds)).astype(np.float32)
    yt = torch.from_numpy(y)[None]

    def run_ref():
        with torch.no_grad():
            return ref.enhance(yt, N=args.steps, corrector="none").numpy()

    def run_ours():
        return np.asarray(sj.enhance(model, y, 0, steps=args.steps, corrector="none"))

    t0 = time.perf_counter()
    run_ours()
    first = time.perf_counter() - t0
    times = {"reference (torch)": [], "storm-jax (XLA)": []}
    for _ in range(args.rounds):
        for name, fn in (("reference (torch)", run_ref), ("storm-jax (XLA)", run_ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"one utterance of {args.seconds:g} s, N = {args.steps}, no corrector, {args.threads} threads, "
          f"{n_params / 1e6:.1f} M parameters (reference) / {ours / 1e6:.1f} M (imported); "
          f"torch {torch.__version__}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print("| side | median s | min s | max s | rounds |")
    print("|---|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {max(v):.2f} | {len(v)} |")
    print(f"storm-jax first call (compile + run): {first:.1f} s")
    print(f"speed-up reference / storm-jax: {med['reference (torch)'] / med['storm-jax (XLA)']:.2f} (target ≥ 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
