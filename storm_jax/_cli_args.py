"""Argument types and options shared by the ``storm-jax`` sub-commands (``cli`` and ``train_cli``)."""

from __future__ import annotations

import argparse

from .model import SCORE_SYMMETRIES


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_score_symmetry(parser: argparse.ArgumentParser, verb: str = "use", default: str = "the model's setting") -> None:
    """``--score-symmetry {none,sign}`` (default ``None``: keep the model's setting)."""
    parser.add_argument("--score-symmetry", choices=SCORE_SYMMETRIES, default=None,
                        help=f"sign: {verb} the odd part of the score network, ½[s(x,Y,C) − s(−x,−Y,−C)] (default: {default})")


def add_guidance(parser: argparse.ArgumentParser) -> None:
    """``--guidance W`` (default ``None``: keep the model's weight)."""
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="condition-guidance weight of a guided model (storm-jax guide): score (1+W)·s(x,Y,C) − W·s(x,C) "
                             "(default: the model's weight)")


def add_steps(parser: argparse.ArgumentParser) -> None:
    """``--steps N`` (default ``None``: :func:`sampler_steps`)."""
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                        help="reverse steps N (default: the N a correct-reverse model was tuned through, else 30 as the reference enhance())")


def sampler_steps(args, model) -> int:
    """``--steps``, else the model's ``sampler_steps`` (a ``correct-reverse`` model), else 30."""
    if getattr(args, "steps", None) is not None:
        return args.steps
    return model.config.sampler_steps or 30


def apply_score_options(model, args):
    """The model with the ``--score-symmetry`` / ``--guidance`` overrides of ``args`` applied."""
    if getattr(args, "score_symmetry", None) is not None:
        model = model.with_score_symmetry(args.score_symmetry)
    if getattr(args, "guidance", None) is not None:
        model = model.with_guidance(args.guidance)
    return model
