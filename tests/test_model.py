"""StoRM model: channel layout, sign, condition modes, batching, dtypes, parameter counts."""

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import storm_jax as sj
from storm_jax.nn import NCSNpp, count_params

F, T = 256, 64


@pytest.fixture(scope="module")
def tiny():
    return sj.init_storm("tiny", jax.random.key(0))


@pytest.fixture(scope="module")
def micro():
    # Tests of how networks combine (symmetry, ensembles, guidance) need any network, not a large one.
    return sj.init_storm("micro", jax.random.key(0))


def _rand(key, shape, dtype=jnp.complex64):
    kr, ki = jax.random.split(key)
    return (0.3 * (jax.random.normal(kr, shape) + 1j * jax.random.normal(ki, shape))).astype(dtype)


def test_predictor_and_score_shapes(tiny):
    Y = _rand(jax.random.key(1), (2, F, T))
    C = sj.predictor(tiny, Y)
    assert C.shape == Y.shape and C.dtype == jnp.complex64
    s = sj.score(tiny, Y, 0.5, Y, C)
    assert s.shape == Y.shape and s.dtype == jnp.complex64
    assert np.all(np.isfinite(np.asarray(s)))


def test_score_is_minus_network_on_reference_channel_order(tiny):
    k = jax.random.split(jax.random.key(2), 3)
    x, Y, C = (_rand(kk, (1, F, T)) for kk in k)
    t = jnp.asarray([0.4])
    net = NCSNpp(tiny.config.score_net())
    raw = net.apply({"params": tiny.params["score"]}, jnp.stack([x, Y, C], axis=-1), t)
    # score is jitted (one fused program) and raw ran op by op: equal to float32 rounding
    scale = float(jnp.max(jnp.abs(raw)))
    np.testing.assert_allclose(np.asarray(sj.score(tiny, x, t, Y, C)), -np.asarray(raw), rtol=0, atol=1e-5 * scale)
    # swapping the conditions changes the result (the order matters)
    assert not np.allclose(sj.score(tiny, x, t, C, Y), -raw)


@pytest.mark.parametrize("condition,channels", [("both", 6), ("noisy", 4), ("predictor", 4)])
def test_condition_modes(condition, channels):
    cfg = sj.storm_config("tiny", condition=condition)
    assert cfg.score_net().input_channels == channels
    model = sj.init_storm(cfg, jax.random.key(3))
    k = jax.random.split(jax.random.key(4), 3)
    x, Y, C = (_rand(kk, (1, F, T)) for kk in k)
    s = sj.score(model, x, 0.7, Y, C)
    if condition == "noisy":  # C is not seen
        np.testing.assert_array_equal(s, sj.score(model, x, 0.7, Y, 2 * C))
        np.testing.assert_array_equal(s, sj.score(model, x, 0.7, Y, None))
    if condition == "predictor":  # Y is not seen
        np.testing.assert_array_equal(s, sj.score(model, x, 0.7, 2 * Y, C))
        np.testing.assert_array_equal(s, sj.score(model, x, 0.7, None, C))
    if condition == "both":
        assert not np.allclose(s, sj.score(model, x, 0.7, Y, 2 * C))
        with pytest.raises(ValueError, match="needs"):
            sj.score(model, x, 0.7, None, C)


def test_leading_batch_axes_and_time_broadcast(tiny):
    Y = _rand(jax.random.key(5), (2, 3, F, T))
    C = sj.predictor(tiny, Y)
    np.testing.assert_allclose(C[1, 2], sj.predictor(tiny, Y[1, 2]), rtol=2e-5, atol=2e-6)
    t = jnp.full((2, 3), 0.3)
    s = sj.score(tiny, Y, t, Y, C)
    np.testing.assert_allclose(s, sj.score(tiny, Y, 0.3, Y, C), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s[0, 1], sj.score(tiny, Y[0, 1], 0.3, Y[0, 1], C[0, 1]), rtol=2e-5, atol=2e-6)


def test_float64_model(tiny):
    m64 = tiny.astype(jnp.float64)
    Y = _rand(jax.random.key(6), (1, F, T), jnp.complex128)
    C = sj.predictor(m64, Y)
    assert C.dtype == jnp.complex128
    c32 = sj.predictor(tiny, Y.astype(jnp.complex64))
    np.testing.assert_allclose(c32, C, rtol=1e-4, atol=1e-5)


def test_time_dependence_and_input_dependence(tiny):
    Y = _rand(jax.random.key(7), (1, F, T))
    C = sj.predictor(tiny, Y)
    assert not np.allclose(sj.score(tiny, Y, 0.2, Y, C), sj.score(tiny, Y, 0.9, Y, C))
    assert not np.allclose(C, sj.predictor(tiny, 2 * Y))


def test_reference_parameter_counts_without_compiling():
    counts = {}
    for cond in ("both", "noisy"):
        shapes = sj.param_shapes(sj.storm_config("ncsnpp", condition=cond))
        counts[cond] = (count_params(shapes["predictor"]), count_params(shapes["score"]))
        assert len(jax.tree_util.tree_leaves(shapes["predictor"])) == 267
    assert counts["both"] == (27_342_350, 27_776_038)
    assert counts["noisy"][1] == 27_756_314


def test_missing_networks_are_clear_errors(tiny):
    score_only = sj.StormModel(config=dataclasses.replace(tiny.config, has_predictor=False, condition="noisy"),
                               params={"predictor": None, "score": tiny.params["score"]})
    with pytest.raises(ValueError, match="no predictor"):
        sj.predictor(score_only, jnp.zeros((F, T), jnp.complex64))
    with pytest.raises(ValueError, match="needs a predictor"):
        sj.StormConfig(backbone=tiny.config.backbone, has_predictor=False, condition="both")
    with pytest.raises(ValueError, match="unknown condition"):
        sj.storm_config("tiny", condition="post")


def test_score_network_with_its_own_backbone(tmp_path):
    """``score_backbone`` (the reference's separate ``backbone_score``): the score network takes its
    architecture, the predictor keeps ``backbone``; counts add up, frames follow the deeper network,
    the config survives a save/load round trip, and a one-backbone config is written as before."""
    from storm_jax.checkpoints import config_from_dict, config_to_dict
    from storm_jax.convert import hparams_from_config

    mixed = sj.storm_config("tiny", "small")
    assert sj.storm_config("tiny", "tiny").score_backbone is None
    assert mixed.predictor_net().nf == 16 and mixed.score_net().nf == 32 and mixed.score_net().input_channels == 6
    assert mixed.frame_multiple == 8 and sj.storm_config("tiny").frame_multiple == 4
    shapes = sj.param_shapes(mixed)
    assert count_params(shapes["predictor"]) == count_params(sj.param_shapes("tiny")["predictor"])
    assert count_params(shapes["score"]) == count_params(sj.param_shapes("small")["score"])
    d = config_to_dict(mixed)
    assert d["score_backbone"]["nf"] == 32 and config_from_dict(d) == mixed
    assert "score_backbone" not in config_to_dict(sj.storm_config("tiny"))
    model = sj.init_storm(mixed, 0)
    loaded = sj.load_model(sj.save_model(model, tmp_path / "m"))
    assert loaded.config == mixed
    for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    Y = _rand(jax.random.key(1), (F, 8))
    assert sj.score(model, Y, 0.5, Y, sj.predictor(model, Y)).shape == Y.shape
    with pytest.raises(ValueError, match="one set of backbone arguments"):
        hparams_from_config(mixed)
    # a single-network model is written with the backbone of the network it has
    assert hparams_from_config(dataclasses.replace(mixed, has_predictor=False, condition="noisy"))["nf"] == 32
    assert hparams_from_config(dataclasses.replace(mixed, has_score=False))["nf"] == 16


def test_sign_symmetric_score_is_the_odd_part(micro, tmp_path):
    """``score_symmetry="sign"``: ½[s(x, t, Y, C) − s(−x, t, −Y, −C)] of the plain network, odd in
    (x, Y, C) jointly (float32, one batched network call against two plain ones: 1e-6 relative);
    carried by config.json, omitted there for the plain score; refused by the reference export."""
    from storm_jax.checkpoints import config_from_dict, config_to_dict
    from storm_jax.convert import hparams_from_config

    sym = micro.with_score_symmetry("sign")
    assert sym.config.score_symmetry == "sign" and micro.config.score_symmetry == "none"
    k = jax.random.split(jax.random.key(5), 3)
    x, Y, C = (_rand(kk, (2, F, T)) for kk in k)
    t = jnp.asarray([0.3, 0.8])
    want = 0.5 * (sj.score(micro, x, t, Y, C) - sj.score(micro, -x, t, -Y, -C))
    got = sj.score(sym, x, t, Y, C)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(sj.score(sym, -x, t, -Y, -C)), -np.asarray(got), atol=1e-6 * scale)
    # the plain network is not odd, so the projection changes it
    assert float(jnp.max(jnp.abs(got - sj.score(micro, x, t, Y, C)))) > 1e-3 * scale
    assert "score_symmetry" not in config_to_dict(micro.config)
    d = config_to_dict(sym.config)
    assert d["score_symmetry"] == "sign" and config_from_dict(d) == sym.config
    saved = sj.save_model(sym, tmp_path / "m")
    assert sj.load_model(saved).config.score_symmetry == "sign"
    # the directory does not record where it was written (orbax's marker names its temporary path)
    assert not any(str(tmp_path) in f.read_text(errors="ignore") for f in saved.rglob("*.txt"))
    with pytest.raises(ValueError, match="unknown score_symmetry 'odd'"):
        micro.with_score_symmetry("odd")
    with pytest.raises(ValueError, match="no score symmetry"):
        hparams_from_config(sym.config)
    with pytest.raises(ValueError, match="mid attention block"):
        hparams_from_config(micro.config)  # micro has no mid attention (NCSNppConfig.mid_attention)
    hparams_from_config(dataclasses.replace(micro.config, backbone=dataclasses.replace(micro.config.backbone, mid_attention=True)))


def test_score_ensemble_is_the_mean_of_its_members(micro, tmp_path):
    """``score_ensemble``: the score of E networks on one predictor is the mean of theirs (float32,
    one vmapped call against E plain ones: 1e-6 relative); members stack on a leading axis, nest,
    split back bit for bit, combine with the sign symmetry, round-trip through config.json and
    ``save_model``; another predictor or configuration, the reference export and training refuse."""
    from storm_jax.checkpoints import config_to_dict
    from storm_jax.convert import hparams_from_config
    from storm_jax.training import TrainConfig

    other = sj.init_storm("micro", jax.random.key(1))
    other = other.replace(params={**other.params, "predictor": micro.params["predictor"]})
    third = sj.init_storm("micro", jax.random.key(2))
    third = third.replace(params={**third.params, "predictor": micro.params["predictor"]})
    pair = sj.score_ensemble([micro, other])
    assert pair.config.score_members == 2 and "score_members" not in config_to_dict(micro.config)
    assert all(a.shape == (2,) + b.shape for a, b in zip(jax.tree_util.tree_leaves(pair.params["score"]),
                                                         jax.tree_util.tree_leaves(micro.params["score"])))
    k = jax.random.split(jax.random.key(6), 3)
    x, Y, C = (_rand(kk, (2, F, 8)) for kk in k)  # few frames: E + 2 compilations
    t = jnp.asarray([0.2, 0.9])
    s0, s1, s2 = (sj.score(m, x, t, Y, C) for m in (micro, other, third))
    scale = float(jnp.max(jnp.abs(s0)))
    assert float(jnp.max(jnp.abs(s1 - s0))) > 1e-2 * scale  # the members differ
    np.testing.assert_allclose(np.asarray(sj.score(pair, x, t, Y, C)), np.asarray((s0 + s1) / 2), atol=1e-6 * scale)
    trio = sj.score_ensemble([pair, third])  # an ensemble joins like a list of its members
    assert trio.config.score_members == 3
    np.testing.assert_allclose(np.asarray(sj.score(trio, x, t, Y, C)), np.asarray((s0 + s1 + s2) / 3), atol=1e-6 * scale)
    member = trio.score_member(1)
    assert member.config == micro.config
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(other.params)))
    odd = lambda m, *a: 0.5 * (sj.score(m, *a) - sj.score(m, *(-v if v is not t else v for v in a)))
    np.testing.assert_allclose(np.asarray(sj.score(pair.with_score_symmetry("sign"), x, t, Y, C)),
                               np.asarray((odd(micro, x, t, Y, C) + odd(other, x, t, Y, C)) / 2), atol=1e-6 * scale)
    loaded = sj.load_model(sj.save_model(pair, tmp_path / "pair"))
    assert loaded.config == pair.config and config_to_dict(pair.config)["score_members"] == 2
    np.testing.assert_array_equal(np.asarray(sj.score(loaded, x, t, Y, C)), np.asarray(sj.score(pair, x, t, Y, C)))
    init = sj.init_storm(dataclasses.replace(micro.config, score_members=2), jax.random.key(0))
    assert jax.tree_util.tree_structure(init.params) == jax.tree_util.tree_structure(pair.params)
    with pytest.raises(ValueError, match="B has another predictor than A"):
        sj.score_ensemble([micro, sj.init_storm("micro", jax.random.key(1))], names=["A", "B"])
    with pytest.raises(ValueError, match=r"model 1 differs from model 0 in its configuration \(sde\)"):
        sj.score_ensemble([micro, micro.replace(config=dataclasses.replace(micro.config, sde=sj.OUVE(sigma_max=0.25)))])
    with pytest.raises(ValueError, match=r"model 1 differs from model 0 in its configuration \(sampler_steps\)"):
        sj.score_ensemble([micro, micro.replace(config=dataclasses.replace(micro.config, sampler_steps=5))])
    with pytest.raises(ValueError, match="score_members must be an integer >= 1"):
        dataclasses.replace(micro.config, score_members=0)
    with pytest.raises(IndexError):
        pair.score_member(2)
    with pytest.raises(ValueError, match="one score network"):
        hparams_from_config(pair.config)
    with pytest.raises(ValueError, match="train each score network on its own"):
        TrainConfig(model=pair.config)


def test_score_guidance_combines_the_two_networks(micro, tmp_path):
    """``score_guidance``: the guided score is ``(1 + w)·s(x, t, Y, C) − w·s_C(x, t, C)`` with the
    two networks' own scores (float32: 1e-6 relative), w = 0 the plain model bit for bit and
    w = −1 the C-only network; the weight changes without touching the weights, combines with
    the sign symmetry and an ensemble, round-trips through ``save_model``; mismatched networks,
    the reference export, training and loading the guide as a score network refuse."""
    from storm_jax.checkpoints import config_to_dict
    from storm_jax.convert import hparams_from_config
    from storm_jax.training import TrainConfig

    c_only = sj.init_storm(dataclasses.replace(micro.config, condition="predictor"), jax.random.key(3))
    c_only = c_only.replace(params={**c_only.params, "predictor": micro.params["predictor"]})
    guided = sj.score_guidance(micro, c_only, 1.5)
    assert guided.config.guidance == 1.5 and "guidance" not in config_to_dict(micro.config)
    k = jax.random.split(jax.random.key(7), 3)
    x, Y, C = (_rand(kk, (2, F, 8)) for kk in k)
    t = jnp.asarray([0.1, 0.7])
    s_yc, s_c = sj.score(micro, x, t, Y, C), sj.score(c_only, x, t, None, C)
    scale = float(jnp.max(jnp.abs(s_yc)))
    assert float(jnp.max(jnp.abs(s_yc - s_c))) > 1e-2 * scale
    np.testing.assert_allclose(np.asarray(sj.score(guided, x, t, Y, C)), np.asarray(2.5 * s_yc - 1.5 * s_c), atol=1e-5 * scale)
    np.testing.assert_array_equal(np.asarray(sj.score(guided.with_guidance(0.0), x, t, Y, C)), np.asarray(s_yc))
    np.testing.assert_allclose(np.asarray(sj.score(guided.with_guidance(-1.0), x, t, Y, C)), np.asarray(s_c), atol=1e-6 * scale)
    odd = lambda m, *a: 0.5 * (sj.score(m, *a) - sj.score(m, *(-v if v is not t and v is not None else v for v in a)))
    np.testing.assert_allclose(np.asarray(sj.score(guided.with_score_symmetry("sign"), x, t, Y, C)),
                               np.asarray(2.5 * odd(micro, x, t, Y, C) - 1.5 * odd(c_only, x, t, None, C)), atol=1e-5 * scale)
    other = sj.init_storm("micro", jax.random.key(1))
    pair = sj.score_ensemble([micro, other.replace(params={**other.params, "predictor": micro.params["predictor"]})])
    s_pair = sj.score(pair, x, t, Y, C)
    np.testing.assert_allclose(np.asarray(sj.score(sj.score_guidance(pair, c_only, 1.0), x, t, Y, C)),
                               np.asarray(2.0 * s_pair - s_c), atol=1e-5 * scale)
    assert guided.guide_model().config == c_only.config and guided.without_guidance().config == micro.config
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(guided.guide_model().params), jax.tree_util.tree_leaves(c_only.params)))
    loaded = sj.load_model(sj.save_model(guided, tmp_path / "guided"))
    assert loaded.config == guided.config and config_to_dict(guided.config)["guidance"] == 1.5
    np.testing.assert_array_equal(np.asarray(sj.score(loaded, x, t, Y, C)), np.asarray(sj.score(guided, x, t, Y, C)))
    init = sj.init_storm(guided.config, jax.random.key(0))
    assert jax.tree_util.tree_structure(init.params) == jax.tree_util.tree_structure(guided.params)
    assert jax.tree_util.tree_structure(sj.param_shapes(guided.config)) == jax.tree_util.tree_structure(guided.params)
    with pytest.raises(ValueError, match="B must have a score network that sees only C"):
        sj.score_guidance(micro, micro, 1.0, names=("A", "B"))
    with pytest.raises(ValueError, match="A must have a score network that sees Y and C"):
        sj.score_guidance(c_only, c_only, 1.0, names=("A", "B"))
    with pytest.raises(ValueError, match="guide has another predictor than model"):
        sj.score_guidance(micro, sj.init_storm(c_only.config, jax.random.key(4)), 1.0)
    with pytest.raises(ValueError, match="guide differs from model in its sde"):
        sj.score_guidance(micro, c_only.replace(config=dataclasses.replace(c_only.config, sde=sj.OUVE(sigma_max=0.25))), 1.0)
    with pytest.raises(ValueError, match="already has a guide network"):
        sj.score_guidance(guided, c_only, 1.0)
    with pytest.raises(ValueError, match="model was fine-tuned through its 5-step sampler"):
        sj.score_guidance(micro.replace(config=dataclasses.replace(micro.config, sampler_steps=5)), c_only, 1.0)
    with pytest.raises(ValueError, match="model 1 has a guide network; join the conditional networks first"):
        sj.score_ensemble([micro, guided])
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        dataclasses.replace(micro.config, guidance=float("nan"))
    with pytest.raises(ValueError, match="guidance needs a score network that sees Y and C"):
        dataclasses.replace(c_only.config, guidance=1.0)
    with pytest.raises(ValueError, match="no guide network"):
        micro.with_guidance(1.0)
    with pytest.raises(ValueError, match="no condition guidance"):
        hparams_from_config(guided.config)
    with pytest.raises(ValueError, match="join them with score_guidance"):
        TrainConfig(model=guided.config)
