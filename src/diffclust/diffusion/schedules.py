"""Discrete noise schedules (METHODS.md §1.3).

Every schedule returns ``betas[0..T-1]`` as float64 numpy; :class:`NoiseSchedule` turns them into
``alpha_bar`` (``ᾱ_t = Π_{s≤t} (1 - β_s)``), SNR and the torch buffers that the forward process
and the samplers index with a 0-based ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = [
    "betas_for_alpha_bar",
    "linear_betas",
    "cosine_betas",
    "sqrt_betas",
    "sigmoid_betas",
    "rescale_alpha_bar",
    "make_betas",
    "NoiseSchedule",
    "edm_sigmas",
]


def betas_for_alpha_bar(alpha_bar: Callable[[float], float], T: int, max_beta: float = 0.999):
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta) for i = 0..T-1 (Nichol & Dhariwal)."""
    betas = [min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.asarray(betas, dtype=np.float64)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_with_T=True):
    """DDPM linear schedule; with ``scale_with_T`` the end points are multiplied by 1000/T."""
    s = 1000.0 / T if scale_with_T else 1.0
    return np.linspace(beta_start * s, beta_end * s, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008):
    """ᾱ(τ) = cos²((τ + s)/(1 + s) · π/2), renormalised so ᾱ(0) = 1, β clipped to 0.999."""
    f = lambda tau: math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return betas_for_alpha_bar(lambda tau: f(tau) / f(0.0), T)


def sqrt_betas(T: int, s: float = 1e-4):
    """Diffusion-LM sqrt schedule, CLUDI eq. 12: ᾱ(τ) = 1 − sqrt(τ + s)."""
    return betas_for_alpha_bar(lambda tau: 1.0 - math.sqrt(tau + s), T)


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
    """Sigmoid schedule (Jabri et al.), ᾱ(τ) ∝ σ((end − start)·τ + start)/tau, flipped."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    v_start, v_end = sig(start / tau), sig(end / tau)
    f = lambda t: (-sig((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)  # noqa: E731
    return betas_for_alpha_bar(lambda t: max(f(t), 1e-12), T)


def rescale_alpha_bar(alpha_bar: np.ndarray, factor: float) -> np.ndarray:
    """VP-rescaled schedule (Gao et al. 2024): ᾱ' = ᾱ / (F' − (F' − 1) ᾱ). Off by default."""
    return alpha_bar / (factor - (factor - 1.0) * alpha_bar)


_SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sqrt": sqrt_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: str, T: int, **kwargs) -> np.ndarray:
    if name not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(_SCHEDULES)}")
    if T < 2:
        raise ValueError(f"T (number of diffusion steps) must be >= 2, got {T}")
    return _SCHEDULES[name](T, **kwargs)


@dataclass
class NoiseSchedule:
    """A discrete VP schedule with 0-based time ``t ∈ {0..T-1}``.

    ``noise_scale`` is CLUDI's rescaling factor F: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) F ε``,
    so the effective SNR is ``ᾱ_t / ((1 − ᾱ_t) F²)``. ``rescale`` applies the optional
    VP-rescaling of ᾱ (``rescale_alpha_bar``) instead.
    """

    name: str = "linear"
    T: int = 1000
    noise_scale: float = 1.0
    rescale: float | None = None
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        betas = make_betas(self.name, self.T, **self.kwargs)
        alpha_bar = np.cumprod(1.0 - betas)
        if self.rescale is not None:
            alpha_bar = rescale_alpha_bar(alpha_bar, self.rescale)
            betas = 1.0 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
        self.betas_np = betas
        self.alpha_bar_np = np.clip(alpha_bar, 0.0, 1.0)
        self.betas = torch.as_tensor(betas, dtype=torch.float32)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.as_tensor(self.alpha_bar_np, dtype=torch.float32)

    def to_config(self) -> dict:
        return {"name": self.name, "T": self.T, "noise_scale": self.noise_scale,
                "rescale": self.rescale, "kwargs": dict(self.kwargs)}

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer ``t`` (any shape); ``t = -1`` gives ᾱ = 1 (the clean end)."""
        ab = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar]).to(t.device)
        return ab[t.long() + 1]

    def snr(self, t: torch.Tensor, include_noise_scale: bool = False) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t) (CLUDI eq. 25); divided by F² if ``include_noise_scale``."""
        ab = self.alpha_bar_at(t).double()
        snr = ab / (1.0 - ab).clamp_min(1e-20)
        if include_noise_scale:
            snr = snr / self.noise_scale**2
        return snr.float()

    def posterior_variance(self) -> torch.Tensor:
        """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)."""
        ab_prev = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])
        return self.betas * (1 - ab_prev) / (1 - self.alpha_bar).clamp_min(1e-20)


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """Karras et al. time steps σ_0 > … > σ_{n-1}, followed by σ_n = 0 (METHODS.md §1.3.5)."""
    i = torch.arange(n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / max(n - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]).float()
