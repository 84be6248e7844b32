"""Speech-enhancement metrics.

SI-SDR (Le Roux et al., 2019) in ``jnp``, differentiable, so ``dSI-SDR/dM`` can be taken by the
chain rule through the pipeline::

    α = ⟨ŝ, s⟩ / ‖s‖²,   SI-SDR(ŝ, s) = 10·log10(‖α·s‖² / ‖α·s − ŝ‖²)   [dB]

(with ``zero_mean`` both signals are made zero-mean first).

SI-SIR / SI-SAR split the distortion with the noise ``n = y − s`` as the reference evaluation
does (sgmse ``util/other.py`` ``energy_ratios``; storm-reference.md § Evaluation)::

    s_target = ⟨ŝ, s⟩/‖s‖²·s,   e_noise = ⟨ŝ, n⟩/‖n‖²·n,   e_art = ŝ − s_target − e_noise
    SI-SDR = 10·log10(‖s_target‖² / ‖e_noise + e_art‖²)
    SI-SIR = 10·log10(‖s_target‖² / ‖e_noise‖²),   SI-SAR = 10·log10(‖s_target‖² / ‖e_art‖²)

PESQ (ITU-T P.862.2 wideband, ``pesq`` package, ``pesq(16000, ref, deg, 'wb')``) and ESTOI
(Jensen & Taal 2016, ``pystoi.stoi(clean, processed, fs, extended=True)``) are NumPy/C metrics
(not differentiable), evaluated per utterance over leading batch axes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["si_sdr", "energy_ratios", "si_sir", "si_sar", "pesq_wb", "estoi", "enhancement_metrics", "MetricError"]


class MetricError(ValueError):
    """A metric cannot be computed for these inputs (wrong rate, shape, or no speech for PESQ)."""


def si_sdr(estimate: Float[Array, "... L"], reference: Float[Array, "... L"], zero_mean: bool = True, eps: float = 0.0) -> Float[Array, "..."]:
    """Scale-invariant signal-to-distortion ratio in dB over the last axis (shapes broadcast).

    ``eps`` (default 0) is added to both energies; keep it 0 for exact derivatives.
    """
    est = jnp.asarray(estimate)
    ref = jnp.asarray(reference)
    if zero_mean:
        est = est - jnp.mean(est, axis=-1, keepdims=True)
        ref = ref - jnp.mean(ref, axis=-1, keepdims=True)
    alpha = jnp.sum(est * ref, axis=-1, keepdims=True) / jnp.sum(ref * ref, axis=-1, keepdims=True)
    target = alpha * ref
    distortion = target - est
    num = jnp.sum(target * target, axis=-1) + eps
    den = jnp.sum(distortion * distortion, axis=-1) + eps
    return 10.0 * jnp.log10(num / den)


def _components(estimate, reference, noise, zero_mean: bool):
    est = jnp.asarray(estimate)
    ref = jnp.asarray(reference)
    noi = jnp.asarray(noise)
    if zero_mean:
        est = est - jnp.mean(est, axis=-1, keepdims=True)
        ref = ref - jnp.mean(ref, axis=-1, keepdims=True)
        noi = noi - jnp.mean(noi, axis=-1, keepdims=True)
    target = jnp.sum(est * ref, axis=-1, keepdims=True) / jnp.sum(ref * ref, axis=-1, keepdims=True) * ref
    e_noise = jnp.sum(est * noi, axis=-1, keepdims=True) / jnp.sum(noi * noi, axis=-1, keepdims=True) * noi
    e_art = est - target - e_noise
    return target, e_noise, e_art


def _db(num, den):
    return 10.0 * jnp.log10(jnp.sum(num * num, axis=-1) / jnp.sum(den * den, axis=-1))


def energy_ratios(estimate: Float[Array, "... L"], reference: Float[Array, "... L"], noise: Float[Array, "... L"],
                  zero_mean: bool = False) -> tuple[Float[Array, "..."], Float[Array, "..."], Float[Array, "..."]]:
    """``(SI-SDR, SI-SIR, SI-SAR)`` in dB over the last axis, with ``noise = y − s`` (module doc).

    The default ``zero_mean=False`` follows the reference evaluation; its SI-SDR then equals
    ``si_sdr(estimate, reference, zero_mean=False)``. Differentiable (``jnp``); no ``eps``, so an
    estimate without a noise (or artefact) component gives +inf SI-SIR (or SI-SAR).
    """
    target, e_noise, e_art = _components(estimate, reference, noise, zero_mean)
    return _db(target, e_noise + e_art), _db(target, e_noise), _db(target, e_art)


def si_sir(estimate, reference, noise, zero_mean: bool = False):
    """Scale-invariant signal-to-interference ratio in dB (see :func:`energy_ratios`)."""
    target, e_noise, _ = _components(estimate, reference, noise, zero_mean)
    return _db(target, e_noise)


def si_sar(estimate, reference, noise, zero_mean: bool = False):
    """Scale-invariant signal-to-artefacts ratio in dB (see :func:`energy_ratios`)."""
    target, _, e_art = _components(estimate, reference, noise, zero_mean)
    return _db(target, e_art)


def _pairs(estimate, reference, name: str):
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise MetricError(f"{name}: estimate shape {est.shape} differs from reference shape {ref.shape}")
    if est.ndim == 0 or est.shape[-1] == 0:
        raise MetricError(f"{name}: needs waveforms with a time axis, got shape {est.shape}")
    if not (np.all(np.isfinite(est)) and np.all(np.isfinite(ref))):
        raise MetricError(f"{name}: inputs contain NaN or Inf")
    return est.reshape(-1, est.shape[-1]), ref.reshape(-1, ref.shape[-1]), est.shape[:-1]


def pesq_wb(estimate, reference, rate: int = 16000) -> np.ndarray:
    """Wideband PESQ (MOS-LQO, about 1.04–4.64) of ``estimate`` against ``reference``
    (``pesq(16000, ref, deg, 'wb')``), per utterance over leading axes; shape ``[...]``.

    ``rate`` must be 16000 (wideband PESQ is defined at 16 kHz). A reference without detectable
    speech raises :class:`MetricError`.
    """
    from pesq import pesq as _pesq
    from pesq import PesqError

    if rate != 16000:
        raise MetricError(f"pesq_wb: wideband PESQ needs 16000 Hz audio, got {rate} Hz (resample first)")
    est, ref, lead = _pairs(estimate, reference, "pesq_wb")
    out = np.empty(est.shape[0])
    for i in range(est.shape[0]):
        if not np.any(ref[i]):
            raise MetricError(f"pesq_wb: utterance {i}: the reference is silent (PESQ is undefined)")
        try:
            out[i] = _pesq(rate, ref[i], est[i], "wb")
        except PesqError as err:
            raise MetricError(f"pesq_wb: utterance {i}: {type(err).__name__}: {err}") from None
    return out.reshape(lead)


def estoi(estimate, reference, rate: int = 16000) -> np.ndarray:
    """Extended STOI (0–1, higher is more intelligible) of ``estimate`` against ``reference``
    (``pystoi.stoi(reference, estimate, rate, extended=True)``), per utterance; shape ``[...]``."""
    from pystoi import stoi

    est, ref, lead = _pairs(estimate, reference, "estoi")
    out = np.array([stoi(ref[i], est[i], rate, extended=True) for i in range(est.shape[0])], dtype=np.float64)
    return out.reshape(lead)


def enhancement_metrics(estimate, reference, noisy=None, rate: int = 16000) -> dict[str, np.ndarray]:
    """The evaluation table's metrics per utterance: ``si_sdr`` (zero-mean), ``pesq``, ``estoi``
    and, when ``noisy`` is given, ``si_sir`` and ``si_sar`` with the noise ``noisy − reference``.
    Values are NumPy arrays of shape ``[...]``."""
    _pairs(estimate, reference, "enhancement_metrics")  # shape and finiteness checks
    out = {
        "si_sdr": np.asarray(si_sdr(np.asarray(estimate, np.float64), np.asarray(reference, np.float64))),
        "pesq": pesq_wb(estimate, reference, rate),
        "estoi": estoi(estimate, reference, rate),
    }
    if noisy is not None:
        noise = np.asarray(noisy, np.float64) - np.asarray(reference, np.float64)
        _, sir, sar = energy_ratios(np.asarray(estimate, np.float64), np.asarray(reference, np.float64), noise)
        out["si_sir"], out["si_sar"] = np.asarray(sir), np.asarray(sar)
    return out
