"""Speech-enhancement metrics.

SI-SDR (Le Roux et al., 2019) in ``jnp``, differentiable, so ``dSI-SDR/dM`` can be taken by the
chain rule through the pipeline::

    α = ⟨ŝ, s⟩ / ‖s‖²,   SI-SDR(ŝ, s) = 10·log10(‖α·s‖² / ‖α·s − ŝ‖²)   [dB]

(with ``zero_mean`` both signals are made zero-mean first).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["si_sdr"]


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
