"""torchrun / DistributedDataParallel helpers: every trainer can run on several processes.

Launch a script with ``torchrun --nproc_per_node=G script.py``; inside it::

    info = init_distributed()                 # gloo on CPU, nccl on CUDA; no-op when alone
    model = wrap_ddp(model.to(info.device), info)
    sampler = DistributedBatchSampler(n, global_batch_size=B, seed=seed, info=info)
    for step in range(steps):
        idx = sampler.next_batch()            # this rank's share of the global batch
        loss = criterion(model(X[idx]))       # mean over the local share
        loss.backward(); opt.step()           # DDP averages gradients over ranks
        ema.update(unwrap(model))             # identical on every rank (same params)
    if info.is_main:                          # or: save_on_main(path, write)
        save(...)
    cleanup_distributed()

Equivalence with one process: every rank draws the *same* global permutation from the seed
and takes a contiguous, equal-sized slice of each global batch; the loss is a mean over the
local slice and DDP averages gradients over ranks, so the update is the gradient of the mean
loss over the global batch — the single-process update with the same global batch (up to the
order of floating-point sums). The global batch must be divisible by the world size.
Randomness used *inside* a step (noise, augmentations) must be drawn per sample in a
rank-independent way (e.g. for the global batch from a shared generator, then sliced) for the
runs to agree exactly; :meth:`DistributedBatchSampler.local_slice` gives the slice.

Losses that need statistics over the whole batch (e.g. CLUDI's Self-Classifier column
normalisation) must all-gather the per-rank outputs (:func:`all_gather_cat`, with gradients)
before computing them; otherwise each rank sees only its share.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["GlobalBatchDropout", "swap_dropout", "GlobalBatchRandom", "StepModule", "DistInfo",
           "init_distributed", "ensure_distributed",
           "cleanup_distributed",
           "dist_info", "is_main_process", "barrier", "wrap_ddp", "unwrap",
           "DistributedBatchSampler", "all_reduce_mean", "all_gather_cat", "broadcast_object",
           "broadcast_tensor", "save_on_main", "main_process_first", "all_gather_object"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def init_distributed(backend: str | None = None, device=None, timeout_s: float = 600.0
                     ) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    ``backend`` defaults to ``nccl`` when CUDA is available (each rank on ``cuda:LOCAL_RANK``)
    and ``gloo`` otherwise. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) it returns a
    single-process :class:`DistInfo` and does nothing.
    """
    from datetime import timedelta

    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if device is None:
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, device, None)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("backend='nccl' needs CUDA devices; use backend='gloo' on CPU")
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {missing} not set: launch with torchrun "
                             f"(torchrun --nproc_per_node={world} script.py)")
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, device, backend)


def ensure_distributed(device=None) -> DistInfo:
    """The process group the trainers use: the one already initialised (e.g. by the user's
    :func:`init_distributed`), else — when ``torchrun`` set ``WORLD_SIZE > 1`` — one initialised
    here lazily (gloo for a CPU ``device``, nccl for CUDA) and left, with a barrier, at
    interpreter exit; else single process. So an unchanged ``est.fit(X)`` script runs
    data-parallel under ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    if _env_int("WORLD_SIZE", 1) <= 1 or not dist.is_available():
        return DistInfo()
    import atexit

    cuda = device is None or torch.device(device).type == "cuda"
    init_distributed(device=None if cuda else device)  # CUDA: each rank on cuda:LOCAL_RANK
    atexit.register(cleanup_distributed)
    return dist_info()


def cleanup_distributed():
    """Leave the process group. Every rank first meets at a barrier, so that no rank tears
    down its gloo connections while a peer still has work in flight on them (that race
    aborted the peer with "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def dist_info() -> DistInfo:
    """The current process's rank/world size (single process when no group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        local, backend = _env_int("LOCAL_RANK", 0), dist.get_backend()
        dev = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, backend)
    return DistInfo()


def is_main_process() -> bool:
    return dist_info().is_main


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, info: DistInfo | None = None, **kw) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when running distributed, else ``module``."""
    info = info or dist_info()
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, **kw)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


class DistributedBatchSampler:
    """Global batches of ``global_batch_size`` indices from reshuffled epochs (like the
    single-process loop ``perm = randperm(n); perm[pos:pos+B]``), each rank keeping its
    contiguous ``B / world_size`` share. All ranks use the same seeded generator, so the global
    sequence of batches is the one a single process would draw.
    """

    def __init__(self, n: int, global_batch_size: int, seed: int = 0,
                 info: DistInfo | None = None, drop_last: bool = True,
                 generator: torch.Generator | None = None):
        self.info = info or dist_info()
        W = self.info.world_size
        if global_batch_size % W:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                             f"world size {W}; choose a multiple of {W}")
        if global_batch_size > n:
            raise ValueError(f"global_batch_size={global_batch_size} > n={n}")
        self.n, self.B, self.drop_last = n, global_batch_size, drop_last
        # ``generator`` (seeded identically on every rank) lets a trainer interleave its own
        # draws (e.g. TEMI's neighbour partners) with the permutations; ``seed`` is then unused
        self.g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        self.perm, self.pos = torch.randperm(n, generator=self.g), 0

    @property
    def local_batch_size(self) -> int:
        return self.B // self.info.world_size

    def local_slice(self) -> slice:
        """Where this rank's share sits inside a global batch."""
        b = self.local_batch_size
        return slice(self.info.rank * b, (self.info.rank + 1) * b)

    def next_global_batch(self) -> torch.Tensor:
        if self.pos + self.B > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.perm[self.pos:self.pos + self.B]
        self.pos += self.B
        return idx

    def next_batch(self) -> torch.Tensor:
        return self.next_global_batch()[self.local_slice()]

    def state_dict(self) -> dict:
        """For checkpoints: resuming continues the same batch sequence."""
        return {"perm": self.perm.clone(), "pos": self.pos, "g": self.g.get_state()}

    def load_state_dict(self, s: dict):
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])
        self.g.set_state(s["g"])


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns ``t`` unchanged when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate equal-shaped ``t`` from every rank along ``dim`` in rank order; gradients
    flow back to this rank's part (``torch.distributed.nn.all_gather``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if t.requires_grad:
        from torch.distributed.nn import all_gather as ag

        return torch.cat(ag(t), dim=dim)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (e.g. a seed drawn on rank 0)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (picklable objects; ``[obj]`` when
    alone), e.g. to check that the ranks agree before they go on."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` from rank ``src`` on every rank, in place (other ranks pass a tensor of the same
    shape and dtype, on the backend's device); returns ``t``. No-op when alone."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=src)
    return t


def save_on_main(write, *args, **kwargs):
    """Call ``write(*args, **kwargs)`` on rank 0 only, then wait for it on every rank, so that
    a file is written once and is complete when any rank reads it."""
    out = write(*args, **kwargs) if is_main_process() else None
    barrier()
    return out


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. a download or a cache fill), the others after it."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


class GlobalBatchRandom:
    """Random tensors for this rank's rows of a global batch, drawn as one process would.

    Every rank holds the same seeded generator; a draw of local shape ``(…, b, …)`` (the batch
    in dimension ``dim``) is made for the whole global batch ``(…, B, …)`` and this rank's rows
    ``local`` are returned, so each sample gets the numbers it gets in a single process with
    batch B and the generator advances identically everywhere. Without ``global_batch`` (or when
    ``local`` covers it all) the draw is a plain ``torch.randn(shape, generator=g)``, so
    single-process results are unchanged. ``generator`` and ``dim`` set defaults that each call
    may override; ``device`` moves the result (default: stay on the CPU).
    """

    def __init__(self, global_batch: int | None = None, local: slice | None = None,
                 generator: torch.Generator | None = None, dim: int = 0):
        self.global_batch = None if global_batch is None else int(global_batch)
        if local is None and self.global_batch is not None:
            local = slice(0, self.global_batch)
        self.local, self.generator, self.dim = local, generator, int(dim)

    @classmethod
    def for_rank(cls, global_batch: int, info, dim: int = 0) -> "GlobalBatchRandom":
        """This rank's contiguous rows ``[r·b, (r + 1)·b)`` of a global batch of ``B = W·b``
        (``info``: :func:`dist_info`)."""
        b = int(global_batch) // int(info.world_size)
        return cls(global_batch, slice(info.rank * b, (info.rank + 1) * b), dim=dim)

    @property
    def local_batch(self) -> int | None:
        return None if self.local is None else self.local.stop - self.local.start

    @property
    def distributed(self) -> bool:
        return self.local is not None and self.local_batch != self.global_batch

    def _draw(self, fn, args, shape, generator, device, dim, dtype):
        g = self.generator if generator is None else generator
        dim = self.dim if dim is None else dim
        shape = tuple(int(d) for d in ((shape,) if isinstance(shape, int) else shape))
        if self.local is not None and (len(shape) <= dim or shape[dim] != self.local_batch):
            raise ValueError(f"per-sample draws need the local batch size {self.local_batch} in "
                             f"dimension {dim} of the shape, got {shape}")
        if self.distributed:
            full = list(shape)
            full[dim] = self.global_batch
            out = fn(*args, tuple(full), generator=g, dtype=dtype).narrow(
                dim, self.local.start, self.local_batch)
        else:
            out = fn(*args, shape, generator=g, dtype=dtype)
        return out if device is None else out.to(device)

    def randn(self, shape, generator=None, device=None, dim=None, dtype=torch.float32):
        return self._draw(torch.randn, (), shape, generator, device, dim, dtype)

    def rand(self, shape, generator=None, device=None, dim=None, dtype=torch.float32):
        return self._draw(torch.rand, (), shape, generator, device, dim, dtype)

    def randint(self, low: int, high: int, shape, generator=None, device=None, dim=None,
                dtype=torch.int64):
        return self._draw(torch.randint, (low, high), shape, generator, device, dim, dtype)


class GlobalBatchDropout(nn.Dropout):
    """``nn.Dropout`` whose mask (torch's default generator, seeded alike on every rank) is drawn
    for the global batch — the batch in dimension −2, W·b rows — and sliced to this rank's b
    rows, so that W ranks drop exactly what one process with the whole batch drops."""

    def __init__(self, p, rank, world_size):
        super().__init__(p)
        self.rank, self.world_size = rank, world_size

    def forward(self, x):
        if not self.training or self.p == 0 or self.world_size == 1:
            return super().forward(x)
        b = x.shape[-2]
        shape = (*x.shape[:-2], b * self.world_size, x.shape[-1])
        # dropout of ones = the mask scaled by 1/(1 − p), drawn like F.dropout of a global batch
        mask = F.dropout(torch.ones(shape, dtype=x.dtype, device=x.device), self.p, True)
        return x * mask.narrow(-2, self.rank * b, b)


def swap_dropout(module: nn.Module, make):
    """Replace every ``nn.Dropout`` below ``module`` by ``make(child)`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, make(child))
        else:
            swap_dropout(child, make)


class StepModule(nn.Module):
    """A training step as a module's forward, ``forward(*a) = step(net, *a)``, so that
    DistributedDataParallel (:func:`wrap_ddp`) sees the whole step, e.g. a teacher pass through
    which gradients flow as well as the student's."""

    def __init__(self, step, net: nn.Module):
        super().__init__()
        self.net = net
        self._step = step  # a plain attribute (a bound method of the estimator)

    def forward(self, *args, **kwargs):
        return self._step(self.net, *args, **kwargs)

