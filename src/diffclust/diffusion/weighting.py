"""Loss weightings over time (§1.5)."""

from __future__ import annotations

import torch

__all__ = ["min_snr_weight", "edm_weight"]


def min_snr_weight(snr: torch.Tensor, gamma: float = 5.0, prediction: str = "x0") -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023; CLUDI eq. 26): ``min(SNR, γ)`` for x0-prediction,
    ``min(SNR, γ)/SNR`` for ε-prediction, ``min(SNR, γ)/(SNR + 1)`` for v-prediction."""
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return clipped / snr.clamp_min(1e-20)
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(f"prediction must be 'x0', 'eps' or 'v', got {prediction!r}")


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM λ(σ) = (σ² + σ_d²) / (σ σ_d)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
