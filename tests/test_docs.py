"""The README, the notebooks and the documentation site cannot drift from the code.

The README's Python blocks run as written in a fresh interpreter; every notebook runs top to
bottom with the small settings of its ``parameters`` cell (some overridden by ``SMALLER``); notebooks are stored without outputs;
``mkdocs build --strict`` builds the site (a broken reference or a missing page fails).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Smaller settings than a notebook's own for the suite (the code that runs is the same): notebook
# 03 at its own settings spends two minutes computing on two utterances; 05 compiles its analyses
# once per model (each SDE is static), so the suite runs it on one model.
SMALLER = {"03_kink_and_discretization": {"utterances": 1, "grid_points": 5},
           "05_noise_schedule_and_condition": {"seconds": 0.25, "elbo_samples": 4, "ioc_times": [0.2, 1.0],
                                               "models_compared": ["tiny-embedded-smax025"]}}


# The suite's interpreters (README script, notebook kernels) share the workers' compilation cache.
_CACHE_LINE = "from storm_jax.experiments.cli import enable_compilation_cache; enable_compilation_cache()"


def _env() -> dict:
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)  # as a user's interpreter
    return env


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    assert lines[2] == "```bash" and "storm-jax demo" in lines[3] and "pytest" in lines[4] and lines[5] == "```"


def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join([_CACHE_LINE] + blocks))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SI-SDR" in proc.stdout and "residual" in proc.stdout


def test_notebooks_are_stored_without_outputs():
    import nbformat

    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_factorization.ipynb", "03_kink_and_discretization.ipynb",
                                           "04_custom_analysis.ipynb", "05_noise_schedule_and_condition.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: run nbstripout"
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: the first code cell is the parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # papermill's convention: a cell after the parameters cell overrides some of its values; the
    # kernel also compiles through the suite's persistent cache, as the CLI subprocesses do
    override = "\n".join([_CACHE_LINE] + [f"{k} = {v!r}" for k, v in SMALLER.get(path.stem, {}).items()])
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell(override, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_env())
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, f"{path.name}: no figure"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


def test_documentation_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    proc = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                          env={**_env(), "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    for page in ["index.html", "api/index.html", "troubleshooting/index.html", "experiments/p0/index.html",
                 "notebooks/02_factorization/index.html", "models/index.html"]:
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text()
    import storm_jax

    missing = [name for name in storm_jax.__all__ if f"storm_jax.{name}" not in api]
    assert not missing, missing
