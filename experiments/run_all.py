"""The whole programme: P0 and E1–E4 into one folder, then the report with every verdict.

    python experiments/run_all.py --preset quick --out results      # a 2-core CPU, minutes
    python experiments/run_all.py --preset paper --out results \
        --checkpoint models/storm-wsj0 --data /data/VoiceBank-DEMAND   # a GPU, hours

Resumable: run the same command again after an interruption and finished points are kept.
"""

import sys

from storm_jax.experiments.cli import EXPERIMENT_ORDER, script_main

if __name__ == "__main__":
    sys.exit(script_main(EXPERIMENT_ORDER, description=__doc__.splitlines()[0]))
