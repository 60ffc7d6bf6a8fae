"""Classifier-free guidance (Ho & Salimans, 2022, eq. 6), once for every model in the library.

``ε̃ = (1 + w) ε(x, c) − w ε(x, ∅) = ε_c + w (ε_c − ε_∅)``: ``w = 0`` is the plain conditional
model, ``w > 0`` pushes samples towards their condition, ``w = −1`` is the unconditional
model. The same formula guides an ε, an x̂_0 or an EDM ``D`` prediction (they are affine in one
another at fixed ``x`` and ``t``). Every public ``guidance`` argument in diffclust is this ``w``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_guidance", "guided_call"]


def check_guidance(w) -> float:
    """``w`` as a float; one clear error for a non-finite value."""
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"guidance w must be a finite number (0 = no guidance), got {w}")
    return w


def guided_call(model, x: torch.Tensor, t, cond, null, w: float) -> torch.Tensor:
    """``model(x, t, cond)`` guided with weight ``w`` against the null condition ``null``.

    ``w = 0`` makes one call. Otherwise both branches go through the model in one batched call
    (``x``, ``cond``/``null`` and a per-sample ``t`` concatenated; a scalar ``t`` is shared) and
    the result is ``out_c + w (out_c − out_∅)``.
    """
    if w == 0:
        return model(x, t, cond)
    per_sample = torch.is_tensor(t) and t.ndim >= 1 and t.shape[0] == x.shape[0]
    tt = torch.cat([t, t]) if per_sample else t
    out_c, out_u = model(torch.cat([x, x]), tt, torch.cat([cond, null])).chunk(2)
    return out_c + w * (out_c - out_u)
