"""Worker for tests/test_distributed.py: CLUDI with tiny settings, alone or under torchrun.

Run alone (``python tests/_ddp_cludi.py OUT``) or under ``torchrun --nproc_per_node=2``. Under
torchrun the script does *not* call ``init_distributed()``: CLUDI joins the process group lazily
(``ensure_distributed``), so this also tests that an unchanged ``fit`` script runs data-parallel.

Fits (global batch 24 = 2 ranks × 12):

* ``shared``: the defaults' structure — the student's weights as teacher, gradients through
  its last DDIM step, dropout 0.15 (the masks are drawn for the global batch, so they match);
* ``ema``: an EMA teacher, detached target, learned embedding matrix E;
* ``long`` (under torchrun only): ``shared`` for 120 steps, to show that it trains.

For the first two, the gradients of the first step after DDP's averaging (recorded where the
trainer clips them) are saved for comparison with the single process. Every rank calls
``save_pretrained`` on ``shared``; writes are logged per rank to show only rank 0 wrote.
"""

import json
import os
import sys
from pathlib import Path

import torch

import diffclust.training.loop as loop_module
from diffclust import CLUDI
from diffclust.methods import base
from diffclust.training.distributed import all_gather_cat, barrier, cleanup_distributed, dist_info
from _ddp_common import blobs as _blobs
from _ddp_common import prepare, run_worker

CONFIG = {"embedding_dim": 8, "n_chains": 2, "teacher_steps": 3, "eval_steps": 3,
          "eval_chains": 2, "n_steps": 10, "batch_size": 24, "lr": 1e-2, "warmup_steps": 3,
          "precision": "fp32", "device": "cpu", "random_state": 0, "verbose": False}
VARIANTS = {"shared": {},
            "ema": {"teacher": "ema", "ema_decay": 0.9, "teacher_grad": "none", "learn_E": True},
            "long": {"n_steps": 120, "warmup_steps": 10}}


N_POINTS = 96


def blobs():
    return _blobs(N_POINTS)


def main(out: Path):
    X = prepare(out, N_POINTS)
    clip = loop_module.clip_per_parameter
    result = {}
    for name, kw in VARIANTS.items():
        if name == "long" and dist_info().world_size == 1 and os.environ.get("WORLD_SIZE") is None:
            continue  # only needed under torchrun (dist_info is world 1 before the first fit)
        grads = []

        def recording_clip(module, max_norm, grads=grads):  # synced grads of step 1
            if not grads:
                grads.append([p.grad.detach().flatten().tolist() for p in module.parameters()])
            return clip(module, max_norm)

        loop_module.clip_per_parameter = recording_clip
        est = CLUDI(3, **{**CONFIG, **kw}).fit(X)
        loop_module.clip_per_parameter = clip
        info = dist_info()  # the group CLUDI joined (world 1 when run alone)
        # every rank must hold exactly the same fitted model and predictions
        flat = torch.cat([v.detach().flatten().float() for v in est.net_.state_dict().values()])
        spread = float((all_gather_cat(flat[None]) - flat).abs().max())
        proba = torch.from_numpy(est.train_proba_)
        proba_spread = float((all_gather_cat(proba[None]) - proba).abs().max())
        result[name] = {"history": [[h["loss"], h["l_emb"], h["l_ce"]] for h in est.history_],
                        "proba": est.train_proba_.tolist(), "grads": grads[0],
                        "weights": flat.tolist(), "rank_spread": spread,
                        "proba_rank_spread": proba_spread}
        if name == "shared":
            write_bytes = base.atomic_write_bytes

            # one log line per process that writes weights
            def logged_write(path, data, rank=info.rank, write_bytes=write_bytes):
                with open(out / "writes.log", "a") as f:
                    f.write(f"rank {rank}\n")
                return write_bytes(path, data)

            base.atomic_write_bytes = logged_write
            est.save_pretrained(out / "model")
            base.atomic_write_bytes = write_bytes
            barrier()
    if info.is_main:
        (out / "result.json").write_text(json.dumps(
            {"world_size": info.world_size, "backend": info.backend, **result}))
    cleanup_distributed()
    print(f"rank {info.rank}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_worker(main)
