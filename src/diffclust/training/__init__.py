"""Shared training machinery: seeding, device/precision, optimiser pieces, EMA, progress."""

from .optim import EMA, clip_per_parameter, cosine_value, param_groups, warmup_cosine
from .runtime import (
                      autocast,
                      cpu_has_bf16,
                      progress,
                      resolve_device,
                      resolve_precision,
                      seed_everything,
)

__all__ = ["EMA", "clip_per_parameter", "cosine_value", "param_groups", "warmup_cosine",
           "autocast", "cpu_has_bf16", "progress", "resolve_device", "resolve_precision",
           "seed_everything"]
