"""The presets of the programme, printed as a table: ``quick`` (what ``storm-jax demo`` runs on a
CPU), ``paper`` (the full programme of the design, for a GPU), ``tiny`` (the test suite).

    python experiments/presets.py                # every preset
    python experiments/presets.py presets/paper-16.json

A preset of your own is a JSON file naming a base preset and the sizes it changes (see
``presets/paper-16.json``); pass its path as ``--preset`` to any experiment. Its sizes are stored
in each experiment folder's settings.json, so a resumed run cannot mix presets.
"""

import dataclasses
import sys

from storm_jax.experiments.presets import PRESETS, get_preset

if __name__ == "__main__":
    presets = [get_preset(a) for a in sys.argv[1:]] or list(PRESETS.values())
    fields = [f.name for f in dataclasses.fields(presets[0]) if f.name != "name"]
    print("| size | " + " | ".join(p.name for p in presets) + " |")
    print("|---|" + "---|" * len(presets))
    for f in fields:
        print(f"| {f} | " + " | ".join(str(getattr(p, f)) for p in presets) + " |")
