"""The report: every experiment folder under ``--out`` gathered into ``report.md`` and a
self-contained ``report.html`` (figures embedded as base64 PNG).

A pure function of the stores: each experiment's :class:`~storm_jax.experiments.runner.Summary`
is recomputed from its stored points (tables and figures rewritten too), so the report can be
rebuilt at any time and says exactly what the stored numbers say. The verdict lines come first,
one per hypothesis, starting ``P0:``, ``H1:``, ``H2:``, ``H3:``, ``E4:`` (and ``S1:``, ``S2:`` of the
schedule experiment); an experiment that has
not been run gets a line saying so (never an assumed verdict).
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from .runner import EXPERIMENTS, table_markdown, write_outputs
from .store import StoreError, atomic_write

__all__ = ["build_report"]

ORDER = (("p0", ("P0",)), ("e1", ("H1",)), ("e2", ("H2",)), ("e3", ("H3",)), ("e4", ("E4",)), ("schedule", ("S1", "S2")))


def build_report(out: str | os.PathLike) -> dict:
    """Write ``out/report.md`` and ``out/report.html``; return their paths and the verdict lines."""
    out = Path(out)
    if not out.is_dir():
        raise StoreError(f"{out}: no such folder (run an experiment into it first)")
    sections, verdicts = [], []
    for name, tags in ORDER:
        folder = out / name
        if not (folder / "settings.json").is_file():
            verdicts += [f"{tag}: not run (no {name}/ folder under {out}; storm-jax experiment {name} --out {out})" for tag in tags]
            continue
        summary = write_outputs(folder)
        record = json.loads((folder / "record.json").read_text()) if (folder / "record.json").is_file() else {}
        verdicts += summary.verdicts
        sections.append((name, summary, record))
    if not sections:
        raise StoreError(f"{out}: holds no experiment folder (p0, e1 … e4)")
    md = _markdown(out, sections, verdicts)
    atomic_write(out / "report.md", md.encode())
    atomic_write(out / "report.html", _html(out, sections, verdicts).encode())
    return {"md": out / "report.md", "html": out / "report.html", "verdicts": verdicts}


def _run_line(sections) -> str:
    run = sections[0][2].get("settings", {}).get("run", {})
    dev = sections[0][2].get("device", {})
    return (f"Model `{run.get('model')}` (digest {run.get('model_digest')}), data `{run.get('data')}` "
            f"(utterances {', '.join(run.get('utterances', []))}), preset `{run.get('preset')}`, seed {run.get('seed')}, "
            f"device {dev.get('platform')} ({dev.get('kind')}).")


def _wall(record) -> str:
    runs = record.get("runs", [])
    total = sum(r.get("wall_s", 0) for r in runs)
    per = record.get("seconds_per_point_median")
    return f"wall time {total:.0f} s over {len(runs)} invocation(s)" + (f", median {per:.2f} s per point" if per else "")


def _markdown(out: Path, sections, verdicts) -> str:
    lines = ["# storm-jax report", "", _run_line(sections), "", "## Verdicts", ""]
    lines += [f"- {v}" for v in verdicts]
    lines += ["", "Rules (DESIGN.md § Verdicts): P0 kink when the CI of κ₀ excludes 0, smooth when it contains 0 with a "
              "half-width below 10 % of the typical |slope|; H1/H2 continuous when the CI of the log–log slope of ρ(h) lies "
              "above 0.8, discontinuous when it contains 0; H3 non-degenerate when the jump's gain is ≥ 10 % of the median "
              "random gain; E4 strong order expected ≈ 1.", ""]
    for name, summary, record in sections:
        lines += [f"## {summary.title}", "", f"_{_wall(record)}; folder `{name}/`._", ""]
        lines += [f"- {v}" for v in summary.verdicts] + [""]
        lines += [n for n in summary.notes] + [""]
        for fig in summary.figures:
            lines += [f"![{fig.caption}]({name}/figures/{fig.name})", "", f"*{fig.caption}*", ""]
        for tname, rows in summary.tables.items():
            lines += [f"### {name}: {tname} (`{name}/tables/{tname}.csv`)", "", table_markdown(rows, max_rows=40), ""]
    return "\n".join(lines)


def _html_table(rows) -> str:
    from .runner import _columns, _fmt_md

    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt_md(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows[:200])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(out: Path, sections, verdicts) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>storm-jax report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}",
             "table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}",
             "li{margin:.3em 0}img{max-width:100%}figcaption{font-size:13px;color:#444}</style></head><body>",
             "<h1>storm-jax report</h1>", f"<p>{html.escape(_run_line(sections))}</p>", "<h2>Verdicts</h2><ul>"]
    parts += [f"<li>{html.escape(v)}</li>" for v in verdicts]
    parts.append("</ul>")
    for name, summary, record in sections:
        parts += [f"<h2>{html.escape(summary.title)}</h2>", f"<p><em>{html.escape(_wall(record))}</em></p><ul>"]
        parts += [f"<li>{html.escape(v)}</li>" for v in summary.verdicts] + ["</ul>"]
        parts += [f"<p>{html.escape(n)}</p>" for n in summary.notes]
        for fig in summary.figures:
            data = base64.b64encode((out / name / "figures" / fig.name).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(fig.name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")
        for tname, rows in summary.tables.items():
            parts += [f"<h3>{html.escape(name)}: {html.escape(tname)}</h3>", _html_table(rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


_ = EXPERIMENTS  # the registry must be filled before a report is built (imported by the package)
