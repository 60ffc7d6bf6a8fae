"""DDP helpers: a 2-process gloo job on CPU (torchrun) trains, writes once (rank 0), keeps the
ranks in sync, and matches a single process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffclust.training.distributed import DistInfo, DistributedBatchSampler, init_distributed

WORKER = Path(__file__).with_name("_ddp_train.py")


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFCLUST_NO_PROGRESS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without "
                    "torch.distributed")
def test_two_process_gloo_matches_single_process(tmp_path):
    _run([sys.executable, str(WORKER), str(tmp_path / "single")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
          "--nproc_per_node=2", str(WORKER), str(tmp_path / "ddp")], tmp_path)
    one = json.loads((tmp_path / "single" / "result.json").read_text())
    two = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    # written once, by rank 0
    assert (tmp_path / "ddp" / "writes.log").read_text() == "rank 0\n"
    # ranks stayed in sync (weights and EMA)
    assert two["rank_spread"] == 0.0 and two["ema_rank_spread"] == 0.0
    # it trained, and exactly like one process with the same global batch
    assert two["losses"][-1] < 0.5 * two["losses"][0]
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]),
                               rtol=1e-4, atol=1e-6)
    a, b = load_file(tmp_path / "single" / "model.safetensors"), \
        load_file(tmp_path / "ddp" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_batch_sampler_splits_the_global_batch():
    single = DistributedBatchSampler(20, 8, seed=3, info=DistInfo())
    ranks = [DistributedBatchSampler(20, 8, seed=3, info=DistInfo(rank=r, world_size=2))
             for r in range(2)]
    for _ in range(5):  # crosses epoch boundaries (20 // 8 = 2 batches per epoch)
        g = single.next_global_batch()
        parts = [s.next_batch() for s in ranks]
        assert all(len(p) == 4 for p in parts)
        assert torch.equal(torch.cat(parts), g)
    state = single.state_dict()
    nxt = single.next_global_batch()
    single.load_state_dict(state)
    assert torch.equal(single.next_global_batch(), nxt)
    with pytest.raises(ValueError, match="divisible"):
        DistributedBatchSampler(20, 7, info=DistInfo(rank=0, world_size=2))


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(device="cpu")
    assert info.world_size == 1 and info.is_main and not info.distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        init_distributed(device="cpu")
