"""Differentiable analysis of StoRM: exact pathwise sensitivities and what they are made of.

* :mod:`.sensitivity` — ``dŝ/dM`` by one forward-mode pass; the factorization
  ``dx̂/dM = K·u + L·v`` (+ the normalisation term in the waveform).
* :mod:`.jacobians` — score-Jacobian probes along the reverse trajectory; matrix-free top
  singular values of K, L and J_x (Golub–Kahan, matfree); direction gains.
* :mod:`.kink` — one-sided slopes at M* ± h, κ(h), bootstrap intervals, κ₀, kink width.
* :mod:`.nonsmooth` — where max-normalisation switches samples as M changes.
* :mod:`.elbo` — the continuous-time variational bound of the OUVE model, term by term.
* :mod:`.condition` — Importance of Condition: the Jacobian share and the swap effect over t.
* :mod:`.discretization` — strong/weak/tangent error against step size, fitted orders,
  Richardson extrapolation to N → ∞.
"""

from ._setup import NonFiniteTangentError, frozen_norm_factor
from .condition import ConditionImportance, condition_importance, importance_of_condition
from .elbo import ELBO, elbo, elbo_of_score, likelihood_weight, sample_likelihood_times, weight_integral
from .discretization import (
    ErrorCurve,
    Extrapolation,
    OrderFit,
    WeakErrorCurve,
    convergence_study,
    fit_order,
    richardson,
    strong_error,
    tangent_error,
    weak_error,
)
from .jacobians import (
    Gain,
    Probes,
    Spectrum,
    direction_gain,
    probes_at,
    sampler_jacobian,
    sampler_spectrum,
    score_jacobian,
    score_spectrum,
    top_singular,
    trajectory_probes,
)
from .kink import DEFAULT_HS, KinkResult, check_h_resolution, kink_from_slopes, kink_statistic
from .nonsmooth import NormSwitches, distance_to_switch, normalization_switches
from .sensitivity import Factorization, check_finite, factorize, linearized_predictor_derivative, pathwise_derivative, si_sdr_derivative

__all__ = [
    "ConditionImportance",
    "condition_importance",
    "importance_of_condition",
    "ELBO",
    "elbo",
    "elbo_of_score",
    "likelihood_weight",
    "sample_likelihood_times",
    "weight_integral",
    "ErrorCurve",
    "Extrapolation",
    "OrderFit",
    "WeakErrorCurve",
    "convergence_study",
    "fit_order",
    "richardson",
    "strong_error",
    "tangent_error",
    "weak_error",
    "DEFAULT_HS",
    "Factorization",
    "Gain",
    "KinkResult",
    "NonFiniteTangentError",
    "NormSwitches",
    "Probes",
    "Spectrum",
    "check_finite",
    "check_h_resolution",
    "direction_gain",
    "distance_to_switch",
    "factorize",
    "frozen_norm_factor",
    "kink_from_slopes",
    "kink_statistic",
    "linearized_predictor_derivative",
    "normalization_switches",
    "pathwise_derivative",
    "probes_at",
    "sampler_jacobian",
    "sampler_spectrum",
    "score_jacobian",
    "score_spectrum",
    "si_sdr_derivative",
    "top_singular",
    "trajectory_probes",
]
