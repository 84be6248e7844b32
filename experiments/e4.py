"""E4 — discretization: strong/weak/tangent error on nested grids sharing one Brownian path, κ_N and κ∞, a diffrax reference.

    python experiments/e4.py --preset quick --out results

Same options as `storm-jax experiment e4` (see --help); resumable; ends by rebuilding
results/report.md.
"""

import sys

from storm_jax.experiments.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("e4", description=__doc__.splitlines()[0]))
