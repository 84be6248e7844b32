"""E3 — the factorization dŝ/dM = K·u + L·v, the spectrum of K, the gain on the predictor's jump, the linearized-predictor ablation (H3).

    python experiments/e3.py --preset quick --out results

Same options as `storm-jax experiment e3` (see --help); resumable; ends by rebuilding
results/report.md.
"""

import sys

from storm_jax.experiments.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("e3", description=__doc__.splitlines()[0]))
