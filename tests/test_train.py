"""Training (issue 3, item 5): reference losses, resumption, NaN guard, config refusal, bad input,
and the shipped pretrained model (item 6)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import storm_jax
import importlib

train_mod = importlib.import_module("storm_jax.training.loop")  # the loop module, whose train_step tests replace
from storm_jax.data import DatasetError, PairDataset
from storm_jax.model import StormModel, init_storm, predictor, score, storm_config
from storm_jax.nn import count_params
from storm_jax.sampling import complex_normal
from storm_jax.training import (
    CheckpointMismatch,
    StepSpec,
    TrainConfig,
    TrainingDiverged,
    ema_init,
    ema_update,
    init_train_state,
    learning_rate,
    load_training_checkpoint,
    model_config_for,
    spectrograms,
    storm_loss,
    train,
    train_step,
)
from storm_jax.training.checkpoints import _fingerprint_dict

# The micro backbone (smaller than `tiny`, no mid attention) so that a training step compiles and runs in seconds.
_BASE = storm_config("tiny")
MODEL = dataclasses.replace(_BASE, backbone=dataclasses.replace(_BASE.backbone, nf=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False))
CFG = TrainConfig(model=MODEL, batch_size=2, frames=32, steps=4, log_every=1, ckpt_every=2, keep=3, val_every=-1, progress=False)
HOP = MODEL.spec.hop


def _signals(n_utts=5, n=6000, seed=0):
    r = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    clean = [(0.3 * np.sin(2 * np.pi * (150 + 40 * k) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32) for k in range(n_utts)]
    noise = [(0.1 * r.standard_normal(n)).astype(np.float32) for _ in range(n_utts)]
    return clean, noise


@pytest.fixture(scope="module")
def dataset() -> PairDataset:
    clean, noise = _signals()
    return PairDataset.from_arrays("synthetic", [f"u{k}" for k in range(len(clean))], clean, noise)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, dataset) -> tuple[Path, Path]:
    """``(run folder, exported model)`` of one joint step of ``CFG``: the trained model that the
    fine-tuning modes start from (read only; a test that changes it works on a copy)."""
    root = tmp_path_factory.mktemp("base")
    train(dataclasses.replace(CFG, steps=1), root / "run", dataset)
    return root / "run", storm_jax.export_ema_model(root / "run", root / "model")


# ------------------------------------------------------------------------------------ losses


def _hand_loss(model, mode, a, X, Y, key):
    """The reference loss written out with NumPy around the two network calls."""
    sde = model.config.sde
    B = X.shape[0]
    kt, kz = jax.random.split(key)
    t = np.asarray(jax.random.uniform(kt, (B,), jnp.float32)) * (1.0 - 0.03) + 0.03
    z = np.asarray(complex_normal(kz, X.shape, X.dtype))
    L = math.log(0.5 / 0.05)
    sigma = np.sqrt(0.05**2 * (np.exp(2 * (1.5 + L) * t) - 1) * np.exp(-2 * 1.5 * t) * L / (1.5 + L))[:, None, None]
    decay = np.exp(-1.5 * t)[:, None, None]
    X, Y = np.asarray(X), np.asarray(Y)
    C = np.asarray(predictor(model, Y)) if mode != "score-only" else None
    attractor = Y if mode == "score-only" else C
    x_t = decay * X + (1 - decay) * attractor + sigma * z
    s = np.asarray(score(model, x_t.astype(np.complex64), t.astype(np.float32), Y, C))
    err = sigma * s + z
    if mode == "score-only":
        return np.mean(0.5 * np.sum(np.abs(err) ** 2, axis=(1, 2)))
    return a * 0.5 * np.sum(np.abs(C - X) ** 2) + (1 - a) * 0.5 * np.sum(np.abs(err) ** 2)


@pytest.mark.parametrize("mode", ["joint", "score-only"])
def test_loss_matches_hand_computation(mode):
    cfg = dataclasses.replace(CFG, mode=mode)
    mcfg = model_config_for(cfg)
    model = init_storm(mcfg, 1)
    r = np.random.default_rng(0)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 31 * HOP)), jnp.float32)
    noisy = clean + jnp.asarray(0.1 * r.standard_normal((2, 31 * HOP)), jnp.float32)
    X, Y = spectrograms(mcfg, clean, noisy)
    assert X.shape == (2, 256, 32)
    key = jax.random.key(7)
    loss, parts = storm_loss(model.params, mcfg, mode, 0.5, X, Y, key)
    want = _hand_loss(model, mode, 0.5, X, Y, key)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    # at initialisation the network output is ≈ 0, so err ≈ z and ½·E|z|² = ½ per bin
    n_bins = X.size if mode != "score-only" else X.size / 2
    assert abs(float(parts["loss_score"]) / (0.5 * n_bins) - 1) < 0.05


def test_predictor_only_loss():
    mcfg = model_config_for(dataclasses.replace(CFG, mode="predictor-only"))
    assert not mcfg.has_score
    model = init_storm(mcfg, 2)
    r = np.random.default_rng(1)
    X = jnp.asarray(r.standard_normal((2, 256, 32)) + 1j * r.standard_normal((2, 256, 32)), jnp.complex64)
    Y = X + 0.1
    loss, _ = storm_loss(model.params, mcfg, "predictor-only", 0.5, X, Y, jax.random.key(0))
    C = np.asarray(predictor(model, Y))
    np.testing.assert_allclose(float(loss), np.mean(0.5 * np.sum(np.abs(C - np.asarray(X)) ** 2, axis=(1, 2))), rtol=1e-5)



def test_a_registered_objective_is_a_mode_of_the_step_and_the_loop(tmp_path, dataset, monkeypatch):
    """An objective added with ``register_objective`` is a mode like the built-in ones: the config
    accepts it, its option is refused elsewhere, ``train_step`` takes the gradient of its loss and
    updates only the networks it names, and ``train`` runs it (the loop knows no mode by name)."""
    from storm_jax.training import OBJECTIVES, LossSettings, Objective

    def l1(model, X, Y, key, s: LossSettings):
        loss = jnp.mean(jnp.sum(jnp.abs(predictor(model, Y) - X), axis=(-2, -1)))
        return loss, {"loss": loss, "loss_score": jnp.zeros(()), "loss_predictor": loss}

    monkeypatch.setitem(OBJECTIVES, "predictor-l1", Objective("predictor-l1", l1, trains=("predictor",),
                                                            options=("predictor_steps",)))
    with pytest.raises(ValueError, match="predictor_steps=2 is used only by mode='freeze-predictor' or mode='predictor-l1'"):
        TrainConfig(model=MODEL, predictor_steps=2)
    cfg = dataclasses.replace(CFG, mode="predictor-l1", steps=2)
    state = init_train_state(cfg)
    r = np.random.default_rng(5)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 31 * HOP)), jnp.float32)
    new, parts = train_step(StepSpec.of(cfg), state, clean, clean + 0.05)
    X, Y = spectrograms(model_config_for(cfg), clean, clean + 0.05)
    want = np.mean(np.sum(np.abs(np.asarray(predictor(StormModel(model_config_for(cfg), state.params), Y)) - np.asarray(X)), axis=(1, 2)))
    np.testing.assert_allclose(float(parts["loss"]), want, rtol=1e-5)
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, new.params)
    assert all(jax.tree_util.tree_leaves(same["score"])) and not all(jax.tree_util.tree_leaves(same["predictor"]))
    run = train(cfg, tmp_path / "l1", dataset)
    assert run["step"] == 2 and all(np.isfinite(run["losses"]))
    assert json.loads((tmp_path / "l1" / "train_config.json").read_text())["mode"] == "predictor-l1"

def test_freeze_predictor_step_leaves_the_predictor_unchanged():
    cfg = dataclasses.replace(CFG, mode="freeze-predictor")
    state = init_train_state(cfg)
    r = np.random.default_rng(2)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 31 * HOP)), jnp.float32)
    new, parts = train_step(StepSpec.of(cfg), state, clean, clean + 0.05)
    assert np.isfinite(float(parts["loss"])) and float(parts["loss_predictor"]) > 0  # L_pred is in L, without gradient
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, new.params)
    assert all(jax.tree_util.tree_leaves(same["predictor"])) and not all(jax.tree_util.tree_leaves(same["score"]))


def test_correct_reverse_loss_is_the_error_of_the_sampler_output():
    """``correct-reverse`` (CRP): the loss is the batch mean of ½·Σ|x̂ − X|², x̂ the reference
    sampler's output (N steps, draws of the key), ``loss_predictor`` the frozen C's; with
    ``logmag_weight`` λ > 0 it adds ``λ·mean_b ½·Σ(log(|x̂|² + ε) − log(|X|² + ε))²`` and
    ``loss_score`` stays the complex term (all 1e-12 relative to NumPy). The gradient of that
    loss reaches the score network through all N steps (a directional central difference in
    float64, 1e-6 relative) and never the predictor. The term is refused outside
    ``correct-reverse`` and with ε <= 0; a run's fingerprint records it only when λ > 0."""
    N, lam, eps = 2, 0.01, 1e-3  # two steps: the gradient runs through a step into the next
    mcfg = model_config_for(dataclasses.replace(CFG, mode="correct-reverse", reverse_steps=N))
    model = init_storm(mcfg, 4, dtype=jnp.float64)
    r = np.random.default_rng(4)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 15 * HOP)))
    X, Y = spectrograms(mcfg, clean, clean + jnp.asarray(0.1 * r.standard_normal((2, 15 * HOP))))
    assert X.dtype == jnp.complex128 and X.shape == (2, 256, 16)
    key = jax.random.key(3)
    # one jitted program for the loss without and with the log-magnitude term and the latter's
    # gradient (XLA shares the sampler between them), so the test compiles once instead of
    # running the N-step sampler op by op or compiling three programs
    f = lambda p, w: storm_loss(p, mcfg, "correct-reverse", 0.5, X, Y, key, N, w, eps)
    both = jax.jit(lambda p: (f(p, 0.0), jax.value_and_grad(lambda q: f(q, lam), has_aux=True)(p)))
    (loss, parts), ((lm_loss, lm_parts), grads) = both(model.params)
    C = predictor(model, Y)
    cfg = storm_jax.SamplerConfig(steps=N)
    x_hat = np.asarray(storm_jax.sample(model, Y, C, storm_jax.make_draws(key, X.shape, cfg, X.dtype), cfg))
    np.testing.assert_allclose(float(loss), np.mean(0.5 * np.sum(np.abs(x_hat - np.asarray(X)) ** 2, axis=(1, 2))), rtol=1e-12)
    np.testing.assert_allclose(float(parts["loss_predictor"]), np.mean(0.5 * np.sum(np.abs(np.asarray(C - X)) ** 2, axis=(1, 2))), rtol=1e-12)
    assert float(parts["loss_score"]) == float(loss) and "loss_logmag" not in parts
    d = np.log(np.abs(x_hat) ** 2 + eps) - np.log(np.abs(np.asarray(X)) ** 2 + eps)
    hand = np.mean(0.5 * np.sum(d ** 2, axis=(1, 2)))
    np.testing.assert_allclose(float(lm_parts["loss_logmag"]), hand, rtol=1e-12)
    np.testing.assert_allclose(float(lm_loss), float(loss) + lam * hand, rtol=1e-12)
    assert float(lm_parts["loss_score"]) == float(loss)

    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads["predictor"]))
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(np.random.default_rng(a.size).standard_normal(a.shape)), model.params["score"])
    along = lambda h: float(both({**model.params, "score": jax.tree_util.tree_map(lambda a, e: a + h * e, model.params["score"], v)})[1][0][0])
    delta = 1e-6
    fd = (along(delta) - along(-delta)) / (2 * delta)
    ad = sum(float(jnp.sum(g * e)) for g, e in zip(jax.tree_util.tree_leaves(grads["score"]), jax.tree_util.tree_leaves(v)))
    np.testing.assert_allclose(ad, fd, rtol=1e-6)

    with pytest.raises(ValueError, match="logmag_weight=0.1 is used only by mode='correct-reverse'"):
        TrainConfig(model=MODEL, logmag_weight=0.1)
    with pytest.raises(ValueError, match="logmag_floor must be finite and > 0"):
        TrainConfig(model=MODEL, mode="correct-reverse", logmag_weight=0.1, logmag_floor=0.0)
    crp = dataclasses.replace(CFG, mode="correct-reverse")
    assert "logmag_weight" not in _fingerprint_dict(crp, "data")
    assert _fingerprint_dict(dataclasses.replace(crp, logmag_weight=lam), "data")["logmag_weight"] == lam


def test_correct_reverse_run_fine_tunes_only_the_score_network(tmp_path, dataset, base_model):
    """A ``correct-reverse`` run from a model directory keeps the predictor bit for bit, changes
    the score network, logs both losses, records ``reverse_steps`` in its fingerprint (a run of
    another N is refused), and other modes keep the fingerprint they had before the field."""
    base, src = base_model
    cfg = dataclasses.replace(CFG, mode="correct-reverse", reverse_steps=2, steps=2, lr=1e-3, init_from=str(src))
    run = train(cfg, tmp_path / "crp", dataset)
    assert run["step"] == 2 and all(np.isfinite(run["losses"]))
    recs = [json.loads(l) for l in (tmp_path / "crp" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_predictor"] > 0 and r["loss_score"] == r["loss"] for r in recs)
    _, st, _ = load_training_checkpoint(tmp_path / "crp")
    loaded = storm_jax.load_model(src)
    for x, y in zip(jax.tree_util.tree_leaves(st.params["predictor"]), jax.tree_util.tree_leaves(loaded.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(st.params["score"]),
                                                       jax.tree_util.tree_leaves(loaded.params["score"])))
    # the exported model records the sampler it was tuned through; the CLI samples with it by default
    tuned = storm_jax.load_model(storm_jax.export_ema_model(tmp_path / "crp", tmp_path / "crp-model"))
    assert tuned.config.sampler_steps == 2 and loaded.config.sampler_steps is None
    assert json.loads((tmp_path / "crp-model" / "config.json").read_text())["sampler_steps"] == 2
    assert "sampler_steps" not in json.loads((src / "config.json").read_text())
    from storm_jax._cli_args import sampler_steps
    from types import SimpleNamespace

    assert sampler_steps(SimpleNamespace(steps=None), tuned) == 2 and sampler_steps(SimpleNamespace(steps=None), loaded) == 30
    assert sampler_steps(SimpleNamespace(steps=7), tuned) == 7
    with pytest.raises(ValueError, match="sampler_steps must be a positive integer"):
        dataclasses.replace(tuned.config, sampler_steps=0)
    # a tuned model can start a new score-matching run: that run's model is a score again
    again = dataclasses.replace(CFG, mode="freeze-predictor", steps=1, init_from=str(tmp_path / "crp-model"))
    assert model_config_for(again).sampler_steps is None and init_train_state(again).params["score"] is not None
    assert json.loads((tmp_path / "crp" / "fingerprint.json").read_text())["reverse_steps"] == 2
    assert "reverse_steps" not in json.loads((base / "fingerprint.json").read_text())
    with pytest.raises(CheckpointMismatch, match="reverse_steps"):
        train(dataclasses.replace(cfg, reverse_steps=3), tmp_path / "crp", dataset)
    with pytest.raises(ValueError, match="reverse_steps=3 is used only by mode='correct-reverse'"):
        TrainConfig(model=MODEL, reverse_steps=3)
    with pytest.raises(ValueError, match="reverse_steps must be a positive integer"):
        TrainConfig(model=MODEL, mode="correct-reverse", reverse_steps=0)


def test_reference_mode_names_and_bad_config():
    assert TrainConfig(model=MODEL, mode="regen-freeze-denoiser").mode == "freeze-predictor"
    assert TrainConfig(model=MODEL, mode="denoiser-only").mode == "predictor-only"
    with pytest.raises(ValueError, match="unknown mode"):
        TrainConfig(model=MODEL, mode="nope")
    with pytest.raises(ValueError, match="multiple of 2"):
        TrainConfig(model=MODEL, frames=33)
    with pytest.raises(ValueError, match="predictor_steps=5 is used only by mode='freeze-predictor'"):
        TrainConfig(model=MODEL, predictor_steps=5)
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig(model=MODEL, lr=float("nan"))


def test_ema_matches_torch_ema_rule():
    p0 = {"w": jnp.zeros(3)}
    ema = ema_init(p0)
    ema = ema_update(ema, {"w": jnp.ones(3)}, 0.999)  # n = 1: d = min(0.999, 2/11)
    np.testing.assert_allclose(np.asarray(ema["params"]["w"]), 1 - 2 / 11, rtol=1e-6)
    for _ in range(2000):
        ema = ema_update(ema, {"w": jnp.ones(3)}, 0.9)
    assert int(ema["count"]) == 2001 and np.allclose(ema["params"]["w"], 1.0)


# ------------------------------------------------------------------------- resume, NaN, config


class _Stop(Exception):
    pass


def _kill_at(step):
    def cb(s, _):
        if s == step:
            raise _Stop

    return cb


def test_resume_equals_uninterrupted_bit_identical(tmp_path, dataset):
    # the two-stage recipe: steps 1-2 train the predictor alone, steps 3-4 the score with it frozen
    cfg = dataclasses.replace(CFG, mode="freeze-predictor", predictor_steps=2)  # 4 steps, checkpoints every 2
    full = train(cfg, tmp_path / "a", dataset)
    assert full["step"] == 4 and all(np.isfinite(full["losses"]))
    # killed after step 3 (checkpoint at 2): resumption replays step 3 onwards
    with pytest.raises(_Stop):
        train(cfg, tmp_path / "b", dataset, callback=_kill_at(3))
    assert load_training_checkpoint(tmp_path / "b")[1].step == 2
    rest = train(cfg, tmp_path / "b", dataset)
    assert rest["losses"] == full["losses"][2:]  # bit-identical floats
    _, sa, ma = load_training_checkpoint(tmp_path / "a")
    _, sb, mb = load_training_checkpoint(tmp_path / "b")
    for x, y in zip(jax.tree_util.tree_leaves((sa.params, sa.ema, sa.opt_state, sa.key)),
                    jax.tree_util.tree_leaves((sb.params, sb.ema, sb.opt_state, sb.key))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert ma["batch_state"] == mb["batch_state"]
    _, s2, _ = load_training_checkpoint(tmp_path / "b", 2)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert same(s2.params["predictor"], sb.params["predictor"]) and not same(s2.params["score"], sb.params["score"])
    assert int(sb.opt_state["predictor"][0].count) == 2 and int(sb.opt_state["score"][0].count) == 2
    log = [json.loads(l) for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # the replayed step is logged once
    # the export holds the EMA weights
    model = storm_jax.export_ema_model(tmp_path / "b", tmp_path / "model")
    loaded = storm_jax.load_model(model)
    for x, y in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(sb.ema["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_averages_the_ema_weights_of_saved_checkpoints(tmp_path, dataset, capsys):
    """``average_from``: the exported weights are the float64 mean of the EMA weights of every
    saved checkpoint in the window (here steps 2, 3, 4), cast back to float32; a window with no
    checkpoint or an unsaved ``step`` is refused, naming the saved steps."""
    from storm_jax.cli import main

    cfg = dataclasses.replace(CFG, ckpt_every=1, keep=10)
    train(cfg, tmp_path / "run", dataset)
    assert storm_jax.saved_steps(tmp_path / "run") == [1, 2, 3, 4]
    emas = [load_training_checkpoint(tmp_path / "run", s)[1].ema["params"] for s in (2, 3, 4)]
    want = jax.tree_util.tree_map(lambda *a: (sum(np.asarray(x, np.float64) for x in a) / 3).astype(np.float32), *emas)
    got = storm_jax.load_model(storm_jax.export_ema_model(tmp_path / "run", tmp_path / "avg", average_from=2)).params
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), y)
    # the average differs from the last EMA (the score network moved) and the window matters
    last = storm_jax.load_model(storm_jax.export_ema_model(tmp_path / "run", tmp_path / "last")).params
    assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(got["score"])[0]), np.asarray(jax.tree_util.tree_leaves(last["score"])[0]))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "cli"), "--step", "3", "--average-from", "3"]) == 0
    one = storm_jax.load_model(tmp_path / "cli").params
    for x, y in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(emas[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "x"), "--average-from", "9"]) == 2
    assert "no saved checkpoint between steps 9 and 4 (saved: [1, 2, 3, 4])" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "x"), "--step", "7", "--average-from", "1"]) == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ctrl_c_mid_step_saves_a_consistent_checkpoint(tmp_path, dataset, monkeypatch):
    """Ctrl-C while step 4 is being computed (its batch already drawn): the checkpoint holds
    step 3 with the data position *before* that batch, so resuming replays it exactly."""
    full = train(CFG, tmp_path / "a", dataset)
    real = train_mod.train_step

    def interrupted(config, state, clean, noisy):
        if int(state.step) == 3:
            raise KeyboardInterrupt
        return real(config, state, clean, noisy)

    monkeypatch.setattr(train_mod, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(CFG, tmp_path / "b", dataset)
    _, state, meta = load_training_checkpoint(tmp_path / "b")
    assert int(state.step) == 3 and meta.get("interrupted")
    monkeypatch.setattr(train_mod, "train_step", real)
    rest = train(CFG, tmp_path / "b", dataset)
    assert rest["losses"] == full["losses"][3:]


def test_sigterm_saves_the_last_step(tmp_path, dataset):
    """SIGTERM (e.g. from a job scheduler) right after step 3 saves step 3 (no checkpoint was due)
    and raises ``Terminated``; resuming continues bit-identically; the old handler is restored."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    full = train(CFG, tmp_path / "a", dataset)
    before = signal.getsignal(signal.SIGTERM)

    def cb(step, parts):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(train_mod.Terminated):
        train(CFG, tmp_path / "b", dataset, callback=cb)
    assert signal.getsignal(signal.SIGTERM) is before
    _, state, meta = load_training_checkpoint(tmp_path / "b")
    assert int(state.step) == 3 and meta.get("interrupted")
    assert train(CFG, tmp_path / "b", dataset)["losses"] == full["losses"][3:]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, dataset, monkeypatch):
    real = train_mod.train_step

    def poisoned(config, state, clean, noisy):
        new, parts = real(config, state, clean, noisy)
        if int(new.step) >= 3:
            parts = dict(parts, loss=jnp.float32(jnp.nan))
            new = new.replace(params=jax.tree_util.tree_map(lambda p: p * jnp.nan, new.params))
        return new, parts

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3.*last good checkpoint is step 2"):
        train(CFG, tmp_path / "run", dataset)
    _, state, _ = load_training_checkpoint(tmp_path / "run")
    assert int(state.step) == 2
    assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree_util.tree_leaves(state.params))
    assert "diverged" in (tmp_path / "run" / "log.jsonl").read_text()


def test_learning_rate_schedule_counts_each_networks_own_steps():
    """Warm-up ``lr·k/W`` then ``lr·½(1 + cos(π·j/D))`` down to 0, in each network's own step count:
    a step at rate 0 leaves the network bit-identical, the next one moves it."""
    assert learning_rate(CFG) == CFG.lr  # the reference: constant
    cfg = dataclasses.replace(CFG, mode="freeze-predictor", predictor_steps=1, lr=1e-3, lr_warmup=2, lr_decay=4)
    lr = learning_rate(cfg)
    expected = [0.0, 5e-4, 1e-3] + [1e-3 * 0.5 * (1 + math.cos(math.pi * j / 4)) for j in (1, 2, 3)] + [0.0, 0.0]
    np.testing.assert_allclose([float(lr(k)) for k in range(8)], expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose([float(learning_rate(dataclasses.replace(cfg, lr_decay=0))(k)) for k in (1, 2, 9)],
                               [5e-4, 1e-3, 1e-3], rtol=1e-6)

    def unchanged(a, b):
        return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))

    r = np.random.default_rng(3)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 31 * HOP)), jnp.float32)
    states = [init_train_state(cfg)]
    for k in range(3):  # step 0 trains the predictor (its count 0), steps 1, 2 the score network (its counts 0, 1)
        states.append(train_step(StepSpec.of(cfg, k), states[-1], clean, clean + 0.05)[0])
    p = [s.params for s in states]
    assert unchanged(p[0], p[1]) and unchanged(p[1], p[2])  # rate 0 at each network's first step
    assert unchanged(p[2]["predictor"], p[3]["predictor"]) and not unchanged(p[2]["score"], p[3]["score"])
    with pytest.raises(ValueError, match="lr_decay must be an integer >= 0"):
        dataclasses.replace(cfg, lr_decay=-1)
    # constant-rate runs keep the fingerprint they had before schedules existed; a schedule is part of it
    assert "lr_decay" not in _fingerprint_dict(CFG, "d")
    assert _fingerprint_dict(cfg, "d")["lr_decay"] == 4


def test_checkpoint_of_a_different_config_is_refused(tmp_path, dataset):
    cfg = dataclasses.replace(CFG, steps=1)
    train(cfg, tmp_path / "run", dataset)
    with pytest.raises(CheckpointMismatch, match=r"different run(.|\n)*lr: checkpoint 0.0001 vs requested 0.001"):
        train(dataclasses.replace(cfg, lr=1e-3), tmp_path / "run", dataset)
    with pytest.raises(CheckpointMismatch, match="data"):
        train(cfg, tmp_path / "run", dataset.subset(range(4)))
    # the number of steps (and logging cadence) may change between a run and its resumption
    assert train(dataclasses.replace(cfg, steps=1, log_every=5), tmp_path / "run", dataset)["step"] == 1


def test_fine_tune_from_a_model_directory(tmp_path, dataset, base_model):
    """``init_from``: the run starts at the model's weights (EMA too), a frozen predictor stays at
    them, the fingerprint records their digest, and a changed or mismatched model is refused."""
    shutil.copytree(base_model[0], tmp_path / "base")  # changed below: a copy of the shared run
    src = storm_jax.export_ema_model(tmp_path / "base", tmp_path / "model")
    loaded = storm_jax.load_model(src)
    cfg = dataclasses.replace(CFG, mode="freeze-predictor", lr=1e-5, steps=2, init_from=str(src))
    state = init_train_state(cfg)
    for tree in (state.params, state.ema["params"]):
        for x, y in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(loaded.params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    run = train(cfg, tmp_path / "ft", dataset)
    assert run["step"] == 2 and all(np.isfinite(run["losses"]))
    _, st, _ = load_training_checkpoint(tmp_path / "ft")
    for x, y in zip(jax.tree_util.tree_leaves(st.params["predictor"]), jax.tree_util.tree_leaves(loaded.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(st.params["score"]),
                                                       jax.tree_util.tree_leaves(loaded.params["score"])))
    fp = json.loads((tmp_path / "ft" / "fingerprint.json").read_text())
    assert fp["init_from"] == str(src) and len(fp["init_params"]) == 16
    # the model directory changed under the run: resuming is refused
    train(dataclasses.replace(CFG, steps=3), tmp_path / "base", dataset)
    storm_jax.export_ema_model(tmp_path / "base", tmp_path / "model")
    with pytest.raises(CheckpointMismatch, match="init_params"):
        train(dataclasses.replace(cfg, steps=3), tmp_path / "ft", dataset)
    # a model of another architecture, a missing directory, a preset: clear errors before any step
    other = dataclasses.replace(cfg, model=dataclasses.replace(MODEL, backbone=dataclasses.replace(MODEL.backbone, nf=4)))
    with pytest.raises(ValueError, match=r"predictor network differs(.|\n)*nf"):
        train(other, tmp_path / "x", dataset)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(dataclasses.replace(cfg, init_from=str(tmp_path / "nowhere")), tmp_path / "y", dataset)
    with pytest.raises(ValueError, match="preset has no trained weights"):
        init_train_state(dataclasses.replace(cfg, init_from="preset:tiny"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_larger_score_network_on_a_loaded_predictor(tmp_path, dataset):
    """``init_networks=("predictor",)`` with a score network of its own backbone: the predictor is
    the model's (and stays so when frozen), the score network is the fresh initialisation; a
    network the model lacks, a loaded network of another architecture, and ``init_networks``
    without ``init_from`` are clear errors."""
    src = storm_jax.save_model(init_storm(MODEL, 3), tmp_path / "model")
    loaded = storm_jax.load_model(src)
    big = dataclasses.replace(MODEL.backbone, nf=12)
    cfg = dataclasses.replace(CFG, model=dataclasses.replace(MODEL, score_backbone=big), mode="freeze-predictor",
                              steps=2, init_from=str(src), init_networks=("predictor",))
    state = init_train_state(cfg)
    fresh = init_storm(model_config_for(cfg), jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 1))
    for name, want in (("predictor", loaded.params["predictor"]), ("score", fresh.params["score"])):
        for x, y in zip(jax.tree_util.tree_leaves(state.params[name]), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert count_params(state.params["score"]) > count_params(loaded.params["score"])
    train(cfg, tmp_path / "run", dataset)
    _, st, _ = load_training_checkpoint(tmp_path / "run")
    for x, y in zip(jax.tree_util.tree_leaves(st.params["predictor"]), jax.tree_util.tree_leaves(loaded.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    out = storm_jax.load_model(storm_jax.export_ema_model(tmp_path / "run", tmp_path / "exported"))
    assert out.config.score_backbone == big and out.config.score_net().nf == 12
    with pytest.raises(ValueError, match="score network differs(.|\n)*nf"):
        init_train_state(dataclasses.replace(cfg, init_networks=("predictor", "score")))
    pred_only = storm_jax.save_model(
        StormModel(config=dataclasses.replace(MODEL, has_score=False), params={"predictor": loaded.params["predictor"], "score": None}),
        tmp_path / "pred")
    with pytest.raises(ValueError, match="has no score network"):
        init_train_state(dataclasses.replace(cfg, model=MODEL, init_from=str(pred_only), init_networks=("score",)))
    # the predictor depends on neither SDE nor condition: it may serve a run with others; a loaded
    # score network may not
    other = dataclasses.replace(MODEL, condition="predictor", sde=dataclasses.replace(MODEL.sde, sigma_max=0.4))
    st = init_train_state(dataclasses.replace(cfg, model=other))
    for x, y in zip(jax.tree_util.tree_leaves(st.params["predictor"]), jax.tree_util.tree_leaves(loaded.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match=r"configuration differs(.|\n)*condition(.|\n)*sigma_max"):
        init_train_state(dataclasses.replace(cfg, model=other, init_networks=("predictor", "score")))
    # score_symmetry is how the score network is used, not what its weights are: the model's plain
    # network may start a run that trains its odd part
    odd = init_train_state(dataclasses.replace(cfg, model=dataclasses.replace(MODEL, score_symmetry="sign"),
                                               init_networks=("predictor", "score")))
    for x, y in zip(jax.tree_util.tree_leaves(odd.params["score"]), jax.tree_util.tree_leaves(loaded.params["score"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a score ensemble may lend its predictor, not its score networks (train members one by one)
    pair = storm_jax.save_model(storm_jax.score_ensemble([loaded, loaded]), tmp_path / "pair")
    st = init_train_state(dataclasses.replace(cfg, model=MODEL, init_from=str(pair)))
    for x, y in zip(jax.tree_util.tree_leaves(st.params["predictor"]), jax.tree_util.tree_leaves(loaded.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="ensemble of 2 score networks"):
        init_train_state(dataclasses.replace(cfg, model=MODEL, init_from=str(pair), init_networks=("predictor", "score")))
    # a guided model lends its predictor and its conditional score network, never the C-only guide
    c_only = init_storm(dataclasses.replace(MODEL, condition="predictor"), 5)
    c_only = c_only.replace(params={**c_only.params, "predictor": loaded.params["predictor"]})
    guided = storm_jax.save_model(storm_jax.score_guidance(loaded, c_only, 1.0), tmp_path / "guided")
    st = init_train_state(dataclasses.replace(cfg, model=MODEL, init_from=str(guided), init_networks=None))
    for name in ("predictor", "score"):
        for x, y in zip(jax.tree_util.tree_leaves(st.params[name]), jax.tree_util.tree_leaves(loaded.params[name])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert "guide" not in st.params
    # a predictor-only run has no score network: the full model's predictor serves it by default
    st = init_train_state(dataclasses.replace(cfg, model=other, mode="predictor-only", init_networks=None))
    assert st.params["score"] is None
    with pytest.raises(ValueError, match="init_networks needs init_from"):
        dataclasses.replace(cfg, init_from=None)
    with pytest.raises(ValueError, match="init_networks must name"):
        dataclasses.replace(cfg, init_networks=("denoiser",))


# ------------------------------------------------------------------------------- bad input


def _wav(path: Path, x, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, np.float32), rate, subtype="FLOAT")


def _folder(root: Path, names=("a", "b", "c"), n=6000, split="train"):
    clean, noise = _signals(len(names), n)
    for name, c, z in zip(names, clean, noise):
        _wav(root / split / "clean" / f"{name}.wav", c)
        _wav(root / split / "noisy" / f"{name}.wav", c + z)
    return root


def test_bad_input_fails_before_any_step(tmp_path, dataset, monkeypatch):
    def no_step(*a, **k):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(train_mod, "train_step", no_step)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="does not exist"):
        train(CFG, out, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        train(CFG, out, tmp_path / "empty")
    noaudio = tmp_path / "noaudio"
    (noaudio / "train" / "clean").mkdir(parents=True)
    (noaudio / "train" / "noisy").mkdir(parents=True)
    (noaudio / "train" / "clean" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no audio files"):
        train(CFG, out, noaudio)
    bad = _folder(tmp_path / "bad")
    (bad / "train" / "noisy" / "a.wav").unlink()                                    # mismatched pair
    (bad / "train" / "clean" / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # corrupt file
    with pytest.raises(DatasetError) as err:
        train(CFG, out, bad)
    assert "no matching file" in str(err.value) and "unreadable audio file" in str(err.value)
    with pytest.raises(DatasetError, match="training data: .* longer than every utterance"):
        train(dataclasses.replace(CFG, frames=64), out, dataset)                    # 64 frames = 8064 samples > 6000
    with pytest.raises(DatasetError, match="training data: .* larger than the dataset"):
        train(dataclasses.replace(CFG, batch_size=6), out, dataset)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        train(CFG, blocker / "run", dataset)
    assert not out.exists()


def test_cli_train_on_a_folder_and_bad_input(tmp_path, capsys):
    from storm_jax.cli import main

    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["train", "--data", str(tmp_path / "x"), "--out", str(tmp_path / "o"), "--frames", "30"])
    assert code == 2 and "multiple of 4" in capsys.readouterr().err


def test_cli_train_sde_options(tmp_path, capsys):
    """--theta/--sigma-min/--sigma-max/--t-eps set the run's OUVE SDE (recorded in its config);
    an impossible schedule is refused before anything is written."""
    from storm_jax.cli import main

    root = _folder(tmp_path / "data")
    out = tmp_path / "run"
    bad = ["train", "--data", str(root), "--out", str(out), "--quiet", "--sigma-max", "0.01"]
    assert main(bad) == 2 and "sigma_min < sigma_max" in capsys.readouterr().err
    assert not out.exists()
    args = ["train", "--data", str(root), "--out", str(out), "--quiet", "--steps", "0", "--batch-size", "2", "--frames", "32",
            "--val-every", "-1", "--theta", "2", "--sigma-min", "0.04", "--sigma-max", "0.25", "--t-eps", "0.05",
            "--lr-warmup", "3", "--lr-decay", "7"]
    assert main(args) == 0
    saved = json.loads((out / "train_config.json").read_text())
    sde = saved["model"]["sde"]
    assert (sde["theta"], sde["sigma_min"], sde["sigma_max"], sde["t_eps"]) == (2.0, 0.04, 0.25, 0.05)
    assert (saved["lr_warmup"], saved["lr_decay"]) == (3, 7)


# ------------------------------------------------------------------------- shipped model


def test_shipped_model_loads_and_enhances():
    path = storm_jax.pretrained_path()
    if path is None:
        pytest.skip("no pretrained model shipped in this checkout")
    model = storm_jax.load_model()
    assert model.config.backbone == storm_config("tiny").backbone and model.config.has_predictor and model.config.has_score
    clean, noise = _signals(1, 16000)
    noisy = clean[0] + 0.5 * noise[0]
    out = storm_jax.enhance(model, noisy, 0, steps=3)
    assert out.shape == noisy.shape and np.all(np.isfinite(out))
    from storm_jax.checkpoints import resolve_model

    assert resolve_model(None).config == model.config
    assert storm_jax.load_model("pretrained:tiny-embedded").config == model.config
    with pytest.raises(FileNotFoundError, match="no pretrained model 'nope'"):
        storm_jax.load_model("pretrained:nope")


def test_second_shipped_model_shares_the_predictor():
    """``pretrained:tiny-embedded-smax025``: a score network trained with σ_max = 0.25 on the
    frozen predictor of the default shipped model, so its predictor weights are those bit for bit
    and only the SDE and the score network differ."""
    from storm_jax.checkpoints import resolve_model

    if storm_jax.pretrained_path() is None or storm_jax.pretrained_path("tiny-embedded-smax025") is None:
        pytest.skip("the pretrained models are not shipped in this checkout")
    base, alt = storm_jax.load_model(), resolve_model("pretrained:tiny-embedded-smax025")
    assert alt.config.sde.sigma_max == 0.25 and alt.config.sde.sigma_min == base.config.sde.sigma_min
    assert alt.config.backbone == base.config.backbone and alt.config.score_symmetry == "none"
    for a, b in zip(jax.tree_util.tree_leaves(alt.params["predictor"]), jax.tree_util.tree_leaves(base.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree_util.tree_leaves(alt.params["score"]), jax.tree_util.tree_leaves(base.params["score"])))


def test_third_shipped_model_is_tuned_through_its_sampler():
    """``pretrained:tiny-embedded-crp``: the σ_max = 0.25 model fine-tuned by ``correct-reverse``
    through the 5-step reference sampler. Its config records ``sampler_steps = 5``, the SDE and
    backbone are the σ_max = 0.25 model's, the predictor is the default model's bit for bit,
    and only the score network changed."""
    from storm_jax.checkpoints import resolve_model

    if any(storm_jax.pretrained_path(n) is None for n in ("tiny-embedded", "tiny-embedded-smax025", "tiny-embedded-crp")):
        pytest.skip("the pretrained models are not shipped in this checkout")
    base, smax, crp = (resolve_model(f"pretrained:{n}") for n in ("tiny-embedded", "tiny-embedded-smax025", "tiny-embedded-crp"))
    assert crp.config.sampler_steps == 5 and smax.config.sampler_steps is None
    assert crp.config == dataclasses.replace(smax.config, sampler_steps=5)
    for a, b in zip(jax.tree_util.tree_leaves(crp.params["predictor"]), jax.tree_util.tree_leaves(base.params["predictor"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree_util.tree_leaves(crp.params["score"]), jax.tree_util.tree_leaves(smax.params["score"])))


def test_cli_evaluate_json_with_the_shipped_model(tmp_path, capsys):
    if storm_jax.pretrained_path() is None:
        pytest.skip("no pretrained model shipped in this checkout")
    from storm_jax.cli import main

    root = _folder(tmp_path / "data", names=("a",), n=16000, split="test")
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {"noisy", "predictor", "storm"}
    assert all(set(v) == {"si_sdr", "pesq", "estoi"} and all(np.isfinite(list(v.values()))) for v in table.values())
    # the reference enhancement.py sampler (ALD corrector): only the StoRM row changes
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--corrector", "ald", "--json"]) == 0
    ald = json.loads(capsys.readouterr().out)
    for system in ("noisy", "predictor"):  # equal up to float noise of a second compilation
        assert ald[system] == pytest.approx(table[system], rel=1e-6)
    assert ald["storm"]["si_sdr"] != pytest.approx(table["storm"]["si_sdr"], rel=1e-4)
    # --samples K: StoRM is the mean of K reverse-process samples; the other rows stay
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--samples", "2", "--json"]) == 0
    two = json.loads(capsys.readouterr().out)
    for system in ("noisy", "predictor"):
        assert two[system] == pytest.approx(table[system], rel=1e-6)
    assert two["storm"]["si_sdr"] != pytest.approx(table["storm"]["si_sdr"], rel=1e-4)
    # --score-symmetry sign: the odd part of the score network; the predictor row stays
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--score-symmetry", "sign", "--json"]) == 0
    odd = json.loads(capsys.readouterr().out)
    for system in ("noisy", "predictor"):
        assert odd[system] == pytest.approx(table[system], rel=1e-6)
    assert odd["storm"]["si_sdr"] != pytest.approx(table["storm"]["si_sdr"], rel=1e-4)
    # --by KEY: means per value of an utterance metadata key, next to the overall means
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--json", "--by", "clean_path"]) == 0
    by = json.loads(capsys.readouterr().out)
    (group,) = by["clean_path"].values()
    assert set(by) == {"all", "clean_path"} and group["n"] == 1
    for system in table:  # one utterance: its group's means are the overall means
        assert by["all"][system] == pytest.approx(table[system], rel=1e-5) == group["systems"][system]
    assert main(["evaluate", "--data", str(root), "--limit", "1", "--steps", "2", "--by", "noise_type"]) == 2
    err = capsys.readouterr().err
    assert "no 'noise_type' for 1 utterance" in err and "clean_path" in err


def test_summarize_groups_by_hand():
    from storm_jax.evaluation import format_group_table, summarize_groups

    per = {"predictor": {"pesq": np.array([1.0, 2.0, 4.0]), "si_sdr": np.array([3.0, 5.0, 7.0]), "estoi": np.array([0.1, 0.2, 0.3])}}
    g = summarize_groups(per, ["hum", "white", "hum"])
    assert list(g) == ["hum", "white"] and g["hum"]["n"] == 2 and g["white"]["n"] == 1
    assert g["hum"]["systems"]["predictor"] == pytest.approx({"pesq": 2.5, "si_sdr": 5.0, "estoi": 0.2})
    assert g["white"]["systems"]["predictor"] == pytest.approx({"pesq": 2.0, "si_sdr": 5.0, "estoi": 0.2})
    assert "| hum | 2 | predictor | 5.00 | 2.500 | 0.200 |" in format_group_table(g, "noise_type")
    with pytest.raises(ValueError, match="2 labels for 3 utterances"):
        summarize_groups(per, ["hum", "white"])


# ------------------------------------------------------------------------ two-stage refinement


def test_refine_loss_is_the_error_of_the_refined_sampler_output():
    """``refine``: the loss is ``mean_b ½·Σ|x̂ + R(x̂) − X|²`` with x̂ the frozen model's N-step
    reference-sampler output (1e-5 relative to a hand computation that applies the refiner's
    network directly), ``loss_score`` the first stage's error on the same batch; the gradient
    reaches the refiner only; an untrained refiner is close to the identity."""
    from storm_jax.model import refine
    from storm_jax.nn import NCSNpp

    N = 2
    mcfg = dataclasses.replace(MODEL, refiner=MODEL.backbone, sampler_steps=N)
    model = init_storm(mcfg, 6)
    r = np.random.default_rng(6)
    clean = jnp.asarray(0.3 * r.standard_normal((2, 15 * HOP)), jnp.float32)
    X, Y = spectrograms(mcfg, clean, clean + jnp.asarray(0.1 * r.standard_normal((2, 15 * HOP)), jnp.float32))
    # untrained, R's output is small next to x̂: the refiner starts near the identity
    np.testing.assert_allclose(np.asarray(refine(model, X)), np.asarray(X), atol=1e-3 * float(np.max(np.abs(np.asarray(X)))))
    # give the refiner a non-zero output so that the hand computation tests the composition
    params = {**model.params, "refiner": jax.tree_util.tree_map(lambda a: a + 0.01, model.params["refiner"])}
    model = model.replace(params=params)
    key = jax.random.key(9)
    # the loss and its gradient in one jitted program (eagerly, the N-step sampler runs op by op)
    (loss, parts), grads = jax.jit(jax.value_and_grad(lambda p: storm_loss(p, mcfg, "refine", 0.5, X, Y, key, N), has_aux=True))(params)
    C = predictor(model, Y)
    cfg = storm_jax.SamplerConfig(steps=N)
    x_hat = storm_jax.sample(model, Y, C, storm_jax.make_draws(key, X.shape, cfg, X.dtype), cfg)
    R = NCSNpp(mcfg.refiner_net()).apply({"params": params["refiner"]}, x_hat[..., None], None)
    out = np.asarray(x_hat + R)
    assert not np.allclose(out, np.asarray(x_hat))
    np.testing.assert_allclose(float(loss), np.mean(0.5 * np.sum(np.abs(out - np.asarray(X)) ** 2, axis=(1, 2))), rtol=1e-5)
    np.testing.assert_allclose(float(parts["loss_score"]), np.mean(0.5 * np.sum(np.abs(np.asarray(x_hat - X)) ** 2, axis=(1, 2))), rtol=1e-5)
    for name in ("predictor", "score"):
        assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads[name]))
    assert any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads["refiner"]))
    with pytest.raises(ValueError, match="mode='refine' works on a trained model: give init_from"):
        TrainConfig(model=MODEL, mode="refine")


def test_refine_run_trains_only_the_refiner_and_the_pipeline_uses_it(tmp_path, dataset, base_model):
    """A ``refine`` run from a model directory keeps predictor and score network bit for bit,
    trains the refiner, exports a two-stage model (config and weights round-trip, sampler N
    recorded) whose enhancement and pathwise derivative go through the refiner."""
    from storm_jax.model import refine

    src = base_model[1]
    cfg = dataclasses.replace(CFG, mode="refine", reverse_steps=2, steps=2, lr=1e-3, init_from=str(src),
                              model=dataclasses.replace(MODEL, refiner=MODEL.backbone))
    run = train(cfg, tmp_path / "ref", dataset)
    assert run["step"] == 2 and all(np.isfinite(run["losses"]))
    recs = [json.loads(l) for l in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_score"] > 0 and r["loss_predictor"] > 0 for r in recs)
    _, st, _ = load_training_checkpoint(tmp_path / "ref")
    one = storm_jax.load_model(src)
    for name in ("predictor", "score"):
        for x, y in zip(jax.tree_util.tree_leaves(st.params[name]), jax.tree_util.tree_leaves(one.params[name])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    two = storm_jax.load_model(storm_jax.export_ema_model(tmp_path / "ref", tmp_path / "two"))
    assert two.config.refiner == MODEL.backbone and two.config.sampler_steps == 2
    assert "refiner" in json.loads((tmp_path / "two" / "config.json").read_text())
    assert "refiner" not in json.loads((src / "config.json").read_text())
    # the pipeline's value and derivative are those of x̂ + R(x̂)
    r = np.random.default_rng(2)
    clean = (0.3 * r.standard_normal(4000)).astype(np.float32)
    noise = (0.1 * r.standard_normal(4000)).astype(np.float32)
    draws = storm_jax.draws_for(two, 4000, jax.random.key(1), storm_jax.SamplerConfig(steps=2))
    cfg2 = storm_jax.EnhanceConfig(sampler=storm_jax.SamplerConfig(steps=2))
    pathwise = jax.jit(lambda model: jax.jvp(lambda m: storm_jax.enhance_mixture(model, clean, noise, m, draws, cfg2).spec, (1.0,), (1.0,)))
    (x2, d2), (x1, d1) = pathwise(two), pathwise(two.replace(config=dataclasses.replace(two.config, refiner=None)))
    r1, want = jax.jvp(lambda x: refine(two, x), (x1,), (d1,))  # x̂₁ + R(x̂₁) and (I + R')·dx̂₁/dM
    np.testing.assert_allclose(np.asarray(x2), np.asarray(r1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(x2), np.asarray(x1))
    np.testing.assert_allclose(np.asarray(d2), np.asarray(want), rtol=1e-4, atol=1e-5 * float(np.max(np.abs(np.asarray(want)))))
    with pytest.raises(ValueError, match="no refinement stage"):
        from storm_jax.convert import hparams_from_config

        hparams_from_config(two.config)
