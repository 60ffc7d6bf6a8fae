"""Vector denoiser ẑ_θ(z_t, x, t, z_sc): CLUDI's per-point MLP (METHODS.md §2.3, code UViTLin).

The feature branch and the time embedding do not depend on ``z_t``, so :meth:`prepare` computes
them once per batch (and per chain for the time embedding) and every denoising step only runs
the assignment branch and the trunk. The first trunk layer acting on ``concat(feat, assign) +
temb`` is split accordingly: ``W₁[feat; a] + W₁ temb = W₁ᶠ feat + W₁ᵃ a + W₁ temb``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MPSiLU", "run_folded", "timestep_embedding", "VectorDenoiser"]


class MPSiLU(nn.Module):
    """Magnitude-preserving SiLU: SiLU(x) / 0.596 (Karras et al. 2024)."""

    gain = 1.0 / 0.596

    def forward(self, x):
        return F.silu(x) * self.gain


def run_folded(seq: nn.Sequential, x: torch.Tensor, pre_silu: bool = False,
               weights: dict | None = None) -> torch.Tensor:
    """``seq(x)`` with every MPSiLU's 1/0.596 folded into the next Linear's weight: one
    elementwise pass less per layer over the (chains × batch × width) activations, the same
    function up to rounding (the parameters are unchanged). ``pre_silu``: apply an MPSiLU to
    ``x`` first. ``weights``: the folded ``(weight, bias)`` of each such Linear, prepared once
    (:meth:`VectorDenoiser.inference_weights`) for a run of steps without gradients."""
    mods = list(seq)
    scale = MPSiLU.gain if pre_silu else None
    if pre_silu:
        x = F.silu(x)
    for m in mods:
        if isinstance(m, MPSiLU):
            x, scale = F.silu(x), MPSiLU.gain
        elif isinstance(m, nn.Linear) and scale is not None:
            w, b = weights[m] if weights is not None else (m.weight * scale, m.bias)
            x, scale = F.linear(x, w, b), None
        else:
            if scale is not None:  # an MPSiLU not followed by a Linear: apply its gain here
                x, scale = x * scale, None
            x = m(x)
    return x * scale if scale is not None else x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, first half cos, second half sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class VectorDenoiser(nn.Module):
    """x0-predicting MLP over assignment embeddings conditioned on a feature vector.

    Shapes: ``z_t`` (S, B, d), condition (B, D) shared by the S chains or (S, B, D), ``t`` (S,).
    """

    def __init__(self, z_dim: int = 64, cond_dim: int = 384, n_blocks: int = 5,
                 time_mult: int = 4, dropout: float = 0.15, self_condition: bool = True):
        super().__init__()
        D, hc = cond_dim, cond_dim // 2
        width = D + hc
        self.z_dim, self.cond_dim, self.width = z_dim, cond_dim, width
        self.self_condition = self_condition
        self.feat = nn.Sequential(
            nn.Linear(D, D), MPSiLU(), nn.Linear(D, D),
            nn.LayerNorm(D, elementwise_affine=False, eps=1e-6), nn.Linear(D, D), nn.Dropout(dropout),
        )
        z_in = 2 * z_dim if self_condition else z_dim
        self.assign = nn.Sequential(
            nn.Linear(z_in, z_in), MPSiLU(), nn.Linear(z_in, hc), nn.LayerNorm(hc),
            nn.Linear(hc, hc), nn.Dropout(dropout),
        )
        self.time = nn.Sequential(nn.Linear(width, time_mult * width), MPSiLU(),
                                  nn.Linear(time_mult * width, width))
        self.trunk_in = nn.Linear(width, width)  # first trunk layer, split over its inputs
        self.trunk = nn.Sequential(
            *[m for _ in range(n_blocks - 1) for m in (nn.Linear(width, width), MPSiLU())],
            nn.Linear(width, z_dim), MPSiLU(), nn.Linear(z_dim, z_dim),
            nn.LayerNorm(z_dim), nn.Linear(z_dim, z_dim),
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Feature branch and its share of the first trunk layer: ``W₁ᶠ feat(x/‖x‖)``.

        Depends only on the condition, so it is computed once per batch, not per step.
        ``x``: (..., D) → (..., width).
        """
        feat = self.feat(F.normalize(x, dim=-1))
        return feat @ self.trunk_in.weight[:, : self.cond_dim].T

    def time_bias(self, t: torch.Tensor) -> torch.Tensor:
        """``W₁ temb(t) + b₁`` for integer steps ``t`` of shape (S,) → (S, 1, width)."""
        temb = self.time(timestep_embedding(t.reshape(-1), self.width))
        return self.trunk_in(temb)[:, None, :]

    @torch.no_grad()
    def inference_weights(self, dtype: torch.dtype | None = None) -> dict:
        """The folded ``(weight, bias)`` of every Linear that follows an MPSiLU, and the
        assignment share of the first trunk layer, cast once to ``dtype`` (the autocast dtype,
        or None): :meth:`step` then skips the fold and the casts at every denoising step. Valid
        until the parameters change (one teacher pass, one prediction)."""
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        out = {}
        for seq, scale in ((self.assign, None), (self.trunk, MPSiLU.gain)):
            for m in seq:
                if isinstance(m, MPSiLU):
                    scale = MPSiLU.gain
                elif isinstance(m, nn.Linear) and scale is not None:
                    out[m] = (cast(m.weight * scale), None if m.bias is None else cast(m.bias))
                    scale = None
                else:
                    scale = None
        out["trunk_in.assign"] = cast(self.trunk_in.weight[:, self.cond_dim:].T)
        return out

    def step(self, z_t: torch.Tensor, h_cond: torch.Tensor, h_time: torch.Tensor,
             z_sc: torch.Tensor | None = None, weights: dict | None = None) -> torch.Tensor:
        """ẑ_0 from ``z_t`` (S, B, d) given :meth:`prepare` (B|S×B, width) and
        :meth:`time_bias` (S, 1, width) outputs; ``weights``: :meth:`inference_weights`."""
        if self.self_condition:
            z_sc = torch.zeros_like(z_t) if z_sc is None else z_sc.to(z_t.dtype)
            z_t = torch.cat([z_sc, z_t], dim=-1)
        a = run_folded(self.assign, z_t, weights=weights)
        W_a = (weights["trunk_in.assign"] if weights is not None
               else self.trunk_in.weight[:, self.cond_dim:].T)
        h = a @ W_a + h_cond + h_time
        return run_folded(self.trunk, h, pre_silu=True, weights=weights)

    def forward(self, z_t, x, t, z_sc=None):
        """ẑ_θ(z_t, x, t, z_sc) for ``z_t`` (S, B, d), ``x`` (B, D) or (S, B, D), ``t`` (S,)."""
        return self.step(z_t, self.prepare(x), self.time_bias(t), z_sc)
