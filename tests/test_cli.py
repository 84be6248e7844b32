"""The `storm-jax` command: info, enhance (with every kind of bad input), ensemble, demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from storm_jax.cli import main


def test_info_json_reference_counts(capsys):
    assert main(["info", "--preset", "ncsnpp", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["score_params"] == 27_776_038
    assert info["predictor_params"] == 27_342_350
    assert info["score_tensors"] == 271 and info["predictor_tensors"] == 267


def test_info_score_network_of_another_preset(capsys):
    assert main(["info", "--preset", "ncsnpp", "--score-preset", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["predictor_params"] == 27_342_350 and info["score_preset"] == "tiny"
    assert info["score_params"] < 1_000_000 and info["score_backbone"]["nf"] == 16
    assert main(["info", "--score-preset", "huge"]) == 2


def test_info_unknown_preset(capsys):
    assert main(["info", "--preset", "huge"]) == 2
    assert "huge" in capsys.readouterr().err


def _tone(n, rate=16000):
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def test_enhance_batch_with_bad_files(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "good.wav", _tone(6000), 16000)
    sf.write(src / "rate8k.wav", _tone(3000, 8000), 8000)
    sf.write(src / "stereo.wav", np.stack([_tone(6000), _tone(6000)], 1), 16000)
    bad = _tone(6000)
    bad[10] = np.nan
    sf.write(src / "nan.wav", bad, 16000, subtype="FLOAT")
    sf.write(src / "zeros.wav", np.zeros(6000, np.float32), 16000)
    sf.write(src / "short.wav", _tone(300), 16000)
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00not a wav at all")
    out = tmp_path / "out"
    code = main(["enhance", str(src), "-o", str(out), "--steps", "2", "--quiet", "--checkpoint", "preset:tiny"])
    err = capsys.readouterr().err
    assert code == 1
    assert "5 file(s) failed" in err
    for name, why in [("stereo", "channels"), ("nan", "NaN"), ("zeros", "all zeros"), ("short", "shorter than one STFT frame"), ("broken", "unreadable")]:
        line = next(l for l in err.splitlines() if f"{name}.wav" in l and l.startswith("  "))
        assert why in line
    assert "resampled from 8000 Hz" in err
    good, rate = sf.read(out / "good.wav")
    assert rate == 16000 and good.shape == (6000,) and np.all(np.isfinite(good))
    res, rate = sf.read(out / "rate8k.wav")
    assert rate == 8000 and abs(len(res) - 3000) <= 1
    assert sorted(p.name for p in out.iterdir()) == ["good.wav", "rate8k.wav"]  # no temporary files left


def test_enhance_downmix_and_list_file(tmp_path):
    sf.write(tmp_path / "stereo.wav", np.stack([_tone(6000), _tone(6000)], 1), 16000)
    (tmp_path / "files.txt").write_text("stereo.wav\n")
    out = tmp_path / "out"
    assert main(["enhance", str(tmp_path / "files.txt"), "-o", str(out), "--steps", "1", "--downmix", "--quiet"]) == 0
    plain = sf.read(out / "stereo.wav")[0]
    assert plain.shape == (6000,)
    # --score-symmetry sign: same weights, the odd part of the score network
    assert main(["enhance", str(tmp_path / "files.txt"), "-o", str(tmp_path / "odd"), "--steps", "1", "--downmix", "--quiet",
                 "--score-symmetry", "sign"]) == 0
    odd = sf.read(tmp_path / "odd" / "stereo.wav")[0]
    assert odd.shape == (6000,) and np.all(np.isfinite(odd)) and not np.allclose(odd, plain)


def test_ensemble_command(tmp_path, capsys):
    """`storm-jax ensemble`: a model directory whose score is the members' mean; the shipped
    network twice scores as itself (enhance output equal to rounding), and models with another
    SDE are refused by name, nothing written."""
    import storm_jax as sj

    ens = tmp_path / "ens"
    assert main(["ensemble", str(ens), "pretrained", "pretrained"]) == 0
    assert sj.load_model(ens).config.score_members == 2
    sf.write(tmp_path / "tone.wav", _tone(6000), 16000)
    for name, ckpt in (("one", "pretrained"), ("two", str(ens))):
        assert main(["enhance", str(tmp_path / "tone.wav"), "-o", str(tmp_path / name), "--steps", "2", "--quiet", "--checkpoint", ckpt]) == 0
    one, two = (sf.read(tmp_path / n / "tone.wav")[0] for n in ("one", "two"))
    np.testing.assert_allclose(two, one, atol=1e-4 * np.max(np.abs(one)))
    capsys.readouterr()
    assert main(["ensemble", str(tmp_path / "bad"), "pretrained", "pretrained:tiny-embedded-smax025"]) == 2
    assert "pretrained:tiny-embedded-smax025 differs from pretrained in its configuration (sde)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_guide_command(tmp_path, capsys):
    """`storm-jax guide`: a guided model directory; at weight 0 it enhances exactly as the plain
    shipped model, `enhance --guidance` changes the weight, and a guide that sees Y is refused
    by name with nothing written."""
    import dataclasses

    import jax

    import storm_jax as sj

    shipped = sj.load_model()
    c_only = sj.init_storm(dataclasses.replace(shipped.config, condition="predictor"), jax.random.key(1))
    sj.save_model(c_only.replace(params={**c_only.params, "predictor": shipped.params["predictor"]}), tmp_path / "c")
    assert main(["guide", str(tmp_path / "g"), "pretrained", str(tmp_path / "c"), "--weight", "0"]) == 0
    assert sj.load_model(tmp_path / "g").config.guidance == 0.0
    sf.write(tmp_path / "tone.wav", _tone(6000), 16000)
    runs = {"plain": ["--checkpoint", "pretrained"], "w0": ["--checkpoint", str(tmp_path / "g")],
            "w1": ["--checkpoint", str(tmp_path / "g"), "--guidance", "1"]}
    for name, extra in runs.items():
        assert main(["enhance", str(tmp_path / "tone.wav"), "-o", str(tmp_path / name), "--steps", "2", "--quiet", *extra]) == 0
    plain, w0, w1 = (sf.read(tmp_path / n / "tone.wav")[0] for n in runs)
    np.testing.assert_array_equal(w0, plain)
    assert np.all(np.isfinite(w1)) and not np.allclose(w1, plain)
    capsys.readouterr()
    assert main(["guide", str(tmp_path / "bad"), "pretrained", "pretrained", "--weight", "1"]) == 2
    assert "pretrained must have a score network that sees only C" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["enhance", str(tmp_path / "tone.wav"), "-o", str(tmp_path / "x"), "--steps", "2", "--quiet", "--guidance", "1"]) == 2
    assert "no guide network" in capsys.readouterr().err


def test_enhance_nothing_to_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["enhance", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_enhance_example_runs(tmp_path, capsys):
    assert main(["enhance-example", "--steps", "2", "--seconds", "0.5", "-o", str(tmp_path)]) == 0
    assert "SI-SDR enhanced" in capsys.readouterr().out
    for name in ("clean", "noisy", "enhanced"):
        x, rate = sf.read(tmp_path / f"{name}.wav")
        assert rate == 16000 and x.shape == (8000,)


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "storm_jax.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "enhance" in r.stdout


def test_version_and_every_subcommand_has_an_example(capsys):
    import storm_jax
    from storm_jax.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"storm-jax {storm_jax.__version__}"
    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    names = sorted(sub.choices)
    assert {"demo", "experiment", "report", "enhance", "train", "evaluate", "corpus"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0 and f"example: storm-jax {name}" in out, (name, out[-400:])


def test_corpus_command_is_wired(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "--help"])
    assert exc.value.code == 0
    assert "embedded speech corpus" in capsys.readouterr().out
