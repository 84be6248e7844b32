"""Tests of the NCSN++ backbone (storm_jax.nn): sizes, key map, numerical parity, dtypes.

Fixtures (made once with a throwaway script outside the repository, from the PyTorch reference
sp-uhh/storm at commit 257e963, torch 2.13.0+cpu, CPU; the reference's ``op/`` CUDA extension
loader was replaced by a no-op so that its pure-torch ``upfirdn2d_native`` path ran, and its
float32 FIR kernel was cast to float64 for the float64 run):

* ``fixtures/ncsnpp_reference_keys.json``: ``[key, shape]`` of ``NCSNpp().state_dict()`` for the
  default ``ncsnpp`` settings as a 6-channel score net (``input_channels=6``) and as the
  predictor (``discriminative=True``), in state_dict order.
* ``fixtures/ncsnpp_tiny_parity.npz``: a small net (``tiny`` preset with nf=8, ch_mult (1, 2, 2),
  one ResBlock per level, attention at frequency size 16 with image_size=32, so level 1 and the
  mid block have attention), built both as a 6-channel score net and as a predictor. Every
  parameter was redrawn with ``torch.Generator().manual_seed(1234)`` (weights N(0, 1/fan_in),
  GroupNorm weights 1 + 0.1·N, biases 0.1·N; the Fourier W kept at N(0, 16²)). Inputs: complex
  [2, D, 32, 16] from ``numpy.random.default_rng(1234)`` (N(0, ¼) real and imaginary parts),
  t = [0.03, 0.9]. Stored: the float32 state_dict (``{role}/state/{key}``), the input in our
  layout [B, F, T, D] (``{role}/x``), ``{role}/t``, and the reference outputs [B, F, T] of the
  float32 model (``out32``) and of the same weights in float64 (``out64``).

Observed with the same script on larger inputs ([1, 256, 64], random weights): relative error
≈ 1.5e-6 (tiny preset) and ≈ 3.4e-6 (ncsnpp, score net and predictor) in float32, ≈ 6e-15 in
float64.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storm_jax.nn import (
    PRESETS,
    NCSNpp,
    NCSNppConfig,
    count_params,
    init_params,
    ncsnpp_config,
    reference_keys,
    reference_shapes,
    to_flax,
    to_torch,
    torch_key_map,
)
from storm_jax.nn import layers as L

FIXTURES = Path(__file__).parent / "fixtures"

# Exact sizes of the PyTorch reference classes (NCSNpp, NCSNppLarge, NCSNpp12M, NCSNpp6M), counted
# from their state_dicts: (6-channel score net, 4-channel score net, predictor) -> (params, tensors).
REFERENCE_SIZES = {
    "ncsnpp": [(27_776_038, 271), (27_756_314, 271), (27_342_350, 267)],
    "ncsnpplarge": [(65_623_352, 647), (65_590_822, 647), (65_164_052, 643)],
    "ncsnpp12M": [(11_688_614, 273), (11_675_546, 273), (11_440_526, 269)],
    "ncsnpp6M": [(5_225_990, 269), (5_216_762, 269), (4_985_582, 265)],
}
ROLES = [{"input_channels": 6}, {"input_channels": 4}, {"discriminative": True}]


def _abstract_params(cfg: NCSNppConfig, f: int = 256, t: int = 64):
    """Parameter shapes via ``jax.eval_shape`` (nothing is compiled or allocated)."""
    d = cfg.effective_input_channels // 2
    x = jax.ShapeDtypeStruct((1, f, t, d), jnp.complex64)
    tt = None if cfg.discriminative else jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(NCSNpp(cfg).init, jax.random.key(0), x, tt)["params"]


def _flat(params) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in jax.tree_util.tree_leaves_with_path(params)}


def _random_complex(rng, shape, dtype=np.complex64):
    return ((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * 0.5).astype(dtype)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def test_presets_and_config():
    assert set(PRESETS) == {"ncsnpp", "ncsnpplarge", "ncsnpp12M", "ncsnpp6M", "tiny", "small", "micro"}
    assert ncsnpp_config("ncsnpp") == NCSNppConfig()
    big = ncsnpp_config("ncsnpplarge")
    assert (big.nf, big.ch_mult, big.num_res_blocks, big.attn_resolutions) == (128, (1, 1, 2, 2, 2, 2, 2), 2, (16,))
    assert ncsnpp_config("ncsnpp12M").ch_mult == (1, 2, 2, 1) and ncsnpp_config("ncsnpp12M").nf == 96
    assert ncsnpp_config("ncsnpp6M").ch_mult == (1, 1, 1, 1) and ncsnpp_config("ncsnpp6M").nf == 96
    assert ncsnpp_config("tiny", nf=8).nf == 8
    with pytest.raises(ValueError, match="ncsnpplarge"):
        ncsnpp_config("huge")
    # lists (e.g. from JSON) become tuples; configs are hashable and usable as jit statics
    cfg = NCSNppConfig(ch_mult=[1, 2], attn_resolutions=[0], fir_kernel=[1, 3, 3, 1])
    assert cfg.ch_mult == (1, 2) and hash(cfg) == hash(NCSNppConfig(ch_mult=(1, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.nf = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        NCSNppConfig(progressive="residual")
    # discriminative overrides, as in the reference; the stored fields stay as given
    d = NCSNppConfig(discriminative=True, input_channels=6)
    assert d.input_channels == 6
    assert (d.effective_input_channels, d.effective_conditional, d.effective_scale_by_sigma) == (2, False, False)
    s = NCSNppConfig()
    assert (s.effective_input_channels, s.effective_conditional, s.effective_scale_by_sigma) == (6, True, True)


# ------------------------------------------------------------------------------------------------
# sizes and key map
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCE_SIZES))
def test_parameter_counts_match_reference(name):
    for role, (n_params, n_tensors) in zip(ROLES, REFERENCE_SIZES[name]):
        cfg = ncsnpp_config(name, **role)
        params = _abstract_params(cfg)
        assert count_params(params) == n_params, (name, role)
        assert len(jax.tree_util.tree_leaves(params)) == n_tensors, (name, role)
        # the key map is a bijection onto our parameters, shapes consistent after the transform
        km = torch_key_map(cfg)
        shapes = reference_shapes(cfg)
        flat = _flat(params)
        assert list(km) == reference_keys(cfg)
        assert sorted(p for p, _ in km.values()) == sorted(flat)
        for key, (path, tr) in km.items():
            torch_shape = np.empty(shapes[key], np.int8)
            assert np.shape(_transform(torch_shape, tr)) == flat[path], key


def _transform(a: np.ndarray, transform: str) -> np.ndarray:
    """Apply a key-map transform by hand (independent of keymap's private helpers)."""
    return {"conv": lambda v: v.transpose(2, 3, 1, 0), "linear": lambda v: v.T, "identity": lambda v: v}[transform](a)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_cpu_presets_bijective(name):
    for role in ROLES:
        cfg = ncsnpp_config(name, **role)
        flat = _flat(_abstract_params(cfg, 64, 32))
        km = torch_key_map(cfg, prefix="score_net.")
        assert all(k.startswith("score_net.") for k in km)
        assert sorted(p for p, _ in km.values()) == sorted(flat)
        assert sum(int(np.prod(s)) for s in reference_shapes(cfg).values()) == sum(int(np.prod(s)) for s in flat.values())


def test_reference_key_list_fixture():
    ref = json.loads((FIXTURES / "ncsnpp_reference_keys.json").read_text())
    for role, kw in [("score", {"input_channels": 6}), ("predictor", {"discriminative": True})]:
        cfg = ncsnpp_config("ncsnpp", **kw)
        expected = [(k, tuple(s)) for k, s in ref[role]]
        shapes = reference_shapes(cfg)
        assert [(k, shapes[k]) for k in reference_keys(cfg)] == expected
    km = torch_key_map(ncsnpp_config("ncsnpp"))
    assert km["all_modules.0.W"] == (("all_modules_0", "W"), "identity")
    assert km["output_layer.bias"] == (("output_layer", "bias"), "identity")
    assert km["all_modules.1.weight"] == (("all_modules_1", "kernel"), "linear")
    assert km["all_modules.5.Conv_0.weight"] == (("all_modules_5", "Conv_0", "kernel"), "conv")
    assert km["all_modules.15.NIN_0.W"] == (("all_modules_15", "NIN_0", "W"), "identity")  # mid attention
    assert reference_keys(ncsnpp_config("ncsnpp"))[:2] == ["output_layer.weight", "output_layer.bias"]


def test_to_flax_to_torch_round_trip_and_errors():
    cfg = ncsnpp_config("tiny", discriminative=True)
    rng = np.random.default_rng(0)
    state = {"denoiser_net." + k: rng.standard_normal(s).astype(np.float32) for k, s in reference_shapes(cfg).items()}
    state["score_net.output_layer.bias"] = np.zeros(2, np.float32)  # another net's key: ignored
    params = to_flax(state, cfg, prefix="denoiser_net.")
    assert _flat(params) == _flat(_abstract_params(cfg, 64, 32))
    back = to_torch(params, cfg, prefix="denoiser_net.")
    assert list(back) == [k for k in state if k.startswith("denoiser_net.")]
    for k, v in back.items():
        assert v.dtype == state[k].dtype and np.array_equal(v, state[k])
    with pytest.raises(KeyError):
        to_flax({k: v for k, v in state.items() if not k.endswith("all_modules.1.weight")}, cfg, "denoiser_net.")
    with pytest.raises(ValueError, match="unexpected"):
        to_flax({**state, "denoiser_net.extra": np.zeros(1)}, cfg, "denoiser_net.")
    bad = dict(state)
    bad["denoiser_net.output_layer.weight"] = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        to_flax(bad, cfg, "denoiser_net.")


# ------------------------------------------------------------------------------------------------
# numerical parity with the PyTorch reference (fixture)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_fixture():
    with np.load(FIXTURES / "ncsnpp_tiny_parity.npz") as z:
        data = {k: z[k] for k in z.files}
    base = json.loads(str(data["config"]))
    return base, data


@functools.cache
def _jitted_apply(cfg: NCSNppConfig):
    """One jitted ``apply`` per config, shared between tests (same shapes → one compile)."""
    net = NCSNpp(cfg)
    return jax.jit(lambda p, x, t: net.apply({"params": p}, x, t))


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _fixture_net(parity_fixture, role):
    base, data = parity_fixture
    kw = {"input_channels": 6} if role == "score" else {"discriminative": True}
    cfg = ncsnpp_config("tiny", **base, **kw)
    prefix = f"{role}/state/"
    params = to_flax({k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}, cfg)
    return cfg, params, data[f"{role}/x"], data.get(f"{role}/t")


def test_parity_with_reference_float32(parity_fixture):
    """Score net in float32 against the float32 reference (relative error ≤ 1e-5)."""
    cfg, params, x, t = _fixture_net(parity_fixture, "score")
    out = _jitted_apply(cfg)(params, jnp.asarray(x), jnp.asarray(t))
    expected = parity_fixture[1]["score/out32"]
    assert out.dtype == jnp.complex64 and out.shape == expected.shape
    assert _rel_err(out, expected) <= 1e-5


def test_parity_with_reference_float64(parity_fixture):
    """Predictor (no time input) in float64 against the reference run in float64 (≤ 1e-12).
    The two roles share all code paths, so each is compiled in one precision only: the test
    file's run time is dominated by XLA compilation."""
    cfg, params, x, t = _fixture_net(parity_fixture, "predictor")
    assert t is None
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    out = _jitted_apply(cfg)(p64, jnp.asarray(x, jnp.complex128), None)
    expected = parity_fixture[1]["predictor/out64"]
    assert out.dtype == jnp.complex128 and out.shape == expected.shape
    assert _rel_err(out, expected) <= 1e-12


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------


def _upfirdn2d_reference(x, k2, up, down, pad):
    """Direct NCHW transcription of the upfirdn2d semantics (zero insertion, pad, flipped 2-D
    kernel correlation, stride) in float64 numpy, on NHWC input."""
    b, h, w, c = x.shape
    z = np.zeros((b, h * up, w * up, c))
    z[:, ::up, ::up, :] = x
    z = np.pad(z, ((0, 0), pad, pad, (0, 0)))
    kf = k2[::-1, ::-1]
    kh = k2.shape[0]
    oh, ow = z.shape[1] - kh + 1, z.shape[2] - kh + 1
    out = np.zeros((b, oh, ow, c))
    for i in range(kh):
        for j in range(kh):
            out += kf[i, j] * z[:, i : i + oh, j : j + ow, :]
    return out[:, ::down, ::down, :]


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 1), (1, 1)])
def test_fir_resampling_matches_upfirdn2d(kernel):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 6, 3))
    k = np.asarray(kernel, np.float64)
    k2 = np.outer(k, k) / np.outer(k, k).sum()
    p = len(k) - 2
    up = L.upsample_2d(jnp.asarray(x), kernel, factor=2)
    down = L.downsample_2d(jnp.asarray(x), kernel, factor=2)
    np.testing.assert_allclose(up, _upfirdn2d_reference(x, k2 * 4, 2, 1, ((p + 1) // 2 + 1, p // 2)), atol=1e-13)
    np.testing.assert_allclose(down, _upfirdn2d_reference(x, k2, 1, 2, ((p + 1) // 2, p // 2)), atol=1e-13)
    assert up.shape == (2, 16, 12, 3) and down.shape == (2, 4, 3, 3)
    # constants are preserved (kernel normalised, gain factor² for up-sampling) away from borders
    ones = jnp.ones((1, 8, 8, 1))
    np.testing.assert_allclose(L.upsample_2d(ones, kernel)[0, 4:-4, 4:-4, 0], 1.0, atol=1e-12)
    np.testing.assert_allclose(L.downsample_2d(ones, kernel)[0, 1:-1, 1:-1, 0], 1.0, atol=1e-12)


def test_fourier_projection_and_groupnorm():
    emb = L.GaussianFourierProjection(4, 16.0)
    s = jnp.asarray([-1.0, 0.5])
    p = emb.init(jax.random.key(0), s)
    w = np.asarray(p["params"]["W"])
    out = emb.apply(p, s)
    proj = np.asarray(s)[:, None] * w[None, :] * 2 * np.pi
    np.testing.assert_allclose(out, np.concatenate([np.sin(proj), np.cos(proj)], -1), rtol=1e-6, atol=1e-6)
    gn = L.GroupNorm(2, 1e-6)
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 4))
    y = np.asarray(gn.apply(gn.init(jax.random.key(0), jnp.asarray(x)), jnp.asarray(x)))
    xg = x.reshape(2, 3, 5, 2, 2)
    ref = (xg - xg.mean((1, 2, 4), keepdims=True)) / np.sqrt(xg.var((1, 2, 4), keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref.reshape(x.shape), atol=1e-10)


# ------------------------------------------------------------------------------------------------
# the network: shapes, dtypes, jit, input dependence
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_score(parity_fixture):
    """The fixture's small score-net config, freshly initialised (same shapes as the parity
    test, so the jitted forward is shared)."""
    base, data = parity_fixture
    cfg = ncsnpp_config("tiny", **base, input_channels=6)
    # host-side init with the distributions of net.init (a jitted net.init compiles one threefry
    # draw per parameter: tens of seconds on a CPU); the tree is checked against net.init below
    params = init_params(cfg, jax.random.key(0))
    x = jnp.asarray(data["score/x"])
    t = jnp.asarray([0.1, 0.7], jnp.float32)
    return cfg, NCSNpp(cfg), params, _jitted_apply(cfg), x, t


def test_output_shape_dtype_and_input_dependence(fresh_score):
    _cfg, net, params, f, x, t = fresh_score
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    abstract = jax.eval_shape(net.init, jax.random.key(0), x, t)["params"]
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(params)
    assert _flat(abstract) == _flat(params)
    out = f(params, x, t)
    assert out.shape == x.shape[:3] and out.dtype == jnp.complex64
    assert bool(jnp.all(jnp.isfinite(out)))
    # at init the zero-scale (1e-10) output convolutions keep the output small but not constant
    x2 = x.at[:, :8].multiply(-1.0)
    out2 = f(params, x2, t)
    assert float(jnp.std(out[0])) > 0.0
    assert float(jnp.max(jnp.abs(out2 - out))) > 1e-3 * float(jnp.max(jnp.abs(out)))
    # per-sample t: changing t of sample 1 leaves sample 0 alone
    out3 = f(params, x, t.at[1].set(0.3))
    np.testing.assert_array_equal(out3[0], out[0])
    assert not np.array_equal(out3[1], out[1])
    # a float64 t does not upcast a float32 net
    t64 = jax.ShapeDtypeStruct((2,), jnp.float64)
    assert jax.eval_shape(lambda p, x, t: net.apply({"params": p}, x, t), params, x, t64).dtype == jnp.complex64


def test_float64_parameters(fresh_score):
    """float64 initialisation (the float64 forward is checked against the reference above)."""
    cfg, net, _params, _f, _x, t = fresh_score
    p64 = init_params(cfg, 0, param_dtype=np.float64)
    assert {a.dtype for a in jax.tree_util.tree_leaves(p64)} == {jnp.dtype(jnp.float64)}
    x64 = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.complex128)
    fresh = jax.eval_shape(NCSNpp(cfg, param_dtype=jnp.float64).init, jax.random.key(1), x64, t[:1])["params"]
    assert {a.dtype for a in jax.tree_util.tree_leaves(fresh)} == {jnp.dtype(jnp.float64)}
    out = jax.eval_shape(lambda p, x: net.apply({"params": p}, x, t[:1]), fresh, x64)
    assert out.dtype == jnp.complex128


def test_predictor_without_time_and_input_checks():
    cfg = ncsnpp_config("tiny", discriminative=True)
    net = NCSNpp(cfg)
    y = jnp.asarray(_random_complex(np.random.default_rng(4), (1, 32, 16, 1)))
    shapes = jax.eval_shape(net.init, jax.random.key(0), y)
    params = shapes["params"]
    assert "all_modules_0" in params and "W" in params["all_modules_0"]  # stored though unused
    resblocks = [v for v in params.values() if "Conv_1" in v]
    assert resblocks and all("Dense_0" in v for v in resblocks)
    out = jax.eval_shape(net.apply, shapes, y)
    assert out.shape == (1, 32, 16) and out.dtype == jnp.complex64
    with pytest.raises(ValueError, match="complex channels"):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 16, 3), jnp.complex64))
    with pytest.raises(TypeError):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 16, 1), jnp.float32))
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 30, 16, 1), jnp.complex64))
    score = NCSNpp(ncsnpp_config("tiny"))
    with pytest.raises(ValueError, match="needs t"):
        jax.eval_shape(score.init, jax.random.key(0), jnp.zeros((1, 32, 16, 3), jnp.complex64))
    # attention placement is decided by the frequency size, as in the reference
    large = NCSNpp(ncsnpp_config("ncsnpplarge", discriminative=True))
    with pytest.raises(ValueError, match="image_size"):
        jax.eval_shape(large.init, jax.random.key(0), jnp.zeros((1, 128, 64, 1), jnp.complex64))


def test_init_params_distributions():
    cfg = ncsnpp_config("tiny")
    p = init_params(cfg, 7)
    assert count_params(p) == 314_976
    w = np.asarray(p["all_modules_0"]["W"])
    assert w.shape == (16,) and 4.0 < w.std() < 40.0  # N(0, 16²)
    k = np.asarray(p["all_modules_4"]["Conv_0"]["kernel"])  # default_init(1): U(±sqrt(3/fan_avg))
    assert np.abs(k).max() <= np.sqrt(3 / (9 * 16)) and np.abs(k).max() > 0.8 * np.sqrt(3 / (9 * 16))
    assert np.abs(np.asarray(p["all_modules_4"]["Conv_1"]["kernel"])).max() < 1e-4  # init_scale 0 → 1e-10
    assert np.all(np.asarray(p["all_modules_4"]["GroupNorm_0"]["scale"]) == 1)
    assert not np.any(np.asarray(p["output_layer"]["bias"]))
    np.testing.assert_array_equal(init_params(cfg, 7)["all_modules_4"]["Conv_0"]["kernel"], k)


def test_micro_has_no_mid_attention_and_others_keep_theirs():
    """``mid_attention=False`` (the micro preset only) drops exactly the mid block's attention:
    one ``attn`` module fewer, its parameters absent, the key map still bijective; the field is
    recorded in a model's config only when off, so every other config file and run fingerprint
    reads as before."""
    from storm_jax.checkpoints import config_from_dict, config_to_dict
    from storm_jax.model import storm_config
    from storm_jax.nn.ncsnpp import module_layout

    micro, with_mid = ncsnpp_config("micro"), ncsnpp_config("micro", mid_attention=True)
    assert not micro.mid_attention and all(ncsnpp_config(n).mid_attention for n in PRESETS if n != "micro")
    kinds = lambda c: [s.kind for s in module_layout(c)]
    assert kinds(with_mid).count("attn") == kinds(micro).count("attn") + 1 == 1
    flat, flat_mid = _flat(_abstract_params(micro, 64, 32)), _flat(_abstract_params(with_mid, 64, 32))
    # an attention block on C = 16 channels: GroupNorm (2C) and four NIN layers (C² + C each)
    c = micro.nf * micro.ch_mult[-1]
    size = lambda f: sum(int(np.prod(s)) for s in f.values())
    assert size(flat_mid) - size(flat) == 2 * c + 4 * (c * c + c)
    km = torch_key_map(micro)
    assert sorted(p for p, _ in km.values()) == sorted(flat)
    d = config_to_dict(storm_config("micro"))
    assert d["backbone"]["mid_attention"] is False and config_from_dict(d) == storm_config("micro")
    assert "mid_attention" not in config_to_dict(storm_config("tiny"))["backbone"]
