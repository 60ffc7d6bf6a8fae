"""DiEC smoke tests on a tiny U-Net (the method is experimental: quality is for benchmarks/)."""

import numpy as np
import pytest

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


def test_diec_rejects_feature_vectors():
    with pytest.raises(ValueError):
        DiEC(2, **TINY).fit(np.zeros((10, 5), dtype=np.float32))
