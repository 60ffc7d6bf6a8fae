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


# ---------------------------------------------------------------- torch.compile with fallback
def test_resolve_compile_rules(monkeypatch):
    from diffclust.training.runtime import COMPILE_MIN_STEPS, resolve_compile

    monkeypatch.delenv("DIFFCLUST_COMPILE", raising=False)
    cpu = torch.device("cpu")
    assert resolve_compile("auto", COMPILE_MIN_STEPS, cpu, distributed=False)
    assert not resolve_compile("auto", COMPILE_MIN_STEPS - 1, cpu, distributed=False)
    assert resolve_compile(True, 1, cpu, distributed=False)
    assert not resolve_compile(False, 10**6, cpu, distributed=False)
    assert not resolve_compile(True, 10**6, cpu, distributed=True)
    monkeypatch.setenv("DIFFCLUST_COMPILE", "0")
    assert not resolve_compile(True, 10**6, cpu, distributed=False)


def test_compiled_falls_back_to_eager_with_one_warning(monkeypatch):
    from diffclust.training import runtime

    calls = []

    def broken_compile(fn, **kw):
        def run(*a, **k):
            calls.append("compiled")
            raise RuntimeError("no C++ compiler found\nsecond line")
        return run

    monkeypatch.setattr(runtime.torch, "compile", broken_compile)
    monkeypatch.setattr(runtime, "_COMPILE_FAILED", [])  # this process's record, for this test
    f = runtime.Compiled(lambda x: x + 1, enabled=True)
    h = runtime.Compiled(lambda x: x + 2, enabled=True)  # made before the failure (a student)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler found"):
        assert f(1) == 2
    assert not f.active and f(2) == 3 and calls == ["compiled"]  # no second attempt
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next network (a student after its teacher, the
        g = runtime.Compiled(lambda x: x - 1, enabled=True)  # next fit) does not try or warn
        assert g(1) == 0 and not g.active and calls == ["compiled"]
        assert h(1) == 3 and not h.active and calls == ["compiled"]
    off = runtime.Compiled(lambda x: x * 2, enabled=False)
    assert off(3) == 6 and not off.active


def test_compiled_real_errors_after_the_first_call_propagate(monkeypatch):
    from diffclust.training import runtime

    def fake_compile(fn, **kw):
        return fn

    monkeypatch.setattr(runtime.torch, "compile", fake_compile)
    f = runtime.Compiled(lambda x: 1 / x, enabled=True)
    assert f(2) == 0.5 and f.active
    with pytest.raises(ZeroDivisionError):
        f(0)


def test_compiled_networks_of_many_sizes_are_all_compiled():
    """Each fit's networks get their own compiled code: a process compiling networks of more
    than 8 sizes (the C_max search) does not reach TorchDynamo's per-function limit and fall
    back to eager without a word."""
    import shutil

    from torch._dynamo.utils import counters

    from diffclust.training.runtime import Compiled

    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here")
    before = counters["stats"]["unique_graphs"]
    x = torch.randn(4, 3)
    for k in range(2, 12):  # 10 sizes
        net = torch.nn.Linear(3, k)
        f = Compiled(net, enabled=True)
        torch.testing.assert_close(f(x), net(x))
        assert f.active
    assert counters["stats"]["unique_graphs"] - before == 10


def test_compiled_a_real_error_on_the_first_call_is_not_a_compiler_failure(monkeypatch):
    """Bad input on the first call raises its own error and leaves compilation on for the
    process (only a failure that eager execution does not share counts as a compiler's)."""
    from diffclust.training import runtime

    monkeypatch.setattr(runtime.torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(runtime, "_COMPILE_FAILED", [])
    f = runtime.Compiled(lambda x: 1 / x, enabled=True)
    with pytest.raises(ZeroDivisionError):
        f(0)
    assert runtime._COMPILE_FAILED == [] and runtime.Compiled(lambda x: x, enabled=True).active
