import numpy as np

from diffclust import SelfClassifier, evaluate, load_pretrained


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 3
    X = np.concatenate([c + rng.normal(0, 0.3, (60, 16)) for c in centres]).astype("f4")
    return X, np.repeat(np.arange(3), 60)


def test_separates_blobs_reproducibly_and_round_trips(tmp_path):
    X, y = _blobs()
    a = SelfClassifier(3, n_steps=150, batch_size=90, random_state=0, verbose=False).fit(X)
    b = SelfClassifier(3, n_steps=150, batch_size=90, random_state=0, verbose=False).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert evaluate(y, a.labels_)["acc"] > 0.9
    a.save_pretrained(tmp_path / "m")
    c = load_pretrained(tmp_path / "m")
    np.testing.assert_allclose(c.predict_proba(X), a.predict_proba(X), atol=1e-6)
