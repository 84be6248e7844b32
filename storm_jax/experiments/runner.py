"""The sweep engine: an experiment is a deterministic list of points plus a function from a group
of points (those that share one compiled computation: an utterance and a Brownian path) to rows.

:func:`run_experiment` computes the groups that have unfinished points, stores every point the
moment its group returns (:class:`~storm_jax.experiments.store.Store`), skips finished points on
restart, records failures (a NaN/Inf names its pipeline stage) and goes on, then rebuilds the
tables and figures from the store (:func:`write_outputs`). The schedule — which group runs when,
on which process — never enters a result: each point depends only on its fields and the run's
settings, and a group is always computed whole, so a resumed sweep reproduces the same numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .context import Context
from .store import Store, StoreError, atomic_write, point_id, write_json

__all__ = ["Experiment", "Summary", "Figure", "run_experiment", "pending_points", "summarize_folder", "write_outputs", "EXPERIMENTS"]

Rows = list[tuple[dict, dict]]  # [(record {"point", "row"}, arrays)]


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of a summary: ``draw(path)`` writes the PNG ``name``."""

    name: str
    caption: str
    draw: Callable[[Path], None]


@dataclasses.dataclass
class Summary:
    """What an experiment's stored points say: tables (name → rows of scalars), verdict lines,
    figures, and free-text notes (the settings a reader needs)."""

    title: str
    tables: dict[str, list[dict]]
    verdicts: list[str]
    figures: list[Figure]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of the programme.

    Attributes:
        name: ``p0``, ``e1`` … (the folder under ``--out``).
        title: one line for the report.
        points: ``points(preset) -> [point]``; a point is a flat dict of JSON scalars that holds
            the ``group_by`` fields.
        evaluate: ``evaluate(ctx, points) -> [(row, arrays)]`` for the points of one group (same
            ``group_by`` fields), in their order. ``ctx.work`` is a folder of the experiment's own
            for intermediate state that outlives a killed run (e.g. training runs to resume).
        summarize: ``summarize(records, settings) -> Summary`` from the stored points alone.
        settings: the preset fields the experiment depends on (stored in settings.json).
        group_by: the point fields that define a group, the unit computed whole (default an
            utterance and a Brownian path, which share one compiled computation).
    """

    name: str
    title: str
    points: Callable[[Any], list[dict]]
    evaluate: Callable[[Context, list[dict]], list[tuple[dict, dict]]]
    summarize: Callable[[Rows, dict], Summary]
    settings: Callable[[Any], dict]
    group_by: tuple[str, ...] = ("utt", "path")


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS[exp.name] = exp
    return exp


def _groups(points: Sequence[dict], keys: tuple[str, ...] = ("utt", "path")) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault(tuple(p[k] for k in keys), []).append(p)
    return list(groups.values())


def experiment_settings(exp: Experiment, ctx: Context) -> dict:
    return {"experiment": exp.name, "run": ctx.settings(), "sizes": exp.settings(ctx.preset)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("storm-jax", "jax", "jaxlib", "flax", "diffrax", "matfree", "numpy", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _device() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "kind": getattr(d, "device_kind", str(d)), "count": jax.device_count(),
            "cpus": os.cpu_count(), "machine": platform.machine()}


def _stage(err: BaseException) -> str:
    msg = str(err)
    if "stage '" in msg:
        return msg.split("stage '", 1)[1].split("'", 1)[0]
    return type(err).__name__


def run_experiment(exp: Experiment, ctx: Context, out: str | os.PathLike, *, progress: bool = True,
                   stop_after: int | None = None, outputs: bool = True) -> Path:
    """Run (or resume) ``exp`` into ``out/<name>/`` and rebuild its tables and figures.

    ``stop_after`` stops after that many groups (the tests' stand-in for a killed run is a real
    ``kill -9``; this is for splitting work by hand). ``outputs=False`` leaves the tables and
    figures to a :func:`~storm_jax.experiments.report.build_report` that follows (it rebuilds
    them anyway). Returns the experiment folder.
    """
    from tqdm import tqdm

    folder = Path(out) / exp.name
    store = Store.open(folder, experiment_settings(exp, ctx))
    ctx = dataclasses.replace(ctx, work=folder / "work")  # the memo is shared, not copied
    points = exp.points(ctx.preset)
    ids = [point_id(p) for p in points]
    if len(set(ids)) != len(ids):
        raise StoreError(f"{exp.name}: two points share an id (a bug in the point list)")
    index, count, coordinated = ctx.share
    with store.lock(index):
        done = store.done_ids()
        # this process's share: a fixed function of the group's place in the point list, so a
        # resumed sweep (any process or device count) computes each group exactly once
        mine = [g for gi, g in enumerate(_groups(points, exp.group_by)) if gi % count == index]
        todo = [g for g in mine if any(point_id(p) not in done for p in g)]
        t_start = time.perf_counter()
        n_done = sum(pid in done for pid in ids)
        walls = []
        bar = tqdm(total=len(points), initial=n_done, desc=f"{exp.name}", unit="pt", disable=not progress,
                   leave=True, dynamic_ncols=True)
        try:
            for gi, group in enumerate(todo):
                if stop_after is not None and gi >= stop_after:
                    break
                t0 = time.perf_counter()
                try:
                    results = exp.evaluate(ctx, group)
                except (FloatingPointError, ValueError) as err:
                    for p in group:
                        store.fail(p, _stage(err), str(err).splitlines()[0])
                    where = " ".join(f"{k}={group[0][k]}" for k in exp.group_by)
                    bar.write(f"{exp.name}: point group {where} failed: {str(err).splitlines()[0]}",
                              file=sys.stderr)
                    bar.update(sum(point_id(p) not in done for p in group))
                    continue
                if len(results) != len(group):
                    raise RuntimeError(f"{exp.name}: evaluate returned {len(results)} rows for {len(group)} points")
                for p, (row, arrays) in zip(group, results):
                    if point_id(p) in done:
                        continue
                    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
                    if bad:
                        store.fail(p, f"result {', '.join(bad)}", f"non-finite {', '.join(bad)}")
                    else:
                        store.put(p, row, arrays)
                    bar.update(1)
                walls.append({**{k: group[0][k] for k in exp.group_by}, "points": len(group),
                              "seconds": round(time.perf_counter() - t0, 3)})
        finally:
            bar.close()
        _append_record(folder, exp, ctx, walls, time.perf_counter() - t_start)
    if coordinated:
        from .sharding import barrier

        barrier(f"storm-jax {exp.name} {folder}")
    # split sweeps: only share 0, and only once every share's points are in
    if outputs and (count == 1 or (index == 0 and not pending_points(exp, ctx.preset, out))):
        write_outputs(folder)
    return folder


def pending_points(exp: Experiment, preset, out: str | os.PathLike) -> int:
    """How many points of ``exp`` are neither stored nor failed under ``out`` (other shares'
    work while independent shares still run)."""
    have = Store(Path(out) / exp.name).done_ids()
    return sum(point_id(p) not in have for p in exp.points(preset))


def _append_record(folder: Path, exp: Experiment, ctx: Context, walls: list, total: float) -> None:
    index, count, _ = ctx.share
    # one record per share: processes of one sweep never rewrite each other's file
    file = folder / ("record.json" if index == 0 else f"record.{index}.json")
    rec = json.loads(file.read_text()) if file.is_file() else {}
    rec.update({
        "experiment": exp.name,
        "title": exp.title,
        "settings": experiment_settings(exp, ctx),
        "preset": ctx.preset.to_dict(),
        "versions": _versions(),
        "device": {**_device(), "sweep_devices": ctx.mesh.size if ctx.mesh is not None else 1},
        "share": {"index": index, "count": count},
    })
    runs = rec.setdefault("runs", [])
    runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(total, 3), "groups": walls})
    per_point = [w["seconds"] / w["points"] for r in runs for w in r["groups"] if w["points"]]
    if per_point:
        rec["seconds_per_point_median"] = float(np.median(per_point))
    write_json(file, rec)


# ------------------------------------------------------------------------------------- outputs


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _fmt_md(v) -> str:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0 or not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return _fmt(v)


def table_csv(rows: list[dict]) -> str:
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in cols])
    return buf.getvalue()


def table_markdown(rows: list[dict], max_rows: int | None = None) -> str:
    cols = _columns(rows)
    if not cols:
        return "_(no rows)_\n"
    shown = rows if max_rows is None else rows[:max_rows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt_md(r.get(c, "")) for c in cols) + " |" for r in shown]
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"\n_({len(rows) - max_rows} more rows in the CSV)_")
    return "\n".join(lines) + "\n"


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def summarize_folder(folder: str | os.PathLike) -> Summary:
    """The :class:`Summary` of an experiment folder (pure function of its stored points)."""
    folder = Path(folder)
    store = Store.open(folder, {}, create=False) if not (folder / "settings.json").is_file() else Store(folder)
    settings = store.settings
    name = settings.get("experiment")
    if name not in EXPERIMENTS:
        raise StoreError(f"{folder}: unknown experiment {name!r}")
    exp = EXPERIMENTS[name]
    records = store.records(with_arrays=True)
    summary = exp.summarize(records, settings)
    fails = store.failures()
    if fails:
        summary.tables["failed"] = [{"point": json.dumps(f["point"], sort_keys=True), "stage": f["stage"], "message": f["message"]} for f in fails]
    return summary


def write_outputs(folder: str | os.PathLike) -> Summary:
    """Rebuild ``tables/`` (CSV + Markdown) and ``figures/`` (PNG) of an experiment folder."""
    folder = Path(folder)
    summary = summarize_folder(folder)
    store = Store(folder)
    points = [{**rec["point"], **rec["row"]} for rec, _ in store.records()]
    tables = {"points": points, **summary.tables}
    for name, rows in tables.items():
        atomic_write(folder / "tables" / f"{name}.csv", table_csv(rows).encode())
        atomic_write(folder / "tables" / f"{name}.md", table_markdown(rows).encode())
    (folder / "figures").mkdir(exist_ok=True)
    for fig in summary.figures:
        fig.draw(folder / "figures" / fig.name)
    return summary
