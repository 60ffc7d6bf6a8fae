"""The one training loop of the image diffusion models (DDPM pretraining, EDM generators).

:func:`train_denoiser` runs ``n_steps`` optimiser steps of any denoising loss on an image array
and owns everything around the loss that the callers share: the epoch order, label dropout to
the null id (classifier-free guidance), the learning-rate warm-up, the finiteness check,
gradient clipping, the EMA copy (decay warmed up as ``min(decay, (1 + s)/(10 + s))``), the loss
history, the progress bar, a time limit and crash-safe checkpoints that resume bit-for-bit.

Crash safety: every ``checkpoint_every`` steps the online weights, the EMA weights, the
optimiser moments and the random-generator state go to ``ckdir/state-<step>.safetensors`` and
then ``ckdir/state.json`` (written atomically) points at it; a rerun with ``resume=True``
continues from there and gives the same weights as an uninterrupted run: all randomness comes
from one checkpointed ``torch.Generator`` and the batch order is a pure function of the step
(:class:`EpochOrder`).

Distributed training (``torchrun --nproc_per_node=W script.py``; DistributedDataParallel, gloo
on CPU, nccl on CUDA with each rank on ``cuda:LOCAL_RANK``). The loop joins the process group
the script initialised or, under torchrun, one it initialises itself
(:func:`~diffclust.training.distributed.ensure_distributed`), so an unchanged
``pretrain_ddpm``/``train_generator`` script trains data-parallel. W ranks × B/W images give the
single-process run with batch B (``batch_size`` is the *global* batch; it must be divisible by
W), up to float rounding:

* every rank draws the whole global batch (:class:`EpochOrder`), its label-dropout mask and —
  through the :class:`BatchRandom` that ``loss_fn`` draws from — its per-image noise (t, ε, σ)
  from the one shared seeded generator, in the single-process order, and keeps its contiguous
  slice; so the generators stay in step and every image gets the noise it gets alone;
* ``model`` (the U-Net, or the module around it that ``loss_fn`` calls) is wrapped in DDP for
  the forward/backward: the loss is the mean over the local slice and DDP averages the
  gradients, i.e. the gradient of the global-batch mean. Clipping, the optimiser step and the
  EMA act on the unwrapped U-Net and are identical on every rank;
* the logged loss (history, progress bar, ``on_step``, the finiteness check) is all-reduced;
  the ``max_seconds`` stop is rank 0's decision, broadcast;
* checkpoints are written by rank 0 only; the final one is complete (barrier) when the loop
  returns; every rank resumes from the same checkpoint (a rank that finds another one stops
  with an error on all ranks). ``on_step`` runs on every rank (it must not raise on one rank
  only: the others would wait for it until the group's timeout).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training.checkpoint import (
    load_checkpoint,
    load_named_state,
    optimizer_from_tensors,
    save_checkpoint,
)
from ..training.distributed import (
    DistInfo,
    GlobalBatchRandom,
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_tensor,
    ensure_distributed,
    wrap_ddp,
)
from ..training.loop import LossLog, Step, train_steps
from ..training.optim import EMA

__all__ = [
    "CKPT_DIR",
    "BatchRandom",
    "EpochOrder",
    "TrainLoopResult",
    "setup_distributed",
    "train_denoiser",
]

CKPT_DIR = "checkpoint"


class EpochOrder:
    """Batch ``s`` = items ``[sB, (s+1)B)`` of the endless stream perm_0 ‖ perm_1 ‖ …, where
    perm_e is a permutation seeded by ``(seed, e)``: a pure function of the step, so resuming
    needs no extra state."""

    def __init__(self, n, batch, seed):
        self.n, self.bs, self.seed, self._cache = n, batch, int(seed), {}

    def perm(self, e):
        if e not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._cache[e] = torch.randperm(self.n, generator=g)
        return self._cache[e]

    def batch(self, step):
        pos = torch.arange(step * self.bs, (step + 1) * self.bs)
        ep, off = pos // self.n, pos % self.n
        out = torch.empty(self.bs, dtype=torch.long)
        for e in ep.unique().tolist():
            m = ep == e
            out[m] = self.perm(e)[off[m]]
        return out


# ---------------------------------------------------------------------- distributed
def setup_distributed(device) -> tuple[DistInfo, torch.device]:
    """Join the process group (:func:`~diffclust.training.distributed.ensure_distributed`: the
    script's, or one initialised here under torchrun; single process otherwise) and the device
    this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA ``device`` under torch.distributed,
    else ``device``. Callers that place modules before :func:`train_denoiser` call it first."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = ensure_distributed(device)
    if info.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        elif info.backend == "nccl":
            raise ValueError("the process group uses nccl but training was asked for "
                             f"device={str(device)!r}; nccl needs CUDA: use device='cuda' (or "
                             "a gloo group for CPU training)")
    return info, device


def BatchRandom(generator: torch.Generator, global_batch: int, local: slice):
    """The per-image random source ``loss_fn`` draws from: a
    :class:`~diffclust.training.distributed.GlobalBatchRandom` over the batch dimension 0 bound
    to the loop's generator (``randn(shape)``, ``rand(shape)``, ``randint(low, high, shape)``
    with the *local* shape; CPU tensors)."""
    return GlobalBatchRandom(global_batch, local, generator=generator, dim=0)


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainLoopResult:
    """``ema``: the EMA module (eval it for sampling); ``online``: the trained module;
    ``step``: steps done in total; ``history``: ``[{"step", "loss", "seconds"}]``;
    ``seconds``: training time including resumed runs; ``stopped_early``: hit ``max_seconds``."""

    ema: torch.nn.Module
    online: torch.nn.Module
    step: int
    history: list
    seconds: float
    stopped_early: bool


def train_denoiser(unet, X: torch.Tensor, loss_fn: Callable, optimizer, *, n_steps: int,
                   batch_size: int, lr: float, seed: int, settings: dict,
                   labels: torch.Tensor | None = None, p_uncond: float = 0.0,
                   warmup_steps: int = 0, ema_decay: float = 0.999,
                   clip_grad: float | None = 1.0, ckdir: Path | None = None,
                   checkpoint_every: int = 0, resume: bool = True, check_keys=(),
                   max_seconds: float | None = None, device=None, desc: str = "train",
                   verbose: bool = True, on_step: Callable | None = None,
                   checkpoint_info: Callable[[], dict] | None = None,
                   model: torch.nn.Module | None = None) -> TrainLoopResult:
    """Train ``unet`` on the images ``X`` (``(N, C, H, W)`` in [−1, 1], CPU) for ``n_steps``.

    ``loss_fn(net, x0, class_labels, rng)`` returns the scalar loss (mean over the batch) of
    this rank's share of one batch: ``net`` is the module to run the forward pass through
    (``model``, default ``unet``; wrapped in DistributedDataParallel under torch.distributed —
    call it, not ``unet``, so that the gradients are averaged over ranks), ``x0`` the padded
    batch on ``device``, ``class_labels`` the batch's ids with a ``p_uncond`` fraction replaced
    by ``unet.null_class`` (``None`` without ``labels``), ``rng`` a :class:`BatchRandom` over
    the loop's ``torch.Generator`` (draw every random number from it so that resuming is exact
    and distributed runs match one process). ``model`` may be a module around ``unet`` (e.g.
    a preconditioning wrapper) whose parameters are ``unet``'s.
    ``batch_size`` is the global batch (divisible by the world size under torch.distributed).
    ``settings`` is stored in every checkpoint; resuming refuses a checkpoint whose
    ``settings[k]`` differs for any ``k`` in ``check_keys``. ``on_step(step, loss, ema)`` runs
    after every step on every rank with the global-batch loss (an exception there stops
    training like a crash would). ``checkpoint_info()`` adds entries to the checkpoint's JSON.
    """
    info, device = setup_distributed(device)
    W = info.world_size
    N = len(X)
    B = int(min(batch_size, N))
    if B % W:
        raise ValueError(f"{desc}: under torch.distributed batch_size is the global batch, split "
                         f"evenly over the ranks: batch_size={B} is not divisible by the world "
                         f"size {W}; choose a multiple of {W}")
    b = B // W
    local = slice(info.rank * b, (info.rank + 1) * b)
    unet = unet.to(device).train()
    model = unet if model is None else model.to(device).train()
    ema = EMA(unet, ema_decay)
    gen = torch.Generator().manual_seed(int(seed))
    step, history, seconds_before = 0, [], 0.0
    ck = load_checkpoint(ckdir) if ckdir is not None and resume else None
    if info.distributed:  # every rank must resume from the same checkpoint (or none)
        found = all_gather_object(None if ck is None else int(ck[0]["step"]))
        if len(set(found)) > 1:
            raise ValueError(f"{desc}: the ranks found different checkpoints in {ckdir} "
                             f"(steps {found}, None = none); every rank must see the same "
                             f"files (a shared out_dir)")
    if ck is not None:
        ck_info, tens = ck
        for k in check_keys:
            if ck_info["settings"].get(k) != settings.get(k):  # absent: the default
                raise ValueError(f"checkpoint in {ckdir} was made with {k}="
                                 f"{ck_info['settings'].get(k)!r}, this run has "
                                 f"{settings.get(k)!r}; use resume=False (or another out_dir)")
        load_named_state(tens, model=unet, ema=ema.module)
        optimizer_from_tensors(optimizer, ck_info["optimizer"], tens)
        gen.set_state(tens["rng.generator"])
        torch.set_rng_state(tens["rng.torch"])
        step, history = int(ck_info["step"]), list(ck_info["history"])
        seconds_before = float(ck_info["seconds"])
    # DDP broadcasts rank 0's weights; the EMA starts from (or was resumed to) the same ones
    net = wrap_ddp(model, info)
    if info.distributed and ck is None:
        ema.module.load_state_dict(unet.state_dict())
    order = EpochOrder(N, B, seed)
    rng = BatchRandom(gen, B, local)
    t0 = time.perf_counter()

    def elapsed():
        return seconds_before + time.perf_counter() - t0

    def checkpoint(step):
        if ckdir is not None and checkpoint_every:
            extra = checkpoint_info() if checkpoint_info is not None else {}
            if info.is_main:
                save_checkpoint(ckdir, step, unet, ema.module, optimizer, gen,
                                {"settings": settings, "history": history,
                                 "seconds": elapsed(), **extra})

    def train_step(step):
        idx = order.batch(step)  # the global batch; this rank keeps rows [local]
        cl = None
        if labels is not None:
            cl = labels[idx].clone()
            if p_uncond > 0:
                cl[torch.rand(B, generator=gen) < p_uncond] = unet.null_class
            cl = cl[local].to(device)
        x0 = unet.pad(X[idx[local]].to(device))
        for g in optimizer.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))
        loss = loss_fn(net, x0, cl, rng)
        # the logged and checked value is the global-batch loss; DDP averages the gradients
        return Step(loss, {"loss": all_reduce_mean(loss.detach()).item()},
                    update={"ema_decay": min(ema_decay, (1 + step) / (10 + step))})

    stopped_early = False

    def after_step(done, value):
        nonlocal stopped_early
        if on_step is not None:
            on_step(done, value, ema.module)
        if checkpoint_every and done % checkpoint_every == 0 and done < n_steps:
            checkpoint(done)
        if max_seconds is not None:
            stop = time.perf_counter() - t0 > max_seconds
            if info.distributed:  # rank 0 decides, so that all ranks stop together
                flag = torch.tensor([float(stop)], device=info.device)
                stop = bool(broadcast_tensor(flag).item())
            stopped_early = stop and done < n_steps
            return stop

    step = train_steps(train_step, optimizer, n_steps=n_steps, start=step, desc=desc,
                       what=desc, history=history, verbose=verbose and info.is_main,
                       log=LossLog(max(1, min(100, n_steps // 50)), n_steps),
                       after_step=after_step, clock=elapsed,
                       hint=f"lower lr (now {lr}) or use precision='fp32'",
                       clip_grad=clip_grad or None, parameters=unet, ema=ema, ema_of=unet)
    seconds = elapsed()
    checkpoint(step)
    barrier()  # the final checkpoint is on disk for every rank
    return TrainLoopResult(ema.module, unet, step, history, seconds, stopped_early)
