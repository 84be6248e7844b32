"""Import/export of reference PyTorch Lightning checkpoints (storm_jax.convert) and numerical
parity of the imported models with the PyTorch reference.

Fixtures (made with ``tests/fixtures/make_import_fixtures.py``, which imports the reference
sp-uhh/storm at commit 257e963 from a path given on the command line and contains none of its
code; torch 2.13.0+cpu, torch_ema 0.3, one thread; see that file's docstring for the stand-ins):

* ``storm_ncsnpp_ema.ckpt`` (0.78 MB): a ``StochasticRegenerationModel`` (``denoiser_net.`` /
  ``score_net.``, condition ``both``) on a narrow ``ncsnpp`` (nf 4, ch_mult (1, 2, 2, 2), one
  ResBlock per level, mid-block attention only, image_size 256), ``spec_factor`` 0.33, with an
  ``ema`` entry whose shadow parameters differ from the raw ``state_dict``.
* ``dnn_score_large.ckpt`` (0.47 MB): a score-only ``ScoreModel`` (``dnn.``, 4 input channels)
  on a narrow ``ncsnpplarge`` (nf 4, ch_mult (1, 1, 2, 2, 2, 2, 2), two ResBlocks per level,
  attention at 16 with image_size 64 and 64 frequency rows), θ 2, σ_max 0.6; no ``ema`` entry.
* ``dnn_predictor_large.ckpt`` (0.47 MB): a ``DiscriminativeModel`` (``dnn.``, discriminative)
  on the same narrow ``ncsnpplarge``; no ``ema`` entry.
* ``import_parity.npz`` (0.23 MB): reference outputs computed with the EMA weights where present
  (via the reference's own ``model.eval()`` swap): ``forward_denoiser`` (``storm/C``),
  ``forward_score`` at t = 0.4 (``storm/score``), the PC sampler with reverse diffusion and N = 3
  without (``storm/sample_none``) and with one ALD corrector step, snr 0.5
  (``storm/sample_ald``), ``enhance()`` of a 0.25 s waveform with N = 3 (``storm/enhanced``:
  normalisation, STFT, compression, padding to 64 frames, predictor, sampler, inverse); the
  large score net at t = 0.7 and its sampler with N = 2 (``score_large/*``), the large predictor
  (``predictor_large/C``). Inputs and noise are not stored: they are rebuilt here from NumPy
  seeds (:func:`_inputs`, :func:`_draw_sequence`, same code as the generator), the noise
  replayed into the reference by replacing ``torch.randn_like``.

Measured max relative errors (max|ours − ref| / max|ref|, float32; bound asserted 1e-4): ncsnpp
predictor 1.1e-6, score 1.0e-6, sampler 8.3e-7 (no corrector) and 8.0e-7 (ALD), enhance 1.6e-6;
ncsnpplarge score 7.6e-7, sampler 5.9e-7, predictor 9.8e-7. To keep the file fast the networks are compiled once per shape (XLA
optimisation level 0) and the samplers run their ``lax.scan`` as a Python loop around them.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import storm_jax  # noqa: E402
from storm_jax import EnhanceConfig, SamplerConfig, predictor, score  # noqa: E402
from storm_jax.convert import (  # noqa: E402
    CheckpointMismatchError,
    UnsafeCheckpointError,
    _torch_load,
    config_from_hparams,
    export_checkpoint,
    import_checkpoint,
    read_checkpoint,
)
from storm_jax.nn import reference_keys, to_torch  # noqa: E402
from storm_jax.pipeline import enhance_waveform  # noqa: E402
from storm_jax.sampling import Draws, sample_with_score  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
STORM = FIX / "storm_ncsnpp_ema.ckpt"
SCORE_L = FIX / "dnn_score_large.ckpt"
PRED_L = FIX / "dnn_predictor_large.ckpt"
TOL = 1e-4
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ------------------------------------------------------------------------------------------------
# inputs and draws (same arithmetic as the generator)
# ------------------------------------------------------------------------------------------------


def _complex_draw(rng, shape):
    a = rng.standard_normal(shape)
    b = rng.standard_normal(shape)
    return (np.sqrt(0.5) * (a + 1j * b)).astype(np.complex64)


def _draw_sequence(seed, shape, steps, n_corr):
    rng = np.random.default_rng(seed)
    out = [_complex_draw(rng, shape)]
    for _ in range(steps):
        out += [_complex_draw(rng, shape) for _ in range(n_corr)]
        out.append(_complex_draw(rng, shape))
    return out


def _draws(seed, shape, steps, n_corr) -> Draws:
    """The reference's call order (prior; per step corrector draws, then the predictor draw) as
    our :class:`Draws`."""
    seq = _draw_sequence(seed, shape, steps, n_corr)
    blocks = [seq[1 + k * (n_corr + 1) : 1 + (k + 1) * (n_corr + 1)] for k in range(steps)]
    corr = np.stack([np.stack(b[:n_corr]) if n_corr else np.zeros((0, *shape), np.complex64) for b in blocks])
    return Draws(jnp.asarray(seq[0]), jnp.asarray(np.stack([b[-1] for b in blocks])), jnp.asarray(corr))


def _inputs(seed, shape):
    rng = np.random.default_rng(seed)
    return (0.5 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)


def _waveform(seed, n):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(n)).astype(np.float32)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)


def _run_sampler(compiled_score, model, Y, C, draws, config):
    """Our sampler (``sample_with_score``, as ``sampling.sample`` wires it) around a pre-compiled
    score; ``disable_jit`` turns its ``lax.scan`` into a Python loop over the same step code."""
    with jax.disable_jit():
        return sample_with_score(model.config.sde, _escape(compiled_score, model, Y, C), C, draws, config)


def _escape(compiled_score, model, *cond):
    """``score_fn(x, t)`` calling the compiled score (which needs jit enabled)."""

    def score_fn(x, t):
        with jax.disable_jit(False):
            return compiled_score(model, x, jnp.asarray(t, jnp.float32), *cond)

    return score_fn


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected():
    with np.load(FIX / "import_parity.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def storm():
    return read_checkpoint(STORM)


@pytest.fixture(scope="module")
def storm_nets(storm):
    m = storm.model(ema=True)
    Y = jnp.asarray(_inputs(100, (256, 16)))
    x = jnp.asarray(_inputs(101, (256, 16)))
    t = jnp.float32(0.4)
    pred = _compile(predictor, m, Y)
    sc = _compile(score, m, x, t, Y, Y)
    return m, pred, sc, Y, x, t


@pytest.fixture(scope="module")
def large():
    s = import_checkpoint(SCORE_L, ema=False)
    p = import_checkpoint(PRED_L, ema=False)
    return s, p


# ------------------------------------------------------------------------------------------------
# import: layouts, EMA, configuration
# ------------------------------------------------------------------------------------------------


def test_storm_layout_with_ema(storm):
    cfg = storm.config
    assert storm.layout == "storm" and cfg.has_predictor and cfg.has_score and cfg.condition == "both"
    b = cfg.backbone
    assert (b.nf, b.ch_mult, b.num_res_blocks, b.attn_resolutions, b.image_size) == (4, (1, 2, 2, 2), 1, (0,), 256)
    assert cfg.spec.beta == 0.33 and cfg.spec.alpha == 0.5 and (cfg.sde.theta, cfg.sde.sigma_max, cfg.sde.t_eps) == (1.5, 0.5, 0.03)
    assert storm.hyper_parameters["data_module_cls"] == "sgmse.data_module.SpecsDataModule"
    assert storm.ema is not None and storm.ema_meta["decay"] == 0.999
    # the file's tensors, read independently (weights_only with the same stand-in)
    ck = _torch_load(STORM)
    sd = ck["state_dict"]
    # reference registration order == our key order: denoiser_net then score_net, output_layer
    # first, all_modules.* after (state_dict order; the EMA list follows parameters() order)
    ours = ["denoiser_net." + k for k in reference_keys(cfg.predictor_net())]
    ours += ["score_net." + k for k in reference_keys(cfg.score_net())]
    assert list(sd) == ours
    shadow = ck["ema"]["shadow_params"]
    assert [tuple(s.shape) for s in shadow] == [tuple(v.shape) for v in sd.values()]
    ema_model, raw_model = storm.model(ema=True), storm.model(ema=False)
    for role, prefix, net in (("predictor", "denoiser_net.", cfg.predictor_net()), ("score", "score_net.", cfg.score_net())):
        raw_t = to_torch(raw_model.params[role], net, prefix)
        ema_t = to_torch(ema_model.params[role], net, prefix)
        for k, v in raw_t.items():
            i = ours.index(k)
            assert np.array_equal(v, sd[k].numpy()), k
            assert np.array_equal(ema_t[k], shadow[i].numpy()), k
    assert not np.array_equal(ema_model.params["score"]["output_layer"]["kernel"], raw_model.params["score"]["output_layer"]["kernel"])
    assert {a.dtype for a in jax.tree_util.tree_leaves(ema_model.params)} == {jnp.dtype(jnp.float32)}
    m64 = import_checkpoint(STORM, dtype=jnp.float64)
    assert {a.dtype for a in jax.tree_util.tree_leaves(m64.params)} == {jnp.dtype(jnp.float64)}


def test_dnn_layouts_without_ema(large):
    s, p = large
    assert not s.config.has_predictor and s.config.has_score and s.config.condition == "noisy"
    assert p.config.has_predictor and not p.config.has_score
    for m in (s, p):
        b = m.config.backbone
        assert (b.nf, b.ch_mult, b.num_res_blocks, b.attn_resolutions, b.image_size) == (4, (1, 1, 2, 2, 2, 2, 2), 2, (16,), 64)
    assert (s.config.sde.theta, s.config.sde.sigma_max, s.config.spec.beta) == (2.0, 0.6, 0.15)
    assert p.config.spec.beta == 0.33
    # the score-only net sees [x, Y] (4 channels); the predictor 2 channels
    assert s.params["score"]["output_layer"]["kernel"].shape == (1, 1, 4, 2)
    assert p.params["predictor"]["output_layer"]["kernel"].shape == (1, 1, 2, 2)
    # ema=True on a file without EMA: the reference warns and evaluates the raw weights
    with pytest.warns(UserWarning, match="no EMA"):
        s2 = import_checkpoint(SCORE_L)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(s2.params), jax.tree_util.tree_leaves(s.params)))


def test_backbone_names_from_hyper_parameters():
    base = {"backbone_denoiser": "ncsnpplarge", "backbone_score": "ncsnpplarge", "condition": "post_denoiser"}
    cfg = config_from_hparams(base, "storm")
    assert cfg.backbone == storm_jax.ncsnpp_config("ncsnpplarge") and cfg.condition == "predictor"
    # the subclasses fix nf/ch_mult/...; other NCSN++ kwargs still apply
    cfg = config_from_hparams({**base, "nf": 8, "image_size": 128}, "storm")
    assert cfg.backbone.nf == 128 and cfg.backbone.image_size == 128
    assert config_from_hparams({"backbone": "ncsnpp6M", "discriminative": True}, "dnn", dnn_role="predictor").backbone.nf == 96
    # score-only StoRM (no predictor network)
    cfg = config_from_hparams({"backbone_denoiser": "none", "condition": "noisy"}, "storm")
    assert not cfg.has_predictor and cfg.has_score
    with pytest.raises(ValueError, match=r"backbone 'convtasnet' is not supported; supported backbones: ncsnpp, ncsnpplarge, ncsnpp12M, ncsnpp6M"):
        config_from_hparams({"backbone_score": "convtasnet", "backbone_denoiser": "convtasnet"}, "storm", where="x.ckpt")
    with pytest.raises(ValueError, match="differ"):
        config_from_hparams({"backbone_score": "ncsnpp", "backbone_denoiser": "ncsnpp6M"}, "storm")
    with pytest.raises(ValueError, match="window"):
        config_from_hparams({"window": "sqrthann"}, "storm")
    with pytest.raises(ValueError, match="SDE 'ouvp'"):
        config_from_hparams({"sde": "ouvp"}, "storm")


# ------------------------------------------------------------------------------------------------
# parity with the PyTorch reference
# ------------------------------------------------------------------------------------------------


def test_parity_predictor_and_score_ncsnpp(storm_nets, expected):
    m, pred, sc, Y, x, t = storm_nets
    C = pred(m, Y)
    assert _rel(C, expected["storm/C"]) <= TOL
    s = sc(m, x, t, Y, C)
    assert _rel(s, expected["storm/score"]) <= TOL


@pytest.mark.parametrize("corrector", ["none", "ald"])
def test_parity_sampler_ncsnpp(storm_nets, expected, corrector):
    m, pred, sc, Y, _x, _t = storm_nets
    C = pred(m, Y)
    nc = 1 if corrector == "ald" else 0
    cfg = SamplerConfig(steps=3, corrector=corrector, snr=0.5, grid="reference")
    out = _run_sampler(sc, m, Y, C, _draws(200 + nc, (256, 16), 3, nc), cfg)
    assert _rel(out, expected[f"storm/sample_{corrector}"]) <= TOL


def test_parity_enhance_pipeline(storm, expected):
    """The whole waveform path (normalisation, STFT, compression, padding, predictor, sampler,
    inverse STFT, truncation, de-normalisation), compiled as one function."""
    m = storm.model()
    y = jnp.asarray(_waveform(300, 4000))
    draws = _draws(301, (256, 64), 3, 0)
    cfg = EnhanceConfig(sampler=SamplerConfig(steps=3))
    f = jax.jit(enhance_waveform, static_argnames="config").lower(m, y, draws, config=cfg).compile(compiler_options=_FAST)
    out = f(m, y, draws).waveform
    assert out.shape == (4000,)
    assert _rel(out, expected["storm/enhanced"]) <= TOL


def test_parity_ncsnpplarge(large, expected):
    s, p = large
    Y = jnp.asarray(_inputs(110, (64, 64)))
    x = jnp.asarray(_inputs(111, (64, 64)))
    sc = _compile(score, s, x, jnp.float32(0.7), Y, None)
    assert _rel(sc(s, x, jnp.float32(0.7), Y, None), expected["score_large/score"]) <= TOL
    # score-only model: the prior is centred on Y and the score sees [x, Y] (ScoreModel)
    with jax.disable_jit():
        out = sample_with_score(s.config.sde, _escape(sc, s, Y, None), Y, _draws(210, (64, 64), 2, 0), SamplerConfig(steps=2))
    assert _rel(out, expected["score_large/sample_none"]) <= TOL
    Yp = jnp.asarray(_inputs(120, (64, 64)))
    C = _compile(predictor, p, Yp)(p, Yp)
    assert _rel(C, expected["predictor_large/C"]) <= TOL


# ------------------------------------------------------------------------------------------------
# export: round trip bit for bit
# ------------------------------------------------------------------------------------------------


def _tensors_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_round_trip_storm_bit_for_bit(storm, tmp_path):
    out = export_checkpoint(storm.model(ema=True), tmp_path / "rt.ckpt", raw=storm.model(ema=False), hyper_parameters=storm.hyper_parameters)
    orig, back = _torch_load(STORM), torch.load(out, weights_only=True)  # ours pickles no classes at all
    assert list(back["state_dict"]) == list(orig["state_dict"])
    for k, v in orig["state_dict"].items():
        assert _tensors_equal(back["state_dict"][k], v), k
    assert len(back["ema"]["shadow_params"]) == len(orig["ema"]["shadow_params"])
    for a, b in zip(back["ema"]["shadow_params"], orig["ema"]["shadow_params"]):
        assert _tensors_equal(a, b)
    hp = back["hyper_parameters"]
    assert type(hp) is dict and hp["data_module_cls"] == "sgmse.data_module.SpecsDataModule" and hp["spec_factor"] == 0.33
    again = read_checkpoint(out)
    assert again.config == storm.config and again.layout == "storm"


@pytest.mark.parametrize("src", [SCORE_L, PRED_L])
def test_round_trip_dnn_with_ema(src, tmp_path):
    ref = read_checkpoint(src)
    m = ref.model(ema=False)
    out = export_checkpoint(m, tmp_path / "dnn.ckpt")
    back = torch.load(out, weights_only=True)
    orig = _torch_load(src)["state_dict"]
    assert list(back["state_dict"]) == list(orig) and all(k.startswith("dnn.") for k in orig)
    for k, v in orig.items():
        assert _tensors_equal(back["state_dict"][k], v), k
    # the EMA entry we write is read back (ema=True) as the same weights, and the config survives
    again = read_checkpoint(out)
    assert again.layout == "dnn" and again.config == ref.config and again.ema is not None
    assert back["hyper_parameters"]["discriminative"] == (not ref.config.has_score)


# ------------------------------------------------------------------------------------------------
# safety and errors
# ------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Evil(marker)}}, zipped)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refused.*(posix|os)\.system"):
        import_checkpoint(zipped)
    legacy = tmp_path / "evil_legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"evil_legacy\.ckpt: refused.*system"):
        import_checkpoint(legacy)
    # builtins such as eval are not allowed either
    torch.save({"state_dict": {}, "hp": _Eval()}, tmp_path / "eval.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        read_checkpoint(tmp_path / "eval.ckpt")
    assert not marker.exists()


class _Eval:
    def __reduce__(self):
        return (eval, ("1+1",))


def _modified(tmp_path, edit, name="bad.ckpt"):
    ck = _torch_load(STORM)
    ck["hyper_parameters"] = read_checkpoint(STORM).hyper_parameters  # plain names, no stand-ins
    edit(ck)
    torch.save(ck, tmp_path / name)
    return tmp_path / name


def test_mismatch_errors_name_keys(tmp_path):
    def edit(ck):
        sd = ck["state_dict"]
        del sd["score_net.all_modules.3.weight"]
        sd["score_net.extra.weight"] = torch.zeros(3)
        sd["denoiser_net.output_layer.weight"] = torch.zeros(2, 3, 1, 1)

    path = _modified(tmp_path, edit)
    with pytest.raises(CheckpointMismatchError) as info:
        import_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing keys (1): score_net.all_modules.3.weight" in msg
    assert "unexpected keys (1): score_net.extra.weight" in msg
    assert "shape mismatches (1): denoiser_net.output_layer.weight (checkpoint (2, 3, 1, 1), expected (2, 2, 1, 1))" in msg
    # the EMA list is checked positionally
    path = _modified(tmp_path, lambda ck: ck["ema"]["shadow_params"].pop(), "short_ema.ckpt")
    with pytest.raises(CheckpointMismatchError, match="EMA holds 537 shadow parameters but the model has 538"):
        import_checkpoint(path)
    path = _modified(tmp_path, lambda ck: ck["hyper_parameters"].update(backbone_score="gagnet", backbone_denoiser="gagnet"), "gag.ckpt")
    with pytest.raises(ValueError, match=r"gag\.ckpt: backbone 'gagnet' is not supported; supported backbones: ncsnpp"):
        import_checkpoint(path)
    # hyper-parameters that describe another network: every key is reported by name
    path = _modified(tmp_path, lambda ck: ck["hyper_parameters"].update(nf=8), "nf8.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(526\): denoiser_net.all_modules.0.W \(checkpoint \(4,\), expected \(8,\)\)"):
        import_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path):
    data = STORM.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.ckpt: truncated or corrupt"):
        import_checkpoint(cut)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.ckpt: not a PyTorch checkpoint"):
        import_checkpoint(text)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt: not a PyTorch checkpoint \(empty file\)"):
        import_checkpoint(empty)
    plain = tmp_path / "weights.pt"
    torch.save([torch.zeros(2)], plain)
    with pytest.raises(ValueError, match=r"weights\.pt: not a PyTorch Lightning checkpoint"):
        import_checkpoint(plain)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match=r"other\.ckpt: not a StoRM/SGMSE checkpoint"):
        import_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        import_checkpoint(tmp_path / "missing.ckpt")


def test_missing_torch_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'storm-jax\[torch\]'"):
        import_checkpoint(STORM)


def test_cli_import_and_export(tmp_path, capsys):
    from storm_jax.checkpoints import load_model
    from storm_jax.cli import main

    out_dir = tmp_path / "model"
    assert main(["import-ckpt", str(SCORE_L), str(out_dir), "--no-ema"]) == 0
    m = load_model(out_dir)
    ref = import_checkpoint(SCORE_L, ema=False)
    assert m.config == ref.config
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(ref.params)))
    prov = json.loads((out_dir / "reference.json").read_text())
    assert prov["layout"] == "dnn" and prov["ema"] is False and prov["hyper_parameters"]["theta"] == 2.0
    ckpt = tmp_path / "back.ckpt"
    assert main(["export-ckpt", str(out_dir), str(ckpt)]) == 0
    orig = _torch_load(SCORE_L)["state_dict"]
    back = torch.load(ckpt, weights_only=True)
    assert all(_tensors_equal(back["state_dict"][k], v) for k, v in orig.items())
    assert back["hyper_parameters"]["base_dir"] == "/data/vb"  # provenance kept
    capsys.readouterr()
    assert main(["import-ckpt", str(tmp_path / "nope.ckpt"), str(tmp_path / "x")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err


def test_stand_ins_for_pickled_reference_classes(tmp_path, monkeypatch):
    """Reference classes pickled by name (a class object as in ``data_module_cls``, an instance with
    state, Lightning's ``AttributeDict``) load as inert stand-ins; other names only with ``allow``."""
    import types

    mods = {n: types.ModuleType(n) for n in ("sgmse", "sgmse.data_module", "pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing", "mypkg")}

    class SpecsDataModule:
        def __init__(self):
            self.window = torch.ones(3)

    class AttributeDict(dict):
        pass

    class Config:
        pass

    for cls, mod in ((SpecsDataModule, "sgmse.data_module"), (AttributeDict, "pytorch_lightning.utilities.parsing"), (Config, "mypkg")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    hp = AttributeDict(backbone="ncsnpp", data_module_cls=SpecsDataModule, data=SpecsDataModule())
    torch.save({"state_dict": {}, "hyper_parameters": hp}, tmp_path / "a.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"c": Config()}}, tmp_path / "b.ckpt")
    for n in mods:
        monkeypatch.delitem(sys.modules, n)  # loading must not need (or import) the reference
    ck = _torch_load(tmp_path / "a.ckpt")
    hp = ck["hyper_parameters"]
    assert hp["backbone"] == "ncsnpp" and repr(hp["data"]) == "<stand-in for sgmse.data_module.SpecsDataModule>"
    assert not hasattr(hp["data"], "window") and hp["data_module_cls"].qualified_name == "sgmse.data_module.SpecsDataModule"
    with pytest.raises(UnsafeCheckpointError, match=r"b\.ckpt: refused to load: its pickle references mypkg\.Config"):
        _torch_load(tmp_path / "b.ckpt")
    assert "mypkg" not in sys.modules
    assert type(_torch_load(tmp_path / "b.ckpt", allow=["mypkg.Config"])["hyper_parameters"]["c"]).__name__ == "Config"
