"""E1 — continuity of the score Jacobian J_x in M (H1) and its top singular value along the trajectory.

    python experiments/e1.py --preset quick --out results

Same options as `storm-jax experiment e1` (see --help); resumable; ends by rebuilding
results/report.md.
"""

import sys

from storm_jax.experiments.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("e1", description=__doc__.splitlines()[0]))
