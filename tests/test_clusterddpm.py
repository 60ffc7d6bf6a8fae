"""ClusterDDPM: loss terms, the KL identity, the E-step, a short fit, persistence, divergence."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit_script, kill_when, record_restores, saved_step

from diffclust import ClusterDDPM, evaluate, load_pretrained
from diffclust.errors import DivergenceError
from diffclust.mixture import (
    fit_diag_gmm,
    fit_gmm,
    gmm_from_labels,
    gmm_log_posterior,
    prior_matching_terms,
    sample_gmm,
)

TINY = dict(unet_preset="tiny", latent_dim=4, n_timesteps=50, pretrain_epochs=1, n_em_iters=1,
            batch_size=32, gmm_n_init=1, verbose=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine is shared: oversubscribed OpenMP threads make these fits 10× slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def usps3(shared_data):
    d = np.load(shared_data / "usps.npz")
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(d["y"] == c), 60, replace=False)
                           for c in (0, 1, 7)])
    return d["x"][keep], d["y"][keep]


@pytest.fixture(scope="module")
def fitted(usps3):
    X, _ = usps3
    return ClusterDDPM(3, random_state=0, **TINY).fit(X[::2])


def _mixture(K=3, J=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g) + 0.2
    return (w / w.sum(), 2 * torch.randn(K, J, generator=g),
            0.3 + torch.rand(K, J, generator=g))


def test_loss_terms_shapes_finite_and_gradients(usps3):
    X, _ = usps3
    m = ClusterDDPM(3, random_state=0, **TINY)
    Xv = m._validate_input(X[:8], fitting=True)
    m._setup_runtime()
    m.n_pixels_ = int(np.prod(Xv.shape[1:]))
    m.unet_, m.encoder_ = m._build(Xv)
    from diffclust.diffusion.schedules import NoiseSchedule

    m.sched_ = NoiseSchedule(**m._schedule_config())
    m.covariance_type = "diag"
    m.gmm_weights_, m.gmm_means_, m.gmm_covariances_ = _mixture(3, 4)
    x0 = torch.from_numpy(Xv)
    loss, logs = m._losses(x0, prior=True, g=m.generator_)
    assert set(logs) == {"rec", "kl", "kl_c", "kl_z", "entropy"}
    for k, v in logs.items():
        assert v.shape == () and torch.isfinite(v), k
    assert logs["kl_c"] >= 0 and logs["rec"] > 0
    assert torch.allclose(loss, logs["rec"] + m.lam * logs["kl"])
    assert torch.allclose(logs["kl"], logs["kl_c"] + logs["kl_z"] + logs["entropy"], atol=1e-4)
    loss.backward()
    for net in (m.unet_, m.encoder_):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    # the prior term alone reaches the encoder (through z and w), not the U-Net
    m.unet_.zero_grad(), m.encoder_.zero_grad()
    _, logs = m._losses(x0, prior=True, g=m.generator_)
    logs["kl"].backward()
    assert m.encoder_.fc_mu.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.unet_.parameters())
    pre, plog = m._losses(x0, prior=False, g=m.generator_)
    assert set(plog) == {"rec"} and torch.isfinite(pre) and 0 < float(pre.detach()) < 10  # mean MSE
    terms = prior_matching_terms(torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4),
                                 *_mixture(3, 4))
    assert all(terms[k].shape == (5,) for k in ("kl_c", "kl_z", "entropy", "total"))
    assert terms["w"].shape == (5, 3) and torch.allclose(terms["w"].sum(1), torch.ones(5))


def test_prior_term_equals_monte_carlo_kl():
    """total = KL(q(z|x) q(c|x) ‖ p(z, c)) = E_{z~q, c~w}[log q(z) + log w_c − log π_c
    − log N(z; μ_c, σ_c²)], estimated with 400k draws per row."""
    torch.manual_seed(0)
    pi, means, var = _mixture(3, 4, seed=1)
    B, J, S = 4, 4, 400_000
    mu, logvar = torch.randn(B, J), 0.5 * torch.randn(B, J) - 0.5
    w = torch.softmax(torch.randn(B, 3), 1)
    terms = prior_matching_terms(mu, logvar, None, pi, means, var, w=w)
    d = torch.distributions
    for i in range(B):
        q = d.Independent(d.Normal(mu[i].double(), (0.5 * logvar[i]).exp().double()), 1)
        z = q.sample((S,))
        log_pz_c = torch.stack([d.Independent(d.Normal(means[c].double(),
                                                       var[c].double().sqrt()), 1).log_prob(z)
                                for c in range(3)], 1)  # (S, K)
        per_c = (q.log_prob(z)[:, None] - log_pz_c).mean(0)  # E_q[log q(z) − log p(z|c)]
        mc = float((w[i].double() * (per_c + torch.log(w[i].double() / pi.double()))).sum())
        assert math.isclose(float(terms["total"][i]), mc, rel_tol=2e-3, abs_tol=2e-2), i
    # default w is the posterior p(c | z) at the given z
    z = torch.randn(B, J)
    post = gmm_log_posterior(z, pi, means, var).exp()
    t1 = prior_matching_terms(mu, logvar, z, pi, means, var)
    t2 = prior_matching_terms(mu, logvar, None, pi, means, var, w=post)
    assert torch.allclose(t1["total"], t2["total"], atol=1e-5)
    # one component, w = 1: the standard Gaussian KL
    t3 = prior_matching_terms(mu, logvar, z, torch.ones(1), torch.zeros(1, J), torch.ones(1, J))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    assert torch.allclose(t3["total"], kl, atol=1e-5) and torch.allclose(t3["kl_c"],
                                                                         torch.zeros(B))


def _tied_mixture(K=3, J=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g) + 0.2
    A = torch.randn(J, J, generator=g)
    return w / w.sum(), 2 * torch.randn(K, J, generator=g), A @ A.T / J + 0.3 * torch.eye(J)


def _assert_equals_monte_carlo_kl(total, mu, logvar, w, pi, means, covs, S=400_000):
    """``total`` (B,) = the Monte-Carlo ``KL(q(z|x) q(c|x) ‖ p(z, c))`` with
    z | c ~ N(μ_c, ``covs[c]``), from S draws per sample."""
    d = torch.distributions
    for i in range(len(mu)):
        q = d.Independent(d.Normal(mu[i].double(), (0.5 * logvar[i]).exp().double()), 1)
        z = q.sample((S,))
        log_pz_c = torch.stack([d.MultivariateNormal(means[c].double(), covs[c].double())
                                .log_prob(z) for c in range(len(pi))], 1)
        per_c = (q.log_prob(z)[:, None] - log_pz_c).mean(0)
        mc = float((w[i].double() * (per_c + torch.log(w[i].double() / pi.double()))).sum())
        assert math.isclose(float(total[i]), mc, rel_tol=2e-3, abs_tol=2e-2), i


def test_tied_prior_term_equals_monte_carlo_kl():
    """The tied-covariance closed form = the Monte-Carlo KL with z | c ~ N(μ_c, Σ)."""
    torch.manual_seed(0)
    pi, means, cov = _tied_mixture(3, 4, seed=1)
    B, J, S = 4, 4, 400_000
    mu, logvar = torch.randn(B, J), 0.5 * torch.randn(B, J) - 0.5
    w = torch.softmax(torch.randn(B, 3), 1)
    terms = prior_matching_terms(mu, logvar, None, pi, means, cov, w=w, covariance_type="tied")
    _assert_equals_monte_carlo_kl(terms["total"], mu, logvar, w, pi, means, cov.expand(3, J, J),
                                  S)
    # a tied Σ = diag(v) gives the diagonal formulas with σ_c² = v for every c
    v = 0.5 + torch.rand(J)
    z = torch.randn(B, J)
    t_tied = prior_matching_terms(mu, logvar, z, pi, means, torch.diag(v), covariance_type="tied")
    t_diag = prior_matching_terms(mu, logvar, z, pi, means, v.expand(3, J))
    for k in ("kl_c", "kl_z", "total", "w"):
        assert torch.allclose(t_tied[k], t_diag[k], atol=1e-4), k


def test_tied_posterior_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(m, 1.0, (200, 3)) for m in (-2, 0, 2)])
    Z[:, 1] += 0.8 * Z[:, 0]  # correlated dimensions
    gm = GaussianMixture(3, covariance_type="tied", random_state=0).fit(Z)
    lp = gmm_log_posterior(torch.as_tensor(Z, dtype=torch.float32),
                           *(torch.as_tensor(a, dtype=torch.float32)
                             for a in (gm.weights_, gm.means_, gm.covariances_)),
                           covariance_type="tied")
    np.testing.assert_allclose(lp.exp().numpy(), gm.predict_proba(Z), atol=1e-4)
    with pytest.raises(ValueError, match="covariance_type"):
        gmm_log_posterior(torch.zeros(2, 3), *(torch.ones(3), torch.zeros(3, 3), torch.eye(3)),
                          covariance_type="spherical")


def test_full_covariance_posterior_prior_term_and_samples():
    """``"full"``: the posterior equals scikit-learn's, the prior term the Monte-Carlo KL with
    z | c ~ N(μ_c, Σ_c), a full Σ_c = Σ for every c the tied formulas, and samples of one
    component have its covariance."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(m, s, (300, 3)) for m, s in ((-2, 0.5), (0, 1.0), (2, 1.5))])
    Z[:300, 1] += 0.9 * Z[:300, 0]  # one component's dimensions correlated
    gm = GaussianMixture(3, covariance_type="full", random_state=0).fit(Z)
    mix = [torch.as_tensor(a, dtype=torch.float32) for a in (gm.weights_, gm.means_,
                                                             gm.covariances_)]
    lp = gmm_log_posterior(torch.as_tensor(Z, dtype=torch.float32), *mix, covariance_type="full")
    np.testing.assert_allclose(lp.exp().numpy(), gm.predict_proba(Z), atol=1e-4)

    torch.manual_seed(0)
    pi, means, _ = _tied_mixture(3, 4, seed=1)
    A = torch.randn(3, 4, 4)
    covs = A @ A.transpose(1, 2) / 4 + 0.3 * torch.eye(4)
    B, S = 3, 400_000
    mu, logvar = torch.randn(B, 4), 0.5 * torch.randn(B, 4) - 0.5
    w = torch.softmax(torch.randn(B, 3), 1)
    terms = prior_matching_terms(mu, logvar, None, pi, means, covs, w=w, covariance_type="full")
    _assert_equals_monte_carlo_kl(terms["total"], mu, logvar, w, pi, means, covs, S)
    z = torch.randn(B, 4)
    t_full = prior_matching_terms(mu, logvar, z, pi, means, covs[0].expand(3, 4, 4),
                                  covariance_type="full")
    t_tied = prior_matching_terms(mu, logvar, z, pi, means, covs[0], covariance_type="tied")
    for k in ("kl_c", "kl_z", "total", "w"):
        assert torch.allclose(t_full[k], t_tied[k], atol=1e-4), k

    zs, c = sample_gmm(20_000, pi, means, covs, "full", cluster=2,
                       generator=torch.Generator().manual_seed(0))
    assert (c == 2).all()
    assert torch.allclose(torch.cov(zs.T), covs[2], atol=0.1)
    _, _, c0 = gmm_from_labels(Z, gm.predict(Z), 3, "full", reg_covar=0.0)
    assert c0.shape == (3, 3, 3) and np.allclose(c0, c0.transpose(0, 2, 1))


def _match(true_means, est_means):
    d = ((true_means[:, None] - est_means[None]) ** 2).sum(-1)
    return d.argmin(1)


def test_e_step_recovers_synthetic_mixture():
    rng = np.random.default_rng(0)
    K, J, n = 3, 5, 6000
    pi = np.array([0.5, 0.3, 0.2])
    means = rng.normal(0, 8, (K, J))
    sd = rng.uniform(0.5, 1.5, (K, J))
    c = rng.choice(K, n, p=pi)
    Z = means[c] + sd[c] * rng.standard_normal((n, J))
    (w, m, v), _ = fit_diag_gmm(Z, K, reg_covar=1e-6, n_init=2, seed=0)
    assert isinstance(w, torch.Tensor) and m.shape == (K, J) and v.shape == (K, J)
    perm = _match(means, m.numpy())
    assert sorted(perm.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(w.numpy()[perm], pi, atol=0.03)
    se = sd / np.sqrt(n * pi)[:, None]  # standard error of each mean
    assert (np.abs(m.numpy()[perm] - means) < 4 * se).all()
    np.testing.assert_allclose(v.numpy()[perm], sd**2, rtol=0.15)
    # warm start from the previous mixture stays there (and converges at once)
    (_, m2, _), info2 = fit_diag_gmm(Z, K, init=(w, m, v), reg_covar=1e-6)
    assert torch.allclose(m2, m, atol=1e-2) and info2["n_iter"] <= 3


def test_e_step_recovers_tied_mixture():
    rng = np.random.default_rng(1)
    K, J, n = 3, 4, 6000
    pi = np.array([0.4, 0.35, 0.25])
    means = rng.normal(0, 6, (K, J))
    A = rng.normal(size=(J, J))
    cov = A @ A.T / J + 0.2 * np.eye(J)
    c = rng.choice(K, n, p=pi)
    Z = means[c] + rng.multivariate_normal(np.zeros(J), cov, n)
    (w, m, S), _ = fit_gmm(Z, K, "tied", reg_covar=1e-6, n_init=2, seed=0)
    assert m.shape == (K, J) and S.shape == (J, J)
    perm = _match(means, m.numpy())
    assert sorted(perm.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(w.numpy()[perm], pi, atol=0.03)
    np.testing.assert_allclose(S.numpy(), cov, atol=0.1)
    (_, m2, S2), info = fit_gmm(Z, K, "tied", init=(w, m, S), reg_covar=1e-6)
    assert torch.allclose(m2, m, atol=1e-2) and torch.allclose(S2, S, atol=1e-2)
    assert info["n_iter"] <= 3


@pytest.mark.parametrize("cov", ["tied", "diag", "full"])
def test_gmm_from_labels_recovers_the_groups(cov):
    from diffclust.mixture import gmm_from_labels

    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    labels = np.repeat(np.arange(3), [500, 300, 200])
    Z = means[labels] + rng.normal(size=(1000, 2)) * np.array([1.0, 0.5])
    w, m, c = gmm_from_labels(Z, labels, 4, cov, reg_covar=1e-3)  # group 3 is empty
    np.testing.assert_allclose(w[:3], [0.5, 0.3, 0.2], atol=1e-3)
    assert 0 < w[3] < 1e-5 and np.isclose(w.sum(), 1)
    np.testing.assert_allclose(m[:3], means, atol=0.15)
    var = c[0] if cov == "diag" else np.diag(c if cov == "tied" else c[0])
    np.testing.assert_allclose(var, [1.0, 0.25], rtol=0.15)
    (fw, fm, fc), _ = fit_gmm(Z, 3, cov, init=(w[:3] / w[:3].sum(), m[:3],
                                              c if cov == "tied" else c[:3]))
    np.testing.assert_allclose(np.sort(fm.numpy()[:, 0]), [0, 0, 6], atol=0.2)


def test_gmm_init_spectral_and_kmeans(usps3):
    X, _ = usps3
    a = ClusterDDPM(3, random_state=0, gmm_init="spectral", **TINY).fit(X[::3])
    b = ClusterDDPM(3, random_state=0, **TINY).fit(X[::3])
    assert 0 <= a.init_ncut_ <= 1 and not hasattr(b, "init_ncut_")
    assert a.labels_.shape == b.labels_.shape == (60,)
    with pytest.raises(ValueError, match="gmm_init"):
        ClusterDDPM(3, gmm_init="random", **TINY).fit(X[::3])
    full = ClusterDDPM(3, random_state=0, covariance_type="full", gmm_init="spectral",
                       **TINY).fit(X[::3])
    assert full.gmm_covariances_.shape == (3, full.latent_dim, full.latent_dim)
    assert np.isfinite(full.predict_proba(X[::3])).all()
    images, c = full.sample(4, cluster=1, random_state=0)
    assert images.shape[0] == 4 and (c == 1).all()


def test_short_fit_beats_chance(usps3):
    X, y = usps3
    m = ClusterDDPM(3, random_state=0, unet_preset="tiny", latent_dim=8, n_timesteps=100,
                    pretrain_epochs=6, n_em_iters=2, batch_size=32, pretrain_lr=2e-3,
                    verbose=False)
    m.fit(X)
    acc = evaluate(y, m.labels_)["acc"]
    # chance is 1/3; measured 0.72 here with the default tied mixture (seeds 1, 2: 0.99, 0.97)
    assert acc >= 0.65, acc
    assert [h["phase"] for h in m.history_].count("em") == 2
    assert np.array_equal(m.predict(X), m.labels_)


def test_api_shapes_and_reproducible(fitted, usps3):
    X, _ = usps3
    Xf = X[::2]
    p = fitted.predict_proba(X)
    assert p.shape == (len(X), 3) and np.allclose(p.sum(1), 1)
    Z = fitted.transform(X)
    assert Z.shape == (len(X), 4) and np.isfinite(Z).all()
    assert fitted.gmm_means_.shape == (3, 4) and torch.allclose(fitted.gmm_weights_.sum(),
                                                                torch.tensor(1.0))
    imgs, c = fitted.sample(6, cluster=2)
    assert imgs.shape == (6, 1, 16, 16) and (c == 2).all() and np.isfinite(imgs).all()
    assert imgs.min() >= -1 and imgs.max() <= 1
    again = ClusterDDPM(3, random_state=0, **TINY).fit(Xf)
    np.testing.assert_array_equal(again.labels_, fitted.labels_)
    np.testing.assert_allclose(again.transform(X), Z, atol=1e-5)


def test_save_load_round_trip(fitted, usps3, tmp_path):
    X, _ = usps3
    fitted.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["class"] == "ClusterDDPM"
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {"gmm_weights", "gmm_means", "gmm_covariances"} <= set(t)
    m2 = load_pretrained(tmp_path / "m")
    assert isinstance(m2, ClusterDDPM)
    np.testing.assert_allclose(m2.predict_proba(X), fitted.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(m2.transform(X), fitted.transform(X), atol=1e-6)
    np.testing.assert_array_equal(m2.labels_, fitted.labels_)
    a, _ = fitted.sample(3, cluster=1, random_state=5)
    b, _ = m2.sample(3, cluster=1, random_state=5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    ClusterDDPM.from_pretrained(tmp_path / "m")


def test_divergence_raises(usps3):
    X, _ = usps3
    with pytest.raises(DivergenceError, match="diverged"):
        ClusterDDPM(3, random_state=0, **{**TINY, "pretrain_epochs": 2, "lr": 50.0}).fit(X[:64])
    # a loss that explodes in the EM phase (finite, but past divergence_factor × its first
    # value) is caught too, never labels
    m = ClusterDDPM(3, random_state=0, **{**TINY, "lr": 1.0, "n_em_iters": 2,
                                          "divergence_factor": 2.0})
    with pytest.raises(DivergenceError, match=r"em phase \(epoch 1\): the loss exploded to .* "
                                              r"more than 2× its first value .* lower lam or lr"):
        m.fit(X[:64])
    assert not hasattr(m, "labels_")


def test_bad_input(usps3):
    X, _ = usps3
    with pytest.raises(ValueError, match="n_clusters"):
        ClusterDDPM(0, **TINY).fit(X[:10])
    with pytest.raises(ValueError, match="larger than the number"):
        ClusterDDPM(20, **TINY).fit(X[:10])
    bad = X[:10].astype(np.float32) / 255
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClusterDDPM(2, **TINY).fit(bad)
    with pytest.raises(ValueError):
        ClusterDDPM(2, **TINY).fit(np.zeros((10, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="lam"):
        ClusterDDPM(2, **{**TINY, "lam": -1}).fit(X[:10])
    with pytest.raises(ValueError, match="paper defaults"):
        ClusterDDPM.for_dataset("nope", 3)
    assert ClusterDDPM.for_dataset("coil20", 20).latent_dim == 10


def test_cli_fit_and_sample(usps3, tmp_path):
    from typer.testing import CliRunner

    from diffclust.cli import app

    X, y = usps3
    np.savez(tmp_path / "d.npz", x=X[::3], y=y[::3])
    params = [a for k, v in dict(TINY, latent_dim=4).items() if k != "verbose"
              for a in ("-p", f"{k}={json.dumps(v)}")]
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "d.npz"), "--method", "clusterddpm",
                                 "-k", "3", "-o", str(tmp_path / "run"), "-q", *params])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--cluster", "1", "--n", "4"])
    assert r.exit_code == 0, r.output
    from PIL import Image

    im = Image.open(tmp_path / "run" / "samples_c1.png")
    assert im.size[0] > 16


def test_auto_pretrain_epochs_floor():
    from diffclust.methods.clusterddpm import MIN_PRETRAIN_UPDATES

    m = ClusterDDPM(3, batch_size=128)
    assert m.pretrain_epochs == "auto"
    # small data: enough epochs for the update floor; large data: the code's 10 epochs
    assert m._n_pretrain_epochs(2000) == math.ceil(MIN_PRETRAIN_UPDATES / 16)
    assert m._n_pretrain_epochs(70_000) == 10
    assert ClusterDDPM(3, pretrain_epochs=4)._n_pretrain_epochs(2000) == 4
    for bad in (-1, "ten", True):
        with pytest.raises(ValueError, match="pretrain_epochs"):
            ClusterDDPM(3, pretrain_epochs=bad)._validate_params()


def test_loads_a_model_saved_before_covariance_type(usps3, tmp_path):
    """Models saved with the old ``gmm_vars`` tensor and no ``covariance_type`` in their config
    are the paper's diagonal mixture and load as such; the old name ``grad_clip`` is read as
    ``clip_grad`` (the name every method now uses)."""
    from safetensors.torch import load_file, save_file

    X, _ = usps3
    m = ClusterDDPM(3, random_state=0, covariance_type="diag", clip_grad=2.5,
                    **TINY).fit(X[::3])
    m.save_pretrained(tmp_path / "m")
    cfg_path, w_path = tmp_path / "m" / "config.json", tmp_path / "m" / "model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    del cfg["params"]["covariance_type"]
    cfg["params"]["grad_clip"] = cfg["params"].pop("clip_grad")
    for k in ("format_version", "weights_sha256", "diffclust_version"):  # older saves lack them
        del cfg[k]
    cfg_path.write_text(json.dumps(cfg))
    t = load_file(str(w_path))
    t["gmm_vars"] = t.pop("gmm_covariances")
    save_file(t, str(w_path))
    old = load_pretrained(tmp_path / "m")
    assert old.covariance_type == "diag" and old.clip_grad == 2.5
    np.testing.assert_allclose(old.predict_proba(X), m.predict_proba(X), atol=1e-6)


def _kill_when(script, state, at_least):
    """SIGKILL a fresh fit once ``state`` has reached step ``at_least``; the step it had."""
    kill_when(script, lambda: saved_step(state) >= at_least)
    return saved_step(state)


def test_killed_fit_resumes_to_the_same_labels(tmp_path, monkeypatch):
    """kill -9 a real fit in pre-training, resume it and kill it again in the EM rounds, then fit
    once more with the same data, settings and folder: it ends with the labels and mixture of
    an uninterrupted fit (each pre-training epoch and EM round is a checkpoint)."""
    rng = np.random.default_rng(0)
    centers = rng.uniform(-0.8, 0.8, (3, 1, 16, 16))
    X = (centers[np.arange(48) % 3] + 0.2 * rng.standard_normal((48, 1, 16, 16)))
    X = np.clip(X, -1, 1).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    kw = dict(TINY, pretrain_epochs=3, n_em_iters=3)
    ref = ClusterDDPM(3, random_state=0, **kw).fit(X)
    ck = tmp_path / "ck"
    script = fit_script("ClusterDDPM", kw, tmp_path / "x.npy", ck)
    state = ck / "state.json"
    first = _kill_when(script, state, 1)
    assert 1 <= first < 3  # killed in pre-training
    second = _kill_when(script, state, 4)
    assert 4 <= second < 6  # resumed, then killed after an EM round
    restored = record_restores(monkeypatch, ClusterDDPM)
    m = ClusterDDPM(3, random_state=0, **kw).fit(X, checkpoint_dir=ck)
    assert restored == [second]  # it continued from the last checkpoint, not from scratch
    np.testing.assert_array_equal(m.labels_, ref.labels_)
    torch.testing.assert_close(m.gmm_means_, ref.gmm_means_)
    assert [h["phase"] for h in m.history_] == [h["phase"] for h in ref.history_]
    with pytest.raises(ValueError, match="other data or settings"):
        ClusterDDPM(3, random_state=0, **dict(kw, lam=0.5)).fit(X, checkpoint_dir=ck)


def test_latent_probe_reads_a_training_checkpoint(tmp_path, monkeypatch):
    """benchmarks/clusterddpm_latent.py: the encoder of a fit's last per-epoch checkpoint gives
    the fitted model's latents; a checkpoint of other settings is refused."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from clusterddpm_latent import latent_of

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)
    kw = dict(TINY, pretrain_epochs=2, n_em_iters=1)
    m = ClusterDDPM(3, random_state=0, **kw).fit(X, checkpoint_dir=tmp_path / "ck")
    Z, step = latent_of(ClusterDDPM(3, random_state=0, **kw), X, tmp_path / "ck")
    assert step == 3  # two pre-training epochs and one EM round
    np.testing.assert_allclose(Z, m.transform(X), atol=1e-5)
    with pytest.raises(SystemExit, match="other data or settings"):
        latent_of(ClusterDDPM(3, random_state=0, **dict(kw, lam=0.5)), X, tmp_path / "ck")
    with pytest.raises(SystemExit, match="no training checkpoint"):
        latent_of(ClusterDDPM(3, random_state=0, **kw), X, tmp_path / "none")
