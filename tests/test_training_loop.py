"""The one training loop (training/loop.py): steps, epochs, the update and the loss log."""

import math

import pytest
import torch

from diffclust.errors import DivergenceError
from diffclust.training.loop import (
    ExplosionCheck,
    LossLog,
    RunningMeans,
    Step,
    epoch_batches,
    optimizer_step,
    train_epoch,
    train_steps,
)


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    w = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(w.weight)
    torch.nn.init.zeros_(w.bias)
    return X, y, w


def _run_steps(n_steps, start=0, stop_at=None, model=None, opt=None):
    X, y, w = _regression()
    w = model or w
    opt = opt or torch.optim.SGD(w.parameters(), lr=0.1)
    hist = []

    def step(i):
        idx = torch.arange(i * 8, i * 8 + 8) % 64
        return ((w(X[idx]).squeeze(1) - y[idx]) ** 2).mean(), {"mse": 1.0}

    done = train_steps(step, opt, n_steps=n_steps, start=start, desc="test", history=hist,
                       log=LossLog(2, n_steps), verbose=False,
                       after_step=(lambda d, v: d == stop_at) if stop_at else None)
    return done, hist, w, opt


def test_train_steps_learns_logs_and_resumes_to_the_same_weights():
    done, hist, w, _ = _run_steps(40)
    assert done == 40 and [h["step"] for h in hist] == list(range(2, 41, 2))
    assert hist[-1]["loss"] < 0.01 * hist[0]["loss"]  # it learned
    assert all(h["mse"] == 1.0 for h in hist)  # parts averaged over the record's steps
    # stopped after 17 steps by after_step, then continued from 17: the same weights
    done1, _, w1, opt1 = _run_steps(40, stop_at=17)
    assert done1 == 17
    done2, _, w2, _ = _run_steps(40, start=17, model=w1, opt=opt1)
    assert done2 == 40
    torch.testing.assert_close(w2.weight, w.weight, rtol=0, atol=0)


def test_train_steps_per_step_options_and_divergence():
    X, y, w = _regression()
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    seen = []

    def step(i):
        loss = ((w(X[:8]).squeeze(1) - y[:8]) ** 2).mean()
        return Step(loss, extra={"i": i}, update={"before_step": lambda: seen.append(i)})

    hist = []
    train_steps(step, opt, n_steps=3, desc="opts", history=hist, log=LossLog(1, 3),
                verbose=False)
    assert seen == [0, 1, 2] and [h["i"] for h in hist] == [0, 1, 2]

    def bad(i):
        return w(X[:8]).sum() * float("nan"), {}

    with pytest.raises(DivergenceError, match="bad training at step 0: the loss became nan; "
                                              "lower lr"):
        train_steps(bad, opt, n_steps=3, desc="bad", verbose=False, hint="lower lr")


def test_optimizer_step_refuses_a_non_finite_gradient_norm():
    w = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    x = torch.tensor([[1e30, 1e30]])
    with torch.no_grad():
        w.weight.fill_(1e-30)
    loss = w(x).sum() * 1e10  # finite (≈ 2e10), but its gradient 1e40 overflows float32
    assert torch.isfinite(loss)
    with pytest.raises(DivergenceError, match="gradient norm is inf"):
        optimizer_step(loss, opt, what="x", clip_grad=1.0, parameters=w)


def test_epoch_batches_cover_the_permutation():
    g = torch.Generator().manual_seed(0)
    b = epoch_batches(10, 4, g)
    assert [len(x) for x in b] == [4, 4, 2]
    assert sorted(torch.cat(b).tolist()) == list(range(10))
    assert [len(x) for x in epoch_batches(10, 4, g, drop_last=True)] == [4, 4]
    assert [len(x) for x in epoch_batches(3, 4, g, drop_last=True)] == [3]


def test_train_epoch_skips_weights_and_continues_means():
    X, y, w = _regression()
    opt = torch.optim.SGD(w.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)

    def step(idx):
        if len(idx) < 8:
            return None  # the short remainder batch is skipped
        return ((w(X[idx]).squeeze(1) - y[idx]) ** 2).mean(), {"size": float(len(idx))}

    out = train_epoch(step, epoch_batches(60, 8, g), opt, what="epoch")
    assert out["steps"] == 7 and out["size"] == 8.0 and math.isfinite(out["loss"])
    # weighted by batch size, and one record over two passes
    run = RunningMeans(("size",))
    train_epoch(lambda idx: (w(X[idx]).sum() * 0, {"size": float(len(idx))}),
                epoch_batches(10, 4, g), opt, what="w", weighted=True, running=run)
    out = train_epoch(lambda idx: (w(X[idx]).sum() * 0, {"size": float(len(idx))}),
                      epoch_batches(10, 4, g), opt, what="w", weighted=True, running=run)
    assert out["steps"] == 6 and out["size"] == pytest.approx((2 * (16 + 16 + 4)) / 20)
    assert list(out)[0] == "size"  # the declared keys come first


def test_explosion_check_sets_its_reference_then_raises():
    check = ExplosionCheck(10.0)
    check(5.0, "run")  # the first value is the reference
    check(49.0, "run")
    with pytest.raises(DivergenceError, match=r"run: the loss exploded to 51, more than 10× "
                                              r"its first value 5; lower lr"):
        check(51.0, "run", "lower lr")
    check.ref = None  # a loss of another scale starts again
    check(500.0, "run")
    assert check.ref == 500.0
