"""The training loop of the library: its iteration, its update and the log of its losses.

A method supplies its step (draw the batch, compute the loss: a named function reading like its
paper); the rest is here and exists once:

* :func:`train_steps` runs steps ``start … n_steps − 1`` (CLUDI, TEMI, Self-Classifier, the
  image-diffusion trainer): the update, the loss log and ``history_`` records, the progress bar,
  the checkpoint after every step (resume), an early stop;
* :func:`train_epoch` is one pass over a shuffled epoch in batches (DiEC, ClusterDDPM, GCC's
  SimCLR, head and Stage II, the feature CNN of the Fréchet distance) and returns the mean of
  the logged parts; the stages and rounds around it are the method's.

Turning a loss into an update is :func:`optimizer_step`, the same for every loop:

1. the finiteness check: a non-finite loss raises :class:`~diffclust.errors.DivergenceError`
   naming the run and the loop's advice (and nothing is updated); so does, with ``check`` (an
   :class:`ExplosionCheck`), a loss grown far past its first value;
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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..errors import DivergenceError
from .optim import clip_per_parameter
from .runtime import progress

__all__ = ["ExplosionCheck", "LossLog", "RunningMeans", "Step", "epoch_batches", "optimizer_step",
           "train_epoch", "train_steps"]


def optimizer_step(loss: torch.Tensor, optimizer, *, what: str, hint: str = "",
                   value: float | None = None, scheduler=None, clip_grad: float | None = None,
                   clip: str = "norm", parameters=None, before_step: Callable | None = None,
                   ema=None, ema_of=None, ema_decay: float | None = None,
                   check: Callable | None = None) -> float:
    """One optimiser update from the scalar ``loss``; returns its value (a float).

    ``what`` names the run and the place ("CLUDI training at step 12") and ``hint`` the advice
    of a :class:`DivergenceError`; ``value`` is the loss value to check when the caller already
    has it (e.g. the global-batch loss under DDP), else ``loss.item()``. ``parameters``: what
    ``clip="norm"`` clips (a module or an iterable), the module whose tensors are clipped alone
    for ``clip="per_parameter"``. ``ema.update(ema_of, ema_decay)`` follows the step;
    ``check(value, what, hint)`` (:class:`ExplosionCheck`) runs after the finiteness check, before
    any update, and may raise."""
    value = float(loss.detach()) if value is None else float(value)
    if not math.isfinite(value):
        raise DivergenceError(f"{what}: the loss became {value}; {hint}".rstrip("; "))
    if check is not None:
        check(value, what, hint)
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


class RunningMeans:
    """Sums of named values (floats or 0-d tensors), each step weighted (default 1), and their
    means. ``keys`` fixes the first keys' order (and reports them as 0 before any step)."""

    def __init__(self, keys=()):
        self.sums: dict[str, float] = dict.fromkeys(keys, 0.0)
        self.weight = self.steps = 0

    def add(self, parts: dict, weight=1):
        for k, v in parts.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self.sums[k] = self.sums.get(k, 0.0) + weight * float(v)
        self.weight += weight
        self.steps += 1

    def means(self) -> dict:
        return {k: v / max(self.weight, 1) for k, v in self.sums.items()}


class ExplosionCheck:
    """A loss grown past ``factor`` × the first value it saw (``ref``) is a divergence, like a
    non-finite one (ClusterDDPM's ``divergence_factor``). ``ref = None`` starts again (a loss
    of another scale); ``ref`` is all its state, for a checkpoint."""

    def __init__(self, factor: float, ref: float | None = None):
        self.factor, self.ref = float(factor), ref

    def __call__(self, value: float, what: str, hint: str = ""):
        if self.ref is None:
            self.ref = max(abs(value), 1e-3)
        elif value > self.factor * self.ref:
            raise DivergenceError(f"{what}: the loss exploded to {value:.4g}, more than "
                                  f"{self.factor:g}× its first value {self.ref:.4g}; {hint}"
                                  .rstrip("; "))


class LossLog:
    """Running means of named losses over the steps since the last record.

    ``add(step, parts)`` accumulates ``parts`` (floats) and, every ``every`` steps and at the
    last one (``total``), returns the record ``{"step": step, **means, **extra}`` (and starts
    again); otherwise ``None``. ``state_dict``/``load_state_dict`` carry the running sums
    through a checkpoint."""

    def __init__(self, every: int, total: int):
        self.every, self.total = max(int(every), 1), int(total)
        self.run = RunningMeans()

    def add(self, step: int, parts: dict, **extra) -> dict | None:
        self.run.add(parts)
        if step % self.every and step != self.total:
            return None
        rec = {"step": step, **extra, **self.run.means()}
        self.run = RunningMeans()
        return rec

    def state_dict(self) -> dict:
        return {"sums": dict(self.run.sums), "count": self.run.weight}

    def load_state_dict(self, state: dict):
        self.run.sums = dict(state["sums"])
        self.run.weight = self.run.steps = int(state["count"])


@dataclass
class Step:
    """What a step function returns: the ``loss`` to minimise, the ``parts`` to log (floats,
    averaged by :class:`LossLog`; ``parts["loss"]``, when given, is the value checked for
    divergence, e.g. the global-batch loss under DDP), ``extra`` fields of the record (the
    step's own value, not averaged) and per-step options of :func:`optimizer_step`
    (``update``: e.g. an EMA decay that follows a schedule). A plain ``(loss, parts)`` tuple is
    a Step too."""

    loss: torch.Tensor
    parts: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    update: dict = field(default_factory=dict)


def _as_step(out) -> Step:
    return out if isinstance(out, Step) else Step(*out)


def train_steps(step_fn: Callable[[int], Step], optimizer, *, n_steps: int, desc: str,
                start: int = 0, history: list | None = None, log: LossLog | None = None,
                verbose: bool = True, after_step: Callable | None = None,
                clock: Callable[[], float] | None = None, what: str | None = None,
                postfix: Iterable[str] = ("loss",), **update) -> int:
    """Steps ``start … n_steps − 1`` of a training run; returns the number of steps done.

    ``step_fn(step)`` gives the :class:`Step`; the loop makes the update
    (:func:`optimizer_step` with ``update`` and the step's own options), adds its parts to
    ``log`` (with the scheduler's learning rate and ``clock()``, the seconds so far) and appends
    the records to ``history``, shows ``postfix`` on the progress bar (``desc``, silenced by
    ``verbose=False``), then calls ``after_step(steps_done, value)`` — the checkpoint;
    a true return stops the run early."""
    t0 = time.perf_counter()
    clock = clock or (lambda: time.perf_counter() - t0)
    history = [] if history is None else history
    log = log or LossLog(max(n_steps // 50, 1), n_steps)
    scheduler = update.get("scheduler")
    bar = progress(range(start, n_steps), total=n_steps, initial=start, desc=desc,
                   verbose=verbose)
    done = start
    try:
        for step in bar:
            s = _as_step(step_fn(step))
            value = optimizer_step(s.loss, optimizer, value=s.parts.get("loss"),
                                   what=f"{what or desc + ' training'} at step {step}",
                                   **{**update, **s.update})
            done = step + 1
            lr = {} if scheduler is None else {"lr": scheduler.get_last_lr()[0]}
            rec = log.add(done, {**s.parts, "loss": value}, **lr, **s.extra, seconds=clock())
            if rec is not None:
                history.append(rec)
                bar.set_postfix({k: f"{rec[k]:.4f}" for k in postfix if k in rec})
            if after_step is not None and after_step(done, value):
                break
    finally:
        bar.close()
    return done


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, *,
                  drop_last: bool = False) -> list[torch.Tensor]:
    """One epoch's batches: a permutation of ``range(n)`` drawn from ``generator``, cut into
    consecutive slices of ``batch_size`` (the last one shorter, or dropped with ``drop_last``;
    at least one batch)."""
    perm = torch.randperm(n, generator=generator)
    stop = (n - batch_size + 1 if n >= batch_size else 1) if drop_last else n
    return [perm[b0:b0 + batch_size] for b0 in range(0, stop, batch_size)]


def train_epoch(step_fn: Callable, batches: Iterable, optimizer, *, what: str,
                bar=None, postfix: Callable[[dict], dict] | None = None, weighted: bool = False,
                running: RunningMeans | None = None, **update) -> dict:
    """One pass over ``batches`` (index tensors, e.g. :func:`epoch_batches`): ``step_fn(idx)``
    gives the :class:`Step` of a batch, or ``None`` to skip it; the update is
    :func:`optimizer_step` (``what`` names the place in a divergence). Returns the mean of
    every logged part over the steps made (``"loss"``: the updated loss values; ``weighted``:
    each step weighted by its batch size) and ``"steps"``; ``running`` continues the means of
    earlier passes (several epochs into one record). ``bar`` advances by one per step, with
    ``postfix(parts)`` shown."""
    running = RunningMeans() if running is None else running
    for idx in batches:
        out = step_fn(idx)
        if out is None:
            continue
        s = _as_step(out)
        value = optimizer_step(s.loss, optimizer, value=s.parts.get("loss"), what=what,
                               **{**update, **s.update})
        parts = {**s.parts, "loss": value}
        running.add(parts, len(idx) if weighted else 1)
        if bar is not None:
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(postfix(parts))
    return {**running.means(), "steps": running.steps}
