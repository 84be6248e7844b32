"""Audio front end: STFT/iSTFT against an independent NumPy definition (and torch when present),
perfect reconstruction, compression round trip and finite derivatives, padding, normalisation."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from storm_jax import audio


def _numpy_stft(x, n_fft=510, hop=128):
    """Direct definition: reflect-pad n_fft//2, frame, periodic Hann, explicit DFT matrix."""
    half = n_fft // 2
    xp = np.pad(x, (half, half), mode="reflect")
    n_frames = 1 + len(x) // hop
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    k = np.arange(n_fft)
    f = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(f, k) / n_fft)
    frames = np.stack([xp[t * hop : t * hop + n_fft] * w for t in range(n_frames)], axis=1)
    return dft @ frames


@pytest.mark.parametrize("length", [4000, 16000 + 37])
def test_stft_matches_direct_definition(length):
    x = np.random.default_rng(0).standard_normal(length)
    ours = np.asarray(audio.stft(jnp.asarray(x)))
    ref = _numpy_stft(x)
    assert ours.shape == (256, 1 + length // 128)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-12


def test_stft_istft_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    win = torch.hann_window(510, periodic=True)
    X = torch.stft(torch.from_numpy(x), 510, 128, window=win, center=True, return_complex=True)
    ours = np.asarray(audio.stft(jnp.asarray(x)))
    assert np.linalg.norm(ours - X.numpy()) / np.linalg.norm(X.numpy()) < 1e-5
    # iSTFT over a zero-padded spectrogram, truncated to the original length (reference order).
    Xp = torch.nn.functional.pad(X, (0, 64 - X.shape[-1] % 64))
    ref = torch.istft(Xp, 510, 128, window=win, center=True, length=8000).numpy()
    ours = np.asarray(audio.istft(audio.pad_frames(jnp.asarray(X.numpy())), 8000))
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5


@pytest.mark.parametrize("length", [1000, 12345])
def test_perfect_reconstruction(length):
    x = np.random.default_rng(2).standard_normal((2, length))
    X = audio.stft(jnp.asarray(x))
    y = np.asarray(audio.istft(X, length))
    np.testing.assert_allclose(y, x, atol=1e-12)
    # With zero frames appended (as the pipeline does) the window envelope also counts the
    # padding frames, so only samples before the first padding frame's support are exact
    # (the reference behaves the same; its exact output is checked against torch above).
    y2 = np.asarray(audio.istft(audio.pad_frames(X, 64), length))
    exact = X.shape[-1] * 128 - 255
    np.testing.assert_allclose(y2[:, :exact], x[:, :exact], atol=1e-12)


def test_istft_zero_extends_beyond_frames():
    x = np.random.default_rng(3).standard_normal(1000)
    X = audio.stft(jnp.asarray(x))
    y = np.asarray(audio.istft(X, 1500))
    assert y.shape == (1500,)
    np.testing.assert_allclose(y[:1000], x, atol=1e-12)


def test_stft_rejects_too_short():
    with pytest.raises(ValueError, match="too short"):
        audio.stft(jnp.zeros(100))


def test_compression_round_trip_and_values():
    rng = np.random.default_rng(4)
    c = jnp.asarray(rng.standard_normal((8, 9)) + 1j * rng.standard_normal((8, 9)))
    c = c.at[0, 0].set(0.0)
    ct = audio.compress(c, 0.5, 0.15)
    np.testing.assert_allclose(np.abs(ct), 0.15 * np.abs(c) ** 0.5, rtol=1e-12)
    np.testing.assert_allclose(np.angle(ct[1:]), np.angle(c[1:]), atol=1e-12)
    assert ct[0, 0] == 0
    np.testing.assert_allclose(audio.decompress(ct, 0.5, 0.15), c, rtol=1e-12, atol=1e-15)
    # alpha = 1 is a pure scaling
    np.testing.assert_allclose(audio.compress(c, 1.0, 0.33), 0.33 * c)


def test_compression_derivative_exact_away_from_zero_and_finite_at_zero():
    c = jnp.asarray([0.3 - 0.4j, 1e-3 + 2e-3j, 0.0 + 0.0j, 1e-12 + 0j])
    dc = jnp.asarray([0.1 + 0.2j, -0.3 + 0.1j, 1.0 + 1.0j, 1.0 - 1.0j])
    f = lambda z: audio.compress(z, 0.5, 0.15)
    _, tang = jax.jvp(f, (c,), (dc,))
    assert np.all(np.isfinite(np.asarray(tang)))
    h = 1e-7
    fd = (f(c + h * dc) - f(c - h * dc)) / (2 * h)
    np.testing.assert_allclose(tang[:2], fd[:2], rtol=1e-6)
    # inside the floor disc the derivative is bounded by beta * floor^(alpha-1)
    bound = 0.15 * 1e-8 ** (-0.5)
    assert np.all(np.abs(np.asarray(tang[2:])) <= bound * np.abs(np.asarray(dc[2:])) * (1 + 1e-9))
    # reverse mode is finite too, and decompress as well
    g = jax.grad(lambda z: jnp.sum(jnp.abs(audio.decompress(audio.compress(z)))))(c)
    assert np.all(np.isfinite(np.asarray(g)))
    _, t2 = jax.jvp(lambda z: audio.decompress(z), (jnp.zeros(3, complex),), (jnp.ones(3, complex),))
    assert np.all(np.isfinite(np.asarray(t2)))


def test_pad_and_unpad_frames():
    X = jnp.ones((256, 70), complex)
    P = audio.pad_frames(X, 64)
    assert P.shape == (256, 128)
    assert np.all(np.asarray(P[:, 70:]) == 0)
    assert audio.pad_frames(jnp.ones((2, 256, 64)), 64).shape == (2, 256, 64)
    np.testing.assert_array_equal(audio.unpad_frames(P, 70), X)


def test_normalization_modes():
    y = jnp.asarray([[0.1, -0.5, 0.2], [1.0, 2.0, -3.0]])
    np.testing.assert_allclose(audio.normalization_factor(y, "max"), [0.5, 3.0])
    np.testing.assert_allclose(audio.normalization_factor(y, "frozen", 2.0), [2.0, 2.0])
    rms = np.sqrt(np.mean(np.asarray(y) ** 2, axis=-1)) / 0.1
    np.testing.assert_allclose(audio.normalization_factor(y, "rms"), rms)
    # frozen: no derivative flows through the factor
    g = jax.grad(lambda s: jnp.sum(audio.normalization_factor(s * y, "frozen", 2.0)))(1.0)
    assert g == 0
    with pytest.raises(ValueError, match="frozen"):
        audio.normalization_factor(y, "frozen")
    with pytest.raises(ValueError, match="unknown normalization"):
        audio.normalization_factor(y, "peak")
