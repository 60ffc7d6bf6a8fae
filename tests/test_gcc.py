"""GCC: losses against hand-computed values, augmentations, the backbone, and a short end-to-end
run on real USPS digits (crash in Stage II → resume without redoing Stage I)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fit_script, kill_when

from diffclust import GCC, load_pretrained
from diffclust.augment import (
    SimCLRAugment,
    color_jitter,
    gaussian_blur,
    random_grayscale,
    random_resized_crop,
)
from diffclust.losses import (
    category_matching_loss,
    classwise_mmd,
    nt_xent_loss,
    rbf_kernel,
    reliable_metric_loss,
)
from diffclust.models import ResNet18


# ------------------------------------------------------------------ NT-Xent
def test_nt_xent_symmetric_closed_form():
    # views identical, two orthogonal images, τ = 1: every anchor has the positive at cos 1 and
    # two negatives with cos 0 and (its own duplicate excluded) the positive → log(1 + 2/e)
    z = torch.eye(2)
    assert nt_xent_loss(z, z.clone(), 1.0).item() == pytest.approx(math.log(1 + 2 / math.e),
                                                                  abs=1e-6)


def test_nt_xent_matches_explicit_sum():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, -1.0]])
    tau, B = 0.5, 3
    zs = [list(map(float, v)) for v in torch.cat([z1, z2])]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)

    total = 0.0
    for i in range(2 * B):
        pos = (i + B) % (2 * B)
        den = sum(math.exp(cos(zs[i], zs[j]) / tau) for j in range(2 * B) if j != i)
        total += -math.log(math.exp(cos(zs[i], zs[pos]) / tau) / den)
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(total / (2 * B), abs=1e-5)
    with pytest.raises(ValueError):
        nt_xent_loss(z1, z2[:2])


# ------------------------------------------------------------------ augmentations
@pytest.mark.parametrize("shape", [(6, 1, 16, 16), (5, 3, 32, 32)])
def test_augment_shape_range_randomness(shape):
    x = torch.rand(shape) * 2 - 1
    aug = SimCLRAugment.for_images(shape[1], shape[2])
    g = torch.Generator().manual_seed(0)
    a, b = aug(x, g), aug(x, g)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    assert not torch.allclose(a, b)  # two calls give two different views
    assert not torch.allclose(a[0], a[1] if shape[0] > 1 else a[0] * 0)
    a2 = aug(x, torch.Generator().manual_seed(0))  # same generator state → same views
    assert torch.equal(a, a2)


def test_augment_parts():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 12, 12) * 2 - 1
    same = random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)
    const = torch.full((3, 1, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, g, p=1.0), const, atol=1e-5, rtol=0)
    blurred = gaussian_blur(x, g, sigma=(1.5, 1.5), p=1.0)
    assert blurred.std() < x.std()  # smoothing lowers the pixel variance
    gray = random_grayscale(x, g, p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert color_jitter(x, g, p=0.0).sub(x).abs().max() < 1e-5  # p = 0 → identity
    with pytest.raises(ValueError):
        random_resized_crop(torch.zeros(3, 8, 8), g)


def test_resnet_shapes():
    for side, c in ((16, 1), (28, 1), (32, 3)):
        net = ResNet18(c, 8, side)
        assert net(torch.zeros(2, c, side, side)).shape == (2, 64)
    with torch.device("meta"):  # width 64 is ResNet-18 (11.2 M parameters)
        big = ResNet18(3, 64, 32)
    assert sum(p.numel() for p in big.parameters()) == pytest.approx(11.17e6, rel=0.01)


# ------------------------------------------------------------------ Stage-II losses
def test_classwise_mmd_zero_for_identical_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 8, generator=g)
    y = torch.arange(40) % 4
    assert classwise_mmd(f, y, f.clone(), y.clone(), 4).abs().item() < 1e-5
    shifted = f + torch.randn(40, 8, generator=g) * 0.5 + 1.0
    assert classwise_mmd(f, y, shifted, y, 4).item() > 1e-2
    # same features, labels permuted across clusters → class-wise MMD sees mismatched sets
    assert classwise_mmd(f, y, f, (y + 1) % 4, 4).item() > 1e-2
    # a cluster present on one side only is skipped (the loss stays 0)
    assert classwise_mmd(f, y, f[y != 3], y[y != 3], 4).abs().item() < 1e-5
    # gradients reach the generated features
    fg = shifted.clone().requires_grad_(True)
    classwise_mmd(f, y, fg, y, 4).backward()
    assert fg.grad.abs().sum() > 0
    k = rbf_kernel(f[:3], f[:3])
    torch.testing.assert_close(torch.diagonal(k), torch.full((3,), 5.0))  # 5 bandwidths


def test_classwise_mmd_mean_reduce_and_median_bandwidth():
    g = torch.Generator().manual_seed(1)
    f, fg = torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g) + 0.7
    y = torch.arange(30) % 3
    yg = y.clone()
    yg[yg == 2] = 1  # cluster 2 only on the real side → 2 clusters present
    total = classwise_mmd(f, y, fg, yg, 3)
    mean = classwise_mmd(f, y, fg, yg, 3, reduce="mean")
    assert mean.item() == pytest.approx(total.item() / 2, rel=1e-5)
    with pytest.raises(ValueError):
        classwise_mmd(f, y, fg, yg, 3, reduce="max")
    # the median bandwidth of K(a, a) uses the distinct pairs of a (no duplicated copy of a)
    a = torch.randn(7, 4, generator=g)
    m = torch.pdist(a).median()
    torch.testing.assert_close(rbf_kernel(a, a, (1.0,)), torch.exp(-torch.cdist(a, a) ** 2 /
                                                                    (2 * m ** 2)))


def test_classwise_mmd_alone_erases_clusters_and_anchor_keeps_them():
    """The failure documented in GCC: when the generated samples carry no class information
    (a poor generator), minimising L_d through F alone pulls each real cluster onto the same
    class-less distribution, so the real clusters merge; the cross-entropy anchor on the real
    pseudo-labels keeps them apart."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    xr = torch.randn(120, 10, generator=g) + 3 * torch.eye(10)[y]
    xg = torch.randn(120, 10, generator=g)  # "generated" images without class information
    W0 = torch.eye(10) + 0.1 * torch.randn(10, 10, generator=g)

    def run(anchor):
        W = W0.clone().requires_grad_(True)
        head = torch.nn.Linear(10, 3)
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
        opt = torch.optim.Adam([W, *head.parameters()], lr=1e-2)
        for _ in range(100):
            fr, fg = torch.relu(xr @ W), torch.relu(xg @ W)
            loss = classwise_mmd(fr, y, fg, y, 3)
            if anchor:
                loss = loss + F.cross_entropy(head(fr), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            z = F.normalize(torch.relu(xr @ W), dim=1)
            return torch.pdist(torch.stack([z[y == k].mean(0) for k in range(3)])).mean().item()

    with torch.no_grad():
        z = F.normalize(torch.relu(xr @ W0), dim=1)
        before = torch.pdist(torch.stack([z[y == k].mean(0) for k in range(3)])).mean().item()
    free, anchored = run(anchor=False), run(anchor=True)
    assert free < 0.35 * before
    assert anchored > 2 * free


def test_category_matching_sign_conventions():
    e = torch.eye(3)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = e[y]  # same label identical, different labels orthogonal
    assert category_matching_loss(clustered, y).item() == pytest.approx(-1.0, abs=1e-6)
    # same-label pairs orthogonal, cross-label pairs identical → positive
    bad_f = torch.stack([e[0], e[1], e[0], e[1], e[0], e[1]])
    bad_y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert category_matching_loss(bad_f, bad_y).item() > 0
    # minimising it pulls same-label features together
    f = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    opt = torch.optim.SGD([f], lr=0.5)
    first = category_matching_loss(f, y).item()
    for _ in range(50):
        opt.zero_grad()
        category_matching_loss(f, y).backward()
        opt.step()
    assert category_matching_loss(f, y).item() < first - 0.3


def test_reliable_metric_loss():
    dominant = torch.tensor([[5.0, 1.0, 0.0], [0.0, 4.0, -1.0]])
    assert reliable_metric_loss(dominant, torch.tensor([0, 1])).item() == 0.0
    assert reliable_metric_loss(dominant, torch.tensor([0, 1]), on="logits").item() == 0.0
    s = torch.tensor([[1.0, 3.0, 2.0]])
    assert reliable_metric_loss(s, torch.tensor([0]), on="logits").item() == pytest.approx(5.0)
    p = torch.softmax(s, 1)[0]
    want = (p[1] - p[0]) ** 2 + (p[2] - p[0]) ** 2
    assert reliable_metric_loss(s, torch.tensor([0])).item() == pytest.approx(want.item())
    with pytest.raises(ValueError):
        reliable_metric_loss(s, torch.tensor([0]), on="probs")


# ------------------------------------------------------------------ end to end
TINY = dict(backbone_width=8, clr_epochs=1, clr_batch_size=64, head_epochs=20, head_lr=1e-3,
            unet_preset="tiny", n_timesteps=50, ddpm_epochs=1, ddpm_batch_size=64, n_rounds=1,
            calib_epochs=1, gen_epochs=1, batch_size=64, n_generate=32, sample_steps=3,
            kmeans_n_init=1, min_pool_fidelity=0.0, embed_batch_size=64, verbose=False)


@pytest.fixture(scope="module")
def digits(shared_data):
    d = np.load(shared_data / "usps.npz")
    keep = np.flatnonzero(d["y"] < 3)[:64]
    return d["x"][keep], d["y"][keep]


class _Crash(RuntimeError):
    pass


def test_gcc_end_to_end_resume_and_round_trip(digits, tmp_path, monkeypatch):
    X, _ = digits
    ref = GCC(3, random_state=0, **TINY).fit(X)
    assert ref.labels_.shape == (len(X),)
    p = ref.predict_proba(X)
    assert p.shape == (len(X), 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(ref.predict(X), ref.labels_)
    assert ref.transform(X).shape == (len(X), 64)
    assert len(ref.history_) == 1 and ref.history_[0]["calib_steps"] > 0
    assert {"l_d", "l_cwm", "l_ml"} <= set(ref.history_[0])
    head1, km1 = ref.predict_stage1(X)
    np.testing.assert_array_equal(head1, ref.stage1_labels_)
    np.testing.assert_array_equal(km1, ref.kmeans_labels_)
    assert ref.generate(2).shape == (6, 1, 16, 16)

    # a crash in Stage II: the refit resumes after Stage I and ends where an uninterrupted run does
    ckdir = tmp_path / "ck"

    def boom(self, X, ck):
        raise _Crash

    with monkeypatch.context() as mp:
        mp.setattr(GCC, "_stage_calibrate", boom)
        with pytest.raises(_Crash):
            GCC(3, random_state=0, **TINY).fit(X, checkpoint_dir=ckdir)
    assert (ckdir / "stage1_contrastive.json").exists() and (ckdir / "stage1_head.json").exists()
    calls = []
    orig = GCC._stage_head

    def spy(self, X, ck):
        calls.append(ck.load("stage1_head") is not None)
        return orig(self, X, ck)

    monkeypatch.setattr(GCC, "_stage_head", spy)
    m = GCC(3, random_state=0, **TINY).fit(X, checkpoint_dir=ckdir)
    assert m.resumed_from_ == "contrastive epoch 1" and calls == [True]
    np.testing.assert_array_equal(m.stage1_labels_, ref.stage1_labels_)
    np.testing.assert_allclose(m.predict_proba(X), p, atol=1e-4)
    # checkpoints of other Stage-I settings are refused
    with pytest.raises(ValueError, match="other data or settings"):
        GCC(3, random_state=0, **dict(TINY, clr_lr=2e-3)).fit(X, checkpoint_dir=ckdir)

    for fitted in (ref, m):
        fitted.save_pretrained(tmp_path / "m")
        m2 = load_pretrained(tmp_path / "m")
        assert isinstance(m2, GCC)
        np.testing.assert_allclose(m2.predict_proba(X), p, atol=1e-4)
        np.testing.assert_array_equal(m2.labels_, ref.labels_)
    # models saved when checkpoint_dir was a parameter still load
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["params"]["checkpoint_dir"] = str(ckdir)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(load_pretrained(tmp_path / "m").labels_, ref.labels_)


def test_killed_fit_resumes_to_the_same_labels(digits, tmp_path):
    """kill -9 a real GCC fit once Stage I's head is saved; a fit with the same data, settings
    and checkpoint folder skips the finished stages and ends with the uninterrupted labels."""
    X, _ = digits
    np.save(tmp_path / "x.npy", X)
    kw = dict(TINY, n_rounds=3)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = GCC(3, random_state=0, **kw).fit(X)
        ck = tmp_path / "ck"
        kill_when(fit_script("GCC", kw, tmp_path / "x.npy", ck),
                  lambda: (ck / "stage1_head.json").exists())
        assert (ck / "stage1_head.json").exists() and not (ck / "stage2.json").exists()
        m = GCC(3, random_state=0, **kw).fit(X, checkpoint_dir=ck)
        assert m.resumed_from_ is not None  # it continued, not started over
        np.testing.assert_array_equal(m.labels_, ref.labels_)
    finally:
        torch.set_num_threads(n)


def test_gcc_anchor_and_label_update_modes(digits):
    X, _ = digits
    base = dict(TINY, calib_epochs=2, gen_epochs=0)
    off = dict(use_mmd=False, use_cwm=False, use_ml=False)
    # the anchor alone is self-training on the frozen round labels: they barely move
    m = GCC(3, random_state=0, **dict(base, **off, anchor_threshold=0.0, calib_lr=1e-3)).fit(X)
    h = m.history_[0]
    assert h["calib_steps"] == 2 and h["l_anchor"] > 0 and h["anchor_fraction"] == 1.0
    assert (m.labels_ == m.stage1_labels_).mean() >= 0.9
    # nothing to optimise: no calibration step
    m0 = GCC(3, random_state=0, **dict(base, **off, anchor_weight=0.0)).fit(X)
    assert m0.history_[0]["calib_steps"] == 0
    # a threshold above every confidence anchors nothing
    m1 = GCC(3, random_state=0, **dict(base, **off, anchor_threshold=0.999999)).fit(X)
    assert m1.history_[0]["anchor_fraction"] < 1.0
    # the paper's exact Stage II runs (labels of the moving network in every batch, summed L_d)
    mp = GCC(3, random_state=0, **dict(base, anchor_weight=0.0, mmd_reduce="sum",
                                       label_update="batch")).fit(X)
    assert mp.history_[0]["l_anchor"] == 0.0 and mp.history_[0]["l_d"] > 0
    for bad in (dict(label_update="x"), dict(mmd_reduce="x"), dict(anchor_threshold=1.0),
                dict(anchor_weight=-1.0)):
        with pytest.raises(ValueError):
            GCC(3, **dict(base, **bad)).fit(X)


def test_gcc_rejects_bad_input():
    with pytest.raises(ValueError):
        GCC(2, **TINY).fit(np.zeros((10, 5), dtype=np.float32))  # feature vectors
    with pytest.raises(ValueError, match="square"):
        GCC(2, **TINY).fit(np.zeros((10, 8, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="ml_on"):
        GCC(2, **dict(TINY, ml_on="x")).fit(np.zeros((10, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError):
        GCC(5, **TINY).fit(np.zeros((6, 8, 8), dtype=np.uint8))


def test_gcc_pseudo_labels_follow_partition(digits, tmp_path):
    """Stage I's head is trained on the partition named by ``partition`` (k-means, the paper's,
    is fitted in every case); a new partition redoes the head on the saved SimCLR stage."""
    from diffclust.graph import multiscale_partition

    X, _ = digits
    kw = dict(TINY, n_rounds=0, head_epochs=300)
    km = GCC(3, random_state=0, **dict(kw, partition="kmeans")).fit(X, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(km.init_labels_, km.kmeans_labels_)
    f = km._features(km.stage1_backbone_, km._validate_input(X, fitting=False))
    want = multiscale_partition(torch.nn.functional.normalize(f, dim=1).numpy(), 3,
                                random_state=0)
    (tmp_path / "stage1_head.json").unlink()  # keep the SimCLR stage, redo the head
    ms = GCC(3, random_state=0, **kw).fit(X, checkpoint_dir=tmp_path)
    assert ms.partition == "multiscale" and ms.resumed_from_ == "contrastive epoch 1"
    np.testing.assert_array_equal(ms.init_labels_, want)
    np.testing.assert_array_equal(ms.kmeans_labels_, km.kmeans_labels_)
    # the head learnt its pseudo-labels
    assert (ms.stage1_labels_ == ms.init_labels_).mean() > 0.9


def test_gcc_generator_starts_from_a_given_unet(digits):
    """``unet=``: G is that U-Net with a cluster-id embedding, trained on from its weights."""
    from diffclust.diffusion.unet import make_unet

    X, _ = digits
    base = make_unet(16, 1, "tiny", seed=0)
    m = GCC(3, random_state=0, unet=base, **dict(TINY, n_rounds=0, ddpm_epochs=1)).fit(X)
    G = m.generator_unet_
    assert m.unet_source_ == "DiffusionUNet object" and G.n_classes == 3
    assert G.unet.config.block_out_channels == base.unet.config.block_out_channels
    ref = dict(base.unet.named_parameters())
    moved = [float((a - ref[n]).abs().max()) for n, a in G.unet.named_parameters()
             if n != "class_embedding.weight"]
    assert 0 < max(moved) < 0.1  # trained on from base's weights, not from a fresh U-Net
    assert G.unet.class_embedding.weight.abs().max() > 0  # and it learnt the clusters' ids
    assert GCC(3, unet=base).get_params()["unet"] is base

    def never(self, X, ck):
        raise AssertionError("a bad unet must fail before SimCLR")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GCC, "_stage_contrastive", never)
        with pytest.raises(ValueError, match="channels"):
            GCC(3, random_state=0, unet=make_unet(16, 3, "tiny"), **TINY).fit(X)
        with pytest.raises(ValueError, match="no pretrained U-Net named"):
            GCC(3, random_state=0, unet="no-such-model", **TINY).fit(X)


def test_gcc_calibrates_only_on_a_faithful_pool(digits):
    """A round whose generated pool falls in its own clusters less often than
    ``min_pool_fidelity`` leaves F and C as they are (only G trains on), and the fit warns."""
    X, _ = digits
    kw = dict(TINY, n_rounds=2, head_epochs=300)
    on = GCC(3, random_state=0, **kw).fit(X)  # min_pool_fidelity=0: every round calibrates
    assert all(h["calibrated"] and h["calib_steps"] > 0 for h in on.history_)
    assert all(0 <= h["pool_fidelity"] <= 1 for h in on.history_)
    with pytest.warns(RuntimeWarning, match="left as they were in round"):
        off = GCC(3, random_state=0, **dict(kw, min_pool_fidelity=1.0)).fit(X)
    fid = [h["pool_fidelity"] for h in off.history_]
    assert fid[0] == pytest.approx(on.history_[0]["pool_fidelity"])  # same Stage I, same pool
    assert max(fid) < 1 and not any(h["calibrated"] for h in off.history_)
    assert all(h["calib_steps"] == 0 for h in off.history_)
    np.testing.assert_array_equal(off.labels_, off.stage1_labels_)  # F and C untouched
    head1, _ = off.predict_stage1(X)
    np.testing.assert_allclose(off.predict_proba(X).argmax(1), head1)
