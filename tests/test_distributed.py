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


# ----------------------------------------------------------------------------- TEMI under DDP
TEMI_WORKER = Path(__file__).with_name("_ddp_temi.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without "
                    "torch.distributed")
def test_temi_two_process_gloo_matches_single_process(tmp_path):
    """TEMI.fit under torchrun (2 gloo ranks × 16 points) = one process × 32 points."""
    import numpy as np
    from sklearn.metrics import normalized_mutual_info_score

    from diffclust import load_pretrained

    sys.path.insert(0, str(TEMI_WORKER.parent))
    try:
        from _ddp_temi import blobs
    finally:
        sys.path.remove(str(TEMI_WORKER.parent))

    _run([sys.executable, str(TEMI_WORKER), str(tmp_path / "single")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
          "--nproc_per_node=2", str(TEMI_WORKER), str(tmp_path / "ddp")], tmp_path)
    one = json.loads((tmp_path / "single" / "result.json").read_text())
    two = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    # save_pretrained was called on both ranks but wrote once, on rank 0
    assert (tmp_path / "ddp" / "writes.log").read_text() == "rank 0\n"
    assert (tmp_path / "single" / "writes.log").read_text() == "rank 0\n"
    # the ranks ended with the same selected teacher head, q̃ and predictions
    assert two["rank_spread"] == 0.0 and two["proba_rank_spread"] == 0.0
    # it trained: the loss went down and the blobs are found
    X, y = blobs()
    for res in (one, two):
        losses = res["losses"]
        assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
        assert normalized_mutual_info_score(y, np.argmax(res["proba"], 1)) > 0.9
    # ... exactly like one process with the same global batch (up to float rounding)
    assert two["selected_head"] == one["selected_head"]
    close = {"rtol": 1e-4, "atol": 1e-5}
    for key in ("losses", "head_losses", "q_tilde", "proba"):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), **close,
                                   msg=key)
    model = load_pretrained(tmp_path / "ddp" / "model")
    torch.testing.assert_close(torch.from_numpy(model.predict_proba(X)),
                               torch.tensor(one["proba"], dtype=torch.float64), **close)


def test_temi_loss_global_batch_mean_hook():
    """Two half batches whose q̃ update sees the mean of both halves' teacher means (what
    all_reduce_mean gives under DDP) reproduce the full-batch loss and q̃."""
    from diffclust.losses import temi_loss

    g = torch.Generator().manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(3, 8, 5, generator=g) for _ in range(4))
    q = torch.softmax(torch.randn(3, 5, generator=g), -1)
    full, q_full = temi_loss(s1, s2, t1, t2, q)
    same, q_same = temi_loss(s1, s2, t1, t2, q, batch_mean_fn=lambda t: t)
    assert torch.equal(same, full) and torch.equal(q_same, q_full)
    halves = [slice(0, 4), slice(4, 8)]
    means = [torch.cat([torch.softmax(t[:, h] / 0.1, -1) for t in (t1, t2)], 1).mean(1)
             for h in halves]
    parts = [temi_loss(s1[:, h], s2[:, h], t1[:, h], t2[:, h], q,
                       batch_mean_fn=lambda t: (means[0] + means[1]) / 2) for h in halves]
    torch.testing.assert_close((parts[0][0] + parts[1][0]) / 2, full)
    for _, q_part in parts:
        torch.testing.assert_close(q_part, q_full)
    # without the hook each half updates q̃ with its own mean: not the global result
    assert not torch.allclose(temi_loss(s1[:, :4], s2[:, :4], t1[:, :4], t2[:, :4], q)[1],
                              q_full, atol=1e-4)


def test_temi_batch_must_divide_world_size():
    import numpy as np

    from diffclust import TEMI

    X = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    est = TEMI(3, n_heads=1, hidden_dim=8, bottleneck_dim=4, n_steps=1, batch_size=32,
               device="cpu", verbose=False, random_state=0)
    est._setup_distributed = lambda: DistInfo(rank=0, world_size=3)  # as if 3 ranks
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        est.fit(X)
