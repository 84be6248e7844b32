"""The StoRM reverse SDE in continuous time: diffrax solvers on one shared Brownian path.

The reverse process of the OUVE SDE (``storm-reference.md`` § OUVE SDE, § Samplers) runs from
``t = T`` down to ``t_eps``. diffrax's stochastic Runge–Kutta solvers (SEA, ShARK) are only valid
forwards in time, so we integrate in a reversed, increasing variable ``u`` with a time map
``t(u)``::

    dx = b(u, x)·du + κ·g(t(u))·dW(u),     b(u, x) = −f_rev(x, t(u)) = −[θ(C − x) − g(t)²·s(x, t)]
    x(0) = C + σ(T)·z                      (prior, z from the path)

with ``s = s_θ(x, t, Y, C)`` and W a *real* standard Brownian motion on the real view
``[Re x, Im x]`` (shape ``[2, *shape]``). The model's noise is complex with ``E|dw|² = dt``
(each part of variance dt/2, what the reference trains with), so under the ``complex``
convention κ = 1/√2; under ``real`` κ = 1 (``SamplerConfig.noise``). The noise is additive
(independent of x), so Itô and Stratonovich solutions coincide and Euler–Maruyama has strong
order 1.

Time maps (``grid``), both evaluated on nested nodes ``u_k``:

* ``consistent``: ``u = τ = T − t`` on ``[0, T − t_eps]``, nodes ``u_k = k·(T − t_eps)/N``.
* ``reference``: the PyTorch reference's handling (``linspace(1, t_eps, N)`` with ``dt = 1/N``):
  ``u ∈ [0, 1]`` with nodes ``u_k = k/N`` and
  ``t(u) = max(t_eps, T + u·N·(t_eps − T)/(N − 1))``, so that the Euler nodes see exactly
  ``t_k = linspace(T, t_eps, N)[k]`` and the step ``du = 1/N``. The reference never evaluates
  below ``t_eps``; on the last interval the map is held at ``t_eps``. As N → ∞ this scheme
  converges to the time-changed SDE with ``t(u) = T − (T − t_eps)·u`` on ``u ∈ [0, 1]``, i.e. the
  reverse SDE with drift and g² scaled by ``1/(T − t_eps)``: a bias that does not vanish with N.

Final noise-free step (``denoise=True``, the reference's output ``x_mean``): the last step, from
``u_{N−1}`` to ``u_N``, is taken by the same solver with the Brownian increment and Lévy area
set to zero. For Euler this is exactly the reference's ``x_mean = x − f_rev·dt``
(``x̂ = x_{N−1} + b(u_{N−1}, x_{N−1})·(u_N − u_{N−1})``); for the others it is their own
deterministic step. (Zeroing the control inside the loop, rather than appending a separate
drift step, keeps a single copy of the score network in the compiled program.)

The Brownian path (:func:`brownian_path`) is a :class:`diffrax.VirtualBrownianTree` with
space-time Lévy area on ``[0, max(1, T − t_eps)]``: W(u) is a deterministic function of u (the
tree is re-derived from the key), so every solver and every step count that divides the path's
finest grid sees increments of the *same* path, and :func:`draws_from_path` turns them into the
discrete sampler's :class:`~storm_jax.sampling.Draws` (``z_k = κ·ΔW_k/√dt_k``), which makes the
hand-written scan sampler and ``diffrax.Euler`` + ``StepTo`` agree to rounding.

Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) works through every solver
(``adjoint=diffrax.ForwardMode()``); the path does not depend on the inputs, so the derivative is
the pathwise derivative along the fixed path. For the adaptive ODE the step sizes are
non-differentiable (diffrax's PID controller stops their gradients): the tangent is that of the
discrete scheme on the accepted step sequence.

References: diffrax (Kidger 2021, thesis §5.5); SEA and ShARK (Foster, dos Reis, Strange 2023,
arXiv:2210.17543, eqs. 5.8 and 6.1); Brownian tree with Lévy area (Jelinčič, Foster, Kidger
2024, arXiv:2405.06464).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Complex

from .sampling import GRIDS, NOISE_CONVENTIONS, Draws, SamplerConfig, complex_normal, time_grid
from .sde import OUVE

__all__ = [
    "SOLVERS",
    "ODE_METHODS",
    "NESTED_STEPS",
    "BrownianPath",
    "SolveConfig",
    "brownian_path",
    "path_nodes",
    "draws_from_path",
    "reverse_time_map",
    "solve_reverse_with_score",
    "solve_reverse",
    "noise_scale",
]

SOLVERS = ("euler", "heun", "reversible_heun", "sea", "shark", "ode")
ODE_METHODS = ("tsit5", "dopri5")
NESTED_STEPS = (8, 15, 30, 60, 120, 240, 480)
"""The step counts of the E4 audit; all divide the default finest grid (480)."""

# The threefry variant every path query runs under (BrownianPath.evaluate): fixed, so the path
# is a function of its key alone; False also compiles ~3x faster on CPU than JAX's default.
_THREEFRY_PARTITIONABLE = False


class BrownianPath(eqx.Module):
    """One Brownian path per (utterance, seed), shared by every solver and step count.

    Attributes:
        tree: :class:`diffrax.VirtualBrownianTree` of a real standard Brownian motion with
            space-time Lévy area, on ``[0, span]``, leaf shape ``[2, *shape]`` (real view).
        prior: ``[2, *shape]`` real standard normal draws; the prior is
            ``x_T = C + σ(T)·κ·(prior[0] + i·prior[1])``.
        corrector_key: PRNG key of the annealed-Langevin corrector draws (the corrector is not
            part of the reverse SDE, so its noise is not a Brownian increment).
        shape: complex state shape ``[..., F, T]``.
        finest: the finest grid; a step count N is allowed iff it divides ``finest``.
        span: length of the tree's interval, ``max(1, T − t_eps)``.
        tol: the tree's resolution (in units of u); query times closer than this may share a
            leaf, and then their joint law is no longer exact.
    """

    tree: diffrax.VirtualBrownianTree
    prior: Array
    corrector_key: Array
    shape: tuple[int, ...] = eqx.field(static=True)
    finest: int = eqx.field(static=True)
    span: float = eqx.field(static=True)
    tol: float = eqx.field(static=True)

    @property
    def dtype(self):
        """Real dtype of the path (the tree's leaves)."""
        return self.prior.dtype

    def evaluate(self, u0, u1=None, use_levy: bool = False):
        """``W(u0)`` (``u1=None``) or the increment ``W(u1) − W(u0)`` ``[2, *shape]``; with
        ``use_levy`` a :class:`diffrax.SpaceTimeLevyArea` ``(dt, W, H)`` of the interval.

        Always evaluate the path through this method (or the solvers of this module), never
        through ``self.tree`` directly: the tree is queried under a fixed threefry variant
        (``jax.threefry_partitionable(False)``), so the path is a function of its key alone,
        whatever the global JAX flag; on CPU this variant also compiles several times faster.
        """
        with jax.threefry_partitionable(_THREEFRY_PARTITIONABLE):
            return self.tree.evaluate(u0, u1, use_levy=use_levy)

    def to_draws(self, config: SamplerConfig, sde: OUVE = OUVE(), dtype=None, shape=None) -> Draws:
        """The discrete samplers' :class:`~storm_jax.sampling.Draws` on ``config``'s grid
        (:func:`draws_from_path`); ``shape``, if given, must be the path's state shape."""
        if shape is not None and tuple(shape) != tuple(self.shape):
            raise ValueError(f"the Brownian path has state shape {self.shape} but C has shape {tuple(shape)}")
        return draws_from_path(self, config, sde, dtype)

    def prior_complex(self) -> Array:
        """``prior[0] + i·prior[1]`` (each part N(0, 1); scale by κ for a convention)."""
        return jax.lax.complex(self.prior[0], self.prior[1])


class _UncheckedTree(diffrax.VirtualBrownianTree):
    """diffrax's tree without its range check on each query (``eqx.error_if``, a host callback:
    JAX never writes a program holding one to the persistent compilation cache, so every solve
    would recompile in every process). The solvers query the tree only at the path's own nodes,
    inside ``[t0, t1]``; a query outside it gives NaN instead of an error."""

    def _evaluate(self, r):
        r = jnp.where((r < 0) | (r > 1), jnp.nan, r)
        return jax.tree_util.tree_map(lambda key, shape: self._evaluate_leaf(key, r, shape), self.key, self.shape)


# The override uses diffrax's private leaf evaluation; another diffrax falls back to the checked tree.
_Tree = _UncheckedTree if hasattr(diffrax.VirtualBrownianTree, "_evaluate_leaf") else diffrax.VirtualBrownianTree


def brownian_path(
    key: Array,
    shape: tuple[int, ...],
    *,
    finest: int = 480,
    sde: OUVE = OUVE(),
    dtype=None,
    tol: float | None = None,
) -> BrownianPath:
    """A :class:`BrownianPath` for complex states of ``shape`` ``[..., F, T]``.

    Args:
        key: PRNG key; the same key gives the same path (prior, increments, Lévy areas).
        shape: complex state shape (the spectrogram's, batch axes included).
        finest: finest grid; nested grids ``N | finest`` share nodes exactly (default 480, divided
            by every N in :data:`NESTED_STEPS`).
        sde: fixes ``T`` and ``t_eps`` (the tree covers ``[0, max(1, T − t_eps)]``).
        dtype: real dtype (``float32``/``float64``; a complex dtype selects its real part);
            default: JAX's default float.
        tol: tree resolution. It must be below the smallest node spacing the path is queried on,
            so that no two query times share a leaf (then the joint law of all queried
            increments and Lévy areas is exact). Default: half the finest spacing,
            ``min(T − t_eps, 1)/(2·finest)``; pass a smaller value to evaluate the path on finer
            grids (e.g. a quadrature of the exact solution, see ``analysis.discretization``).
    """
    if finest < 1 or int(finest) != finest:
        raise ValueError(f"brownian_path: finest must be a positive integer, got {finest!r}")
    shape = tuple(int(s) for s in shape)
    if dtype is None:
        dtype = jnp.zeros(()).dtype
    dtype = jnp.finfo(jnp.dtype(dtype)).dtype  # complex64 -> float32, float64 -> float64
    span = float(max(1.0, sde.T - sde.t_eps))
    min_spacing = min(sde.T - sde.t_eps, 1.0) / finest
    if tol is None:
        tol = 0.5 * min_spacing
    if not (0 < tol < min_spacing):
        raise ValueError(f"brownian_path: tol must be in (0, {min_spacing:.3g}) (the finest spacing), got {tol}")
    k_tree, k_prior, k_corr = jax.random.split(key, 3)
    tree = _Tree(
        t0=jnp.zeros((), dtype),
        t1=jnp.asarray(span, dtype),
        tol=tol,
        shape=jax.ShapeDtypeStruct((2, *shape), dtype),
        key=k_tree,
        levy_area=diffrax.SpaceTimeLevyArea,
    )
    with jax.threefry_partitionable(_THREEFRY_PARTITIONABLE):
        prior = jax.random.normal(k_prior, (2, *shape), dtype)
    return BrownianPath(tree=tree, prior=prior, corrector_key=k_corr, shape=shape, finest=int(finest), span=span, tol=float(tol))


def noise_scale(noise: str) -> float:
    """κ: diffusion per real coordinate relative to g (1/√2 for ``complex``, 1 for ``real``)."""
    if noise not in NOISE_CONVENTIONS:
        raise ValueError(f"unknown noise convention {noise!r}; choose one of {NOISE_CONVENTIONS}")
    return math.sqrt(0.5) if noise == "complex" else 1.0


def _node_times(length: float, indices: np.ndarray, total: int) -> np.ndarray:
    # Divide the integers first: (i·r)/(M·r) and i/M round to the same float, so nested grids
    # (and refined quadrature grids) query the tree at bit-identical times. An ulp difference
    # could move a query across a leaf boundary of the tree, where W(u) has a √-shaped kink.
    return length * (indices.astype(np.float64) / float(total))


def path_nodes(sde: OUVE, steps: int, grid: str, finest: int | None = None) -> np.ndarray:
    """Nodes ``u_0 < … < u_N`` (float64, ``[N + 1]``) of the reversed variable u; see module doc.

    With ``finest`` the nodes are computed as a sub-grid of the finest grid (bit-identical to the
    corresponding finest nodes); ``steps`` must divide ``finest``.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {GRIDS}")
    length = (sde.T - sde.t_eps) if grid == "consistent" else 1.0
    if finest is None:
        return _node_times(length, np.arange(steps + 1), steps)
    stride = finest // steps
    return _node_times(length, stride * np.arange(steps + 1), finest)


def reverse_time_map(sde: OUVE, steps, grid: str) -> Callable[[Array], Array]:
    """The map ``u ↦ t(u) = max(t_eps, T + slope·u)`` of the module doc for N = ``steps``
    (``slope = −1`` on the consistent grid, ``N·(t_eps − T)/(N − 1)`` on the reference grid)."""
    t_lo, slope = _time_map_params(sde, steps, grid, jnp.zeros(()).dtype)
    return lambda u: jnp.maximum(t_lo, sde.T + jnp.asarray(u) * slope)


def _check_steps(path: BrownianPath, steps: int, what: str = "steps"):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{what} must be a positive integer, got {steps!r}")
    if path.finest % steps:
        raise ValueError(
            f"{what}={steps} does not divide the Brownian path's finest grid ({path.finest}); "
            f"nested grids need N | finest (divisors of {path.finest}: "
            f"{[d for d in range(1, path.finest + 1) if path.finest % d == 0]})"
        )


def _check_shape(path: BrownianPath, shape):
    if tuple(shape) != tuple(path.shape):
        raise ValueError(f"the Brownian path has state shape {path.shape} but C has shape {tuple(shape)}")


def draws_from_path(path: BrownianPath, config: SamplerConfig, sde: OUVE = OUVE(), dtype=None) -> Draws:
    """The discrete sampler's :class:`~storm_jax.sampling.Draws` taken from a Brownian path.

    For the nodes ``u_k`` of ``config.grid`` (:func:`path_nodes`) and the sampler's step sizes
    ``dt_k`` (:func:`~storm_jax.sampling.time_grid`)::

        z_k = κ·(ΔW_k[0] + i·ΔW_k[1]) / sqrt(dt_k),   ΔW_k = W(u_{k+1}) − W(u_k),

    so that the sampler's noise ``g(t_k)·sqrt(dt_k)·z_k`` equals the diffusion increment
    ``κ·g(t_k)·ΔW_k`` of ``diffrax.Euler`` on the same path (each ``z_k`` has the convention's law:
    parts N(0, ½) for ``complex``). The prior is ``κ·(prior[0] + i·prior[1])``. Corrector draws
    (ALD) come from ``path.corrector_key`` (they are not Brownian increments).

    Args:
        path: the shared path; ``config.steps`` must divide ``path.finest``.
        config: sampler settings (steps, grid, noise convention, corrector).
        sde: the SDE (for T and t_eps).
        dtype: complex dtype of the draws (default: complex of the path's dtype).

    Returns:
        Draws with ``prior [*shape]``, ``predictor [N, *shape]``, ``corrector [N, n_corr, *shape]``.
    """
    N = config.steps
    _check_steps(path, N, "config.steps")
    cdt = jnp.result_type(path.dtype, jnp.complex64) if dtype is None else jnp.dtype(dtype)
    return _draws_from_path(path, config, sde, cdt)


@functools.partial(jax.jit, static_argnames=("config", "sde", "cdt"))
def _draws_from_path(path: BrownianPath, config: SamplerConfig, sde: OUVE, cdt) -> Draws:
    # jitted (one compilation per path structure, config and dtype): the tree's random-number
    # kernels take seconds to compile on CPU.
    N = config.steps
    kappa = noise_scale(config.noise)
    u = jnp.asarray(path_nodes(sde, N, config.grid, path.finest), path.dtype)
    _, dts = time_grid(sde, N, config.grid)
    # One tree query per step with both ends, exactly as the solvers' control (_PathControl),
    # so the increments are bit-identical to the ones the diffrax solvers see. lax.map keeps
    # memory at one step's worth of tree intermediates.
    dW = jax.lax.map(lambda ab: path.evaluate(ab[0], ab[1]), (u[:-1], u[1:]))
    scale = jnp.asarray(kappa / np.sqrt(dts), path.dtype).reshape((N,) + (1,) * (dW.ndim - 1))
    dW = dW * scale
    predictor = jax.lax.complex(dW[:, 0], dW[:, 1]).astype(cdt)
    prior = (kappa * path.prior_complex()).astype(cdt)
    corrector = complex_normal(path.corrector_key, (N, config.n_corrector, *path.shape), cdt, config.noise)
    return Draws(prior=prior, predictor=predictor, corrector=corrector)


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """Settings of a continuous-time reverse solve apart from the step count (hashable; a static
    jit argument). The step count is a separate argument so that one compilation can serve every
    N (it may be a traced integer).

    Attributes:
        solver: ``euler`` (Euler–Maruyama), ``heun``, ``reversible_heun``, ``sea`` (shifted
            Euler, strong order 1), ``shark`` (shifted additive-noise RK, strong order 1.5), or
            ``ode`` (the probability-flow ODE ``dx = [θ(C − x) − ½g²s]dt`` with an adaptive
            solver; the path's prior is used, its increments are not).
        grid: ``reference`` or ``consistent`` (module doc).
        denoise: the reference's final noise-free step (ignored by ``ode``).
        noise: ``complex`` (κ = 1/√2, the reference) or ``real`` (κ = 1).
        ode_method: ``tsit5`` or ``dopri5`` (``ode`` only).
        rtol, atol: PID tolerances (``ode`` only).
        max_steps: step limit of the adaptive solve (``ode`` only).
    """

    solver: Literal["euler", "heun", "reversible_heun", "sea", "shark", "ode"] = "euler"
    grid: Literal["reference", "consistent"] = "reference"
    denoise: bool = True
    noise: Literal["complex", "real"] = "complex"
    ode_method: Literal["tsit5", "dopri5"] = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 16384

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose one of {GRIDS}")
        if self.noise not in NOISE_CONVENTIONS:
            raise ValueError(f"unknown noise convention {self.noise!r}; choose one of {NOISE_CONVENTIONS}")
        if self.ode_method not in ODE_METHODS:
            raise ValueError(f"unknown ode_method {self.ode_method!r}; choose one of {ODE_METHODS}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError("SolveConfig: rtol and atol must be positive")
        if self.max_steps < 1:
            raise ValueError("SolveConfig: max_steps must be >= 1")


class _AdditiveNoiseTerm(diffrax.ControlTerm):
    """``g(u)·dW`` with a scalar g: the diffusion is a multiple of the identity (additive,
    isotropic noise), so the product with the control is a scalar multiplication (no
    ``[*shape, *shape]`` matrix). SEA/ShARK call ``vf`` once per step (additive-noise branch)."""

    def prod(self, vf, control):
        return jtu.tree_map(lambda c: vf * c, control)


class _NestedStepTo(diffrax.AbstractStepSizeController):
    """``StepTo`` on the sub-grid ``ts[0], ts[stride], ts[2·stride], …`` of the finest nodes ``ts``
    with a possibly traced ``stride``: the nodes are the finest grid's own floats (bit-identical
    across N), and one compilation serves every N."""

    ts: Array
    stride: Array

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del terms, t0, t1, y0, args, func, error_order
        if dt0 is not None:
            raise ValueError("_NestedStepTo: dt0 must be None")
        return self.ts[self.stride], jnp.asarray(2, jnp.int32)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        del t0, y0, y1_candidate, args, y_error, error_order
        last = self.ts.shape[0] - 1
        nxt = self.ts[jnp.minimum(controller_state * self.stride, last)]
        return True, t1, nxt, False, controller_state + 1, diffrax.RESULTS.successful


def _real_view(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)])


def _complex_view(y):
    return jax.lax.complex(y[0], y[1])


def _diffrax_solver(name: str, ode_method: str):
    if name == "euler":
        return diffrax.Euler()
    if name == "heun":
        return diffrax.Heun()
    if name == "reversible_heun":
        return diffrax.ReversibleHeun()
    if name == "sea":
        return diffrax.SEA()
    if name == "shark":
        return diffrax.ShARK()
    return diffrax.Tsit5() if ode_method == "tsit5" else diffrax.Dopri5()


def _steps_array(path: BrownianPath | None, steps, check_divides: bool):
    """``(N, valid)``: a Python int is checked now (``ValueError``); a traced integer scalar is
    checked at run time without a host callback (a program with one is never written to the
    persistent compilation cache), so an invalid traced N runs as N = 1 and ``valid`` is false."""
    if isinstance(steps, (int, np.integer)):
        if check_divides:
            _check_steps(path, int(steps))
        elif steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return jnp.asarray(int(steps), jnp.int32), jnp.asarray(True)
    steps = jnp.asarray(steps)
    if steps.shape != () or not jnp.issubdtype(steps.dtype, jnp.integer):
        raise ValueError(f"steps must be an integer scalar, got shape {steps.shape} dtype {steps.dtype}")
    steps = steps.astype(jnp.int32)
    bad = steps < 1
    if check_divides:
        bad = bad | (steps > path.finest) | (path.finest % jnp.maximum(steps, 1) != 0)
    return jnp.where(bad, 1, steps), ~bad


def solve_reverse_with_score(
    sde: OUVE,
    score_fn: Callable[[Array, Array], Array],
    C: Complex[Array, "*batch F T"],
    path: BrownianPath,
    steps,
    config: SolveConfig = SolveConfig(),
    *,
    return_stats: bool = False,
):
    """Solve the reverse SDE (or probability-flow ODE) for any score ``score_fn(x, t)``.

    The generic entry (like :func:`~storm_jax.sampling.sample_with_score`): ``score_fn`` has the
    conditioning bound, takes the complex state ``x`` ``[*shape]`` and a scalar time t.

    Args:
        sde: the OUVE SDE.
        score_fn: ``s(x, t)``.
        C: the attractor (predictor output) ``[*shape]``, complex.
        path: the shared Brownian path (shape ``[*shape]``).
        steps: N, a divisor of ``path.finest``: a Python int (checked now) or a traced integer
            scalar (checked at run time; one compilation then serves every N).
        config: :class:`SolveConfig` (solver, grid, denoise, noise convention, ODE tolerances).
        return_stats: also return diffrax's statistics dict (``num_steps``, …; for the adaptive
            ODE ``num_accepted_steps``/``num_rejected_steps``) with ``successful`` (bool).

    Returns:
        ``x̂`` ``[*shape]`` (complex, dtype of C), and the stats with ``return_stats``. A solve
        that fails at run time (a traced N that does not divide the path's finest grid, or the
        adaptive ODE reaching ``max_steps``) returns NaN and ``successful = False`` instead of
        raising: the SDE solvers' compiled programs then hold no host callback and are written
        to the persistent compilation cache (JAX never caches a program with one; the ODE's
        still holds diffrax's check of a traced initial step ``dt0 = length/N``).
    """
    C = jnp.asarray(C)
    if not jnp.iscomplexobj(C):
        raise ValueError(f"C must be a complex array, got dtype {C.dtype}")
    if not isinstance(path, BrownianPath):
        raise TypeError(f"path must be a BrownianPath (storm_jax.brownian_path), got {type(path).__name__}")
    _check_shape(path, C.shape)
    is_ode = config.solver == "ode"
    N, valid = _steps_array(path, steps, check_divides=not is_ode)
    rdt = jnp.real(C).dtype
    kappa = noise_scale(config.noise)
    t_lo, slope = _time_map_params(sde, N, config.grid, rdt)

    def tmap(u):
        return jnp.maximum(t_lo, sde.T + u * slope)

    def drift(u, y, args):
        x = _complex_view(y)
        t = tmap(u)
        s = score_fn(x, t)
        f = sde.probability_flow_drift(x, C, t, s) if is_ode else sde.reverse_drift(x, C, t, s)
        return _real_view(-f).astype(y.dtype)

    def diffusion(u, y, args):
        return (kappa * sde.g(tmap(u))).astype(rdt)

    z = kappa * path.prior_complex()
    x0 = sde.prior_sample(C, z.astype(C.dtype))
    y0 = _real_view(x0)
    length = (sde.T - sde.t_eps) if config.grid == "consistent" else 1.0
    solver = _diffrax_solver(config.solver, config.ode_method)
    adjoint = diffrax.ForwardMode()

    if is_ode:
        u_end = jnp.asarray(length, rdt)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(drift), solver, t0=jnp.zeros((), rdt), t1=u_end, dt0=u_end / N.astype(rdt), y0=y0,
            stepsize_controller=diffrax.PIDController(rtol=config.rtol, atol=config.atol),
            adjoint=adjoint, max_steps=config.max_steps, saveat=diffrax.SaveAt(t1=True), throw=False,
        )
        y = sol.ys[0]
    else:
        ts = jnp.asarray(path_nodes(sde, path.finest, config.grid), rdt)  # the finest nodes
        stride = path.finest // N
        # The control is zero on steps starting at or after `quiet_from`: the last step when
        # denoising (the reference's x_mean), none otherwise. Step starts are exact node floats.
        quiet_from = ts[(N - 1) * stride] if config.denoise else jnp.asarray(jnp.inf, rdt)
        control = _PathControl(path.tree, rdt, quiet_from)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), _AdditiveNoiseTerm(diffusion, control))
        sol = diffrax.diffeqsolve(
            terms, solver, t0=ts[0], t1=ts[N * stride], dt0=None, y0=y0,
            stepsize_controller=_NestedStepTo(ts=ts, stride=stride),
            adjoint=adjoint, max_steps=path.finest, saveat=diffrax.SaveAt(t1=True), throw=False,
        )
        y = sol.ys[0]
    # throw=False: diffrax's error check is a host callback, which would keep the whole solve out
    # of the persistent compilation cache; a failed solve is NaN instead (stats["successful"]),
    # its tangents too (a factor NaN, where a `where` would give them zero).
    ok = valid & (sol.result == diffrax.RESULTS.successful)
    y = y * jnp.where(ok, 1.0, jnp.nan).astype(y.dtype)
    stats = {**sol.stats, "successful": ok}
    x = _complex_view(y).astype(C.dtype)
    return (x, stats) if return_stats else x


def _time_map_params(sde: OUVE, N, grid: str, dtype):
    """``(t_lo, slope)`` of ``t(u) = max(t_lo, T + slope·u)`` (module doc) for a possibly traced N."""
    if grid == "consistent":
        return jnp.asarray(sde.t_eps, dtype), jnp.asarray(-1.0, dtype)
    if grid != "reference":
        raise ValueError(f"unknown grid {grid!r}; choose one of {GRIDS}")
    Nf = jnp.asarray(N, dtype)
    # u·N = k at the nodes, so t_k = T + k·(t_eps − T)/(N − 1), the formula of np.linspace.
    slope = jnp.where(Nf > 1, Nf * ((sde.t_eps - sde.T) / jnp.maximum(Nf - 1, 1)), 0.0)
    return jnp.asarray(sde.t_eps, dtype), slope.astype(dtype)



class _PathControl(diffrax.AbstractBrownianPath):
    """The path's tree as diffrax's control: every evaluation under the fixed threefry variant
    (:meth:`BrownianPath.evaluate`), cast to the state's real dtype (a float64 path can drive a
    float32 solve; same dtype is a no-op), and zero (W and H) on intervals starting at or after
    ``quiet_from`` (the final noise-free step)."""

    tree: diffrax.VirtualBrownianTree
    dtype: object = eqx.field(static=True)
    quiet_from: Array = None

    @property
    def t0(self):
        return self.tree.t0

    @property
    def t1(self):
        return self.tree.t1

    @property
    def levy_area(self):
        return self.tree.levy_area

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        with jax.threefry_partitionable(_THREEFRY_PARTITIONABLE):
            out = self.tree.evaluate(t0, t1, left, use_levy)
        on = jnp.asarray(True) if (t1 is None or self.quiet_from is None) else t0 < self.quiet_from
        cast = lambda a: a.astype(self.dtype)
        if isinstance(out, diffrax.AbstractBrownianIncrement):
            # keep dt, zero W and the Lévy areas
            fields = {
                f.name: jnp.where(on, cast(getattr(out, f.name)), 0.0).astype(self.dtype)
                for f in dataclasses.fields(out) if f.name != "dt"
            }
            return type(out)(dt=cast(out.dt), **fields)
        return jnp.where(on, cast(out), 0.0).astype(self.dtype)


def solve_reverse(
    model,
    Y: Complex[Array, "*batch F T"],
    C: Complex[Array, "*batch F T"],
    path: BrownianPath,
    solver: str = "euler",
    steps=30,
    grid: str = "reference",
    *,
    denoise: bool = True,
    noise: str = "complex",
    ode_method: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 16384,
    return_stats: bool = False,
):
    """Continuous-time reverse process of a StoRM model on a shared Brownian path.

    ``x̂`` solves ``dx = −f_rev(x, t(u))du + κ·g(t(u))dW(u)`` from ``x_T = C + σ(T)·z`` (module
    doc) with ``s = s_θ(x, t, Y, C)`` (:func:`storm_jax.model.score`), or the probability-flow ODE
    for ``solver="ode"``. ``Y`` and ``C`` are compressed, padded spectrograms ``[..., F, T]``;
    ``path`` comes from :func:`brownian_path` with ``shape == C.shape``; ``steps`` divides
    ``path.finest`` (a Python int, checked at the call, or a traced integer); the solve is
    jitted with N traced, so one compilation serves every N of a (config, shape).
    With ``solver="euler"`` the result equals :func:`storm_jax.sample` with
    ``SamplerConfig(steps, grid=grid, noise=noise, denoise=denoise)`` on the same path, to
    rounding.

    Forward-mode derivatives (``jax.jvp`` in Y, C, or the parameters) are the exact pathwise
    derivatives of the discrete solve. Other arguments: :class:`SolveConfig`.
    """
    config = SolveConfig(
        solver=solver, grid=grid, denoise=denoise, noise=noise,
        ode_method=ode_method, rtol=rtol, atol=atol, max_steps=max_steps,
    )
    if not isinstance(path, BrownianPath):
        raise TypeError(f"path must be a BrownianPath (storm_jax.brownian_path), got {type(path).__name__}")
    if isinstance(steps, (int, np.integer)):
        # Checked now (a clear error at the call), then traced: one compilation serves every N.
        steps, _ = _steps_array(path, steps, check_divides=config.solver != "ode")
    return _solve_reverse_jit(model, Y, jnp.asarray(C), path, steps, config, return_stats)


@functools.partial(jax.jit, static_argnames=("config", "return_stats"))
def _solve_reverse_jit(model, Y, C, path, steps, config: SolveConfig, return_stats: bool):
    """:func:`solve_reverse` under one jit per (config, shapes): the score closure is rebuilt
    inside the trace, so eager calls with new ``Y``/``C``/``steps`` reuse the compilation."""
    from .model import score  # local import: keep continuous importable without the networks

    score_fn = lambda x, t: score(model, x, t, Y, C)
    return solve_reverse_with_score(model.config.sde, score_fn, C, path, steps, config, return_stats=return_stats)
