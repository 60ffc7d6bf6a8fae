import numpy as np
import pytest
from sklearn import metrics as skm

from diffclust.metrics import (ami, ari, calinski_harabasz, cluster_acc, cluster_utilization,
                               contingency, evaluate, frechet_distance, nmi, overcluster_acc,
                               purity)


def test_acc_permutation_invariant_and_exact():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    perm = rng.permutation(5)
    assert cluster_acc(y, perm[y]) == 1.0
    pred = perm[y].copy()
    pred[:50] = (pred[:50] + 1) % 5
    assert cluster_acc(y, pred) == pytest.approx(1 - np.mean(pred[:50] != perm[y][:50]) * 50 / 500)


def test_acc_with_different_numbers_of_clusters():
    y = np.array([0, 0, 0, 1, 1, 1])
    assert cluster_acc(y, np.array([0, 0, 1, 2, 2, 3])) == pytest.approx(4 / 6)
    assert cluster_acc(y, np.zeros(6, int)) == pytest.approx(0.5)
    # over-clustering ACC maps unmatched clusters to their majority class
    assert overcluster_acc(y, np.array([0, 0, 1, 2, 2, 3])) == 1.0
    assert overcluster_acc(y, np.array([0, 0, 1, 2, 2, 3])) >= cluster_acc(y, [0, 0, 1, 2, 2, 3])


def test_random_labels_near_chance():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 10, 20000), rng.integers(0, 10, 20000)
    m = evaluate(y, p, extended=True)
    assert abs(m["acc"] - 0.1) < 0.02 and abs(m["ari"]) < 0.01 and abs(m["ami"]) < 0.01


def test_against_sklearn():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 6, 300)
    assert nmi(y, p) == pytest.approx(skm.normalized_mutual_info_score(y, p))
    assert ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p))
    assert ami(y, p) == pytest.approx(skm.adjusted_mutual_info_score(y, p))
    X = rng.normal(size=(300, 3))
    assert calinski_harabasz(X, p) == pytest.approx(skm.calinski_harabasz_score(X, p))
    M = contingency(y, p)
    assert M.sum() == 300 and M.shape == (6, 6)
    assert purity(y, p) == pytest.approx(M.max(1).sum() / 300)


def test_calinski_harabasz_closed_form():
    X = np.array([[0.0], [2.0], [10.0], [12.0]])
    lab = np.array([0, 0, 1, 1])
    # S_B = 2·5² + 2·5² = 100, S_W = 4 → CH = (100/1)/(4/2) = 50
    assert calinski_harabasz(X, lab) == pytest.approx(50.0)


def test_utilization_and_errors():
    assert cluster_utilization([0, 0, 3, 3], 8) == 0.25
    with pytest.raises(ValueError, match="true labels"):
        evaluate(None, [0, 1])
    with pytest.raises(ValueError, match="labels but there are"):
        evaluate([0, 1, 2], [0, 1])


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(4, 4))
    S = A @ A.T + np.eye(4)
    mu = rng.normal(size=4)
    assert frechet_distance(mu, S, mu, S) == pytest.approx(0.0, abs=1e-8)
    # 1-D Gaussians: (μ1−μ2)² + (σ1−σ2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # commuting diagonal covariances: Σ (sqrt a − sqrt b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(
        ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
