import math

import numpy as np
import pytest
import torch

from diffclust.diffusion import (NoiseSchedule, ddim_sample, ddim_step, ddim_time_pairs,
                                 ddpm_sample, denoiser_target, edm_heun_sample, edm_sigmas,
                                 eps_from_prediction, min_snr_weight,
                                 predict_eps_from_x0, predict_x0_from_eps, predict_x0_from_v,
                                 q_posterior, q_sample, v_target)


def test_sqrt_schedule_reference_values():
    s = NoiseSchedule("sqrt", 1000)
    ab = s.alpha_bar_np
    for t, ref in [(0, 0.977), (39, 0.808), (100, 0.689), (250, 0.504), (500, 0.295),
                   (750, 0.135), (900, 0.051)]:
        assert ab[t] == pytest.approx(ref, abs=1.5e-3), t
    assert ab[999] < 1e-6
    # closed form away from the clipped end: ᾱ_t = ᾱ((t+1)/T) / ᾱ(0), ᾱ(τ) = 1 − sqrt(τ + s)
    t = np.arange(0, 990)
    ref = (1 - np.sqrt((t + 1) / 1000 + 1e-4)) / (1 - np.sqrt(1e-4))
    np.testing.assert_allclose(ab[t], ref, rtol=1e-6, atol=1e-9)


def test_linear_and_cosine_closed_forms():
    lin = NoiseSchedule("linear", 1000)
    np.testing.assert_allclose(lin.betas_np[[0, -1]], [1e-4, 0.02])
    np.testing.assert_allclose(lin.alpha_bar_np, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    cos = NoiseSchedule("cosine", 1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert cos.alpha_bar_np[t] == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-6)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule("nope", 10)


def test_snr_and_min_snr_weights():
    s = NoiseSchedule("sqrt", 1000)
    t = torch.arange(1000)
    snr = s.snr(t)
    ab = torch.tensor(s.alpha_bar_np, dtype=torch.float64)
    torch.testing.assert_close(snr.double(), ab / (1 - ab), rtol=1e-5, atol=1e-6)
    w = min_snr_weight(snr, 5.0, "x0")
    # SNR ≥ 5 ⇔ ᾱ_t ≥ 5/6 ⇔ t + 1 ≤ 1000·((1 − 0.99·5/6)² − 1e-4), i.e. t ≤ 29
    # (METHODS §9 says "t ≤ 24"; the closed form gives 29)
    assert torch.all(w[:30] == 5.0) and torch.all(w[30:] < 5.0)
    assert float(w[100]) == pytest.approx(2.21, abs=0.01)
    torch.testing.assert_close(min_snr_weight(snr, 5, "eps"), w / snr)
    torch.testing.assert_close(min_snr_weight(snr, 5, "v"), w / (snr + 1))
    # with a noise scale F the effective SNR is divided by F²
    sF = NoiseSchedule("sqrt", 1000, noise_scale=49.0)
    torch.testing.assert_close(sF.snr(t, include_noise_scale=True), snr / 49**2)


def test_q_sample_moments_and_noise_scale():
    s = NoiseSchedule("sqrt", 1000)
    x0 = torch.full((200_000, 1), 0.7)
    g = torch.Generator().manual_seed(0)
    t = torch.full((200_000,), 250)
    for F in (1.0, 3.0):
        xt = q_sample(s, x0, t, noise_scale=F, generator=g)
        ab = s.alpha_bar_np[250]
        assert float(xt.mean()) == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02 * F)
        assert float(xt.std()) == pytest.approx(math.sqrt(1 - ab) * F, rel=0.01)


def test_conversions_round_trip():
    s = NoiseSchedule("cosine", 100)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    t = torch.randint(0, 100, (16,), generator=g)
    xt = q_sample(s, x0, t, noise=eps)
    torch.testing.assert_close(predict_x0_from_eps(s, xt, t, eps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(predict_eps_from_x0(s, xt, t, x0), eps, atol=1e-3, rtol=1e-3)
    v = v_target(s, x0, t, eps)
    torch.testing.assert_close(predict_x0_from_v(s, xt, t, v), x0, atol=1e-5, rtol=1e-5)


def test_v_prediction_targets_and_eps_recovery():
    """A denoiser that outputs its exact training target gives back the true ε through
    ``eps_from_prediction``, for ε- and v-prediction alike; v is not ε (the test can fail)."""
    s = NoiseSchedule("linear", 200)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 1, 4, 4, generator=g)
    t = torch.randint(0, 200, (32,), generator=g)
    xt = q_sample(s, x0, t, noise=eps)
    for pred in ("epsilon", "v"):
        y = denoiser_target(pred, s, x0, t, eps)
        torch.testing.assert_close(eps_from_prediction(pred, s, xt, t, y), eps, atol=1e-5,
                                   rtol=1e-5)
    assert not torch.allclose(denoiser_target("v", s, x0, t, eps), eps)
    with pytest.raises(ValueError, match="prediction must be one of"):
        denoiser_target("x0", s, x0, t, eps)


def test_posterior_matches_formula():
    s = NoiseSchedule("linear", 50)
    x0, xt = torch.ones(3, 2), torch.zeros(3, 2)
    t = torch.tensor([5, 5, 5])
    mean, var = q_posterior(s, x0, xt, t)
    b, ab, abp = s.betas_np[5], s.alpha_bar_np[5], s.alpha_bar_np[4]
    assert float(mean[0, 0]) == pytest.approx(b * math.sqrt(abp) / (1 - ab), rel=1e-5)
    assert float(var[0]) == pytest.approx(b * (1 - abp) / (1 - ab), rel=1e-5)


def test_ddim_time_grid_matches_cludi():
    pairs = ddim_time_pairs(1000, 25)
    assert pairs[0] == (999, 959) and pairs[-1] == (39, -1) and len(pairs) == 25
    assert ddim_time_pairs(1000, 100)[-2:] == [(19, 9), (9, -1)]


def test_ddim_eta0_is_deterministic_and_eta1_marginal():
    s = NoiseSchedule("sqrt", 1000, noise_scale=2.0)
    x0 = torch.tensor([0.5, -0.3])

    def oracle(x, t, sc):
        return x0.expand_as(x)

    zT = torch.randn(4, 2)
    a, _ = ddim_sample(oracle, s, (4, 2), n_steps=10, eta=0.0, x_T=zT, clip=None,
                       generator=torch.Generator().manual_seed(0))
    b, _ = ddim_sample(oracle, s, (4, 2), n_steps=10, eta=0.0, x_T=zT, clip=None,
                       generator=torch.Generator().manual_seed(99))
    torch.testing.assert_close(a, b)
    # η = 1 with an oracle x̂_0: z_t' ~ N(sqrt(ᾱ_t') x0, (1 − ᾱ_t') F² I)
    n = 100_000
    x_t = q_sample(s, x0.expand(n, 2), torch.full((n,), 700), noise_scale=2.0,
                   generator=torch.Generator().manual_seed(3))
    x_next = ddim_step(s, x_t, x0.expand(n, 2), 700, 400, eta=1.0, noise_scale=2.0,
                       generator=torch.Generator().manual_seed(4))
    ab = s.alpha_bar_np[400]
    torch.testing.assert_close(x_next.mean(0), math.sqrt(ab) * x0, atol=0.03, rtol=0)
    torch.testing.assert_close(x_next.std(0), torch.full((2,), math.sqrt(1 - ab) * 2.0),
                               atol=0.02, rtol=0)
    # stopping at an arbitrary t' returns x_t', not x̂_0
    xs, _ = ddim_sample(oracle, s, (3, 2), time_pairs=[(999, 500), (500, 200)], eta=0.0, clip=None)
    assert not torch.allclose(xs, x0.expand(3, 2))


def test_ddpm_sampler_with_oracle_recovers_x0():
    s = NoiseSchedule("linear", 200)
    x0 = torch.tensor([[0.3, -0.6]])
    ab = s.alpha_bar

    def eps_model(x, t):
        a = ab[t][:, None]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = ddpm_sample(eps_model, s, (512, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(0), x0[0], atol=0.02, rtol=0)
    out2 = ddpm_sample(eps_model, s, (512, 2), variance="posterior",
                       generator=torch.Generator().manual_seed(0))
    assert out2.std(0).max() < 0.05


def test_edm_heun_with_oracle_denoiser():
    sig = edm_sigmas(18)
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002, rel=1e-4)
    assert sig[-1] == 0
    target = torch.tensor([0.25, -0.5])
    x = edm_heun_sample(lambda x, s: target.expand_as(x), sig, (8, 2),
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, target.expand(8, 2), atol=1e-4, rtol=0)
