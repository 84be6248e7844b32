"""Lanes of a sweep over the local devices: one mesh axis, sharded ``jit``, a memory plan.

Inside a point group (an utterance and a Brownian path) the experiments evaluate one function at
several M values — the *lanes* (P0's grid, E2's offsets, E3's ablation sides, E4's κ lanes). The
lanes are independent, so they are laid along a 1-D :class:`jax.sharding.Mesh` over the process's
local devices (axis ``"sweep"``) and the vmapped function runs under ``jit(shard_map(...))``: each
device computes its slice of lanes, everything else (parameters, waveforms, the path) is
replicated. A lane count that does not divide the device count is padded with copies of
the last lane, whose results are dropped.

Why lanes and not groups. A group is the unit the store computes whole, and its lanes already
share one compiled program; sharding them needs no change to any experiment's point list and the
same code runs on one CPU, several GPUs or a TPU host. Results do not depend on the device count
beyond floating-point reassociation inside XLA: on the CPU, P0's dŝ/dM on 4 forced devices agrees
with 1 device to 5e-8 relative (measured; float32).

Memory plan. Before a function first runs at a lane count, :func:`plan_batch` compiles it for the
whole group (``lower(...).compile().memory_analysis()``: arguments + outputs + temporaries, per
device) and halves the lanes per device until the estimate fits ``fraction`` of the device's free
memory (``memory_stats()['bytes_limit']`` on accelerators, the host's available memory shared by
its devices on the CPU). :func:`map_lanes` runs the lanes in chunks of that size and, should a
chunk still run out of memory (``RESOURCE_EXHAUSTED``), retries it at half the batch instead of
failing the sweep.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "sweep_mesh", "device_memory", "lane_memory", "plan_batch", "map_lanes", "process_share", "barrier"]

AXIS = "sweep"


def sweep_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh (axis ``"sweep"``) over the first ``devices`` local devices (default all)."""
    local = jax.local_devices()
    n = len(local) if devices is None else int(devices)
    if not 1 <= n <= len(local):
        raise ValueError(f"--devices {devices}: this process sees {len(local)} {local[0].platform} device(s)")
    return Mesh(np.array(local[:n]), (AXIS,))


def device_memory(device) -> int:
    """Free memory of ``device`` in bytes: the allocator's limit minus what is in use where the
    backend reports it (GPU, TPU), else the host's available memory divided among its devices."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(avail // max(1, len(jax.local_devices(backend=device.platform))))


@functools.cache
def _program(fn: Callable, static: tuple[tuple[str, Any], ...], mesh: Mesh, nargs: int):
    """``jit(shard_map(fn))``: each device runs ``fn`` on its own slice of lanes, the other
    arguments replicated. The per-device program is ``fn`` itself at the per-device batch, so the
    lanes' numbers do not depend on how many devices run beside it (cached: one wrapper per lane
    function, static settings and mesh, so a sweep's groups hit jit's own cache)."""
    body = functools.partial(fn, **dict(static))
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(AXIS),) + (PartitionSpec(),) * nargs,
                                 out_specs=PartitionSpec(AXIS), check_vma=False))


def _sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def _place(lanes: np.ndarray, size: int, mesh: Mesh) -> jax.Array:
    pad = size - len(lanes)
    if pad:
        lanes = np.concatenate([lanes, np.repeat(lanes[-1:], pad, axis=0)])
    return jax.device_put(lanes, _sharding(mesh))


def lane_memory(fn: Callable, lanes, *args, mesh: Mesh, per_device: int, static: Mapping[str, Any] | None = None) -> int:
    """Peak bytes per device of ``fn`` on ``per_device`` lanes per device (compiled, not run):
    arguments + outputs + temporaries − aliased buffers, from XLA's memory analysis."""
    static = dict(static or {})
    lanes = np.asarray(lanes)
    spec = jax.ShapeDtypeStruct((per_device * mesh.size,) + lanes.shape[1:], jax.dtypes.canonicalize_dtype(lanes.dtype),
                                sharding=_sharding(mesh))
    stats = _program(fn, tuple(sorted(static.items())), mesh, len(args)).lower(spec, *args).compile().memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def plan_batch(fn: Callable, lanes, *args, mesh: Mesh, static: Mapping[str, Any] | None = None,
               budget: int | None = None, fraction: float = 0.8) -> int:
    """The largest number of lanes per device (≤ ⌈K / devices⌉) whose :func:`lane_memory` fits
    ``fraction · budget`` (default budget: the smallest :func:`device_memory` of the mesh)."""
    K = len(np.asarray(lanes))
    if budget is None:
        budget = min(device_memory(d) for d in mesh.devices.flat)
    b = max(1, math.ceil(K / mesh.size))
    while True:
        need = lane_memory(fn, lanes, *args, mesh=mesh, per_device=b, static=static)
        if need <= fraction * budget or b == 1:
            if need > fraction * budget:
                print(f"storm-jax: one lane needs about {need / 2**20:.0f} MiB per device, more than {fraction:.0%} of "
                      f"the {budget / 2**20:.0f} MiB free; trying anyway", file=sys.stderr)
            return b
        b = max(1, min(b // 2, int(b * fraction * budget / need)))


def _exhausted(err: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


def map_lanes(fn: Callable, lanes, *args, mesh: Mesh, batch: int | None = None, static: Mapping[str, Any] | None = None,
              budget: int | None = None):
    """``fn(lanes, *args, **static)`` for the lanes ``[K, ...]`` (leading axis), sharded over
    ``mesh`` in chunks of ``batch`` lanes per device (default :func:`plan_batch`). ``fn`` maps a
    ``[B, ...]`` lane array to a pytree of ``[B, ...]`` arrays and must be traceable (a
    module-level function: its jit is cached). Returns that pytree for all K lanes as NumPy
    arrays. A chunk that runs out of device memory is retried at half the batch."""
    static = dict(static or {})
    lanes = np.asarray(lanes)
    K = len(lanes)
    if K == 0:
        raise ValueError("map_lanes: no lanes")
    b = batch or plan_batch(fn, lanes, *args, mesh=mesh, static=static, budget=budget)
    f = _program(fn, tuple(sorted(static.items())), mesh, len(args))
    parts, i = [], 0
    while i < K:
        chunk = lanes[i : i + b * mesh.size]
        try:
            res = jax.tree_util.tree_map(np.asarray, f(_place(chunk, b * mesh.size, mesh), *args))
        except Exception as err:  # XLA reports OOM as a runtime error whose type differs across versions
            if not _exhausted(err) or b == 1:
                raise
            b //= 2
            print(f"storm-jax: out of device memory at {2 * b} lanes per device; retrying at {b}", file=sys.stderr)
            continue
        parts.append(jax.tree_util.tree_map(lambda a, n=len(chunk): a[:n], res))
        i += len(chunk)
    return parts[0] if len(parts) == 1 else jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


# ------------------------------------------------------------------------------ processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def process_share(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                  *, timeout: int = 300) -> tuple[int, int, bool]:
    """Which share of a sweep's point groups this process computes: ``(index, count, coordinated)``
    (groups ``g`` with ``g mod count == index``). Call it before any JAX computation.

    - ``coordinator`` (``--coordinator``, else ``$JAX_COORDINATOR_ADDRESS``) with ``num_processes``
      and ``process_id`` (else ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``): the processes join
      through :func:`jax.distributed.initialize`, meet at a barrier after each experiment, and
      process 0 writes the tables and the report (``coordinated``).
    - Inside a SLURM job step of several tasks (``$SLURM_NTASKS`` > 1) and no flags: the same,
      with JAX detecting the coordinator, count and index.
    - ``num_processes`` and ``process_id`` alone: independent shares without communication (a SLURM
      array: ``--num-processes $SLURM_ARRAY_TASK_COUNT --process-id $SLURM_ARRAY_TASK_ID``); each
      writes its points into the shared ``--out``, and whichever finds the sweep complete writes
      the tables (else ``storm-jax report`` does, once all have finished).
    - none of them: one process, ``(0, 1, False)``.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES") if coordinator else None
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID") if coordinator else None
    slurm = (_env_int("SLURM_NTASKS") or 1) > 1 and coordinator is None and num_processes is None
    if coordinator is None and not slurm:
        if num_processes is None and process_id is None:
            return 0, 1, False
        if num_processes is None or process_id is None:
            raise ValueError("--num-processes and --process-id go together (independent shares of one sweep)")
        _check_share(num_processes, process_id)
        return int(process_id), int(num_processes), False
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ValueError(f"--coordinator {coordinator}: also give --num-processes and --process-id "
                             "(or $JAX_NUM_PROCESSES and $JAX_PROCESS_ID)")
        _check_share(num_processes, process_id)
        if ":" not in coordinator:
            raise ValueError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout)
    except Exception as err:  # a coordinator that never answers, a port in use …
        where = coordinator or "the SLURM job"
        raise ValueError(f"--coordinator {where}: jax.distributed.initialize failed: {str(err).splitlines()[0]}") from None
    return jax.process_index(), jax.process_count(), jax.process_count() > 1


def _check_share(num_processes: int, process_id: int) -> None:
    if num_processes < 1:
        raise ValueError(f"--num-processes {num_processes}: need at least 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id}: need 0 <= I < --num-processes {num_processes}")


def barrier(name: str) -> None:
    """Wait until every process of a ``jax.distributed`` run reaches ``name``."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
