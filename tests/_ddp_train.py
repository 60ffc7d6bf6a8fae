"""Worker for tests/test_distributed.py: a tiny regression MLP trained with the DDP helpers.

Run alone (``python tests/_ddp_train.py OUT``) or under ``torchrun --nproc_per_node=2``; both
train on the same global batches and must end with the same weights. Only rank 0 writes.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffclust.training import EMA
from diffclust.training.distributed import (DistributedBatchSampler, all_gather_cat,
                                            cleanup_distributed, init_distributed, save_on_main,
                                            unwrap, wrap_ddp)
from _ddp_common import run_worker

STEPS, N, B = 30, 64, 16


def main(out: Path):
    torch.set_num_threads(1)
    info = init_distributed()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 5, generator=g)
    y = X @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(N, 1, generator=g)
    torch.manual_seed(123)  # same init everywhere (DDP also broadcasts rank 0's)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = wrap_ddp(net, info)
    ema = EMA(net, decay=0.9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler = DistributedBatchSampler(N, B, seed=1, info=info)
    g_step = torch.Generator().manual_seed(2)  # in-step noise: drawn for the global batch
    losses = []
    for _ in range(STEPS):
        idx = sampler.next_batch()
        noise = 0.05 * torch.randn(B, 5, generator=g_step)[sampler.local_slice()]
        loss = torch.nn.functional.mse_loss(model(X[idx] + noise), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(unwrap(model))
        losses.append(float(all_gather_cat(loss.detach()[None]).mean()))
    # the weights (and EMA) must be identical on every rank
    flat = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])
    flat_ema = torch.cat([p.flatten() for p in ema.module.parameters()])
    spread = float((all_gather_cat(flat[None]) - flat).abs().max())
    spread_ema = float((all_gather_cat(flat_ema[None]) - flat_ema).abs().max())

    def write():
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in unwrap(model).state_dict().items()},
                  out / "model.safetensors")
        with open(out / "writes.log", "a") as f:  # one line per writing process
            f.write(f"rank {info.rank}\n")
        (out / "result.json").write_text(json.dumps(
            {"world_size": info.world_size, "backend": info.backend, "losses": losses,
             "rank_spread": spread, "ema_rank_spread": spread_ema}))

    save_on_main(write)
    cleanup_distributed()


if __name__ == "__main__":
    run_worker(main)
