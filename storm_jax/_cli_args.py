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
