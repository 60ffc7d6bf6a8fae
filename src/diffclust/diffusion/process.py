"""The forward process q(x_t | x_0) and the conversions between parametrizations (§1.1–1.2)."""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule

__all__ = ["q_sample", "predict_x0_from_eps", "predict_eps_from_x0", "predict_x0_from_v",
           "v_target", "q_posterior", "_bcast", "PREDICTIONS", "check_prediction",
           "denoiser_target", "eps_from_prediction"]

#: What an image denoiser's output is: the noise ε (DDPM) or the velocity v (Salimans & Ho 2022).
PREDICTIONS = ("epsilon", "v")


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-row coefficient ``(n,)`` so it broadcasts against ``like`` ``(n, ...)``."""
    return a.to(like.device, like.dtype).reshape(a.shape + (1,) * (like.ndim - a.ndim))


def q_sample(sched: NoiseSchedule, x0, t, noise=None, noise_scale: float | None = None,
             generator: torch.Generator | None = None):
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) · F · ε (eq. 2, CLUDI's noise-scaled variant).

    ``t`` holds one integer per leading index of ``x0`` (or a scalar); it may also have the
    first k leading dims of ``x0`` (e.g. one t per chain for ``(S, B, d)`` inputs).
    """
    F = sched.noise_scale if noise_scale is None else noise_scale
    if noise is None:
        from .samplers import randn

        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    t = torch.as_tensor(t, device=x0.device)
    ab = sched.alpha_bar_at(t)
    return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * F * noise


def predict_x0_from_eps(sched, x_t, t, eps):
    """x̂_0 = (x_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)."""
    ab = sched.alpha_bar_at(torch.as_tensor(t, device=x_t.device))
    return (x_t - _bcast((1 - ab).sqrt(), x_t) * eps) / _bcast(ab.sqrt(), x_t)


def predict_eps_from_x0(sched, x_t, t, x0):
    """ε̂ = (x_t − sqrt(ᾱ_t) x̂_0) / sqrt(1 − ᾱ_t) (CLUDI eq. 8; magnitude ~F with noise scale F)."""
    ab = sched.alpha_bar_at(torch.as_tensor(t, device=x_t.device))
    return (x_t - _bcast(ab.sqrt(), x_t) * x0) / _bcast((1 - ab).sqrt().clamp_min(1e-12), x_t)


def v_target(sched, x0, t, eps):
    """v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0."""
    ab = sched.alpha_bar_at(torch.as_tensor(t, device=x0.device))
    return _bcast(ab.sqrt(), x0) * eps - _bcast((1 - ab).sqrt(), x0) * x0


def predict_x0_from_v(sched, x_t, t, v):
    """x̂_0 = sqrt(ᾱ_t) x_t − sqrt(1 − ᾱ_t) v̂."""
    ab = sched.alpha_bar_at(torch.as_tensor(t, device=x_t.device))
    return _bcast(ab.sqrt(), x_t) * x_t - _bcast((1 - ab).sqrt(), x_t) * v


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def denoiser_target(prediction: str, sched, x0, t, eps):
    """What a denoiser of this parametrisation regresses on: ε, or v (§1.2)."""
    return eps if check_prediction(prediction) == "epsilon" else v_target(sched, x0, t, eps)


def eps_from_prediction(prediction: str, sched, x_t, t, out):
    """ε̂ from a denoiser's output: the output itself, or ε̂ = sqrt(ᾱ_t) v̂ + sqrt(1 − ᾱ_t) x_t."""
    if check_prediction(prediction) == "epsilon":
        return out
    ab = sched.alpha_bar_at(torch.as_tensor(t, device=x_t.device))
    return _bcast(ab.sqrt(), x_t) * out + _bcast((1 - ab).sqrt(), x_t) * x_t


def q_posterior(sched, x0, x_t, t):
    """Mean and variance of q(x_{t−1} | x_t, x_0) (§1.1), 0-based t ≥ 1."""
    t = torch.as_tensor(t, device=x0.device).long()
    beta = sched.betas.to(x0.device)[t]
    ab = sched.alpha_bar_at(t)
    ab_prev = sched.alpha_bar_at(t - 1)
    c0 = beta * ab_prev.sqrt() / (1 - ab)
    ct = (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    mean = _bcast(c0, x0) * x0 + _bcast(ct, x_t) * x_t
    var = beta * (1 - ab_prev) / (1 - ab)
    return mean, var
