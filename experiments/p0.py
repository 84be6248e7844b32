"""P0 — the SI-SDR(M) curve, its exact derivative and the kink statistic at M*.

    python experiments/p0.py --preset quick --out results

Same options as `storm-jax experiment p0` (see --help); resumable; ends by rebuilding
results/report.md.
"""

import sys

from storm_jax.experiments.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("p0", description=__doc__.splitlines()[0]))
