"""Optimiser pieces shared by every trainer: parameter groups, warm-up + cosine schedule,
per-parameter clipping, EMA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["param_groups", "warmup_cosine", "clip_per_parameter", "EMA", "cosine_value"]


def param_groups(module: nn.Module, weight_decay: float, no_decay_1d: bool = True):
    """AdamW groups: biases and 1-D parameters (norms, gains) get no weight decay."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if (no_decay_1d and p.ndim <= 1) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total``)."""
    p = min(max(step / max(total, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * p))


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0):
    """Per-iteration LR multiplier: linear 0 → 1 over ``warmup_steps``, then cosine to
    ``min_lr_ratio``."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        return cosine_value(step - warmup_steps, max(total_steps - warmup_steps, 1), 1.0,
                            min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


@torch.no_grad()
def clip_per_parameter(module: nn.Module, max_norm: float):
    """DINO-style clipping: each parameter tensor's gradient is clipped to ``max_norm`` alone."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scale.unbind()))


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None):
        d = self.decay if decay is None else decay
        ema_p = list(self.module.parameters())
        src_p = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), module.buffers()):
            b_ema.copy_(b)
