"""Worker for tests/test_distributed.py: ``pretrain_ddpm`` (tiny U-Net), alone or under torchrun.

Run alone (``python tests/_ddp_pretrain.py OUT``) or under ``torchrun --nproc_per_node=2``. As
for TEMI the script does not initialise the process group: the training loop joins it lazily.
It trains a class-conditional DDPM for 2 steps (with a checkpoint), then calls
``pretrain_ddpm`` again with ``n_steps=4``, which resumes from that checkpoint on every rank.
Every file write goes through ``atomic_write_bytes``/``atomic_write_text``; they are logged per
rank to show that only rank 0 wrote.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from diffclust.data import io
from diffclust.diffusion import pretrain, trainer
from diffclust.training.distributed import all_gather_cat, cleanup_distributed, dist_info
from _ddp_common import run_worker

CONFIG = {"preset": "tiny", "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "n_timesteps": 50,
          "p_uncond": 0.25, "checkpoint_every": 1, "n_samples": 4, "sample_steps": 3,
          "seed": 0, "device": "cpu", "precision": "fp32", "verbose": False}


def images(n=32, side=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 1, side, side)).astype(np.float32), np.arange(n) % 2


def log_writes(out: Path):
    """Route every atomic write (checkpoints, U-Net, samples.png, pretrain.json) via a log."""
    for name in ("atomic_write_bytes", "atomic_write_text"):
        write = getattr(io, name)

        def logged(path, data, _write=write):
            with open(out / "writes.log", "a") as f:
                f.write(f"rank {dist_info().rank} {Path(path).name}\n")
            return _write(path, data)

        for mod in (io, trainer, pretrain):
            setattr(mod, name, logged)


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.state_dict().values()])


def main(out: Path):
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    log_writes(out)
    X, y = images()
    first = pretrain.pretrain_ddpm(X, out / "model", labels=y, **dict(CONFIG, n_steps=2))
    res = pretrain.pretrain_ddpm(X, out / "model", labels=y, **dict(CONFIG, n_steps=4))
    info = dist_info()  # the group the training loop joined (world 1 when run alone)
    spreads = {}
    for key, m in (("online", res.online), ("ema", res.unet)):
        v = flat(m)
        spreads[key] = float((all_gather_cat(v[None]) - v).abs().max())
    if info.is_main:
        (out / "result.json").write_text(json.dumps(
            {"world_size": info.world_size, "backend": info.backend, "steps": res.steps,
             "first_steps": first.steps, "losses": [h["loss"] for h in res.history],
             "rank_spread": spreads["online"], "ema_rank_spread": spreads["ema"],
             "online": flat(res.online).tolist()}))
    cleanup_distributed()
    print(f"rank {info.rank}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_worker(main)
