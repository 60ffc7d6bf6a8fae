"""Batched samplers (§1.4). A model is any callable; the sampler never loops over samples."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .process import _bcast, predict_eps_from_x0
from .schedules import NoiseSchedule

__all__ = ["randn", "ddim_time_pairs", "ddim_step", "ddim_sample", "ddpm_sample", "edm_heun_sample"]


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Gaussian noise drawn on the generator's device, then moved (CPU generators stay valid
    when the model runs on CUDA, so a seed gives the same draws everywhere)."""
    gen_dev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_dev, dtype=dtype).to(device)


def ddim_time_pairs(T: int, n_steps: int) -> list[tuple[int, int]]:
    """CLUDI's grid: ``int(linspace(−1, T−1, n+1))`` reversed, as consecutive (t, t') pairs.

    For T = 1000 and n = 25 this is (999, 959), …, (39, −1); ``t' = −1`` is the clean end.
    """
    if not 1 <= n_steps <= T:
        raise ValueError(f"n_steps must be in [1, T={T}], got {n_steps}")
    times = [int(v) for v in np.linspace(-1, T - 1, n_steps + 1)][::-1]
    return list(zip(times[:-1], times[1:]))


def ddim_step(sched: NoiseSchedule, x_t, x0_hat, t, t_next, eta: float = 1.0,
              noise_scale: float = 1.0, generator=None, noise_fn: Callable | None = None):
    """One DDIM(η) step from t to t' < t given x̂_0 (CLUDI eq. 7–9).

    ``σ = η sqrt((1 − ᾱ_t/ᾱ_t')(1 − ᾱ_t')/(1 − ᾱ_t))``;
    ``x_t' = sqrt(ᾱ_t') x̂_0 + sqrt(1 − ᾱ_t' − σ²) ε̂ + σ F ξ``. With ``t' < 0`` returns x̂_0.
    ``t``/``t_next`` are ints or tensors broadcastable to the leading dims of ``x_t``. ξ comes
    from ``generator``, or from ``noise_fn(shape, device, dtype)`` when given (e.g. noise drawn
    for a global batch and sliced per rank under DDP).
    """
    t = torch.as_tensor(t, device=x_t.device)
    t_next = torch.as_tensor(t_next, device=x_t.device)
    if t_next.ndim == 0 and int(t_next) < 0:
        return x0_hat
    eps = predict_eps_from_x0(sched, x_t, t, x0_hat)
    ab, ab_next = sched.alpha_bar_at(t), sched.alpha_bar_at(t_next)
    sigma = eta * ((1 - ab / ab_next) * (1 - ab_next) / (1 - ab)).clamp_min(0).sqrt()
    dir_coef = (1 - ab_next - sigma**2).clamp_min(0).sqrt()
    x = _bcast(ab_next.sqrt(), x_t) * x0_hat + _bcast(dir_coef, x_t) * eps
    if eta > 0:
        xi = (noise_fn(x_t.shape, x_t.device, x_t.dtype) if noise_fn is not None
              else randn(x_t.shape, generator, x_t.device, x_t.dtype))
        x = x + _bcast(sigma, x_t) * noise_scale * xi
    return x


def ddim_sample(model_x0: Callable, sched: NoiseSchedule, shape: Sequence[int], n_steps: int = 50,
                eta: float = 1.0, noise_scale: float | None = None, clip: float | None = 1.0,
                self_condition: bool = False, generator=None, device=None, dtype=torch.float32,
                time_pairs: Sequence[tuple[int, int]] | None = None, x_T=None, progress=None,
                noise_fn: Callable | None = None):
    """DDIM(η) sampling with an x0-predicting ``model_x0(x_t, t, x_sc)``.

    Starts from ``x_T ~ N(0, F² I)``; ``time_pairs`` overrides the grid (any decreasing pairs,
    the sampler may stop at an arbitrary t' ≥ 0 and then returns x_t', not x̂_0). ``clip``
    clamps x̂_0 at every step as CLUDI does (``None`` disables it); ``noise_fn`` replaces the
    step noise source (see :func:`ddim_step`). Returns ``(x, x0_hat)``.
    """
    F = sched.noise_scale if noise_scale is None else noise_scale
    pairs = list(time_pairs) if time_pairs is not None else ddim_time_pairs(sched.T, n_steps)
    x = x_T if x_T is not None else F * randn(shape, generator, device, dtype)
    x_sc = torch.zeros_like(x) if self_condition else None
    x0_hat = None
    for t, t_next in pairs:
        x0_hat = model_x0(x, t, x_sc)
        if clip is not None:
            x0_hat = x0_hat.clamp(-clip, clip)
        if self_condition:
            x_sc = x0_hat
        x = ddim_step(sched, x, x0_hat, t, t_next, eta=eta, noise_scale=F, generator=generator,
                      noise_fn=noise_fn)
        if progress is not None:
            progress.update(1)
    return x, x0_hat


def ddpm_sample(model_eps: Callable, sched: NoiseSchedule, shape, variance: str = "beta",
                generator=None, device=None, dtype=torch.float32, x_T=None, clip_x0=None,
                progress=None):
    """Ancestral DDPM: x_{t−1} = (x_t − β_t/sqrt(1−ᾱ_t) ε̂)/sqrt(α_t) + σ_t ξ, no noise at t = 0.

    ``variance='beta'`` uses σ_t² = β_t (ClusterDDPM), ``'posterior'`` uses β̃_t (GCC).
    ``model_eps(x_t, t_batch)`` receives a LongTensor of the current step for every row.
    """
    x = x_T if x_T is not None else randn(shape, generator, device, dtype)
    betas = sched.betas.to(x.device)
    ab = sched.alpha_bar.to(x.device)
    var = betas if variance == "beta" else sched.posterior_variance().to(x.device)
    for t in range(sched.T - 1, -1, -1):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = model_eps(x, tt).to(x.dtype)
        if clip_x0 is not None:  # clip through the x0 estimate, then back to the mean
            x0 = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-clip_x0, clip_x0)
            eps = (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
        mean = (x - betas[t] / (1 - ab[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        if t > 0:
            noise = randn(x.shape, generator, x.device, x.dtype)
            x = mean + var[t].sqrt() * noise
        else:
            x = mean
        if progress is not None:
            progress.update(1)
    return x


def edm_heun_sample(denoiser: Callable, sigmas: torch.Tensor, shape, generator=None, device=None,
                    dtype=torch.float32, x_T=None, progress=None):
    """Deterministic EDM Heun sampler (Karras et al. Alg. 2, S_churn = 0); NFE = 2N − 1.

    ``denoiser(x, sigma_batch)`` returns D(x; σ); ``sigmas`` ends with 0 (``edm_sigmas``).
    """
    sigmas = sigmas.to(device)
    x = x_T if x_T is not None else sigmas[0] * randn(shape, generator, device, dtype)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, s.expand(x.shape[0]))) / s
        x_next = x + (s_next - s) * d
        if i < n - 1:
            d2 = (x_next - denoiser(x_next, s_next.expand(x.shape[0]))) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
        if progress is not None:
            progress.update(1)
    return x
