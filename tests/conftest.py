import os
import tempfile

# Tests run on the CPU with deterministic float64 available where a tolerance demands it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
# One persistent compilation cache for every worker and every `storm-jax` subprocess of the suite
# (and the next run of it), kept out of the user's own cache.
os.environ.setdefault("STORM_JAX_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "storm-jax-tests-jax-cache"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# The workers compile through the same persistent cache as the subprocesses: programs that
# several tests build from fresh closures (and both workers) compile once per run.
from storm_jax.experiments.cli import enable_compilation_cache  # noqa: E402

enable_compilation_cache()
