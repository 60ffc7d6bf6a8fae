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


def _single_and_ddp(worker, tmp_path):
    """Run ``worker`` alone and under a 2-process torchrun; their ``result.json`` dicts."""
    _run([sys.executable, str(worker), str(tmp_path / "single")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
          "--nproc_per_node=2", str(worker), str(tmp_path / "ddp")], tmp_path)
    return tuple(json.loads((tmp_path / d / "result.json").read_text())
                 for d in ("single", "ddp"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without "
                    "torch.distributed")
def test_two_process_gloo_matches_single_process(tmp_path):
    one, two = _single_and_ddp(WORKER, tmp_path)
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
    from _ddp_temi import blobs  # tests/ is on sys.path (pytest's rootdir-less import)
    from sklearn.metrics import normalized_mutual_info_score

    from diffclust import load_pretrained

    one, two = _single_and_ddp(TEMI_WORKER, tmp_path)
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


@pytest.mark.parametrize("method", ["TEMI", "CLUDI"])
def test_global_batch_must_divide_world_size(monkeypatch, method):
    import numpy as np

    import diffclust
    from diffclust.training import distributed

    small = {"TEMI": dict(n_heads=1, hidden_dim=8, bottleneck_dim=4),
             "CLUDI": dict(embedding_dim=4, n_chains=1, teacher_steps=1)}[method]
    X = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    est = getattr(diffclust, method)(3, n_steps=1, batch_size=32, device="cpu", verbose=False,
                                     random_state=0, **small)
    monkeypatch.setattr(distributed, "ensure_distributed",
                        lambda device=None: DistInfo(rank=0, world_size=3))  # as if 3 ranks
    with pytest.raises(ValueError, match=f"{method} under torch.distributed .* not divisible by "
                                         f"the world size 3"):
        est.fit(X)


# ------------------------------------------------------- DDPM pretraining (train_denoiser) under DDP
PRETRAIN_WORKER = Path(__file__).with_name("_ddp_pretrain.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without "
                    "torch.distributed")
def test_pretrain_ddpm_two_process_gloo_matches_single_process(tmp_path):
    """pretrain_ddpm (tiny conditional U-Net, 32 images, global batch 8, 2 steps then resumed
    to 4) under torchrun (2 gloo ranks × 4 images) = one process × 8 images."""
    one, two = _single_and_ddp(PRETRAIN_WORKER, tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    assert two["first_steps"] == 2 and two["steps"] == one["steps"] == 4  # resumed at step 2
    # every file (checkpoints, U-Net, samples.png, pretrain.json) written once, by rank 0
    log = (tmp_path / "ddp" / "writes.log").read_text()
    assert log == (tmp_path / "single" / "writes.log").read_text()
    assert {line.split()[1] for line in log.splitlines()} == {"0"}
    assert {"pretrain.json", "samples.png", "diffclust_unet.json"} <= set(log.split())
    assert json.loads((tmp_path / "ddp" / "model" / "pretrain.json").read_text())[
        "steps_done"] == 4
    # the ranks ended with identical online and EMA weights
    assert two["rank_spread"] == 0.0 and two["ema_rank_spread"] == 0.0
    # same batches, label dropout and noise as one process: the losses agree to float rounding
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]),
                               rtol=1e-5, atol=1e-6)
    # weights: Adam's normalised step turns rounding in near-cancelling gradient entries into
    # O(lr) differences on a few entries; all else agrees (a rank drawing the wrong noise rows
    # changes ~all entries by ~1e-3: median diff 8e-4, 98 % of entries above 1e-5)
    a, b = load_file(tmp_path / "single" / "model" / "diffusion_pytorch_model.safetensors"), \
        load_file(tmp_path / "ddp" / "model" / "diffusion_pytorch_model.safetensors")
    pairs = [(torch.tensor(one["online"]), torch.tensor(two["online"]))]
    pairs.append((torch.cat([a[k].flatten() for k in a]), torch.cat([b[k].flatten() for k in a])))
    for x, z in pairs:
        d = (x - z).abs()
        assert d.median() < 1e-6 and (d > 1e-5).float().mean() < 0.05 and d.max() < 2e-3
        assert (x - z).norm() < 1e-3 * x.norm()


def test_train_denoiser_batch_must_divide_world_size(monkeypatch):
    from diffclust.diffusion import trainer
    from diffclust.diffusion.pretrain import pretrain_ddpm

    monkeypatch.setattr(trainer, "ensure_distributed", lambda device=None: DistInfo(0, 3))
    X = torch.rand(16, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by the world size 3"):
        pretrain_ddpm(X, None, preset="tiny", n_steps=1, batch_size=8, device="cpu",
                      verbose=False)


# ----------------------------------------------------------------------------- CLUDI under DDP
CLUDI_WORKER = Path(__file__).with_name("_ddp_cludi.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without "
                    "torch.distributed")
def test_cludi_two_process_gloo_matches_single_process(tmp_path):
    """CLUDI.fit under torchrun (2 gloo ranks × 12 points) = one process × 24 points: the same
    synced gradients (dropout 0.15 included), losses and predictions, up to float rounding."""
    import numpy as np
    from _ddp_cludi import blobs  # tests/ is on sys.path (pytest's rootdir-less import)
    from sklearn.metrics import normalized_mutual_info_score

    from diffclust import load_pretrained

    one, two = _single_and_ddp(CLUDI_WORKER, tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    # save_pretrained was called on both ranks but wrote once, on rank 0
    assert (tmp_path / "ddp" / "writes.log").read_text() == "rank 0\n"
    X, y = blobs()
    for name in ("shared", "ema"):
        a, b = one[name], two[name]
        # the ranks ended with the same weights and predictions
        assert b["rank_spread"] == 0.0 and b["proba_rank_spread"] == 0.0, name
        # first step: DDP's averaged gradient is the single-process global-batch gradient
        # (a missing all-gather, a wrong loss scale or rank-dependent noise/dropout masks
        # give differences of the order of the gradients themselves)
        scale = max(max(abs(v) for v in g) for g in a["grads"])
        assert len(a["grads"]) == len(b["grads"])
        for i, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
            torch.testing.assert_close(torch.tensor(gb), torch.tensor(ga), rtol=1e-4,
                                       atol=1e-4 * scale, msg=f"{name}: gradient {i}")
        # ten steps: same losses and predictions. The weights agree only loosely: AdamW turns
        # the rounding noise of (near-)zero gradients (e.g. the classifier bias, ~1e-7) into
        # updates of ~lr, which do not change the outputs.
        torch.testing.assert_close(torch.tensor(b["history"]), torch.tensor(a["history"]),
                                   rtol=1e-4, atol=1e-6, msg=f"{name}: losses")
        torch.testing.assert_close(torch.tensor(b["proba"]), torch.tensor(a["proba"]),
                                   rtol=1e-3, atol=1e-3, msg=f"{name}: predictions")
        wa, wb = torch.tensor(a["weights"]), torch.tensor(b["weights"])
        assert float((wb - wa).norm() / wa.norm()) < 2e-2, name
    model = load_pretrained(tmp_path / "ddp" / "model")
    torch.testing.assert_close(torch.from_numpy(model.predict_proba(X)),
                               torch.tensor(two["shared"]["proba"], dtype=torch.float64))
    # 120 steps under DDP: the ranks stay identical and it trains
    long = two["long"]
    assert long["rank_spread"] == 0.0 and long["proba_rank_spread"] == 0.0
    losses = np.array(long["history"])[:, 0]
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses
    assert normalized_mutual_info_score(y, np.argmax(long["proba"], 1)) > 0.5


def test_cludi_global_draws_and_dropout_split_like_one_process():
    """Two ranks' noise (shared generator) and dropout masks (default generator, same seed)
    are the halves of the single process's draws, bit for bit, on CPU."""
    from torch import nn

    from diffclust.training.distributed import DistInfo, GlobalBatchDropout, GlobalBatchRandom

    def rows(B, rank, world):  # CLUDI's (chains, batch, dim) tensors: the batch is dim 1
        return GlobalBatchRandom.for_rank(B, DistInfo(rank=rank, world_size=world), dim=1)

    alone = GlobalBatchRandom(dim=1)
    for draw in ("randn", "rand"):
        ref = getattr(alone, draw)((3, 10, 4), torch.Generator().manual_seed(5), "cpu")
        parts = [getattr(rows(10, r, 2), draw)((3, 5, 4), torch.Generator().manual_seed(5),
                                               "cpu") for r in range(2)]
        assert torch.equal(torch.cat(parts, dim=1), ref)
    with pytest.raises(ValueError, match="local batch size"):
        rows(10, 0, 2).randn((3, 10, 4), torch.Generator(), "cpu")
    x = torch.randn(3, 10, 6)
    torch.manual_seed(1)
    ref = nn.Dropout(0.3).train()(x)
    parts = []
    for r in range(2):
        torch.manual_seed(1)
        parts.append(GlobalBatchDropout(0.3, r, 2).train()(x[:, 5 * r:5 * r + 5]))
    assert torch.equal(torch.cat(parts, dim=1), ref)
    assert torch.equal(GlobalBatchDropout(0.3, 1, 2).eval()(x), x)


def test_self_classifier_gather_fn_gives_the_global_loss_and_gradient():
    """Each 'rank' gathers the other's logits (detached here, autograd-aware under DDP): every
    rank gets the full-batch loss, and the ranks' gradients on their own rows together are the
    full-batch gradient (what the all-gather's backward and DDP's averaging reproduce)."""
    from diffclust.losses import self_classifier_pair_matrix

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 12, 4, generator=g), torch.randn(3, 12, 4, generator=g)
    a.requires_grad_(True)
    A, Bm = self_classifier_pair_matrix(a, b)
    (A.sum() + Bm.sum()).backward()
    full_grad = a.grad.clone()
    halves, grads = (slice(0, 6), slice(6, 12)), []
    for r, rows in enumerate(halves):
        local_a = a.detach()[:, rows].clone().requires_grad_(True)

        def gather(t, r=r, local_a=local_a):  # this rank's rows (with grad) among the others
            full = (a if t is local_a else b).detach()
            return torch.cat([t if i == r else full[:, h] for i, h in enumerate(halves)], -2)

        Ar, Br = self_classifier_pair_matrix(local_a, b[:, rows], gather_fn=gather)
        torch.testing.assert_close(Ar, A.detach())
        torch.testing.assert_close(Br, Bm.detach())
        (Ar.sum() + Br.sum()).backward()
        grads.append(local_a.grad)
    torch.testing.assert_close(torch.cat(grads, dim=1), full_grad)
    # without the gather each half normalises over its own rows only: not the global loss
    assert not torch.allclose(self_classifier_pair_matrix(a[:, :6], b[:, :6])[0], A)
