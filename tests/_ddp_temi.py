"""Worker for tests/test_distributed.py: TEMI with tiny settings, alone or under torchrun.

Run alone (``python tests/_ddp_temi.py OUT``) or under ``torchrun --nproc_per_node=2``. Under
torchrun the script does *not* call ``init_distributed()``: TEMI joins the process group lazily
(``ensure_distributed``), so this also tests that an unchanged ``fit`` script runs data-parallel.
Every rank calls ``save_pretrained``; writes are logged per rank to show only rank 0 wrote.
"""

import json
import sys
from pathlib import Path

import torch

from diffclust import TEMI
from diffclust.methods import base
from diffclust.training.distributed import all_gather_cat, barrier, cleanup_distributed, dist_info
from _ddp_common import blobs as _blobs
from _ddp_common import prepare, run_worker

# a fast teacher (momentum 0.9) and a high lr so that 40 steps cluster the blobs (NMI 1) and
# the two heads end far apart (the selected head is not a near tie)
CONFIG = {"n_heads": 2, "hidden_dim": 32, "bottleneck_dim": 16, "n_steps": 40, "batch_size": 32,
          "lr": 3e-2, "teacher_momentum": 0.9, "precision": "fp32", "device": "cpu",
          "random_state": 0, "verbose": False}


N_POINTS = 120


def blobs():
    return _blobs(N_POINTS)


def main(out: Path):
    X = prepare(out, N_POINTS)
    est = TEMI(3, **CONFIG).fit(X)
    info = dist_info()  # the group TEMI joined (world 1 when run alone)

    # every rank must hold exactly the same fitted model
    flat = torch.cat([p.detach().flatten() for p in est.head_.parameters()]
                     + [est.q_tilde_.flatten()])
    spread = float((all_gather_cat(flat[None]) - flat).abs().max())
    proba = est.predict_proba(X)
    proba_spread = float((all_gather_cat(torch.from_numpy(proba)[None]) -
                          torch.from_numpy(proba)).abs().max())

    write_bytes = base.atomic_write_bytes

    def logged_write(path, data):  # one log line per process that writes weights
        with open(out / "writes.log", "a") as f:
            f.write(f"rank {info.rank}\n")
        return write_bytes(path, data)

    base.atomic_write_bytes = logged_write
    est.save_pretrained(out / "model")
    barrier()
    if info.is_main:
        (out / "result.json").write_text(json.dumps(
            {"world_size": info.world_size, "backend": info.backend,
             "losses": [h["loss"] for h in est.history_], "selected_head": est.selected_head_,
             "head_losses": [float(v) for v in est.head_losses_],
             "q_tilde": est.q_tilde_.tolist(), "proba": proba.tolist(),
             "rank_spread": spread, "proba_rank_spread": proba_spread}))
    cleanup_distributed()
    print(f"rank {info.rank}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_worker(main)
