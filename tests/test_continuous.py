"""Continuous-time reverse solves (diffrax) against the scan sampler, closed forms and finite
differences; the discretization-analysis tools.

Most numerical checks use the Gaussian problem of ``storm_jax.analysis.discretization`` (exact
score, exact pathwise reverse solution), in float64. The tiny NCSN++ preset checks the model
path: scan sampler == diffrax Euler on one Brownian path, and jvp == finite differences.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import storm_jax as sj
from storm_jax import OUVE
from storm_jax.analysis.discretization import (
    GaussianProblem,
    convergence_study,
    estimate_order,
    fit_order,
    fit_order_bootstrap,
    richardson,
    si_sdr_weak_error,
    step_sizes,
    strong_error,
    tangent_error,
    weak_error,
)
from storm_jax.continuous import (
    NESTED_STEPS,
    SOLVERS,
    SolveConfig,
    brownian_path,
    draws_from_path,
    noise_scale,
    solve_reverse,
    solve_reverse_with_score,
)
from storm_jax.sampling import Draws, SamplerConfig, sample_with_score

SDE = OUVE()
SHAPE = (4, 16)  # 64 independent complex elements = 64 samples of the scalar problem
REFINE = 4  # quadrature grid of the exact solution: 4x the finest solver grid


def _cn(key, shape, scale=1.0):
    kr, ki = jax.random.split(key)
    return scale * (jax.random.normal(kr, shape, jnp.float64) + 1j * jax.random.normal(ki, shape, jnp.float64))


def _problem(sde=SDE, s0=0.1):
    C = jnp.full(SHAPE, 0.3 + 0.1j, jnp.complex128)
    mu0 = C + _cn(jax.random.key(3), SHAPE, 0.5)
    return GaussianProblem(sde, mu0, s0, C)


def _fine_path(key=0, shape=SHAPE):
    # the tree must resolve the quadrature grid of the exact solution (no two queries per leaf)
    return brownian_path(jax.random.key(key), shape, dtype=jnp.float64, tol=0.5 * 0.97 / (480 * REFINE))


SOLVERS3 = ("euler", "sea", "shark")


@jax.jit
def _study(prob, path, steps, v):
    """The exact solution, Euler/SEA/ShARK at every N of ``steps`` (traced N), and Euler's tangent
    ``dx̂/dC·v``, in one program: the tree's random kernels take seconds to compile on CPU, once
    per program."""
    exact = prob.assemble(prob.stochastic_integral(path, "consistent", refine=REFINE), path)

    def at(N):
        sols = [solve_reverse_with_score(prob.sde, prob.score, prob.C, path, N, SolveConfig(s, "consistent", denoise=False))
                for s in SOLVERS3]
        euler = lambda c: solve_reverse_with_score(prob.sde, prob._replace(C=c).score, c, path, N, SolveConfig("euler", "consistent", denoise=False))
        return jnp.stack(sols), jax.jvp(euler, (prob.C,), (v,))[1]

    sols, tangents = jax.lax.map(at, steps)  # [n_N, 3, *shape], [n_N, *shape]
    return exact, {s: sols[:, i] for i, s in enumerate(SOLVERS3)}, tangents


TANGENT_DIRECTION = _cn(jax.random.key(11), SHAPE, 0.1)


@pytest.fixture(scope="module")
def stiff():
    """StoRM's schedule (θ 1.5, σ 0.05…0.5) with concentrated data (s0 = 0.1): the reverse drift
    coefficient a = θ − g²/v runs from −6.1 at t = 1 to +0.1 at t_eps."""
    prob, path = _problem(), _fine_path()
    exact, sols, tangents = _study(prob, path, jnp.asarray(NESTED_STEPS), TANGENT_DIRECTION)
    return prob, path, exact, sols, tangents


def _curve(sols, exact, steps=NESTED_STEPS):
    return strong_error(np.asarray(sols).reshape(len(steps), -1, 1), np.asarray(exact).reshape(-1, 1), steps)


# --------------------------------------------------------------------------------------------
# the shared path


def test_scan_sampler_equals_diffrax_euler_on_the_same_path(stiff):
    """Euler–Maruyama scan sampler with its noise taken from the path == diffrax.Euler + nested
    StepTo on the same VirtualBrownianTree (N = 8 of 480; consistent grid, no final noise-free
    step; the tiny-model test covers the reference grid with it)."""
    prob, path, _, sols, _ = stiff
    cfg = SamplerConfig(steps=8, grid="consistent", denoise=False)
    a = sample_with_score(SDE, prob.score, prob.C, path, cfg)  # a BrownianPath in place of draws
    b = sols["euler"][NESTED_STEPS.index(8)]
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-12
    assert float(jnp.max(jnp.abs(a - prob.C))) > 0.1  # not a trivial agreement


def test_nested_grids_share_increments_and_draw_law(stiff):
    """Coarse increments are sums of fine ones (N = 8 against the finest grid, 480), and the draws
    have the sampler's complex convention (parts N(0, 1/2), uncorrelated)."""
    _, path, _, _, _ = stiff
    kappa = noise_scale("complex")
    d = draws_from_path(path, SamplerConfig(steps=8, grid="consistent", denoise=False), SDE)  # as above
    coarse = np.asarray(d.predictor[0]) * np.sqrt(0.97 / 8) / kappa  # ΔW over the first step
    u = 0.97 * (np.arange(61) / 480.0)  # the 60 finest nodes inside it, as path_nodes builds them
    fine = sum(np.asarray(path.evaluate(u[i], u[i + 1])) for i in range(60))
    np.testing.assert_allclose(fine[0] + 1j * fine[1], coarse, atol=1e-13)
    z = np.asarray(d.predictor)
    assert np.var(z.real) == pytest.approx(0.5, rel=0.2) and np.var(z.imag) == pytest.approx(0.5, rel=0.2)
    assert abs(np.mean(z.real * z.imag)) < 0.06
    # the same path gives the same prior to the scan sampler and to the solvers
    np.testing.assert_array_equal(d.prior, kappa * np.asarray(path.prior_complex()))


# --------------------------------------------------------------------------------------------
# strong orders on the Gaussian problem


def test_euler_strong_order_one(stiff):
    _, _, exact, sols, _ = stiff
    c = _curve(sols["euler"], exact)
    assert c.fit.method == "bootstrap"
    assert abs(c.fit.order - 1.0) <= 0.2 and 0.8 <= c.fit.ci[0] <= c.fit.ci[1] <= 1.2, c.fit
    assert np.all(np.diff(c.error) < 0)


def test_shark_at_least_as_accurate_and_sea_order_one(stiff):
    """ShARK beats Euler at every N (and shows order ≥ 1.5 here: 2 on this linear problem). SEA
    has strong order 1 but, on StoRM's stiff, time-inhomogeneous reverse drift, a constant about
    1.4x Euler's (measured; the next test shows its advantage where the drift is mild)."""
    _, _, exact, sols, _ = stiff
    eu, sea, shark = (_curve(sols[s], exact) for s in ("euler", "sea", "shark"))
    assert np.all(shark.error <= eu.error)
    assert shark.fit.order >= 1.5 and shark.fit.ci[0] >= 1.4, shark.fit
    # ...which also shows that the exact solution's quadrature is converged below 2e-6
    assert shark.error[-1] < 2e-6
    assert abs(sea.fit.order - 1.0) <= 0.2, sea.fit
    ratio = sea.error / eu.error
    assert np.all((ratio > 1.0) & (ratio < 2.0)), ratio  # documents the measured constant


def test_sea_beats_euler_where_the_drift_is_mild(stiff):
    """Broad data (s0 = 30): v ≫ g², the drift's state coefficient stays within [1.47, 1.5] (no
    stiffness): SEA's error is below Euler's at every N (by about 20 %)."""
    prob, path, _, _, _ = stiff
    exact, sols, _ = _study(prob._replace(s0=30.0), path, jnp.asarray(NESTED_STEPS), TANGENT_DIRECTION)
    eu, sea = _curve(sols["euler"], exact), _curve(sols["sea"], exact)
    assert np.all(sea.error < 0.9 * eu.error), (sea.error, eu.error)


def test_tangent_converges_at_the_same_order(stiff):
    """dx̂/dC along the fixed path (jvp through diffrax Euler, ForwardMode) against the exact
    tangent (jvp of the closed form): relative error of order 1 ± 0.2, like the solution."""
    prob, path, exact, _, tangents = stiff
    # the solution is affine in the path's integral I, which does not depend on C: the exact
    # tangent is the jvp of the closed form's deterministic part (I = 0)
    zero = jnp.zeros(SHAPE, jnp.complex128)
    _, t_exact = jax.jvp(lambda C: prob.assemble(zero, path, C=C), (prob.C,), (TANGENT_DIRECTION,))
    c = tangent_error(np.asarray(tangents).reshape(len(NESTED_STEPS), 1, -1), t_exact.reshape(1, -1), NESTED_STEPS)
    assert c.fit.method == "regression"
    assert abs(c.fit.order - 1.0) <= 0.2, c.fit
    assert c.error[-1] < 0.02
    # a traced step count that does not divide the finest grid gives NaN at run time (no host
    # callback in the program, so it is persistently cacheable); the valid N are unaffected
    bad = jnp.asarray((7,) + NESTED_STEPS[1:])
    _, bad_sols, bad_tangents = _study(prob, path, bad, TANGENT_DIRECTION)
    assert np.all(np.isnan(np.asarray(bad_tangents[0]))) and np.all(np.isnan(np.asarray(bad_sols["euler"][0])))
    np.testing.assert_array_equal(np.asarray(bad_tangents[1:]), np.asarray(tangents[1:]))


# Euler's jvp is checked against the exact tangent (above) and on the tiny model (below)
JVP_SOLVERS = (("heun", "tsit5"), ("reversible_heun", "tsit5"), ("sea", "tsit5"), ("shark", "tsit5"),
               ("ode", "tsit5"), ("ode", "dopri5"))


@jax.jit
def _jvp_all(prob, path, C, v):
    """``jax.jvp`` in C of every solver (N = 15, consistent grid, no final noise-free step)."""
    out = []
    for solver, method in JVP_SOLVERS:
        cfg = SolveConfig(solver, "consistent", denoise=False, ode_method=method, rtol=1e-9, atol=1e-9)
        f = lambda c, cfg=cfg: solve_reverse_with_score(SDE, prob._replace(C=c).score, c, path, 15, cfg)
        out.append(jax.jvp(f, (C,), (v,)))
    return out


def test_jvp_through_every_solver_matches_finite_differences_and_ode_closed_form(stiff):
    """Forward mode (ForwardMode adjoint) through Heun, ReversibleHeun, SEA, ShARK and the
    adaptive probability-flow ODE (Tsit5, Dopri5 + PID) equals a central difference (float64,
    ε = 1e-6); the ODE solves reach the closed-form flow map
    ``x(t_eps) = m(t_eps) + sqrt(v(t_eps)/v(T))·(x_T − m(T))`` (GaussianProblem) to 1e-6."""
    prob, path, _, _, _ = stiff
    v = _cn(jax.random.key(12), SHAPE, 0.1)
    eps = 1e-6
    res, plus, minus = (_jvp_all(prob, path, prob.C + e * v, v) for e in (0.0, eps, -eps))
    for (solver, method), (x, dx), (xp, _), (xm, _) in zip(JVP_SOLVERS, res, plus, minus):
        fd = (xp - xm) / (2 * eps)
        assert bool(jnp.all(jnp.isfinite(dx))) and float(jnp.linalg.norm(dx)) > 0.01, solver
        tol = 1e-5 if solver == "ode" else 1e-6  # the ODE's accepted steps move with C (PID)
        assert float(jnp.linalg.norm(dx - fd) / jnp.linalg.norm(dx)) < tol, (solver, method)
    flow = prob.exact_flow_solution(path)
    closed = prob.mean(SDE.t_eps) + jnp.sqrt(prob.var(SDE.t_eps) / prob.var(1.0)) * (
        prob.C + SDE.std(1.0) * noise_scale("complex") * path.prior_complex() - prob.mean(1.0))
    np.testing.assert_allclose(flow, closed, rtol=1e-12, atol=1e-12)
    for (solver, method), (x, _) in zip(JVP_SOLVERS, res):
        if solver == "ode":
            assert float(jnp.max(jnp.abs(x - flow))) < 1e-6, method


# --------------------------------------------------------------------------------------------
# the reference grid's bias


@functools.partial(jax.jit, static_argnames=("steps",))
def _sampler_moments(prob, steps):
    """Exact mean and variance of the scan sampler's output (one element), reference minus
    consistent grid, for each N: the sampler is affine in its noise, so the mean is the
    noise-free run and ``Var = ½·Σ|∂x̂/∂(Re z, Im z)|²`` (parts of variance ½)."""
    C, sub = prob.C[:1, :1], prob._replace(mu0=prob.mu0[:1, :1], C=prob.C[:1, :1])
    dm, dv = [], []
    for N in steps:
        z, p = jnp.zeros((N, 1, 1)), jnp.zeros((1, 1))
        mv = []
        for grid in ("reference", "consistent"):
            cfg = SamplerConfig(steps=N, grid=grid, denoise=False)

            def out(zr, zi, pr, pi, cfg=cfg, N=N):
                d = Draws(prior=pr + 1j * pi, predictor=zr + 1j * zi, corrector=jnp.zeros((N, 0, 1, 1), jnp.complex128))
                x = sample_with_score(SDE, sub.score, C, d, cfg)
                return jnp.stack([x.real, x.imag]).ravel()

            m = out(z, z, p, p)
            var = 0.5 * sum(jnp.sum(j**2) for j in jax.jacfwd(out, argnums=(0, 1, 2, 3))(z, z, p, p))
            mv.append((m[0] + 1j * m[1], var))
        dm.append(mv[0][0] - mv[1][0])
        dv.append(mv[0][1] - mv[1][1])
    return jnp.stack(dm), jnp.stack(dv)


def test_reference_grid_bias_has_predicted_sign_and_size():
    r"""The reference's ``dt = 1/N`` on ``linspace(1, t_eps, N)`` is biased, and the bias is
    predicted in closed form.

    Derivation. The reference step is ``x_{k+1} = x_k − f_rev(x_k, t_k)/N + g(t_k)N^{−1/2}z_k``
    with ``t_k = T − k(T − t_eps)/(N − 1)``. With ``s_k = k/N`` this is Euler–Maruyama (step
    1/N) for ``dx = −f_rev(x, t(s))ds + g(t(s))dw(s)``, ``s ∈ [0, 1]``, ``t(s) = T − (T − t_eps)s``,
    up to the offset ``t_k − t(s_k) = O(1/N)``. In physical time (``dt = −(T − t_eps)ds``) that
    is the reverse SDE with drift and g² multiplied by ``λ = 1/(T − t_eps) = 1/0.97``: the scheme
    converges, at weak order 1, to a *different* SDE, so its bias tends to a nonzero limit.

    On the Gaussian problem both SDEs are linear (``GaussianProblem``, time map
    ``t = T − αu``, α = 1 consistent, α = T − t_eps reference):
    ``E x̂ = m(t_eps) + Φ_α(U)[C − m(T) + (1 − α)θ(μ0 − C)j_α(U)]``,
    ``Φ_α(U) = e^{−θU}(v(t_eps)/v(T))^{1/α}``, ``Var x̂ = Φ_α(U)²[σ(T)² + ∫_0^U g²/Φ_α² du]``.
    Sign of the mean bias: ``Φ_ref/Φ_cons = e^{−θ t_eps}(v(t_eps)/v(T))^{1/α − 1} < 1`` (v grows
    with t), so the prior's offset ``C − m(T) = −e^{−θT}(μ0 − C)`` is contracted more, and the
    forcing ``(1 − α)θ(μ0 − C)j > 0``: both move the output toward the data mean μ0, i.e. the bias
    is a *positive* multiple of ``μ0 − C`` (≈ 1.24 % of it here). The variance bias is small
    (≈ −0.5 % of v(t_eps) for s0 = 0.1); its sign is the closed form's.

    Measurement: the sampler's exact output moments (``_sampler_moments``) on both grids at
    N = 120, 240, 480; their difference extrapolated to N → ∞ by Richardson (order 1) must match
    the prediction, and at every N the bias has the predicted sign and does not shrink below
    half its limit (it does not vanish with N).
    """
    prob = _problem()
    d = complex(prob.mu0[0, 0] - prob.C[0, 0])
    m_ref, v_ref = prob.exact_moments("reference")
    m_con, v_con = prob.exact_moments("consistent")
    pred_m = complex(m_ref[0, 0] - m_con[0, 0]) / d  # a real positive factor
    pred_v = float(v_ref - v_con)
    assert abs(pred_m.imag) < 1e-12 and pred_m.real > 0
    assert 0.005 < pred_m.real < 0.03 and -0.01 < pred_v / float(v_con) < 0  # the stated size
    steps = (120, 240, 480)
    bm, bv = _sampler_moments(prob, steps)
    bm, bv = np.asarray(bm) / d, np.asarray(bv)
    assert np.all(np.abs(bm.imag) < 1e-10) and np.all(bm.real > 0.5 * pred_m.real)
    h = 1.0 / np.asarray(steps)
    em = richardson(h, bm.real, order=1.0, terms=2)
    ev = richardson(h, bv, order=1.0, terms=2)
    assert em.value == pytest.approx(pred_m.real, rel=2e-3)
    assert ev.value == pytest.approx(pred_v, rel=2e-2)
    assert np.sign(ev.value) == np.sign(pred_v)


# --------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_give_clear_errors():
    prob, path = _problem(), brownian_path(jax.random.key(0), SHAPE, dtype=jnp.float64)
    f = lambda **kw: solve_reverse_with_score(SDE, prob.score, prob.C, path, kw.pop("N", 30), SolveConfig(**kw))
    with pytest.raises(ValueError, match="unknown solver"):
        f(solver="milstein")
    with pytest.raises(ValueError, match="unknown grid"):
        f(grid="uniform")
    with pytest.raises(ValueError, match="unknown noise"):
        f(noise="pink")
    with pytest.raises(ValueError, match="does not divide"):
        f(N=7)
    with pytest.raises(ValueError, match="positive"):
        f(N=0)
    with pytest.raises(ValueError, match="shape"):
        solve_reverse_with_score(SDE, prob.score, prob.C[:2], path, 30)
    with pytest.raises(ValueError, match="complex"):
        solve_reverse_with_score(SDE, prob.score, prob.C.real, path, 30)
    with pytest.raises(TypeError, match="BrownianPath"):
        solve_reverse_with_score(SDE, prob.score, prob.C, jax.random.key(0), 30)
    with pytest.raises(ValueError, match="does not divide"):
        sample_with_score(SDE, prob.score, prob.C, path, SamplerConfig(steps=7))
    with pytest.raises(ValueError, match="shape"):
        sample_with_score(SDE, prob.score, prob.C[:2], path, SamplerConfig(steps=8))
    with pytest.raises(ValueError, match="finest"):
        brownian_path(jax.random.key(0), SHAPE, finest=0)
    with pytest.raises(ValueError, match="tol"):
        brownian_path(jax.random.key(0), SHAPE, tol=0.1)
    with pytest.raises(ValueError, match="resolution"):
        prob.stochastic_integral(path, refine=8)  # default tol is too coarse for the quadrature
    # a traced step count is checked at run time


# --------------------------------------------------------------------------------------------
# analysis tools


def test_order_fits_and_extrapolation_on_known_curves():
    h = step_sizes(NESTED_STEPS)
    assert h[0] == pytest.approx(0.97 / 8) and step_sizes([10], "reference")[0] == pytest.approx(0.1)
    e = 0.3 * h**1.5 * (1 + 0.01 * np.sin(np.arange(len(h))))
    fit = fit_order(h, e)
    assert fit.ci[0] < 1.5 < fit.ci[1] and abs(fit.order - 1.5) < 0.02
    # bootstrap interval over samples: errors with a sample-dependent constant
    rng = np.random.default_rng(0)
    E = rng.uniform(0.5, 2.0, size=(1, 50)) * h[:, None] ** rng.uniform(0.8, 1.2, size=(1, 50))
    fb = fit_order_bootstrap(h, E, seed=1)
    assert fb.method == "bootstrap" and fb.ci[0] < fb.order < fb.ci[1] and abs(fb.order - 1.0) < 0.2
    assert fb.ci[1] - fb.ci[0] < 0.3
    assert fb == fit_order_bootstrap(h, E, seed=1)  # reproducible
    # Richardson: φ(h) = 2 + 3h − h² is recovered exactly with two correction terms
    phi = 2 + 3 * h - h**2
    r = richardson(h[-3:], phi[-3:], order=1.0, terms=2)
    assert r.value == pytest.approx(2.0, abs=1e-12) and r.coefficients == pytest.approx([3.0, -1.0])
    assert richardson(h[-2:], phi[-2:], order=1.0).value == pytest.approx(2.0, abs=1e-4)
    assert estimate_order(h, 1.0 + h**1.7) == pytest.approx(1.7, abs=1e-6)
    assert richardson(h, 1.0 + h**1.7, order=None).value == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        fit_order(h, -e)
    with pytest.raises(ValueError):
        richardson(h[:1], phi[:1])
    with pytest.raises(ValueError):
        estimate_order(h, np.ones_like(h))


def test_weak_error_and_si_sdr_weak_error():
    rng = np.random.default_rng(0)
    steps = np.array([8, 16, 32, 64])
    h = 1.0 / steps
    S, L = 40, 2000
    clean = rng.standard_normal((S, L))
    noise = rng.standard_normal((S, L))
    est = np.stack([clean + (0.1 + hh) * noise for hh in h])  # SI-SDR falls with h
    ref = clean + 0.1 * noise
    w = si_sdr_weak_error(est, ref, clean, steps, h)
    assert np.all(w.bias < 0) and np.all(w.ci[:, 1] < 0)  # the biases are resolved
    assert np.all(np.diff(w.error) < 0) and 0.8 < w.fit.order < 1.2
    stats = rng.standard_normal((3, 1000)) + np.array([[0.3], [0.1], [0.0]])
    w2 = weak_error(stats, 0.0, [1, 2, 4], [1.0, 0.5, 0.25])
    assert w2.ci[2, 0] < 0 < w2.ci[2, 1]  # no bias at the last N: the interval covers 0


def test_convergence_study_against_finest(stiff):
    _, _, _, sols, _ = stiff
    steps = (15, 30, 60, 480)
    c = convergence_study(lambda N: np.asarray(sols["euler"][NESTED_STEPS.index(N)]).reshape(-1, 1), steps)
    assert c.error[-1] == 0.0 and abs(c.fit.order - 1.0) < 0.25


# --------------------------------------------------------------------------------------------
# the tiny StoRM model


TINY_SHAPE = (256, 4)


def _tiny_model(seed: int):
    """The ``tiny`` preset's networks (architecture and parameter tree from ``init_storm``) with
    random weights drawn here: fan-in scaled normals for kernels and weights, zero biases, unit
    GroupNorm scales (the tree from :func:`storm_jax.param_shapes`, without compiling anything)."""
    abstract = sj.StormModel(config=sj.storm_config("tiny"), params=sj.param_shapes("tiny"))
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract.params)
    rng = np.random.default_rng(seed)  # NumPy: no per-shape compilation of random kernels

    def draw(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name in ("bias", "b"):
            return jnp.zeros(leaf.shape, jnp.float64)
        if name == "scale":
            return jnp.ones(leaf.shape, jnp.float64)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        std = 16.0 if len(leaf.shape) == 1 else 0.5 / np.sqrt(fan_in)  # 1-D "W": the Fourier features
        return jnp.asarray(std * rng.standard_normal(leaf.shape))

    params = treedef.unflatten([draw(p, leaf) for p, leaf in flat])
    return sj.StormModel(config=abstract.config, params=params)


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_model(0)
    Y = _cn(jax.random.key(1), TINY_SHAPE, 0.3)
    C = 0.8 * Y + _cn(jax.random.key(2), TINY_SHAPE, 0.05)  # any attractor; the predictor is not under test
    path = brownian_path(jax.random.key(3), TINY_SHAPE, finest=8, dtype=jnp.float64)
    return model, Y, C, path


def test_tiny_model_scan_equals_diffrax_euler_and_jvp_matches_finite_differences(tiny):
    """On the tiny NCSN++ StoRM model (float64), in one compiled program:

    * ``storm_jax.sample`` (reference grid, reverse-diffusion predictor, final noise-free step)
      with the Brownian path in place of draws == ``solve_reverse(solver="euler")`` on the same
      path (≤ 1e-6);
    * ``jax.jvp`` in C through that diffrax solve (``ForwardMode``): finite, and equal to a
      central difference. (The other solvers' jvps are checked on the Gaussian problem above;
      each network copy costs ~10–20 s of compilation here. ``benchmarks/bench_continuous.py``
      repeats the finite-difference check for every solver on the tiny model.)
    """
    model, Y, C, path = tiny
    v = _cn(jax.random.key(9), TINY_SHAPE, 0.1)

    @jax.jit
    def program(c, v):
        scan = sj.sample(model, Y, c, path, SamplerConfig(steps=4))
        euler = jax.jvp(lambda c: solve_reverse(model, Y, c, path, "euler", 4, "reference"), (c,), (v,))
        return scan, euler

    eps = 1e-5
    (scan, (x, dx)), (_, (xp, _)), (_, (xm, _)) = (program(C + e * v, v) for e in (0.0, eps, -eps))
    assert float(jnp.max(jnp.abs(scan - x))) <= 1e-6
    assert float(jnp.max(jnp.abs(scan - C))) > 1e-3
    fd = (xp - xm) / (2 * eps)
    assert bool(jnp.all(jnp.isfinite(dx))) and float(jnp.linalg.norm(dx)) > 0
    assert float(jnp.linalg.norm(dx - fd) / jnp.linalg.norm(dx)) < 1e-6


def test_failed_solve_is_nan_and_the_program_holds_no_host_callback(stiff):
    """A solve that fails at run time returns NaN (``successful = False``) instead of raising
    through a host callback: JAX never writes a program holding one to the persistent
    compilation cache, so every run would recompile the solve. The SDE solvers' programs hold
    none (diffrax's tree queries and its ``throw`` are the usual sources); the adaptive ODE
    stopped by ``max_steps`` is NaN."""
    prob, path = stiff[0], stiff[1]
    for solver in ("euler", "sea"):
        cfg = SolveConfig(solver, "consistent", denoise=False)
        hlo = jax.jit(lambda C: solve_reverse_with_score(prob.sde, prob._replace(C=C).score, C, path, 15, cfg)).lower(prob.C).as_text()
        assert "callback" not in hlo.lower(), solver
    cfg = SolveConfig("ode", "consistent", denoise=False, rtol=1e-9, atol=1e-9, max_steps=2)
    x, stats = solve_reverse_with_score(prob.sde, prob.score, prob.C, path, 15, cfg, return_stats=True)
    assert not bool(stats["successful"]) and np.all(np.isnan(np.asarray(x)))
    x, stats = solve_reverse_with_score(prob.sde, prob.score, prob.C, path, 15, dataclasses.replace(cfg, max_steps=4096), return_stats=True)
    assert bool(stats["successful"]) and np.all(np.isfinite(np.asarray(x)))
