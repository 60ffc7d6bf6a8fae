"""TEMI (METHODS.md §4.2), the shared k-NN search (§1.8) and the C_max search (§4.3)."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from diffclust import TEMI, evaluate, load_pretrained
from diffclust.knn import knn_search
from diffclust.losses import temi_loss
from diffclust.selection import CmaxResult, estimate_cmax

ROOT = Path(__file__).resolve().parents[1]


def _data_home():
    env = os.environ.get("DIFFCLUST_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _imagenet50():
    home = _data_home()
    path = home / "imagenet50_dino_vits16_val_dev.npz"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set DIFFCLUST_DATA to the folder holding "
                    f"imagenet50_dino_vits16_val_dev.npz)")
    d = np.load(path)
    return d["x"].astype(np.float32), d["y"].astype(np.int64)


# ----------------------------------------------------------------------------- TEMI loss
def _logits(p, tau=0.1):
    """Logits whose softmax at temperature tau is p."""
    return tau * torch.log(torch.tensor(p, dtype=torch.float64)).float()


def test_temi_loss_hand_computed():
    # H = 1 head, B = 1 pair, C = 2 clusters, gamma = 0.6, lambda = 0.9
    s1, s2 = _logits([[[0.6, 0.4]]]), _logits([[[0.5, 0.5]]])  # student on x, x'
    t1, t2 = _logits([[[0.5, 0.5]]]), _logits([[[0.8, 0.2]]])  # teacher on x, x'
    q = torch.tensor([[0.5, 0.5]])
    losses, q_new = temi_loss(s1, s2, t1, t2, q, gamma=0.6, probs_momentum=0.9)
    # q~ <- 0.9 * 0.5 + 0.1 * mean(teacher probs of both views) = [0.515, 0.485]
    assert torch.allclose(q_new, torch.tensor([[0.515, 0.485]]), atol=1e-6)
    w = 0.5 * 0.8 + 0.5 * 0.2  # teacher agreement of the pair
    g = 0.6
    pmi_12 = math.log((0.6 * 0.8) ** g / 0.515 + (0.4 * 0.2) ** g / 0.485)
    pmi_21 = math.log((0.5 * 0.5) ** g / 0.515 + (0.5 * 0.5) ** g / 0.485)
    expected = -0.5 * w * (pmi_12 + pmi_21)
    assert losses.shape == (1,)
    assert losses.item() == pytest.approx(expected, rel=1e-5)


def _temi_loss_loops(s1, s2, t1, t2, q, gamma, tau_s, tau_t, lam):
    """Reference: the paper's eq. (1) with explicit loops over heads and samples."""
    H, B, C = s1.shape
    ps1, ps2 = torch.softmax(s1 / tau_s, -1), torch.softmax(s2 / tau_s, -1)
    pt1, pt2 = torch.softmax(t1 / tau_t, -1), torch.softmax(t2 / tau_t, -1)
    q_new = torch.stack([lam * q[i] + (1 - lam) * torch.cat([pt1[i], pt2[i]]).mean(0)
                         for i in range(H)])
    out = []
    for i in range(H):
        tot = 0.0
        for b in range(B):
            w = sum(float((pt1[j, b] * pt2[j, b]).sum()) for j in range(H)) / H
            l12 = -w * math.log(sum(float((ps1[i, b, c] * pt2[i, b, c]) ** gamma / q_new[i, c])
                                    for c in range(C)))
            l21 = -w * math.log(sum(float((ps2[i, b, c] * pt1[i, b, c]) ** gamma / q_new[i, c])
                                    for c in range(C)))
            tot += 0.5 * (l12 + l21)
        out.append(tot / B)
    return torch.tensor(out), q_new


def test_temi_loss_multihead_matches_loops_and_gradients_reach_student_only():
    g = torch.Generator().manual_seed(0)
    H, B, C = 3, 5, 4
    s1, s2, t1, t2 = (torch.randn(H, B, C, generator=g) for _ in range(4))
    s1.requires_grad_(True)
    t1.requires_grad_(True)
    q = torch.softmax(torch.randn(H, C, generator=g), -1)
    losses, q_new = temi_loss(s1, s2, t1, t2, q, gamma=0.6, student_temp=0.2,
                              teacher_temp=0.15, probs_momentum=0.8)
    ref, q_ref = _temi_loss_loops(s1.detach(), s2, t1.detach(), t2, q, 0.6, 0.2, 0.15, 0.8)
    assert torch.allclose(losses.detach(), ref.float(), atol=1e-5)
    assert torch.allclose(q_new, q_ref.float(), atol=1e-6)
    losses.mean().backward()
    assert s1.grad is not None and s1.grad.abs().sum() > 0
    assert t1.grad is None  # the teacher side is a target: no gradient


def test_temi_loss_uniform_closed_form():
    H, B, C = 2, 8, 10
    z = torch.zeros(H, B, C)
    q = torch.full((H, C), 1.0 / C)
    losses, q_new = temi_loss(z, z, z, z, q)
    # all probabilities 1/C: w = 1/C and log Σ_c (C^-2)^γ / C^-1 = (2 − 2γ) log C
    assert torch.allclose(q_new, q)
    assert torch.allclose(losses, torch.full((H,), -(1 / C) * 0.8 * math.log(C)), atol=1e-6)


# ----------------------------------------------------------------------------- k-NN
def _brute_force(X, k, metric, exclude_self):
    X = X.astype(np.float64)
    if metric == "cosine":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        S = Xn @ Xn.T
    else:
        S = -((X[:, None, :] - X[None]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(S, -np.inf)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(S, idx, 1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_matches_brute_force(metric, backend):
    if backend == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu not installed")
    X = np.random.default_rng(0).normal(size=(301, 12)).astype(np.float32)
    idx_ref, sim_ref = _brute_force(X, 7, metric, exclude_self=True)
    idx, sim = knn_search(X, 7, metric=metric, backend=backend, chunk_size=37)
    assert idx.dtype == np.int64 and idx.shape == (301, 7) and sim.shape == (301, 7)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_allclose(sim, sim_ref, rtol=1e-4, atol=1e-4)
    assert not (idx == np.arange(301)[:, None]).any()


def test_knn_torch_and_faiss_agree_and_self_included_when_asked():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    X = np.random.default_rng(1).normal(size=(500, 32)).astype(np.float32)
    a, sa = knn_search(X, 20, backend="torch")
    b, sb = knn_search(X, 20, backend="faiss")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    c, sc = knn_search(X, 3, exclude_self=False)
    np.testing.assert_array_equal(c[:, 0], np.arange(500))
    np.testing.assert_allclose(sc[:, 0], 1.0, atol=1e-5)


def test_knn_faiss_ivf_approximates_exact_search():
    """The approximate IVF backend (used for N ≥ 300k) finds almost all exact neighbours on
    clustered data, never returns the point itself, and scans only part of the data."""
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    X = (centres[rng.integers(0, 40, 6000)] + 0.8 * rng.normal(size=(6000, 32))
         ).astype(np.float32)
    exact, _ = knn_search(X, 10, backend="faiss")
    approx, sim = knn_search(X, 10, backend="faiss_ivf")
    assert approx.shape == (6000, 10) and (np.diff(sim, axis=1) <= 1e-6).all()
    assert not (approx == np.arange(6000)[:, None]).any()
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(exact, approx)])
    assert 0.9 <= recall, recall
    from diffclust.knn import _faiss_index

    index = _faiss_index(X, "cosine", ivf=True)
    assert index.nprobe < index.nlist  # a partial scan, not a flat search in disguise


def test_knn_errors():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="lower k"):
        knn_search(X, 10)
    with pytest.raises(ValueError, match="metric"):
        knn_search(X, 2, metric="manhattan")
    with pytest.raises(ValueError, match="2-D"):
        knn_search(X[0], 2)


# ----------------------------------------------------------------------------- C_max search
class _FakeClusterer:
    """Uses exactly ``round(C · r(C))`` clusters: a known utilization curve."""

    calls: list = []

    def __init__(self, n_clusters, random_state, curve):
        self.C, self.curve = n_clusters, curve

    def fit(self, X):
        used = max(1, int(round(self.C * self.curve(self.C))))
        self.labels_ = np.arange(len(X)) % used
        _FakeClusterer.calls.append(self.C)
        return self


def _factory(curve):
    return lambda C, s: _FakeClusterer(C, s, curve)


def test_cmax_step_curve_exact_with_full_bisection():
    X = np.zeros((5000, 1))
    _FakeClusterer.calls = []
    res = estimate_cmax(X, _factory(lambda C: 1.0 if C <= 100 else 0.9), c_start=16,
                        alpha=0.96, refine_rel_width=0.0, verbose=False)
    assert isinstance(res, CmaxResult)
    assert res.c_max == 100 and res.converged
    assert res.bracket == (100, 101)
    # doubling phase 16, 32, 64, 128 then bisection in (64, 128); every C kept once
    assert _FakeClusterer.calls[:4] == [16, 32, 64, 128]
    Cs = [r["C"] for r in res.table]
    assert Cs == sorted(set(_FakeClusterer.calls))
    assert all(r["phase"] == "double" for r in res.table if r["C"] in (16, 32, 64, 128))
    r = dict(zip(*res.as_arrays()))
    assert r[128] == pytest.approx(round(128 * 0.9) / 128)
    assert "C_max = 100" in res.format_table()


def test_cmax_smooth_curve_relative_width():
    X = np.zeros((5000, 1))
    curve = lambda C: math.exp(-C / 2000)  # noqa: E731  r_C > 0.96  <=>  C < 81.6
    res = estimate_cmax(X, _factory(curve), c_start=16, refine_rel_width=0.1, verbose=False)
    lo, hi = res.bracket
    assert lo == res.c_max and hi - lo <= max(0.1 * lo, 1)
    assert 81 / 1.1 <= res.c_max <= 81
    assert len(res.table) <= 4 + 4  # O(log2) doubling + a few bisection steps


def test_cmax_halving_and_limit():
    X = np.zeros((5000, 1))
    res = estimate_cmax(X, _factory(lambda C: 1.0 if C <= 5 else 0.5), c_start=16,
                        refine_rel_width=0.0, verbose=False)
    assert res.c_max == 5 and res.converged
    assert [r["phase"] for r in res.table if r["C"] == 8] == ["halve"]
    res = estimate_cmax(X, _factory(lambda C: 1.0), c_start=16, c_limit=100, verbose=False)
    assert res.c_max == 100 and not res.converged
    with pytest.raises(ValueError, match="alpha"):
        estimate_cmax(X, _factory(lambda C: 1.0), alpha=1.5)


def test_selection_does_not_import_methods():
    for f in (ROOT / "src" / "diffclust" / "selection").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "methods" not in mod, f"{f.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("methods" in a.name for a in node.names), f.name


# ----------------------------------------------------------------------------- TEMI estimator
TINY = dict(n_heads=2, hidden_dim=32, bottleneck_dim=16, n_neighbors=5, batch_size=32,
            n_steps=20, verbose=False)


def _blobs(n=120, k=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    y = np.arange(n) % k
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_temi_beats_chance_on_imagenet50_subset():
    X, y = _imagenet50()
    keep = y < 10  # 10 classes × 25 images of the DINO ViT-S/16 features
    X, y = X[keep], y[keep]
    # 1,000 steps is what n_steps="auto" gives on small data; n_neighbors="auto" mines 12
    model = TEMI(10, n_heads=4, n_steps=1000, batch_size=256, random_state=0,
                 verbose=False).fit(X)
    m = evaluate(y, model.labels_)
    # chance for 10 balanced classes: ACC ≈ 0.1, ARI ≈ 0
    assert m["acc"] > 0.6 and m["nmi"] > 0.6 and m["ari"] > 0.4, m
    assert model.head_losses_.shape == (4,)
    assert model.selected_head_ == int(np.argmin(model.head_losses_))
    assert model.utilization_ == model.n_clusters_used_ / 10
    np.testing.assert_allclose(model.cluster_frequencies_.sum(), 1.0)


def test_temi_contract_and_determinism():
    X, _ = _blobs()
    a = TEMI(3, random_state=3, **TINY).fit(X)
    b = TEMI(3, random_state=3, **TINY).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    P = a.predict_proba(X)
    assert P.shape == (len(X), 3)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a.predict(X), P.argmax(1))
    np.testing.assert_array_equal(a.labels_, a.predict(X))
    assert a.transform(X).shape == (len(X), 16)
    assert a.n_steps_ == 20 and len(a.history_) >= 1
    with pytest.raises(ValueError, match="features"):
        a.predict(X[:, :5])
    with pytest.raises(ValueError, match="gamma"):
        TEMI(3, gamma=1.5, **TINY).fit(X)
    with pytest.raises(ValueError):
        TEMI(3, **TINY).fit(X[:, :, None])
    from sklearn.base import clone

    assert clone(a).get_params()["n_heads"] == 2


def test_temi_compiled_training_is_reproducible_and_agrees_with_eager():
    """``compile=True`` trains through torch.compile (with a C++ compiler present): the same
    seed gives the same labels, and the partition is the eager one's up to rounding."""
    import shutil

    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here")
    X, _ = _blobs()
    a = TEMI(3, random_state=3, compile=True, **TINY).fit(X)
    b = TEMI(3, random_state=3, compile=True, **TINY).fit(X)
    eager = TEMI(3, random_state=3, compile=False, **TINY).fit(X)
    assert a.compiled_ and not eager.compiled_
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert adjusted_rand_score(a.labels_, eager.labels_) > 0.95
    assert TEMI(3, random_state=3, **TINY).fit(X).compiled_ is False  # "auto": 20 steps


def test_temi_checkpoint_resumes_whatever_the_compile_setting(tmp_path):
    """``compile`` chooses how the steps run, not what is trained: a checkpoint written by an
    eager fit resumes under ``compile=True`` (a model saved before the parameter existed too),
    while a changed training setting is refused."""
    X, _ = _blobs()
    ck = tmp_path / "ck"
    done = TEMI(3, random_state=3, compile=False, **TINY).fit(X, checkpoint_dir=ck)
    again = TEMI(3, random_state=3, compile=True, **TINY).fit(X, checkpoint_dir=ck)
    np.testing.assert_array_equal(again.labels_, done.labels_)  # restored at its last step
    with pytest.raises(ValueError, match="other data or settings"):
        TEMI(3, random_state=3, **dict(TINY, gamma=0.5)).fit(X, checkpoint_dir=ck)


def test_temi_readouts_consensus_and_best_head():
    """Both read-outs of one training: the best head alone (the paper), or every head relabelled
    onto the consensus of their partitions and averaged."""
    import torch

    X, y = _blobs(k=3)
    kw = {**TINY, "n_heads": 4, "precision": "fp32"}  # the hand computation below is fp32
    a = TEMI(3, random_state=1, **kw).fit(X)
    b = TEMI(3, random_state=1, readout="best_head", **kw).fit(X)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    assert a.selected_head_ == b.selected_head_
    assert a.head_.n_heads == 4 and b.head_.n_heads == 1
    assert b.head_perm_.tolist() == [[0, 1, 2]]
    assert all(sorted(row) == [0, 1, 2] for row in a.head_perm_.tolist())
    with torch.no_grad():
        P = torch.softmax(a.head_(torch.from_numpy(X)).float() / a.teacher_temp, -1).numpy()
    best = P[a.selected_head_]
    np.testing.assert_allclose(b.predict_proba(X), best, atol=1e-5)
    aligned = np.zeros_like(P)
    for h, perm in enumerate(a.head_perm_.numpy()):
        aligned[h][:, perm] = P[h]
    np.testing.assert_allclose(a.predict_proba(X), aligned.mean(0), atol=1e-5)
    np.testing.assert_array_equal(a.labels_, aligned.mean(0).argmax(1))
    # the embedding is the selected head's either way
    np.testing.assert_allclose(a.transform(X), b.transform(X), atol=1e-5)
    with pytest.raises(ValueError, match="readout"):
        TEMI(3, readout="vote", **TINY).fit(X)


def test_temi_auto_schedule():
    t = TEMI(10)
    assert t._resolve_schedule(1250)[:2] == (512, 3000)  # 200 epochs would be 400 steps
    assert t._resolve_schedule(50_000)[1] == math.ceil(200 * 50_000 / 512)
    assert t._resolve_schedule(1_000_000)[1] == 50_000
    B, steps, warm, freeze, window = t._resolve_schedule(100_000)
    assert B == 512 and warm == round(0.05 * steps) and 1 <= freeze <= warm


def test_temi_save_load_round_trip(tmp_path):
    X, _ = _blobs()
    a = TEMI(3, random_state=0, embed_norm=True, **TINY).fit(X)
    a.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists()
    assert (tmp_path / "m" / "model.safetensors").exists()
    b = TEMI.from_pretrained(tmp_path / "m")
    c = load_pretrained(tmp_path / "m")
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(a.labels_, c.labels_)
    assert b.selected_head_ == a.selected_head_
    np.testing.assert_allclose(b.head_losses_, a.head_losses_)
    assert b.utilization_ == a.utilization_


def test_temi_loads_a_model_saved_before_the_consensus_read_out(tmp_path, monkeypatch):
    """Models saved before ``head_perm_`` existed hold the selected head alone: they load and
    predict as they did."""
    X, _ = _blobs()
    a = TEMI(3, random_state=0, readout="best_head", **TINY).fit(X)
    old_state = TEMI._get_state

    def without_map(self):
        meta, tensors = old_state(self)
        del tensors["head_perm_"]
        return meta, tensors

    monkeypatch.setattr(TEMI, "_get_state", without_map)
    a.save_pretrained(tmp_path / "old")
    monkeypatch.undo()
    b = load_pretrained(tmp_path / "old")
    assert b.head_perm_.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), atol=1e-6)


def test_estimate_k_cli_on_features(tmp_path):
    from typer.testing import CliRunner

    from diffclust.cli import app

    X, _ = _blobs(n=200, k=4)
    np.save(tmp_path / "f.npy", X)
    out = tmp_path / "cmax.json"
    r = CliRunner().invoke(app, ["estimate-k", str(tmp_path / "f.npy"), "--c-start", "2",
                                 "--c-limit", "8", "-q", "--out", str(out),
                                 "-p", "n_heads=1", "-p", "n_steps=5", "-p", "hidden_dim=16",
                                 "-p", "bottleneck_dim=8", "-p", "batch_size=64"])
    assert r.exit_code == 0, r.output
    assert "C_max =" in r.output
    import json

    res = json.loads(out.read_text())
    assert res["c_max"] >= 2 and all(0 < row["r_C"] <= 1 for row in res["table"])
