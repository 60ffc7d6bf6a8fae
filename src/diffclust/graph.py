"""Partitions of the k-nearest-neighbour graph: spectral clustering and its normalised cut.

The graph is the symmetrised k-NN connectivity of the rows of ``X`` (:func:`knn_graph`,
``A_ij = 1`` when j is among the k nearest neighbours of i or i among those of j; cosine
similarity, :mod:`diffclust.knn`). Spectral clustering (Shi & Malik 2000; Ng, Jordan & Weiss
2002) relaxes the minimum normalised cut of A into K ≤ eigenvectors of the normalised Laplacian
and rounds them to K groups — scikit-learn's ``spectral_clustering`` with the deterministic
``cluster_qr`` rounding (Damle, Minden & Ying 2019). :func:`normalized_cut` scores any
partition on the graph:

    Ncut(C_1..C_K) = (1/K) Σ_k cut(C_k, V∖C_k) / vol(C_k)      (0 = K disconnected groups)

where ``vol(C) = Σ_{i∈C} deg(i)``. DiEC uses both ([PROP], DECISIONS.md "DiEC: the k-NN graph
partition"): the timestep whose features give the smallest Ncut, and the spectral partition as
the initial centroids.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .knn import knn_search

__all__ = ["knn_graph", "normalized_cut", "spectral_partition", "multiscale_partition",
           "start_partition", "MULTISCALE_NEIGHBORS"]

#: The graph sizes :func:`multiscale_partition` combines (DECISIONS.md, "CLUDI: a multiscale
#: graph start").
MULTISCALE_NEIGHBORS = (5, 10, 15, 20, 30)


def knn_graph(X, n_neighbors: int = 10, metric: str = "cosine", neighbors=None) -> sp.csr_matrix:
    """Symmetric 0/1 k-NN connectivity (N, N) of the rows of ``X``; ``neighbors`` (N, k) reuses
    an index array already found."""
    nb = np.asarray(neighbors if neighbors is not None else
                    knn_search(np.asarray(X, dtype=np.float32), int(n_neighbors), metric=metric)[0])
    n, k = nb.shape
    A = sp.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), nb.ravel())), shape=(n, n))
    A = A.maximum(A.T)
    A.setdiag(0)
    A.eliminate_zeros()
    return A.tocsr()


def normalized_cut(A: sp.spmatrix, labels) -> float:
    """Mean over the used clusters of ``cut(C, V∖C) / vol(C)`` on the graph ``A``."""
    labels = np.asarray(labels)
    used, lab = np.unique(labels, return_inverse=True)
    A = sp.coo_matrix(A)
    deg = np.bincount(A.row, weights=A.data, minlength=A.shape[0])
    rows, cols, w = A.row, A.col, A.data
    inside = np.bincount(lab[rows], weights=w * (lab[rows] == lab[cols]), minlength=len(used))
    vol = np.bincount(lab, weights=deg, minlength=len(used))
    return float(np.mean(1.0 - inside / np.maximum(vol, 1e-12)))


def spectral_partition(X, n_clusters: int, *, n_neighbors: int = 10, metric: str = "cosine",
                       random_state: int = 0, graph: sp.spmatrix | None = None):
    """Spectral clustering of the k-NN graph of ``X`` (or of ``graph``). Returns
    ``(labels, ncut)``: int64 labels in ``0..K−1`` and their :func:`normalized_cut`."""
    from sklearn.cluster import spectral_clustering

    A = graph if graph is not None else knn_graph(X, n_neighbors, metric)
    K = int(n_clusters)
    if K < 1 or K > A.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {A.shape[0]}], got {K}")
    if K == 1:
        labels = np.zeros(A.shape[0], dtype=np.int64)
    else:
        import warnings

        with warnings.catch_warnings():  # K disconnected groups are the easy case, not an error
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            # LOBPCG: the same partitions as ARPACK's shift-invert on our feature graphs, 13× (USPS)
            # to 330× (CIFAR-10 14k) faster; ARPACK's sparse LU grows with N (docs/DECISIONS.md)
            labels = spectral_clustering(A, n_clusters=K, assign_labels="cluster_qr",
                                         eigen_solver="lobpcg",
                                         random_state=int(random_state)).astype(np.int64)
    return labels, normalized_cut(A, labels)


def _neighbors(X, k: int, neighbors=None) -> np.ndarray:
    """The cosine k-NN index array (N, k): ``neighbors[:, :k]`` when it holds ≥ k columns."""
    if neighbors is not None and np.shape(neighbors)[1] >= k:
        return np.asarray(neighbors)[:, :k]
    return knn_search(np.asarray(X, dtype=np.float32), k, metric="cosine")[0]


def multiscale_partition(X, n_clusters: int, *, neighbor_sizes=MULTISCALE_NEIGHBORS,
                         neighbors=None, random_state: int = 0) -> np.ndarray:
    """The consensus (HBGF, :func:`diffclust.consensus.consensus_partition`) of the spectral
    partitions of the cosine k-NN graphs of ``X`` for every k in ``neighbor_sizes``: no single
    graph size to choose. One k-NN search (the largest k; ``neighbors`` reused when wide
    enough). int64 labels."""
    from .consensus import consensus_partition

    ks = sorted({min(int(k), len(X) - 1) for k in neighbor_sizes})
    nb = _neighbors(X, ks[-1], neighbors)
    parts = [spectral_partition(None, n_clusters, random_state=random_state,
                                graph=knn_graph(None, neighbors=nb[:, :k]))[0] for k in ks]
    return consensus_partition(np.stack(parts, 1), n_clusters, random_state=random_state)


def start_partition(X, n_clusters: int, method: str = "spectral", *, n_neighbors: int = 10,
                    neighbors=None, random_state: int = 0) -> np.ndarray:
    """A partition to start a deep clusterer from (CLUDI's first teacher): the spectral
    partition of the cosine ``n_neighbors``-NN graph of ``X`` (``neighbors``: an (N, ≥ k) index
    array already searched, reused), the consensus of those over several graph sizes
    (``"multiscale"``, :func:`multiscale_partition`) or k-means (10 restarts). int64 labels."""
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(int(n_clusters), n_init=10, random_state=int(random_state)
                      ).fit_predict(X).astype(np.int64)
    if method == "multiscale":
        return multiscale_partition(X, n_clusters, neighbors=neighbors,
                                    random_state=random_state)
    if method != "spectral":
        raise ValueError(f"method must be 'spectral', 'multiscale' or 'kmeans', got {method!r}")
    k = min(int(n_neighbors), len(X) - 1)
    return spectral_partition(None, n_clusters, random_state=random_state,
                              graph=knn_graph(None, neighbors=_neighbors(X, k, neighbors)))[0]
