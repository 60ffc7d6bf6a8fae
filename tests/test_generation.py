"""Cluster-conditioned generation (C-EDM): EDM preconditioning and loss, the guided Heun sampler,
training/loading/sampling a generator, the Fréchet distance and sample confidence."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffclust.cli import app
from diffclust.diffusion.unet import make_unet
from diffclust.generation import (
    ClusterGenerator,
    EDMDenoiser,
    confidence_extremes,
    edm_loss,
    edm_precond,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_images,
    gaussian_stats,
    guided_denoiser,
    heun_sample,
    load_cluster_files,
    load_generator,
    sample,
    sample_confidence,
    sample_training_sigmas,
    train_feature_extractor,
    train_generator,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_cond():
    unet = make_unet(8, 1, "tiny", n_classes=3, seed=0).eval()
    with torch.no_grad():  # make the class embedding matter (fresh init is small but nonzero)
        unet.unet.class_embedding.weight.mul_(5.0)
    return unet


# ---------------------------------------------------------------------- EDM preconditioning
def test_precond_coefficients_match_formulas():
    sd = 0.5
    sig = [0.002, 0.1, 0.5, 1.0, 3.7, 80.0]
    co = edm_precond(torch.tensor(sig), sd)
    for i, s in enumerate(sig):
        assert co["c_skip"][i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-5)
        assert co["c_out"][i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert co["c_in"][i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert co["c_noise"][i].item() == pytest.approx(math.log(s) / 4, rel=1e-5, abs=1e-7)
        lam = (s**2 + sd**2) / (s * sd) ** 2
        assert co["weight"][i].item() == pytest.approx(lam, rel=1e-5)
        assert co["weight"][i].item() == pytest.approx(1 / co["c_out"][i].item() ** 2, rel=1e-4)
    # another σ_d changes them
    assert edm_precond(torch.tensor([1.0]), 1.0)["c_skip"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="> 0"):
        edm_precond(torch.tensor([0.0, 1.0]))


def test_denoiser_wires_preconditioning(tiny_cond):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    c = torch.tensor([0, 1, 2, 1])
    den = EDMDenoiser(tiny_cond, 0.5)
    co = edm_precond(sigma, 0.5)
    with torch.no_grad():
        F = tiny_cond(co["c_in"].view(-1, 1, 1, 1) * x, co["c_noise"], class_labels=c)
        want = co["c_skip"].view(-1, 1, 1, 1) * x + co["c_out"].view(-1, 1, 1, 1) * F
        got = den(x, sigma, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # tiny σ: D ≈ x (c_skip → 1, c_out → 0)
    with torch.no_grad():
        d0 = den(x, torch.full((4,), 1e-4), c)
    assert (d0 - x).abs().max() < 1e-3


def test_training_sigmas_lognormal():
    s = sample_training_sigmas(200_000, -1.2, 1.2, torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.02)


def test_edm_loss_is_weighted_mse(tiny_cond):
    den = EDMDenoiser(tiny_cond, 0.5)
    x0 = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    c = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        got = edm_loss(den, x0, c, torch.Generator().manual_seed(7), reduction="none")
        g = torch.Generator().manual_seed(7)
        sigma = (torch.randn(5, generator=g) * 1.2 - 1.2).exp()
        n = torch.randn(x0.shape, generator=g) * sigma.view(-1, 1, 1, 1)
        D = den(x0 + n, sigma, c)
        lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        want = lam * ((D - x0) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert edm_loss(den, x0, c, torch.Generator().manual_seed(7)).item() == pytest.approx(
        want.mean().item(), rel=1e-5)


# ---------------------------------------------------------------------- guidance and sampler
def test_guidance_zero_is_conditional_model(tiny_cond):
    den = EDMDenoiser(tiny_cond, 0.5)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    s = torch.full((3,), 0.7)
    c = torch.tensor([0, 2, 1])
    with torch.no_grad():
        D_c, D_u = den(x, s, c), den(x, s)  # class_labels=None → the null id
        assert (D_c - D_u).abs().max() > 1e-4  # the condition matters (else the test is void)
        torch.testing.assert_close(guided_denoiser(den, c, 0.0)(x, s), D_c)
        torch.testing.assert_close(guided_denoiser(den, c, 1.5)(x, s), D_c + 1.5 * (D_c - D_u),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(guided_denoiser(den, c, -1.0)(x, s), D_u, rtol=1e-4,
                                   atol=1e-5)
    gen = ClusterGenerator(tiny_cond, [0.2, 0.3, 0.5])
    a = sample(gen, 3, clusters=c, guidance=0.0, seed=5, n_steps=4, precision="fp32")
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(5 + i))
                         for i in range(3)])
    b = heun_sample(den, noise, c, 0.0, n_steps=4).clamp(-1, 1)
    torch.testing.assert_close(a, b)
    g2 = sample(gen, 3, clusters=c, guidance=2.0, seed=5, n_steps=4, precision="fp32")
    assert (g2 - a).abs().max() > 1e-4
    with pytest.raises(ValueError, match="cluster ids must lie"):
        sample(gen, 2, clusters=[0, 3], n_steps=2)


def test_sampler_deterministic_per_sample_seed(tiny_cond):
    gen = ClusterGenerator(tiny_cond, [0.1, 0.6, 0.3])
    kw = dict(n_steps=5, precision="fp32", return_clusters=True)
    a, ca = sample(gen, 6, seed=11, **kw)
    b, cb = sample(gen, 6, seed=11, **kw)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    c, _ = sample(gen, 6, seed=12, **kw)
    assert (a - c).abs().max() > 1e-3
    # sample i depends only on its seed, not on the batch it is drawn in
    d, cd = sample(gen, 2, seeds=[14, 11], **kw)
    torch.testing.assert_close(d[1], a[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d[0], a[3], rtol=1e-4, atol=1e-5)
    assert cd.tolist() == [ca[3].item(), ca[0].item()]
    e, _ = sample(gen, 6, seed=11, batch_size=4, **kw)
    torch.testing.assert_close(e, a, rtol=1e-4, atol=1e-5)
    # cluster ids follow q(c)
    _, many = sample(gen, 600, seed=0, n_steps=1, precision="fp32", return_clusters=True)
    freq = np.bincount(many.numpy(), minlength=3) / 600
    assert np.abs(freq - [0.1, 0.6, 0.3]).max() < 0.06
    _, uni = sample(gen, 600, clusters="uniform", seed=0, n_steps=1, precision="fp32",
                    return_clusters=True)
    assert np.abs(np.bincount(uni.numpy(), minlength=3) / 600 - 1 / 3).max() < 0.06


def test_unconditional_generator_rejects_ids():
    unet = make_unet(8, 1, "tiny", seed=0).eval()
    gen = ClusterGenerator(unet)
    x, ids = sample(gen, 2, n_steps=2, return_clusters=True)
    assert x.shape == (2, 1, 8, 8) and ids.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="unconditional"):
        sample(gen, 2, clusters=1)
    with pytest.raises(ValueError, match="guidance"):
        sample(gen, 2, guidance=1.0)


# ---------------------------------------------------------------------- training end to end
def _two_cluster_images(n=64):
    X = np.zeros((n, 8, 8), np.float32)  # cluster 0: black (−1); cluster 1: white (+1)
    ids = np.arange(n) % 2
    X[ids == 1] = 1.0
    return X * 2 - 1, ids


def test_train_conditional_generator_learns_clusters(tmp_path):
    X, ids = _two_cluster_images()
    res = train_generator(X, ids, out_dir=tmp_path / "run", preset="tiny", n_steps=150,
                          batch_size=32, lr=3e-3, warmup_steps=10, ema_decay=0.9,
                          p_uncond=0.1, n_samples=4, sample_steps=8, verbose=False, seed=0)
    assert res.steps == 150
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    run = tmp_path / "run"
    cfg = json.loads((run / "generator.json").read_text())
    assert cfg["n_classes"] == 2 and cfg["freq"] == [0.5, 0.5]
    assert cfg["edm"]["sigma_data"] == 0.5 and cfg["edm"]["P_mean"] == -1.2
    assert (run / "samples.png").exists() and (run / "unet" / "config.json").exists()
    gen = load_generator(run)
    x0 = sample(gen, 8, clusters=0, seed=0)
    x1 = sample(gen, 8, clusters=1, seed=0)
    assert x0.mean() < -0.5 and x1.mean() > 0.5  # conditioning decides the colour
    # the saved model samples like the in-memory one
    torch.testing.assert_close(sample(res.generator, 8, clusters=0, seed=0), x0)
    # CLI: a PNG grid
    r = CliRunner().invoke(app, ["generate", str(run), "--n", "6", "--cluster", "1", "--steps",
                                 "3", "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(app, ["generate", str(run), "--cluster", "5"])
    assert r.exit_code != 0 and "cluster ids must lie" in r.output
    r = CliRunner().invoke(app, ["generate", str(tmp_path)])
    assert r.exit_code != 0 and "not a generator run directory" in r.output


def test_resume_matches_uninterrupted(tmp_path):
    X, ids = _two_cluster_images(32)
    kw = dict(preset="tiny", batch_size=8, n_samples=0, verbose=False, checkpoint_every=3,
              seed=1)
    full = train_generator(X, ids, out_dir=tmp_path / "a", n_steps=6, **kw)
    train_generator(X, ids, out_dir=tmp_path / "b", n_steps=3, **kw)
    resumed = train_generator(X, ids, out_dir=tmp_path / "b", n_steps=6, **kw)
    for p, q in zip(full.generator.unet.parameters(), resumed.generator.unet.parameters()):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="p_uncond"):
        train_generator(X, ids, out_dir=tmp_path / "b", n_steps=9, p_uncond=0.3, **kw)


def test_training_input_errors(tmp_path):
    X, ids = _two_cluster_images(16)
    with pytest.raises(ValueError, match="16 images"):
        train_generator(X, ids[:10], n_steps=1, preset="tiny", verbose=False)

    class Unfitted:
        pass

    with pytest.raises(ValueError, match="not fitted"):
        train_generator(X, clusterer=Unfitted(), n_steps=1, preset="tiny", verbose=False)
    with pytest.raises(ValueError, match="p_uncond"):
        train_generator(X, ids, p_uncond=1.0, n_steps=1, preset="tiny", verbose=False)

    class Fitted:
        labels_ = ids
        cluster_frequencies_ = np.array([0.25, 0.75])

    r = train_generator(X, clusterer=Fitted(), n_steps=1, preset="tiny", verbose=False,
                        n_samples=0)
    assert np.allclose(r.generator.freq, [0.25, 0.75])
    r = train_generator(X, n_steps=1, preset="tiny", verbose=False)  # unconditional
    assert not r.generator.conditional and r.generator.unet.unet.class_embedding is None


def test_load_cluster_files(tmp_path):
    ids = np.array([0, 2, 2, 1, 2])
    np.save(tmp_path / "ids.npy", ids)
    np.savetxt(tmp_path / "freq.txt", [10, 30, 60])
    got, q = load_cluster_files(tmp_path / "ids.npy", tmp_path / "freq.txt")
    assert got.tolist() == ids.tolist() and np.allclose(q, [0.1, 0.3, 0.6])
    got, q = load_cluster_files(ids)
    assert np.allclose(q, [0.2, 0.2, 0.6])
    torch.save(torch.tensor(ids), tmp_path / "ids.pt")
    assert load_cluster_files(tmp_path / "ids.pt")[0].tolist() == ids.tolist()
    with pytest.raises(ValueError, match="no entry in freq"):
        load_cluster_files(ids, [1.0, 1.0])
    with pytest.raises(ValueError, match="≥ 0"):
        load_cluster_files(np.array([0, -1]))
    with pytest.raises(FileNotFoundError):
        load_cluster_files(tmp_path / "missing.npy")


# ---------------------------------------------------------------------- Fréchet distance
def test_frechet_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(
        size=(16, 16))
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_features(f, f + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_frechet_closed_form_gaussians():
    # diagonal (commuting) covariances: FD = ‖Δμ‖² + Σ_i (sqrt(a_i) − sqrt(b_i))²
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    want = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # non-commuting: against tr((Σ1Σ2)^{1/2}) from scipy's general matrix square root
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    S1, S2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    ref = float(((m1 - m2) ** 2).sum() + np.trace(S1 + S2 - 2 * sqrtm(S1 @ S2).real))
    assert frechet_distance(m1, S1, m2, S2) == pytest.approx(ref, rel=1e-8)
    # 1-D: (μ1−μ2)² + (s1 − s2)²
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)
    # samples of the two Gaussians converge to the closed form
    n = 200_000
    f1 = m1 + rng.normal(size=(n, 5)) @ np.linalg.cholesky(S1).T
    f2 = m2 + rng.normal(size=(n, 5)) @ np.linalg.cholesky(S2).T
    assert frechet_distance_features(f1, f2) == pytest.approx(ref, rel=0.03)
    mu, S = gaussian_stats(f1)
    assert np.allclose(mu, m1, atol=0.05) and np.allclose(S, S1, atol=0.15)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(m1, S1, m2[:3], S2[:3, :3])
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))


def test_frechet_images_and_confidence():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 1, 8, 8)).astype(np.float32)
    y = (X.reshape(200, -1).mean(1) > 0).astype(int)
    X[y == 1] += 0.3
    X = X.clip(-1, 1)
    fx = train_feature_extractor(X, y, n_epochs=2, batch_size=50, seed=0)
    assert fx(torch.from_numpy(X[:7])).shape == (7, 128)
    assert frechet_distance_images(X, X, fx) == pytest.approx(0.0, abs=1e-5)
    shifted = np.clip(X + 0.5, -1, 1)
    assert frechet_distance_images(X, shifted, fx) > 1e-3
    with pytest.raises(ValueError, match="trained on"):
        fx(torch.zeros(2, 1, 16, 16))
    conf = sample_confidence(X, fx.predict_proba)
    assert conf.shape == (200,) and (conf >= 0.5 - 1e-6).all() and (conf <= 1 + 1e-6).all()
    # MSP of a known probability function
    P = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    c = sample_confidence(torch.zeros(3, 1, 2, 2), lambda x: P[:len(x)])
    assert np.allclose(c, [0.8, 0.5, 0.9])
    lo, hi = confidence_extremes(c, 2)
    assert lo.tolist() == [1, 0] and hi.tolist() == [2, 0]
    with pytest.raises(ValueError, match="probabilities"):
        sample_confidence(torch.zeros(3, 1, 2, 2), lambda x: 2 * P[:len(x)])
