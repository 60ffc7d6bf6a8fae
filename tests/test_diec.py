"""DiEC smoke tests on a tiny U-Net (the method is experimental: quality is for benchmarks/)."""

import numpy as np
import pytest
from conftest import fit_script, kill_when, record_restores, saved_step

from diffclust import DiEC, load_pretrained

TINY = dict(pretrain_steps=10, pretrain_batch_size=16, unet_preset="tiny", n_timesteps=50,
            ots_subset=48, ots_repeats=1, ots_grid=4, ots_tol=4, ots_final=2, ots_n_init=1,
            n_noise_train=1, n_noise_infer=1, n_epochs=1, batch_size=16, kmeans_n_init=1,
            embed_batch_size=32, verbose=False)


@pytest.fixture(scope="module")
def images(shared_data):
    d = np.load(shared_data / "usps.npz")
    keep = np.flatnonzero(d["y"] < 3)[:48]
    return d["x"][keep], d["y"][keep]


def test_diec_fits_predicts_and_round_trips(images, tmp_path):
    X, _ = images
    m = DiEC(3, random_state=0, **TINY).fit(X)
    assert m.labels_.shape == (len(X),)
    assert 0 <= m.t_star_ < 50 and len(m.ots_scores_) >= 1
    p = m.predict_proba(X)
    assert p.shape == (len(X), 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.isfinite(m.transform(X)).all()
    m.save_pretrained(tmp_path / "m")
    m2 = load_pretrained(tmp_path / "m")
    np.testing.assert_allclose(m2.predict_proba(X), p, atol=1e-4)


def test_diec_partitions_spectral_and_kmeans(images):
    """The default scores timesteps by minus the normalised cut of the spectral partition and
    starts from that partition's means; ``partition="kmeans", ots_criterion="ch"`` is the
    paper's CH and k-means."""
    X, _ = images
    spec = DiEC(3, random_state=0, **dict(TINY, n_epochs=1)).fit(X)
    km = DiEC(3, random_state=0, partition="kmeans", ots_criterion="ch",
              **dict(TINY, n_epochs=1)).fit(X)
    assert all(-1 <= s <= 0 for s in spec.ots_scores_.values())  # −Ncut
    assert all(s > 0 for s in km.ots_scores_.values())  # Calinski–Harabasz
    assert 0 <= spec.init_ncut_ <= 1 and not hasattr(km, "init_ncut_")
    assert set(np.unique(spec.init_labels_)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="partition"):
        DiEC(3, partition="gmm", **TINY).fit(X)
    # the timestep score on its own: k-means' start at the graph rule's t
    mixed = DiEC(3, random_state=0, partition="kmeans", **dict(TINY, n_epochs=1)).fit(X)
    assert mixed.ots_scores_ == spec.ots_scores_ and mixed.t_star_ == spec.t_star_
    assert not hasattr(mixed, "init_ncut_")
    with pytest.raises(ValueError, match="ots_criterion"):
        DiEC(3, ots_criterion="silhouette", **TINY).fit(X)


def test_diec_rejects_feature_vectors():
    with pytest.raises(ValueError):
        DiEC(2, **TINY).fit(np.zeros((10, 5), dtype=np.float32))


# ----------------------------------------------------------------------------- building blocks
def test_bottleneck_matches_the_mid_block_and_leaves_no_hooks():
    import torch

    from diffclust.diffusion.unet import bottleneck_features, make_unet

    torch.manual_seed(0)
    unet = make_unet(16, 1, "tiny").eval()
    x_t = unet.pad(torch.randn(3, 1, 16, 16))
    t = torch.tensor([5, 100, 900])
    seen = {}
    h = unet.unet.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o))
    with torch.no_grad():
        unet(x_t, t)
    h.remove()
    with torch.no_grad():
        mid = bottleneck_features(unet, x_t, t)
        up = bottleneck_features(unet, x_t, t, block="up.0")
    C_mid = unet.unet.config.block_out_channels[-1]
    assert mid.shape == (3, C_mid, 8, 8) == seen["mid"].shape
    torch.testing.assert_close(mid, seen["mid"])
    assert up.ndim == 4 and up.shape[0] == 3
    for m in unet.modules():  # the up-block hook is gone after use
        assert not m._forward_hooks


def test_ots_golden_section_finds_the_peak_with_few_evaluations():
    from diffclust.selection.ots import full_scan, golden_section_argmax

    calls = []

    def score(t):  # unimodal with its peak at t = 337
        calls.append(t)
        return -abs(t - 337) ** 1.3 + 0.01 * t

    cands = np.arange(1, 1000)
    fast = golden_section_argmax(score, cands, tol=8, grid=8, n_final=5)
    n_fast = len(calls)
    full = full_scan(score, cands)
    assert fast.t_star == full.t_star == 337
    assert n_fast <= 30 < len(cands)  # O(log T) evaluations, not T
    assert fast.n_evals == n_fast and set(fast.scores) == set(calls[:n_fast])


def test_dec_target_rows_sum_to_one_and_sharpen():
    import torch

    from diffclust.losses import dec_soft_assignment, dec_target_distribution

    g = torch.Generator().manual_seed(0)
    q = dec_soft_assignment(torch.randn(200, 5, generator=g), torch.randn(4, 5, generator=g))
    p = dec_target_distribution(q)
    torch.testing.assert_close(p.sum(1), torch.ones(200))
    ent = lambda a: -(a * a.clamp_min(1e-12).log()).sum(1)  # noqa: E731
    assert ent(p).mean() < ent(q).mean() - 0.05  # sharper on average (f_k reweights rows)
    # with equal cluster frequencies f_k every row is sharpened: p_i ∝ q_i²
    qb = torch.cat([q, q.roll(1, 1), q.roll(2, 1), q.roll(3, 1)])  # all f_k equal
    pb = dec_target_distribution(qb)
    torch.testing.assert_close(pb, qb**2 / (qb**2).sum(1, keepdim=True))
    assert (ent(pb) <= ent(qb) + 1e-6).all()


def test_graph_loss_zero_for_identical_neighbours_positive_otherwise():
    import torch

    from diffclust.losses import graph_affinities, graph_loss

    Q = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), 1)
    same = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]])
    S, d = graph_affinities(Q, same, beta=0.1, gamma=0.01)
    torch.testing.assert_close(S.sum(1), torch.ones(6))
    assert float(graph_loss(Q, Q[same], S)) == 0.0
    other = torch.tensor([[1, 2], [2, 3], [3, 4], [4, 5], [5, 0], [0, 1]])
    S2, _ = graph_affinities(Q, other, beta=0.1, gamma=0.01)
    assert float(graph_loss(Q, Q[other], S2)) > 0


def test_pretrain_resume_equals_uninterrupted(tmp_path):
    import torch

    from diffclust.diffusion.pretrain import pretrain_ddpm

    X = (np.random.default_rng(0).random((40, 16, 16)) * 255).astype(np.uint8)
    kw = dict(preset="tiny", n_steps=6, batch_size=16, n_timesteps=50, checkpoint_every=2,
              n_samples=0, seed=3, verbose=False, precision="fp32")
    full = pretrain_ddpm(X, tmp_path / "full", **kw)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        pretrain_ddpm(X, tmp_path / "resumed", callback=crash, **kw)
    resumed = pretrain_ddpm(X, tmp_path / "resumed", **kw)
    assert resumed.steps == full.steps == 6
    for (k, a), b in zip(full.unet.state_dict().items(), resumed.unet.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    fresh = pretrain_ddpm(X, tmp_path / "other", **dict(kw, seed=4))
    diff = [float((a - b).abs().max()) for a, b in zip(full.unet.state_dict().values(),
                                                       fresh.unet.state_dict().values())]
    assert max(diff) > 0  # another seed gives other weights: the comparison can fail


def test_pretrain_v_prediction_round_trips(tmp_path):
    """``prediction="v"`` trains on v, is saved with the U-Net (an ε model's file stays as
    before: no key), converts to ε for sampling, and a checkpoint of one parametrisation does
    not resume into the other."""
    import json

    import torch

    from diffclust.diffusion.pretrain import pretrain_ddpm, sample_images
    from diffclust.diffusion.unet import DiffusionUNet

    X = (np.random.default_rng(0).random((32, 16, 16)) * 255).astype(np.uint8)
    kw = dict(preset="tiny", n_steps=4, batch_size=16, n_timesteps=50, checkpoint_every=2,
              n_samples=0, seed=0, verbose=False, precision="fp32")
    v = pretrain_ddpm(X, tmp_path / "v", prediction="v", **kw)
    eps = pretrain_ddpm(X, tmp_path / "eps", **kw)
    assert v.unet.prediction == "v" and eps.unet.prediction == "epsilon"
    assert json.loads((tmp_path / "v" / "diffclust_unet.json").read_text())["prediction"] == "v"
    assert "prediction" not in json.loads((tmp_path / "eps" / "diffclust_unet.json").read_text())
    assert v.history[0]["loss"] != eps.history[0]["loss"]  # same init and batch, other target
    back = DiffusionUNet.from_pretrained(tmp_path / "v")
    assert back.prediction == "v"
    x_t, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 20, 40])
    sched = back.noise_schedule()
    with torch.no_grad():
        out, e = back(x_t, t), back.eps(x_t, t)
    ab = sched.alpha_bar_at(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(e, ab.sqrt() * out + (1 - ab).sqrt() * x_t)
    imgs = sample_images(back, 2, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 1, 16, 16) and torch.isfinite(imgs).all()
    with pytest.raises(ValueError, match="prediction"):
        pretrain_ddpm(X, tmp_path / "v", **dict(kw, n_steps=6))


def test_diec_short_fit_beats_chance_on_usps(shared_data):
    """Three USPS digits, a tiny U-Net pretrained for a few hundred steps: DiEC's labels must be
    clearly better than chance (1/3)."""
    from diffclust import evaluate

    d = np.load(shared_data / "usps.npz")
    keep = np.concatenate([np.flatnonzero(d["y"] == c)[:60] for c in (0, 1, 7)])
    X, y = d["x"][keep], d["y"][keep]
    m = DiEC(3, random_state=0, **dict(TINY, pretrain_steps=150, n_epochs=2, ots_subset=180,
                                       n_noise_train=2, n_noise_infer=2)).fit(X)
    acc = evaluate(y, m.labels_)["acc"]
    assert acc > 0.6, acc


def test_killed_fit_resumes_to_the_same_labels(tmp_path, monkeypatch):
    """kill -9 a real fit during its fine-tuning epochs; a fit with the same data, settings and
    checkpoint folder continues (DDPM pretraining and fine-tuning are both checkpointed) and
    ends with the labels of an uninterrupted fit with the same arguments."""
    import torch

    rng = np.random.default_rng(0)
    centers = rng.uniform(-0.8, 0.8, (3, 1, 16, 16))
    X = np.clip(centers[np.arange(48) % 3] + 0.2 * rng.standard_normal((48, 1, 16, 16)), -1, 1)
    X = X.astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    kw = dict(TINY, pretrain_steps=20, n_epochs=5, tol=0.0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = DiEC(3, random_state=0, **kw).fit(X, checkpoint_dir=tmp_path / "ref")
        ck = tmp_path / "ck"
        state = ck / "state.json"
        kill_when(fit_script("DiEC", kw, tmp_path / "x.npy", ck), lambda: saved_step(state) >= 2)
        assert 2 <= saved_step(state) < 5  # killed mid fine-tuning
        assert (ck / "pretrain").is_dir()  # the pretraining's own checkpoints
        restored = record_restores(monkeypatch, DiEC)
        m = DiEC(3, random_state=0, **kw).fit(X, checkpoint_dir=ck)
        assert restored and restored[0] >= 2  # it continued, not started over
    finally:
        torch.set_num_threads(n)
    np.testing.assert_array_equal(m.labels_, ref.labels_)
    np.testing.assert_allclose(m.train_proba_, ref.train_proba_, atol=1e-6)
    assert m.t_star_ == ref.t_star_ and len(m.history_) == len(ref.history_)
