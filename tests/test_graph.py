"""k-NN graph partitions (diffclust.graph) and the normalised-cut timestep score."""

import numpy as np
import pytest

from diffclust import evaluate
from diffclust.graph import knn_graph, normalized_cut, spectral_partition


def rings(n=600, seed=0):
    """Two concentric circles in 2-D (plus small noise): k-means cuts them in halves, the
    k-NN graph keeps each ring connected."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    a = rng.uniform(0, 2 * np.pi, n)
    r = np.where(y == 0, 1.0, 3.0)
    X = np.c_[r * np.cos(a), r * np.sin(a)] + 0.05 * rng.normal(size=(n, 2))
    return X, y


def test_knn_graph_is_symmetric_without_self_loops():
    X, _ = rings(200)
    A = knn_graph(X, 5, metric="euclidean")
    assert (A != A.T).nnz == 0 and A.diagonal().sum() == 0
    assert (np.asarray(A.sum(1)).ravel() >= 5).all()


def test_normalized_cut_is_zero_for_components_and_positive_otherwise():
    X, y = rings(300)
    A = knn_graph(X, 8, metric="euclidean")
    assert normalized_cut(A, y) == pytest.approx(0.0, abs=1e-12)  # the rings share no edge
    halves = (X[:, 0] > 0).astype(int)
    assert normalized_cut(A, halves) > 0.01
    assert normalized_cut(A, np.zeros(len(X), int)) == 0.0


def test_spectral_partition_separates_rings_where_kmeans_cannot():
    from sklearn.cluster import KMeans

    X, y = rings()
    labels, ncut = spectral_partition(X, 2, n_neighbors=8, metric="euclidean", random_state=0)
    assert evaluate(y, labels)["acc"] == 1.0 and ncut < 1e-9
    km = KMeans(2, n_init=10, random_state=0).fit_predict(X)
    assert evaluate(y, km)["acc"] < 0.7
    again, _ = spectral_partition(X, 2, n_neighbors=8, metric="euclidean", random_state=0)
    np.testing.assert_array_equal(labels, again)
    with pytest.raises(ValueError, match="n_clusters"):
        spectral_partition(X, 0)


def test_graph_cut_score_prefers_clustered_features():
    from diffclust.selection.ots import graph_cut_score, optimal_timestep

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 4
    y = np.arange(400) % 4
    clustered = centers[y] + rng.normal(size=(400, 16))
    noise = rng.normal(size=(400, 16))
    assert graph_cut_score(clustered, 4) > graph_cut_score(noise, 4) + 0.2

    import torch

    def features(t, X):  # clusters blur as t grows: the search must pick the smallest t
        return centers[y[X]] / (1 + t) + rng.normal(size=(len(X), 16))

    res = optimal_timestep(features, np.arange(400), 4, np.arange(0, 40, 4), subset=400,
                           generator=torch.Generator().manual_seed(0), criterion="ncut",
                           tol=2, grid=4)
    assert res.t_star <= 4
    with pytest.raises(ValueError, match="criterion"):
        optimal_timestep(features, np.arange(400), 4, [0, 1], subset=10,
                         generator=torch.Generator(), criterion="silhouette")


def test_start_partition_reuses_a_neighbour_search_and_refuses_unknown_methods():
    from diffclust.graph import start_partition
    from diffclust.knn import knn_search

    X, y = rings(300)
    nb = knn_search(X, 15, metric="cosine")[0]
    a = start_partition(X, 2, random_state=0)
    b = start_partition(X, 2, neighbors=nb, random_state=0)  # its first 10 columns: same graph
    np.testing.assert_array_equal(a, b)
    assert start_partition(X, 2, "kmeans").shape == (300,)
    with pytest.raises(ValueError, match="'spectral', 'multiscale' or 'kmeans'"):
        start_partition(X, 2, "graph")


def test_multiscale_partition_is_the_consensus_of_the_graph_sizes():
    """The consensus over graph sizes finds three separated directions, is deterministic and
    reuses a wide enough neighbour search."""
    from diffclust.graph import multiscale_partition, start_partition
    from diffclust.knn import knn_search

    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    X = rng.normal(size=(3, 6))[y] * 4 + 0.3 * rng.normal(size=(300, 6))
    a = multiscale_partition(X, 3, random_state=0)
    assert evaluate(y, a)["ari"] == 1.0 and a.dtype == np.int64
    np.testing.assert_array_equal(a, start_partition(X, 3, "multiscale", random_state=0))
    nb = knn_search(X, 30, metric="cosine")[0]
    np.testing.assert_array_equal(a, multiscale_partition(X, 3, neighbors=nb, random_state=0))
