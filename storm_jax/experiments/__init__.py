"""The experimental programme as resumable sweeps: P0 (the SI-SDR(M) curve and its kink) and
E1–E4 (DESIGN.md § Experiments), their store, tables, figures and the report with verdicts.

* :mod:`.store` — one atomically renamed file per finished point; settings checks; the lock.
* :mod:`.runner` — point lists grouped by (utterance, path), resume, failures, outputs.
* :mod:`.presets` — ``quick`` (CPU), ``paper`` (GPU), ``tiny`` (tests).
* :mod:`.p0`, :mod:`.e1`, :mod:`.e2`, :mod:`.e3`, :mod:`.e4` — the experiments.
* :mod:`.schedule` — the second seed's: noise schedules, ELBO and IoC (S1), refinement (S2).
* :mod:`.report` — ``report.md`` and a self-contained ``report.html``.
"""

from . import e1, e2, e3, e4, p0, schedule  # noqa: F401  (each registers itself)
from .context import Context, load_context
from .presets import PRESETS, Preset, get_preset
from .report import build_report
from .runner import EXPERIMENTS, Experiment, Summary, run_experiment, summarize_folder, write_outputs
from .store import FolderBusy, SettingsMismatch, Store, StoreError

__all__ = [
    "Context",
    "EXPERIMENTS",
    "Experiment",
    "FolderBusy",
    "PRESETS",
    "Preset",
    "SettingsMismatch",
    "Store",
    "StoreError",
    "Summary",
    "build_report",
    "get_preset",
    "load_context",
    "run_experiment",
    "summarize_folder",
    "write_outputs",
]
