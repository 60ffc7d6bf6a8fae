"""SimCLR pretraining of an image backbone (Chen et al. 2020), resumable per epoch.

Each step embeds two augmented views of a batch with ``projection(backbone(·))`` and minimises
NT-Xent (:func:`~diffclust.losses.nt_xent_loss`); AdamW with a linear warm-up (10 epochs, at most
5 % of the steps) and a cosine decay. GCC's Stage I uses it; any backbone with an ``out_dim``
works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..losses import nt_xent_loss
from .checkpoint import (
    load_named_state,
    named_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
)
from .loop import epoch_batches, train_epoch
from .optim import warmup_cosine
from .runtime import autocast, progress

__all__ = ["projection_head", "train_simclr"]


def projection_head(dim: int, out: int) -> nn.Sequential:
    """SimCLR's MLP projection ``Linear(dim, dim) → ReLU → Linear(dim, out)``."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


def train_simclr(backbone: nn.Module, projection: nn.Module, X, augment: Callable, *,
                 epochs: int, batch_size: int, lr: float, weight_decay: float,
                 temperature: float, generator: torch.Generator, device, amp_dtype=None,
                 verbose: bool = True, desc: str = "SimCLR", load: Callable | None = None,
                 save: Callable | None = None,
                 hint: str = "lower lr or use precision='fp32'") -> list[dict]:
    """Train ``backbone`` and ``projection`` on the images ``X`` (numpy ``(N, C, H, W)``) for
    ``epochs`` epochs of ``N // batch_size`` steps; returns the history ``[{"epoch", "loss"}]``.

    ``augment(x, generator)`` draws one view of a batch; every random number comes from
    ``generator``. Checkpoints: ``load()`` returns ``(meta, tensors)`` saved by an earlier
    ``save(tensors, meta, epoch)`` (called after every epoch) or ``None``; the weights, the
    optimiser, the schedule and the generator are restored and training continues with the
    next epoch, as an uninterrupted run would. ``hint``: the advice if the loss diverges."""
    n = len(X)
    params = list(backbone.parameters()) + list(projection.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    B = min(int(batch_size), n)
    steps_per_epoch = max(n // B, 1)
    total = max(1, int(epochs) * steps_per_epoch)
    sched = warmup_cosine(opt, total, min(10 * steps_per_epoch, max(1, total // 20)))
    start, history = 0, []
    state = load() if load is not None else None
    if state is not None:
        meta, tens = state
        load_named_state(tens, F=backbone, P=projection)
        optimizer_from_tensors(opt, meta["optimizer"], tens)
        sched.load_state_dict(meta["sched"])
        generator.set_state(tens["rng"])
        start, history = int(meta["epoch"]), list(meta["history"])
    Xt = torch.from_numpy(X)

    def step(idx):  # one NT-Xent step on two augmented views of the batch
        x = Xt[idx].to(device)
        v = torch.cat([augment(x, generator), augment(x, generator)])
        with autocast(device, amp_dtype):
            z = projection(backbone(v)).float()
        return nt_xent_loss(z[:len(x)], z[len(x):], temperature), {}

    bar = progress(range(start, int(epochs)), total=int(epochs), initial=start, desc=desc,
                   verbose=verbose)
    for ep in bar:
        backbone.train(), projection.train()
        means = train_epoch(step, epoch_batches(n, B, generator, drop_last=True), opt,
                            scheduler=sched, hint=hint, what=f"{desc} (NT-Xent) in epoch {ep}")
        history.append({"epoch": ep + 1, "loss": means["loss"]})
        bar.set_postfix(loss=f"{means['loss']:.3f}")
        if save is not None:
            om, ot = optimizer_to_tensors(opt)
            tensors = {**named_state(F=backbone, P=projection), **ot, "rng": generator.get_state()}
            save(tensors, {"epoch": ep + 1, "history": history, "optimizer": om,
                           "sched": sched.state_dict()}, ep + 1)
    bar.close()
    return history
