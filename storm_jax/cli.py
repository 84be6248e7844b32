"""The ``storm-jax`` command: ``demo`` (the experiments, :mod:`storm_jax.experiments.cli`), ``enhance``, ``enhance-example``, ``info``, ``corpus``, ``import-ckpt``,
``export-ckpt``, ``ensemble`` (and the training commands of ``train_cli``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ._cli_args import add_guidance, add_score_symmetry, add_steps, apply_score_options, positive_int, sampler_steps

__all__ = ["main"]


def _enhance_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, output name relative to the output folder) for files, folders and list files."""
    from .audio_io import AUDIO_SUFFIXES, list_audio

    pairs = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES):
                pairs.append((q, q.relative_to(p).with_suffix(".wav")))
        else:
            for q in list_audio([p]):
                pairs.append((q, Path(q.name).with_suffix(".wav")))
    return pairs


def cmd_enhance(args) -> int:
    import jax
    import numpy as np
    from tqdm import tqdm

    from .audio_io import AudioError, read_audio, write_audio
    from .checkpoints import resolve_model
    from .pipeline import EnhanceConfig, enhance
    from .sampling import SamplerConfig

    from .files import check_output_folder

    out_dir = check_output_folder(args.output, "--output")
    pairs = _enhance_inputs(args.inputs)
    if not pairs:
        print("storm-jax enhance: no audio files found in the given inputs", file=sys.stderr)
        return 2
    model = resolve_model(args.checkpoint)
    model = apply_score_options(model, args)
    rate = model.config.spec.sample_rate
    config = EnhanceConfig(
        sampler=SamplerConfig(steps=sampler_steps(args, model), corrector=args.corrector, snr=args.snr, grid=args.grid),
        samples=args.samples,
    )
    failures: list[str] = []
    done = 0
    for i, (src, rel) in enumerate(tqdm(pairs, desc="enhance", unit="file", disable=args.quiet)):
        try:
            audio = read_audio(src, rate, downmix=args.downmix, min_samples=model.config.spec.n_fft,
                               allow_truncated=args.allow_truncated)
            for note in audio.notices:
                tqdm.write(f"notice: {note}", file=sys.stderr)
            for note in audio.warnings:
                tqdm.write(f"warning: {note}", file=sys.stderr)
            key = jax.random.fold_in(jax.random.key(args.seed), i)
            out = enhance(model, audio.samples, key, config=config)
            if audio.original_rate != rate:
                import soxr

                out = soxr.resample(out, rate, audio.original_rate)
            write_audio(out_dir / rel, np.asarray(out), audio.original_rate)
            done += 1
        except AudioError as err:
            failures.append(str(err))
            tqdm.write(f"error: {err}", file=sys.stderr)
    print(f"enhanced {done} of {len(pairs)} file(s) into {out_dir}")
    if failures:
        print(f"{len(failures)} file(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def cmd_info(args) -> int:
    import jax

    from .model import param_shapes, storm_config
    from .nn import count_params

    cfg = storm_config(args.preset, args.score_preset, condition=args.condition)
    shapes = param_shapes(cfg)
    info = {
        "preset": args.preset,
        "score_preset": args.score_preset or args.preset,
        "condition": cfg.condition,
        "backbone": dataclasses.asdict(cfg.backbone),
        "score_backbone": dataclasses.asdict(cfg.score_backbone or cfg.backbone),
        "predictor_params": count_params(shapes["predictor"]),
        "score_params": count_params(shapes["score"]),
        "predictor_tensors": len(jax.tree_util.tree_leaves(shapes["predictor"])),
        "score_tensors": len(jax.tree_util.tree_leaves(shapes["score"])),
    }
    info["total_params"] = info["predictor_params"] + info["score_params"]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        score = f", score network {info['score_preset']}" if info["score_preset"] != args.preset else ""
        print(f"preset {args.preset}{score} (condition={cfg.condition})")
        for k in ("predictor_params", "score_params", "total_params"):
            print(f"  {k:18s} {info[k]:>12,d}")
    return 0


def cmd_enhance_example(args) -> int:
    """Enhance a generated example (with the shipped pretrained model unless --checkpoint is given)."""
    import jax
    import numpy as np

    from .audio_io import write_audio
    from .checkpoints import default_model_spec, resolve_model
    from .demo import synthetic_example
    from .metrics import si_sdr
    from .pipeline import EnhanceConfig, enhance
    from .sampling import SamplerConfig

    spec = args.checkpoint or default_model_spec()
    model = resolve_model(spec)
    rate = model.config.spec.sample_rate
    clean, noise = synthetic_example(jax.random.key(args.seed), seconds=args.seconds, rate=rate)
    noisy = clean + noise
    t0 = time.perf_counter()
    steps = sampler_steps(args, model)
    config = EnhanceConfig(sampler=SamplerConfig(steps=steps))
    enhanced = enhance(model, noisy, args.seed, config=config)
    wall = time.perf_counter() - t0
    out = Path(args.output)
    for name, x in (("clean", clean), ("noisy", noisy), ("enhanced", enhanced)):
        write_audio(out / f"{name}.wav", np.asarray(x), rate)
    print(f"model: {spec} ({'random weights' if spec.startswith('preset:') else 'trained'})")
    print(f"enhanced {args.seconds:.1f} s of audio with N={steps} steps in {wall:.1f} s (including compilation)")
    print(f"SI-SDR noisy    {float(si_sdr(noisy, clean)):7.2f} dB")
    print(f"SI-SDR enhanced {float(si_sdr(enhanced, clean)):7.2f} dB")
    print(f"wrote {out}/clean.wav, noisy.wav, enhanced.wav")
    return 0


def cmd_import_ckpt(args) -> int:
    """Convert a reference PyTorch Lightning ``.ckpt`` into a model directory (``save_model``),
    plus ``reference.json`` (source file, EMA choice, layout, the original hyper-parameters)."""
    from .checkpoints import save_model
    from .convert import read_checkpoint
    from .nn import count_params

    try:
        ref = read_checkpoint(args.checkpoint, allow=args.allow)
    except ImportError as err:
        print(f"storm-jax import-ckpt: {err}", file=sys.stderr)
        return 2
    use_ema = not args.no_ema and ref.ema is not None
    if not args.no_ema and ref.ema is None:
        print(f"notice: {ref.path} has no EMA state; using the raw state_dict weights", file=sys.stderr)
    model = ref.model(ema=use_ema)
    out = save_model(model, args.output)
    provenance = {
        "source": str(Path(args.checkpoint).absolute()),
        "layout": ref.layout,
        "ema": use_ema,
        "ema_meta": ref.ema_meta,
        "hyper_parameters": ref.hyper_parameters,
    }
    (out / "reference.json").write_text(json.dumps(provenance, indent=2, default=repr))
    nets = [r for r in ("predictor", "score") if model.params.get(r) is not None]
    sizes = ", ".join(f"{r} {count_params(model.params[r]):,d}" for r in nets)
    print(f"imported {args.checkpoint} ({ref.layout} layout, {'EMA' if use_ema else 'raw'} weights; {sizes} parameters) into {out}")
    return 0


def cmd_export_ckpt(args) -> int:
    """Write a model directory as a reference-layout ``.ckpt`` (hyper-parameters of an imported
    model's ``reference.json`` are carried over)."""
    from .checkpoints import load_model
    from .convert import export_checkpoint

    model = load_model(args.model)
    prov_file = Path(args.model) / "reference.json"
    hp = json.loads(prov_file.read_text()).get("hyper_parameters") if prov_file.is_file() else None
    try:
        out = export_checkpoint(model, args.output, hyper_parameters=hp)
    except ImportError as err:
        print(f"storm-jax export-ckpt: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def cmd_ensemble(args) -> int:
    """Join the score networks of several models (same configuration, same predictor) into one
    model whose score is their mean (:func:`storm_jax.model.score_ensemble`)."""
    from .checkpoints import resolve_model, save_model
    from .model import score_ensemble

    models = [resolve_model(spec) for spec in args.models]
    model = score_ensemble(models, names=list(args.models))
    out = save_model(model, args.output)
    print(f"wrote {out}: {model.config.score_members} score networks on one predictor")
    return 0


def cmd_guide(args) -> int:
    """Join a Y-and-C score network and a C-only one into a guided model
    (:func:`storm_jax.model.score_guidance`)."""
    from .checkpoints import resolve_model, save_model
    from .model import score_guidance

    model = score_guidance(resolve_model(args.model), resolve_model(args.guide), args.weight, names=(args.model, args.guide))
    out = save_model(model, args.output)
    print(f"wrote {out}: guidance weight {model.config.guidance:g}")
    return 0


# One example per subcommand, shown at the end of its --help.
EXAMPLES = {
    "demo": "storm-jax demo --out outputs/demo",
    "experiment": "storm-jax experiment p0 --preset quick --out results",
    "report": "storm-jax report --out results",
    "enhance": "storm-jax enhance noisy/ -o enhanced/ --steps 30 --checkpoint pretrained",
    "enhance-example": "storm-jax enhance-example --output outputs/example",
    "evaluate": "storm-jax evaluate --checkpoint pretrained --split test --by noise_type",
    "train": "storm-jax train --preset tiny --data embedded --steps 1000 --out runs/x",
    "export": "storm-jax export runs/x models/x --average-from 800",
    "import-ckpt": "storm-jax import-ckpt VoiceBank.ckpt models/voicebank",
    "export-ckpt": "storm-jax export-ckpt models/voicebank back.ckpt",
    "ensemble": "storm-jax ensemble models/ens pretrained:tiny-embedded-smax025 runs/x-avg",
    "guide": "storm-jax guide models/guided pretrained:tiny-embedded-smax025 runs/c-only --weight 1",
    "info": "storm-jax info --preset ncsnpp --json",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="storm-jax", description="Differentiable analysis of StoRM in JAX")
    p.add_argument("--version", action="version", version=f"storm-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("enhance-example", help="enhance a generated example and write clean/noisy/enhanced WAVs",
                       description="Example: storm-jax enhance-example --output outputs/example")
    d.add_argument("--checkpoint", default=None, help="model directory, pretrained[:NAME] or preset:NAME (default: the shipped pretrained model)")
    add_steps(d)
    d.add_argument("--seconds", type=float, default=2.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--output", "-o", default="outputs/example")
    d.set_defaults(func=cmd_enhance_example)

    e = sub.add_parser("enhance", help="enhance audio files, lists of files or folders")
    e.add_argument("inputs", nargs="+", help="audio files, folders, or .txt/.lst files listing paths")
    e.add_argument("--output", "-o", required=True, help="output folder")
    e.add_argument("--checkpoint", default=None, help="model directory, pretrained[:NAME] or preset:NAME (default: the shipped pretrained model)")
    add_steps(e)
    e.add_argument("--corrector", choices=("none", "ald"), default="none")
    e.add_argument("--snr", type=float, default=0.5, help="ALD corrector snr")
    e.add_argument("--grid", choices=("reference", "consistent"), default="reference")
    e.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="write the mean of K reverse-process samples (default 1: one sample, the reference)")
    add_score_symmetry(e)
    add_guidance(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--downmix", action="store_true", help="average multi-channel input to mono")
    e.add_argument("--allow-truncated", action="store_true",
                   help="enhance the frames present in a WAV whose header promises more (with a warning) instead of refusing it")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_enhance)

    i = sub.add_parser("info", help="parameter counts of a preset")
    i.add_argument("--preset", default="ncsnpp")
    i.add_argument("--score-preset", default=None, help="preset of the score network when it differs")
    i.add_argument("--condition", choices=("both", "noisy", "predictor"), default="both")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("import-ckpt", help="convert a reference (sp-uhh/storm) PyTorch .ckpt into a model directory")
    c.add_argument("checkpoint", help="PyTorch Lightning .ckpt of the reference (StoRM, score-only or denoiser-only)")
    c.add_argument("output", help="model directory to write (use it as --checkpoint elsewhere)")
    c.add_argument("--no-ema", action="store_true", help="use the raw state_dict instead of the EMA weights")
    c.add_argument("--allow", action="append", default=[], metavar="NAME", help="trust one more pickled global (mapped to an inert stand-in)")
    c.set_defaults(func=cmd_import_ckpt)

    x = sub.add_parser("export-ckpt", help="write a model directory as a reference-layout PyTorch .ckpt")
    x.add_argument("model", help="model directory (save_model / import-ckpt)")
    x.add_argument("output", help=".ckpt file to write")
    x.set_defaults(func=cmd_export_ckpt)

    n = sub.add_parser("ensemble", help="average the scores of models that share a predictor (a score-level ensemble)")
    n.add_argument("output", help="model directory to write")
    n.add_argument("models", nargs="+", help="model directories or pretrained[:NAME]: same configuration, same predictor")
    n.set_defaults(func=cmd_ensemble)

    g = sub.add_parser("guide", help="condition guidance: (1+W)·s(x,Y,C) − W·s(x,C) from a Y-and-C and a C-only score network")
    g.add_argument("output", help="model directory to write")
    g.add_argument("model", help="model whose score network sees Y and C (condition both)")
    g.add_argument("guide", help="model whose score network sees only C (condition predictor), on the same predictor")
    g.add_argument("--weight", type=float, required=True, metavar="W", help="guidance weight W (0: the plain model)")
    g.set_defaults(func=cmd_guide)

    # `corpus` has its own parser (storm_jax.data.build_corpus_main); listed here for --help.
    sub.add_parser("corpus", help="build or locate the embedded speech corpus (storm-jax corpus --help)", add_help=False)

    from .train_cli import add_commands  # train, evaluate, export

    add_commands(sub)

    from .experiments.cli import add_commands as add_experiment_commands  # experiment, report, demo

    add_experiment_commands(sub)
    for name, example in EXAMPLES.items():
        sub.choices[name].epilog = f"example: {example}"
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "corpus":
        from .data import build_corpus_main

        return build_corpus_main(argv[1:])
    args = build_parser().parse_args(argv)
    import warnings

    from .files import OutputError

    # A user of the command reads one line per warning, not Python's file:line and source line.
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    from .experiments.cli import enable_compilation_cache

    # Every command compiles through JAX's persistent cache: a second run does not compile again.
    enable_compilation_cache(getattr(args, "compilation_cache", None))

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OutputError) as err:
        print(f"storm-jax {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
