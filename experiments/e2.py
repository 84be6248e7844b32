"""E2 — continuity of the conditioning Jacobians J_C·u, J_y·v and of the direct channel L(M)·v (H2).

    python experiments/e2.py --preset quick --out results

Same options as `storm-jax experiment e2` (see --help); resumable; ends by rebuilding
results/report.md.
"""

import sys

from storm_jax.experiments.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("e2", description=__doc__.splitlines()[0]))
