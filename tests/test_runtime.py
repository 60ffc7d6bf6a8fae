"""The CPU numerics policy of fits and predictions (training/runtime.py)."""

import numpy as np
import pytest
import torch

from diffclust import KMeansClusterer, SelfClassifier
from diffclust.training.runtime import flush_denormals


def _subnormal_product() -> float:
    # 1e-30 · 1e-10 = 1e-40 is below float32's smallest normal number (1.18e-38)
    return float(torch.tensor([1e-30]) * torch.tensor([1e-10]))


@pytest.fixture
def ftz_supported():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats (torch.set_flush_denormal)")


def test_flush_denormals_flushes_inside_and_restores_after(ftz_supported, monkeypatch):
    monkeypatch.delenv("DIFFCLUST_FLUSH_DENORMAL", raising=False)
    assert _subnormal_product() != 0.0
    with flush_denormals():
        assert _subnormal_product() == 0.0
        with flush_denormals():  # nested (a prediction inside a fit): still on after the inner
            pass
        assert _subnormal_product() == 0.0
    assert _subnormal_product() != 0.0


def test_flush_denormals_can_be_switched_off(ftz_supported, monkeypatch):
    monkeypatch.setenv("DIFFCLUST_FLUSH_DENORMAL", "0")
    with flush_denormals():
        assert _subnormal_product() != 0.0


def test_fit_and_predict_leave_torch_default_mode(ftz_supported):
    X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    m = SelfClassifier(3, n_steps=5, batch_size=32, random_state=0, verbose=False).fit(X)
    m.predict(X)
    KMeansClusterer(3, random_state=0).fit(X)
    assert _subnormal_product() != 0.0
