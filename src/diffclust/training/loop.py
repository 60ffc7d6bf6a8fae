"""The update every training loop of the library makes, and the log of its losses.

A method's loop only draws its batch and computes its loss (its named step function); turning
that loss into an update is :func:`optimizer_step`, the same for every loop (CLUDI, TEMI,
Self-Classifier, DiEC, ClusterDDPM, GCC's three stages, the image-diffusion trainer and the
feature CNN of the Fréchet distance):

1. the finiteness check: a non-finite loss raises :class:`~diffclust.errors.DivergenceError`
   naming the run and the loop's advice (and nothing is updated);
2. ``zero_grad``, ``backward`` (DDP averages the gradients there);
3. clipping: the global norm (``clip="norm"``; a non-finite norm is a divergence too) or each
   parameter alone (``clip="per_parameter"``, DINO/CLUDI);
4. ``before_step`` (e.g. TEMI's last layer frozen during the first epoch), the optimiser and its
   learning-rate schedule;
5. the EMA copy.

:class:`LossLog` keeps the running means of a loop's named losses and turns them into the
records of ``history_`` (``metrics.jsonl`` in a run directory) every ``every`` steps.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import DivergenceError
from .optim import clip_per_parameter

__all__ = ["optimizer_step", "LossLog"]


def optimizer_step(loss: torch.Tensor, optimizer, *, what: str, hint: str = "",
                   value: float | None = None, scheduler=None, clip_grad: float | None = None,
                   clip: str = "norm", parameters=None, before_step: Callable | None = None,
                   ema=None, ema_of=None, ema_decay: float | None = None) -> float:
    """One optimiser update from the scalar ``loss``; returns its value (a float).

    ``what`` names the run and the place ("CLUDI training at step 12") and ``hint`` the advice
    of a :class:`DivergenceError`; ``value`` is the loss value to check when the caller already
    has it (e.g. the global-batch loss under DDP), else ``loss.item()``. ``parameters``: what
    ``clip="norm"`` clips (a module or an iterable), the module whose tensors are clipped alone
    for ``clip="per_parameter"``. ``ema.update(ema_of, ema_decay)`` follows the step."""
    value = float(loss.detach()) if value is None else float(value)
    if not math.isfinite(value):
        raise DivergenceError(f"{what}: the loss became {value}; {hint}".rstrip("; "))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad is not None:
        if clip == "per_parameter":
            clip_per_parameter(parameters, clip_grad)
        else:
            params = parameters.parameters() if hasattr(parameters, "parameters") else parameters
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
            if not torch.isfinite(norm):
                raise DivergenceError(f"{what}: the gradient norm is {float(norm)}; {hint}"
                                      .rstrip("; "))
    if before_step is not None:
        before_step()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(ema_of, ema_decay)
    return value


class LossLog:
    """Running means of named losses over the steps since the last record.

    ``add(step, parts)`` accumulates ``parts`` (floats) and, every ``every`` steps and at the
    last one (``total``), returns the record ``{"step": step, **means, **extra}`` (and starts
    again); otherwise ``None``. ``state_dict``/``load_state_dict`` carry the running sums
    through a checkpoint."""

    def __init__(self, every: int, total: int):
        self.every, self.total = max(int(every), 1), int(total)
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, parts: dict, **extra) -> dict | None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if step % self.every and step != self.total:
            return None
        rec = {"step": step, **extra, **{k: v / self.count for k, v in self.sums.items()}}
        self.sums, self.count = {}, 0
        return rec

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict):
        self.sums, self.count = dict(state["sums"]), int(state["count"])
