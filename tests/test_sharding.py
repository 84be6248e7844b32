"""The lanes of a sweep over devices (storm_jax.experiments.sharding), in process on one CPU
device; 4 forced devices and two processes run in tests/test_experiments.py (subprocesses)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storm_jax.experiments.sharding import lane_memory, map_lanes, plan_batch, process_share, sweep_mesh


def _lanes(ms, a, scale: float):
    # a per-lane result of two shapes, one of them with an inner reduction
    y = scale * ms[:, None] * a[None, :]
    return {"y": y, "norm": jnp.sqrt(jnp.sum(y**2, axis=-1))}


def _exhausting(ms, a):
    # stands in for a program too large for the device at more than one lane per device
    if ms.shape[0] > 1:
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB")
    return ms[:, None] * a[None, :]


def _always_exhausted(ms, a):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory")


def _big(ms, a):
    return jnp.tanh(ms[:, None, None] * a[None, :, None] * a[None, None, :]).sum(axis=-1)


def test_map_lanes_pads_chunks_and_equals_the_vmapped_function():
    mesh = sweep_mesh()
    a = jnp.linspace(-1.0, 1.0, 7)
    ms = np.array([0.5, 0.9, 1.0, 1.1, 2.0])
    want = _lanes(jnp.asarray(ms), a, 3.0)
    for batch in (None, 1, 2, 5, 8):  # whole, one lane per call, 2 + 2 + 1 (padded), exact, more than K
        got = map_lanes(_lanes, ms, a, mesh=mesh, batch=batch, static={"scale": 3.0})
        assert set(got) == {"y", "norm"} and all(isinstance(v, np.ndarray) for v in got.values())
        for k in want:  # equal up to the reduction's vector width, which follows the batch (float64)
            np.testing.assert_allclose(got[k], np.asarray(want[k]), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="no lanes"):
        map_lanes(_lanes, np.array([]), a, mesh=mesh, static={"scale": 1.0})
    with pytest.raises(ValueError, match="--devices 2: this process sees 1 cpu device"):
        sweep_mesh(2)


def test_a_chunk_out_of_memory_is_retried_at_half_the_batch(capsys):
    mesh = sweep_mesh()
    a = jnp.arange(3.0)
    ms = np.arange(1.0, 5.0)
    got = map_lanes(_exhausting, ms, a, mesh=mesh, batch=4)
    np.testing.assert_array_equal(got, ms[:, None] * np.arange(3.0)[None, :])
    err = capsys.readouterr().err
    assert "out of device memory at 4 lanes per device; retrying at 2" in err and "retrying at 1" in err
    # at one lane per device there is nothing left to halve: the error is the caller's
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        map_lanes(_always_exhausted, ms, a, mesh=mesh, batch=1)


def test_memory_plan_picks_the_largest_batch_that_fits():
    mesh = sweep_mesh()
    a = jnp.linspace(0.0, 1.0, 64)
    ms = np.linspace(0.5, 2.0, 16)
    per = [lane_memory(_big, ms, a, mesh=mesh, per_device=b) for b in (1, 4, 16)]
    assert 0 < per[0] < per[1] < per[2]  # the [B, 64, 64] temporary grows with the lanes
    assert plan_batch(_big, ms, a, mesh=mesh, budget=10 * per[2]) == 16  # everything fits: one call
    b = plan_batch(_big, ms, a, mesh=mesh, budget=int(per[1] / 0.8) + 1)
    assert 1 <= b <= 4 and lane_memory(_big, ms, a, mesh=mesh, per_device=b) <= per[1] + 1
    assert plan_batch(_big, ms, a, mesh=mesh, budget=1) == 1  # nothing fits: one lane, and a warning


def test_process_share_from_flags_and_environment(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert process_share() == (0, 1, False)
    assert process_share(None, 4, 3) == (3, 4, False)  # independent shares: no jax.distributed
    for args, words in [((None, 2, None), "go together"), ((None, 2, 2), "--process-id 2"), ((None, 0, 0), "--num-processes 0"),
                        (("10.0.0.1:1234", None, None), "also give --num-processes"), (("nohost", 2, 0), "HOST:PORT")]:
        with pytest.raises(ValueError, match=words):
            process_share(*args)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two' is not an integer"):
        process_share()
    assert jax.process_count() == 1  # nothing above joined a distributed run
