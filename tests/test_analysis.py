"""Differentiable analysis core (issue 5): pathwise dŝ/dM, factorization K·u + L·v, probes,
matrix-free spectra, kink statistics, normalisation switches and bad input.

Two problem sizes: the tiny NCSN++ preset on the reference front end (0.5 s of audio → 256 bins ×
64 frames, float64) for the finite-difference check, and a "micro" problem (NCSN++ with nf 8 and
two levels on an 8-bin STFT, 16 or 8 frames) for everything else, so that dense Jacobians can be
built and the ~10 compiled executables of this file stay within the CPU budget. Weights are random
(drawn straight into the shapes ``init_storm`` produces, via ``jax.eval_shape``, which avoids
compiling the Flax initialiser): the analyses need *a* smooth network of the architecture, not a
trained one. Tolerances are stated at each check.
"""

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import storm_jax as sj
from storm_jax import analysis as an
from storm_jax.demo import synthetic_example

L = 8000  # 0.5 s → 63 frames → padded to 64
FULL_STEPS = 2  # sampler steps on the full-size problem (float64 runtime)
STEPS = 3  # sampler steps on the micro problem
DELTA = 1e-5  # central-difference step (float64)


def random_model(cfg, seed=0, dtype=jnp.float32):
    """A StoRM model with the parameter tree of ``init_storm(cfg)`` and random weights
    (uniform, variance 1/fan_in for kernels; GroupNorm scales 1; small biases)."""
    shapes = sj.StormModel(config=cfg, params=sj.param_shapes(cfg))  # abstract: nothing compiled
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if s.ndim >= 2:
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.uniform(-1, 1, s.shape) * np.sqrt(3.0 / fan_in), dtype)
        if "scale" in jax.tree_util.keystr(path):
            return jnp.ones(s.shape, dtype)
        return jnp.asarray(0.01 * rng.standard_normal(s.shape), dtype)

    return sj.StormModel(config=shapes.config, params=jax.tree_util.tree_map_with_path(fill, shapes.params))


@pytest.fixture(scope="module")
def tiny():
    return random_model(sj.storm_config("tiny"))


@pytest.fixture(scope="module")
def signals():
    return synthetic_example(jax.random.key(1), seconds=L / 16000)


@pytest.fixture(scope="module")
def f64_runs(tiny, signals):
    """float64 pathwise values and tangents at M0 − δ, M0, M0 + δ for two M0 (one call)."""
    clean, noise = signals
    sw = an.normalization_switches(clean, noise, (0.5, 2.5))
    m0 = np.array([0.8, 1.7])
    ms = np.stack([m0 - DELTA, m0, m0 + DELTA], axis=1).ravel()
    val, tan = an.pathwise_derivative(tiny, clean, noise, ms, 7, steps=FULL_STEPS, dtype=jnp.float64)
    return dict(sw=sw, m0=m0, ms=ms, val=val, tan=tan)


MICRO_SPEC = sj.SpecConfig(n_fft=14, hop=4, pad_multiple=4)  # 8 bins
ML = 60  # → 16 frames: a "tiny problem" whose Jacobians can be built densely


@pytest.fixture(scope="module")
def micro_signals():
    k1, k2 = jax.random.split(jax.random.key(4))
    return 0.3 * jax.random.normal(k1, (ML,)), 0.2 * jax.random.normal(k2, (ML,))


def micro_config(**kw):
    """NCSN++ reduced below the tiny preset (nf 8, two levels) on an 8-bin front end: the same
    code paths at a size whose Jacobians can be built densely and whose graphs compile fast."""
    return sj.StormConfig(backbone=sj.ncsnpp_config("tiny", nf=8, ch_mult=(1, 2)), spec=MICRO_SPEC, **kw)


@pytest.fixture(scope="module")
def micro():
    return random_model(micro_config(), seed=5)


@pytest.fixture(scope="module")
def micro_path64(micro, micro_signals):
    """float64 pathwise runs on the micro problem at M0 − δ, M0, M0 + δ for two M0, away from
    normalisation switches (one compiled executable, reused by the kink test)."""
    clean, noise = micro_signals
    sw = an.normalization_switches(clean, noise, (0.25, 4.0))
    m0 = np.array([m for m in (0.8, 0.9, 1.1, 1.2, 1.3, 1.5, 1.7) if an.distance_to_switch(m, sw) > 1e-3][:2])
    ms = np.stack([m0 - DELTA, m0, m0 + DELTA], axis=1).ravel()
    val, tan = an.pathwise_derivative(micro, clean, noise, ms, 7, steps=STEPS, dtype=jnp.float64)
    return dict(m0=m0, ms=ms, val=val, tan=tan)


@pytest.fixture(scope="module")
def reduced():
    """The micro model in float64 on 28 samples (8 × 8 bins) for dense-Jacobian checks."""
    k1, k2 = jax.random.split(jax.random.key(6))
    n = 28  # → 8 frames: C has 8 × 8 complex entries
    signals = 0.3 * jax.random.normal(k1, (n,), jnp.float64), 0.2 * jax.random.normal(k2, (n,), jnp.float64)
    return random_model(micro_config(), seed=2, dtype=jnp.float64), signals


@pytest.fixture(scope="module")
def micro_fz(micro, micro_signals):
    """float32 factorization on the micro problem (one compiled executable reused below)."""
    return an.factorize(micro, *micro_signals, 1.0, 7, steps=STEPS)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------------
# pathwise derivative and factorization (0.5 s of audio, float64)
# ---------------------------------------------------------------------------------------------


def test_jvp_equals_central_difference_float64(f64_runs):
    r = f64_runs
    for m0 in r["m0"]:  # away from normalisation switches (the FD would straddle a kink)
        assert an.distance_to_switch(m0, r["sw"]) > 100 * DELTA
    val, tan = r["val"], r["tan"]
    assert val.waveform.dtype == jnp.float64 and val.waveform.shape == (6, L) and val.spec.shape == (6, 256, 64)
    for j in range(2):
        lo, mid, hi = 3 * j, 3 * j + 1, 3 * j + 2
        for field in ("waveform", "spec", "C", "Y", "norm"):
            fd = (getattr(val, field)[hi] - getattr(val, field)[lo]) / (2 * DELTA)
            assert _rel(getattr(tan, field)[mid], fd) < 1e-6, field


def test_si_sdr_derivative_float64(micro, micro_signals, micro_path64):
    clean, noise = micro_signals
    r = micro_path64
    value, deriv = an.si_sdr_derivative(micro, clean, noise, r["ms"], 7, steps=STEPS, dtype=jnp.float64)
    np.testing.assert_allclose(value, sj.si_sdr(r["val"].waveform, jnp.asarray(clean, jnp.float64)), rtol=1e-12)
    for j in range(2):
        fd = (value[3 * j + 2] - value[3 * j]) / (2 * DELTA)
        assert abs(float(deriv[3 * j + 1] - fd)) <= 1e-6 * abs(float(fd)) + 1e-9


def test_kink_statistic_on_the_model(micro, micro_signals, micro_path64):
    clean, noise = micro_signals
    key = jax.random.key(7)
    r = an.kink_statistic(micro, clean, noise, key, hs=(0.3, 0.1, 0.03), steps=STEPS, dtype=jnp.float64, n_boot=200)
    assert r.d_plus.shape == (3, 1, 1) and np.all(np.isfinite(r.kappa)) and np.all(np.isfinite(r.kappa0_ci))
    assert r.tangent_jump.shape == (3, 1, 1) and np.all(r.tangent_jump >= 0)
    assert r.functional == "si_sdr" and list(r.hs) == [0.03, 0.1, 0.3]
    # D± are the exact derivatives dSI-SDR/dM at M* ± h on path p = 0 (key folded with p)
    ms = [0.97, 1.03, 0.9, 1.1, 0.7, 1.3]
    _, d = an.si_sdr_derivative(micro, clean, noise, ms, jax.random.fold_in(key, 0), steps=STEPS, dtype=jnp.float64)
    np.testing.assert_allclose(r.d_minus[:, 0, 0], d[0::2], rtol=1e-10)
    np.testing.assert_allclose(r.d_plus[:, 0, 0], d[1::2], rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# the micro problem (8 bins × 16 frames): float32 identity, condition="predictor", switches,
# silence, probes, and dense Jacobians for the matrix-free spectra
# ---------------------------------------------------------------------------------------------


def test_factorization_float64(micro, micro_signals):
    """Residual of dx̂/dM = K·u + L·v at rounding level, and the total is the true derivative
    (central difference of the values on the same path)."""
    clean, noise = micro_signals
    sw = an.normalization_switches(clean, noise, (0.5, 2.0))
    m0 = next(m for m in (1.0, 1.1, 0.9, 1.2, 0.8) if an.distance_to_switch(m, sw) > 1e-3)
    fz = an.factorize(micro, clean, noise, [m0 - DELTA, m0, m0 + DELTA], 7, steps=STEPS, dtype=jnp.float64)
    assert fz.total.dtype == jnp.complex128 and fz.total.shape == (3, 8, 16)
    assert np.all(np.asarray(fz.residual) <= 1e-10) and np.all(np.asarray(fz.residual_wave) <= 1e-10)
    for field, tangent in (("spec", fz.total), ("waveform", fz.total_wave), ("C", fz.u), ("Y", fz.v), ("norm", fz.dnu)):
        fd = (getattr(fz.value, field)[2] - getattr(fz.value, field)[0]) / (2 * DELTA)
        assert _rel(tangent[1], fd) < 1e-6, field
    # the waveform terms add up, the normalisation term being a term of its own
    j = 1
    scale = np.abs(np.asarray(fz.total_wave[j])).max()
    np.testing.assert_allclose(fz.Ku_wave[j] + fz.Lv_wave[j] + fz.norm_term[j], fz.total_wave[j], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(fz.norm_term[j], fz.dnu[j] * fz.value.waveform[j] / fz.value.norm[j], rtol=1e-10, atol=1e-12 * scale)
    # condition="both": both channels contribute, and max-normalisation moves with M
    assert np.all(np.asarray(fz.norm_Ku) > 0) and np.all(np.asarray(fz.norm_Lv) > 0)
    assert np.all(np.abs(np.asarray(fz.cos_angle)) <= 1) and np.all(np.asarray(fz.dnu) != 0)


def test_factorization_float32(micro_fz):
    fz = micro_fz
    assert fz.total.dtype == jnp.complex64 and fz.total.shape == (8, 16)
    assert float(fz.residual) <= 1e-5 and float(fz.residual_wave) <= 1e-5
    assert float(fz.norm_Lv) > 0 and float(fz.norm_Ku) > 0


def test_Lv_is_exactly_zero_for_condition_predictor(micro_signals):
    """The seed paper's setting: score conditioned on C only, normalisation frozen. Then
    L·v ≡ 0, the normalisation term vanishes and dŝ/dM = ν·W'(x̂)·K·u."""
    model = random_model(micro_config(condition="predictor"), seed=3)
    fz = an.factorize(model, *micro_signals, 1.0, 7, steps=STEPS, normalization="frozen")
    assert np.all(np.asarray(fz.Lv) == 0) and np.all(np.asarray(fz.Lv_wave) == 0)
    assert float(fz.norm_Lv) == 0.0 and float(fz.cos_angle) == 0.0
    assert float(fz.norm_Ku) > 0 and float(fz.residual) <= 1e-5
    assert np.all(np.asarray(fz.norm_term) == 0) and float(fz.dnu) == 0.0
    np.testing.assert_allclose(fz.Ku_wave, fz.total_wave, rtol=0, atol=1e-5 * np.abs(fz.total_wave).max())
    np.testing.assert_allclose(fz.value.norm, an.frozen_norm_factor(*micro_signals), rtol=1e-6)


def test_normalization_switches_and_finite_derivative_at_a_switch(micro, micro_signals, micro_fz):
    clean, noise = micro_signals
    sw = an.normalization_switches(clean, noise, (0.25, 4.0))
    c, z = np.asarray(clean, np.float64), np.asarray(noise, np.float64)
    grid = np.linspace(0.25, 4.0, 20001)
    arg = np.argmax(np.abs(c[None] + grid[:, None] * z[None]), axis=1)
    brute = grid[1:][arg[1:] != arg[:-1]]
    assert sw.m.size == brute.size >= 1
    assert np.all(np.abs(sw.m - brute) <= grid[1] - grid[0])
    assert sw.argmax == arg[0] and sw.after[-1] == arg[-1] and np.all(sw.before[1:] == sw.after[:-1])
    # at a switch the derivative is finite (a one-sided/averaged slope), never NaN
    fz = an.factorize(micro, clean, noise, float(sw.m[0]), 7, steps=STEPS)
    assert np.all(np.isfinite(np.asarray(fz.total_wave))) and np.isfinite(float(fz.dnu))
    # batched input gives one record per utterance; power scaling switches at M = s²
    both = an.normalization_switches(np.stack([c, c]), np.stack([z, -z]), (0.25, 4.0))
    assert len(both) == 2 and np.array_equal(both[0].m, sw.m)
    pw = an.normalization_switches(c, z, (0.25, 4.0), power=True)
    arg_p = np.argmax(np.abs(c[None] + np.sqrt(grid)[:, None] * z[None]), axis=1)
    assert pw.m.size == int(np.sum(arg_p[1:] != arg_p[:-1]))


def test_no_nan_at_switch_points_and_extreme_m(micro, micro_signals):
    """Numerical faults: over the normalisation's switch points and M from 1e-6 to 1e6 every value
    and tangent is finite; where ŝ(M) is undefined (M ≤ 0, a silent mixture) a clear error."""
    clean, noise = micro_signals
    sw = an.normalization_switches(clean, noise, (0.25, 4.0))
    ms = np.concatenate([sw.m[:3], [1e-6, 1e-3, 1e3, 1e6]])
    fz = an.factorize(micro, clean, noise, ms, 7, steps=STEPS)
    for name in ("total_wave", "Ku_wave", "Lv_wave", "u", "v", "dnu", "residual"):
        assert np.all(np.isfinite(np.asarray(getattr(fz, name)))), name
    value, tangent = an.pathwise_derivative(micro, clean, noise, ms, 7, steps=STEPS)
    assert np.all(np.isfinite(np.asarray(value.waveform))) and np.all(np.isfinite(np.asarray(tangent.waveform)))
    for bad in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="m must be"):
            an.pathwise_derivative(micro, clean, noise, bad, 7, steps=STEPS)
    with pytest.raises(ValueError, match="both silent"):
        an.factorize(micro, clean * 0, noise * 0, 1.0, 7, steps=STEPS)


def test_exact_silence_gives_finite_tangents(micro, micro_signals):
    """|c|^α at c = 0: bins of exact silence (clean and noise both zero) keep finite tangents."""
    clean, noise = micro_signals
    mask = jnp.arange(ML) < 24
    fz = an.factorize(micro, clean * mask, noise * mask, 1.0, 7, steps=STEPS)
    assert np.any(np.asarray(fz.value.Y) == 0)
    assert np.all(np.isfinite(np.asarray(fz.total_wave))) and np.all(np.isfinite(np.asarray(fz.v)))


def test_trajectory_probes(micro, micro_signals, micro_fz):
    clean, noise = micro_signals
    Y, C, u, v = micro_fz.value.Y, micro_fz.value.C, micro_fz.u, micro_fz.v
    kr, ki = jax.random.split(jax.random.key(9))
    w = (jax.random.normal(kr, C.shape) + 1j * jax.random.normal(ki, C.shape)).astype(C.dtype)
    pr = an.probes_at(micro, clean, noise, 1.0, 7, w, steps=STEPS)
    assert pr.x.shape == (STEPS, 8, 16) and pr.Jx_w.shape == (STEPS, 8, 16) and pr.t.shape == (STEPS,)
    # the carried tangent reproduces the factorization's total and the sampler output
    assert _rel(pr.dout, micro_fz.total) < 1e-4
    assert _rel(pr.out, micro_fz.value.spec) < 1e-5
    assert _rel(pr.dx[0], micro_fz.u) < 1e-5  # dx_T/dM = dC/dM (fixed prior draw)

    # probes at every step against direct jvps of the score at the recorded states
    @jax.jit
    def direct(x, t):
        s = lambda a, b, c: sj.score(micro, a, t, b, c)
        z = jnp.zeros_like(C)
        # lanes: J_x·w, J_C·u, J_y·v
        tx, tY, tC = jnp.stack([w, z, z]), jnp.stack([z, z, v]), jnp.stack([z, u, z])
        return jax.vmap(lambda a, b, c: jax.jvp(s, (x, Y, C), (a, b, c))[1])(tx, tY, tC)

    for k in range(STEPS):
        Jw, Ju, Jv = direct(pr.x[k], pr.t[k])
        assert _rel(pr.Jx_w[k], Jw) < 1e-4 and _rel(pr.JC_u[k], Ju) < 1e-4 and _rel(pr.JY_v[k], Jv) < 1e-4


def _dense(op, n_in: int, like):
    """Real Jacobian [2·m, n_in] of a real-linear map, built column by column (vmapped)."""
    cols = jax.vmap(op)(jnp.eye(n_in, dtype=jnp.real(like).dtype))
    cols = cols.reshape(n_in, -1)
    return np.asarray(jnp.concatenate([jnp.real(cols), jnp.imag(cols)], axis=1).T)


def test_sampler_spectrum_matches_dense_svd(reduced):
    model, (clean, noise) = reduced
    kw = dict(steps=2, k=4, num_matvecs=32)
    spectra = {w: an.sampler_spectrum(model, clean, noise, 1.0, 3, wrt=w, **kw) for w in ("C", "Y")}
    # the explicit Jacobian [K | L] of x̂ w.r.t. (C, Y), as a real matrix
    p = an._setup.prepare(model, clean, noise, 1.0, 3, steps=2)
    (Y, _, C), _ = an.sensitivity.front_jvp(p.model, p.clean, p.noise, p.m, p.norm_factor, p.static)
    assert C.shape == (8, 8)
    n = C.size
    S = lambda Yb, Cb: sj.sample(p.model, Yb, Cb, p.draws, p.static.sampler)
    to_c = lambda e: (e[:n] + 1j * e[n:]).reshape(C.shape)
    both = lambda e: jax.jvp(S, (Y, C), (to_c(e[2 * n :]), to_c(e[: 2 * n])))[1]
    J = _dense(jax.jit(both), 4 * n, C)
    for w, block in (("C", J[:, : 2 * n]), ("Y", J[:, 2 * n :])):
        dense = np.linalg.svd(block, compute_uv=False)
        spec = spectra[w]
        np.testing.assert_allclose(spec.values, dense[:4], rtol=1e-4)
        assert np.all(np.asarray(spec.residual) < 1e-4)
        np.testing.assert_allclose(jnp.linalg.norm(spec.right.reshape(4, -1), axis=-1), 1.0, rtol=1e-10)


def test_score_spectrum_matches_dense_svd(reduced):
    model, (clean, noise) = reduced
    p = an._setup.prepare(model, clean, noise, 1.0, 3, steps=2)
    (Y, _, C), _ = an.sensitivity.front_jvp(p.model, p.clean, p.noise, p.m, p.norm_factor, p.static)
    x = C + 0.1 * p.draws.prior
    spec = an.score_spectrum(p.model, x, 0.5, Y, C, wrt="x", k=3, num_matvecs=30)
    op = an.score_jacobian(p.model, x, 0.5, Y, C, "x")
    n = x.size
    dense = np.linalg.svd(_dense(jax.jit(lambda e: op((e[:n] + 1j * e[n:]).reshape(x.shape))), 2 * n, x), compute_uv=False)
    np.testing.assert_allclose(spec.values, dense[:3], rtol=1e-4)


def test_top_singular_and_gain_on_a_matrix():
    """The generic pieces on an explicit complex matrix (real-linear view [Re, Im])."""
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5)))
    op = lambda d: A @ d
    real = np.block([[np.real(A), -np.imag(A)], [np.imag(A), np.real(A)]])
    dense = np.linalg.svd(real, compute_uv=False)
    spec = jax.jit(lambda x: an.top_singular(op, x, 3, num_matvecs=10))(jnp.zeros(5, A.dtype))
    np.testing.assert_allclose(spec.values, dense[:3], rtol=1e-10)
    assert np.all(np.asarray(spec.residual) < 1e-10)
    g = an.direction_gain(op, spec.right[0], jax.random.key(1), n_random=20)
    np.testing.assert_allclose(g.gain, dense[0], rtol=1e-10)
    assert float(g.percentile) == 1.0 and np.all(np.asarray(g.random) <= dense[0] * (1 + 1e-12))
    with pytest.raises(ValueError, match="k must"):
        an.top_singular(op, jnp.zeros(5, A.dtype), 11)


# ---------------------------------------------------------------------------------------------
# kink statistics on synthetic curves with a known answer
# ---------------------------------------------------------------------------------------------


def _synthetic(kinked: bool, U=12, P=3, seed=0):
    """Per-sample curves f_i(M) = |M − 1| (or a smooth bump) + a random smooth part."""
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(1.0, 0.5, (U, P)))
    b = jnp.asarray(rng.normal(0.0, 0.3, (U, P)))
    c = jnp.asarray(rng.normal(1.0, 0.05, (U, P)))

    def f(m):
        smooth = a * (m - 1.0) ** 2 + b * jnp.sin(3.0 * m)
        return (jnp.abs(m - 1.0) if kinked else c * jnp.exp(-((m - 1.0) ** 2) / 0.1)) + smooth

    return f


def test_kink_statistic_on_synthetic_curves():
    kinked = an.kink_statistic(_synthetic(True), boot_key=jax.random.key(1))
    assert kinked.d_plus.shape == (6, 12, 3)
    lo, hi = kinked.kappa0_ci
    assert lo <= 2.0 <= hi and lo > 0, kinked.kappa0_ci  # true κ = 2, and the CI excludes 0
    assert abs(kinked.kappa0 - 2.0) < 1e-6
    assert np.all(kinked.kappa_ci[:, 0] <= kinked.kappa[:]) and np.all(kinked.kappa <= kinked.kappa_ci[:, 1])
    assert kinked.width_resolved and kinked.width >= 0.003

    smooth = an.kink_statistic(_synthetic(False), boot_key=jax.random.key(1))
    lo, hi = smooth.kappa0_ci
    assert lo <= 0.0 <= hi, smooth.kappa0_ci  # true κ = 0
    assert abs(smooth.kappa0) < 1e-4
    # κ(h) of a smooth curve shrinks linearly with h; the kinked one's stays near 2
    assert abs(smooth.kappa[0]) < 0.02 * abs(smooth.kappa[-1])
    assert abs(kinked.kappa[0] - 2.0) < 0.01


def test_kink_from_slopes_shapes_and_bootstrap():
    hs = np.array([0.01, 0.001])
    dp = np.ones((2, 5)) + 0.1 * np.arange(5)
    dm = -np.ones((2, 5))
    r = an.kink_from_slopes(dp, dm, hs, jax.random.key(0), n_boot=500)
    assert r.hs[0] == 0.001 and r.d_plus.shape == (2, 5, 1)
    np.testing.assert_allclose(r.kappa, 2.2)
    assert r.kappa_ci[0, 0] < 2.2 < r.kappa_ci[0, 1]
    with pytest.raises(ValueError, match="NaN"):
        an.kink_from_slopes(dp * np.nan, dm, hs, jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# bad input: each a clear error, never a silent NaN
# ---------------------------------------------------------------------------------------------


def test_bad_input(micro, micro_signals):
    clean, noise = micro_signals
    with pytest.raises(ValueError, match="finite"):
        an.pathwise_derivative(micro, clean, noise, float("nan"), 0, steps=STEPS)
    with pytest.raises(ValueError, match="finite"):
        an.factorize(micro, clean, noise, [1.0, float("inf")], 0, steps=STEPS)
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match="> 0"):
            an.pathwise_derivative(micro, clean, noise, bad, 0, steps=STEPS)
    with pytest.raises(ValueError, match="same length"):
        an.factorize(micro, clean, noise[:-10], 1.0, 0, steps=STEPS)
    with pytest.raises(ValueError, match="NaN/Inf samples"):
        an.factorize(micro, clean.at[5].set(jnp.nan), noise, 1.0, 0, steps=STEPS)
    with pytest.raises(ValueError, match="float64"):  # float32 cannot resolve M* ± 1e-6
        an.kink_statistic(lambda m: jnp.abs(m - 1.0)[None], hs=(1e-3, 1e-6), dtype=jnp.float32)
    with pytest.raises(ValueError, match="float64"):  # the model is float32
        an.kink_statistic(micro, clean, noise, 0, hs=(1e-7,), steps=STEPS)
    with pytest.raises(ValueError, match="beside M"):
        an.check_h_resolution(1.0, [0.0], np.float64)
    with pytest.raises(ValueError, match="M\\* − h"):
        an.check_h_resolution(1.0, [1.5], np.float64)
    with pytest.raises(ValueError, match="steps"):
        d = sj.draws_for(micro, ML, jax.random.key(0), sj.SamplerConfig(steps=5))
        an.factorize(micro, clean, noise, 1.0, d, steps=STEPS)
    with pytest.raises(ValueError, match="input channels"):
        an.factorize(micro, clean, noise, 1.0, 0, steps=STEPS, condition="predictor")
    with pytest.raises(ValueError, match="normalization"):
        an.factorize(micro, clean, noise, 1.0, 0, steps=STEPS, normalization="peak")


def test_non_finite_tangent_names_the_stage(micro, micro_signals, micro_fz):
    clean, noise = micro_signals
    # a NaN weight in the predictor: the first non-finite stage is the predictor's output
    nan_pred = jax.tree_util.tree_map(lambda a: jnp.full_like(a, jnp.nan), micro.params["predictor"])
    broken = micro.replace(params={**micro.params, "predictor": nan_pred})
    with pytest.raises(an.NonFiniteTangentError, match="predictor"):
        an.factorize(broken, clean, noise, 1.0, 7, steps=STEPS)
    # a tangent that is non-finite while the values are fine is named by its own stage
    fz = micro_fz
    stages = [("predictor C = Π(Y)", fz.value.C), ("v = dY/dM (analysis)", fz.v),
              ("u = dC/dM (predictor)", fz.u.at[0, 0].set(jnp.inf)), ("K·u (sampler)", fz.Ku)]  # fmt: skip
    with pytest.raises(an.NonFiniteTangentError, match=r"stage 'u = dC/dM \(predictor\)'"):
        an._setup.check_stages(stages, 1.0)
