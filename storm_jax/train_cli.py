"""``storm-jax train``, ``storm-jax evaluate`` and ``storm-jax export`` (registered by :mod:`storm_jax.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ._cli_args import add_guidance, add_score_symmetry, add_steps, apply_score_options, positive_int, sampler_steps

__all__ = ["add_commands"]


def cmd_train(args) -> int:
    from .model import storm_config
    from .nn import ncsnpp_config
    from .training import Terminated, TrainConfig, TrainingDiverged, export_ema_model, train

    overrides = {}
    if args.condition:
        overrides["condition"] = args.condition
    if args.score_symmetry:
        overrides["score_symmetry"] = args.score_symmetry
    sde_args = {k: getattr(args, k) for k in ("theta", "sigma_min", "sigma_max", "t_eps") if getattr(args, k) is not None}
    if sde_args:
        from .sde import OUVE

        overrides["sde"] = OUVE(**sde_args)
    init_from = args.init_from
    if init_from is not None and not (init_from == "pretrained" or init_from.startswith(("pretrained:", "preset:"))):
        init_from = str(Path(init_from).absolute())
    config = TrainConfig(
        model=storm_config(args.preset, args.score_preset, **overrides,
                           **({} if args.refiner_preset is None else {"refiner": ncsnpp_config(args.refiner_preset)})), mode=args.mode, lr=args.lr, ema_decay=args.ema_decay,
        weighting=args.weighting, batch_size=args.batch_size, frames=args.frames, m=args.m, seed=args.seed,
        steps=args.steps, predictor_steps=args.predictor_steps, log_every=args.log_every, ckpt_every=args.ckpt_every, keep=args.keep, val_every=args.val_every,
        val_utterances=args.val_utterances, val_frames=args.val_frames, val_steps=args.val_steps, progress=not args.quiet,
        init_from=init_from, init_networks=tuple(args.init_networks) if args.init_networks else None,
        lr_warmup=args.lr_warmup, lr_decay=args.lr_decay,
        **({} if args.reverse_steps is None else {"reverse_steps": args.reverse_steps}),
        **({} if args.logmag_weight is None else {"logmag_weight": args.logmag_weight}),
        **({} if args.logmag_floor is None else {"logmag_floor": args.logmag_floor}),
    )
    data = "embedded" if args.data == "embedded" else args.data
    try:
        summary = train(config, args.out, data)
    except PermissionError as err:
        print(f"storm-jax train: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"storm-jax train: {err}", file=sys.stderr)
        return 3
    except Terminated:
        return 143  # 128 + SIGTERM; train() saved a checkpoint and said how to resume
    except KeyboardInterrupt:
        return 130  # train() saved a checkpoint and said how to resume
    losses = summary["losses"]
    if losses:
        print(f"trained to step {summary['step']} in {args.out}; last loss {losses[-1]:.5g}")
    else:
        print(f"{args.out} is already at step {summary['step']} (>= --steps {args.steps})")
    if args.export:
        path = export_ema_model(args.out, args.export)
        print(f"exported the EMA weights to {path}")
    return 0


def cmd_export(args) -> int:
    from .training import export_ema_model

    path = export_ema_model(args.run, args.dest, args.step, average_from=args.average_from)
    what = "the EMA weights" if args.average_from is None else f"the mean EMA weights of the checkpoints from step {args.average_from}"
    print(f"exported {what} of {args.run} to {path}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoints import resolve_model
    from .data import embedded_corpus, folder_dataset
    from .evaluation import evaluate_dataset, format_group_table, format_table, summarize, summarize_groups

    model = resolve_model(args.checkpoint)
    model = apply_score_options(model, args)
    ds = embedded_corpus(args.split, progress=False) if args.data == "embedded" else folder_dataset(args.data, args.split)
    labels = None
    if args.by:
        n = len(ds) if args.limit is None else min(args.limit, len(ds))
        missing = [ds.ids[i] for i in range(n) if args.by not in ds.info(i)]
        if missing:
            keys = sorted(ds.info(0)) if len(ds) else []
            print(f"storm-jax evaluate: --by {args.by}: {ds.name} has no {args.by!r} for {len(missing)} utterance(s) "
                  f"(first: {missing[0]}); its metadata keys are {keys}", file=sys.stderr)
            return 2
        labels = [ds.info(i)[args.by] for i in range(n)]
    from .sampling import SamplerConfig

    steps = sampler_steps(args, model)
    sampler = SamplerConfig(steps=steps, corrector=args.corrector, corrector_steps=args.corrector_steps, snr=args.snr)
    per = evaluate_dataset(model, ds, m=args.m, limit=args.limit, seed=args.seed, progress=not args.json, sampler=sampler,
                           samples=args.samples)
    summary = summarize(per)
    groups = summarize_groups(per, labels) if labels is not None else None
    if args.json:
        print(json.dumps(summary if groups is None else {"all": summary, args.by: groups}, indent=2))
    else:
        n = len(next(iter(next(iter(per.values())).values())))
        corr = "no corrector" if args.corrector == "none" else f"{args.corrector} corrector (snr {args.snr}, {args.corrector_steps} per step)"
        avg = "" if args.samples == 1 else f", StoRM = mean of {args.samples} samples"
        print(f"{ds.name}: {n} utterance(s) at M = {args.m}, N = {steps} reverse steps, {corr}{avg}")
        print(format_table(summary))
        if groups is not None:
            print()
            print(format_group_table(groups, args.by))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``export`` to the ``storm-jax`` sub-command parser."""
    t = sub.add_parser("train", help="train a StoRM model (resumable; see storm_jax.training)")
    t.add_argument("--preset", default="tiny", help="NCSN++ preset (tiny, small, ncsnpp, …)")
    t.add_argument("--score-preset", default=None,
                   help="NCSN++ preset of the score network when it differs from --preset (e.g. a larger score network)")
    t.add_argument("--condition", choices=("both", "noisy", "predictor"), default=None)
    add_score_symmetry(t, "train", "none, the reference; sign costs two network evaluations per step")
    t.add_argument("--mode", default="joint",
                   help="joint | freeze-predictor | predictor-only | score-only (reference names accepted) | correct-reverse "
                        "(fine-tune the score network through the reverse process, CRP; start from a trained model with --init-from) | "
                        "refine (train a refinement network on a trained model's outputs, --init-from; two-stage model)")
    t.add_argument("--refiner-preset", default=None,
                   help="refine mode: NCSN++ preset of the refinement network (default tiny)")
    t.add_argument("--reverse-steps", type=positive_int, default=None, metavar="N",
                   help="correct-reverse mode: reverse steps N the loss runs and back-propagates through; refine mode: "
                        "reverse steps of the first stage the refiner learns from (default 5; the exported model samples with this N)")
    t.add_argument("--logmag-weight", type=float, default=None, metavar="LAMBDA",
                   help="correct-reverse mode: add LAMBDA times the squared log-magnitude error of the output, "
                        "(log(|x|^2 + eps) - log(|X|^2 + eps))^2, to the loss (default 0: plain CRP)")
    t.add_argument("--logmag-floor", type=float, default=None, metavar="EPS",
                   help="eps of --logmag-weight, in squared compressed magnitude (default 1e-3)")
    t.add_argument("--theta", type=float, default=None, help="OUVE stiffness θ (default 1.5)")
    t.add_argument("--sigma-min", type=float, default=None, help="OUVE σ_min (default 0.05)")
    t.add_argument("--sigma-max", type=float, default=None, help="OUVE σ_max (default 0.5)")
    t.add_argument("--t-eps", type=float, default=None, help="smallest time of the reverse process (default 0.03)")
    t.add_argument("--data", default="embedded", help="'embedded' or a dataset folder")
    t.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl); an existing run is resumed")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--predictor-steps", type=int, default=0,
                   help="freeze-predictor mode: train the predictor alone for this many steps first (two-stage recipe)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--lr-warmup", type=int, default=0, metavar="W",
                   help="warm the learning rate up linearly from 0 over W steps (default 0: none)")
    t.add_argument("--lr-decay", type=int, default=0, metavar="D",
                   help="then decay it to 0 along a cosine over D steps (default 0: constant, the reference)")
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--weighting", type=float, default=0.5)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--frames", type=int, default=256, help="STFT frames per training crop")
    t.add_argument("--m", type=float, default=1.0, help="training amplitude M* (y = s + M*·n)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--ckpt-every", type=int, default=100)
    t.add_argument("--keep", type=int, default=2)
    t.add_argument("--val-every", type=int, default=0, help="0: validate at the end only; -1: never")
    t.add_argument("--val-utterances", type=int, default=4)
    t.add_argument("--val-frames", type=int, default=256)
    t.add_argument("--val-steps", type=int, default=30)
    t.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune: start from the weights of a model directory (storm-jax export / import-ckpt) or pretrained[:NAME]")
    t.add_argument("--init-networks", nargs="+", choices=("predictor", "score"), default=None,
                   help="with --init-from: the networks to load (default: all the model has); the others start fresh")
    t.add_argument("--export", default=None, help="after training, write the EMA model to this directory")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="SI-SDR/PESQ/ESTOI of noisy, predictor and StoRM outputs on a test split")
    e.add_argument("--checkpoint", default=None, help="model directory (default: the shipped pretrained model)")
    e.add_argument("--data", default="embedded", help="'embedded' or a dataset folder")
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    e.add_argument("--limit", type=int, default=None, help="first K utterances")
    add_steps(e)
    e.add_argument("--corrector", default="none", choices=("none", "ald"),
                   help="corrector of the reverse process (none: reference enhance(); ald: reference enhancement.py)")
    e.add_argument("--corrector-steps", type=int, default=1)
    e.add_argument("--snr", type=float, default=0.5, help="ALD step-size ratio")
    e.add_argument("--m", type=float, default=1.0, help="noise amplitude M")
    e.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="score the mean of K reverse-process samples as StoRM (default 1: one sample, the reference)")
    add_score_symmetry(e)
    add_guidance(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true",
                   help="print {system: {si_sdr, pesq, estoi}} as JSON (with --by: {\"all\": …, KEY: {value: {n, systems}}})")
    e.add_argument("--by", default=None, metavar="KEY",
                   help="also report the means per value of this utterance metadata key (embedded corpus: noise_type, voice, …)")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="write the EMA weights of a training run as a model directory")
    x.add_argument("run", help="run directory of storm-jax train")
    x.add_argument("dest", help="model directory to write")
    x.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    x.add_argument("--average-from", type=int, default=None, metavar="STEP",
                   help="average the EMA weights of every saved checkpoint from STEP up to --step (checkpoint averaging)")
    x.set_defaults(func=cmd_export)
