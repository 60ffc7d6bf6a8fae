"""Consensus of several partitions of the same points (TEMI's heads: docs/DECISIONS.md, "TEMI:
a consensus of the heads").

* :func:`consensus_partition`: the hybrid bipartite graph formulation (HBGF; Fern & Brodley,
  ICML 2004). Points and the clusters of all partitions are the two sides of a bipartite graph,
  a point joined to the one cluster it has in each partition; its spectral embedding (the top
  singular vectors of the degree-normalised incidence matrix ``D₁^{-1/2} B D₂^{-1/2}``, rows
  normalised) is clustered by k-means. Points that most partitions keep together end up
  together, whatever the partitions call their clusters.
* :func:`align_partitions`: for each partition, the one-to-one relabelling of its clusters onto
  a reference partition that maximises the points they share (Hungarian).

The incidence matrix is sparse and only its (H·K)² Gram matrix is decomposed, so the cost is
O(N·H + (H·K)³) time and O(N·K + (H·K)²) memory.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment

__all__ = ["align_partitions", "consensus_partition"]


def _check_labels(labels, n_clusters):
    L = np.asarray(labels)
    if L.ndim != 2 or L.shape[0] < 1 or L.shape[1] < 1:
        raise ValueError(f"labels must be an (N, H) array of H partitions of N points, got shape "
                         f"{L.shape}")
    if L.min() < 0 or L.max() >= n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters}) for n_clusters={n_clusters}")
    return L.astype(np.int64)


def consensus_partition(labels, n_clusters: int, *, n_groups: int | None = None,
                        random_state=0, n_init: int = 10) -> np.ndarray:
    """One partition agreeing with the H partitions ``labels`` (N, H), each in
    ``[0, n_clusters)`` (HBGF).

    Returns labels (N,) in ``[0, n_groups)`` (``n_groups`` defaults to ``n_clusters``).
    Deterministic given ``random_state`` (the k-means restarts)."""
    from sklearn.cluster import KMeans

    L = _check_labels(labels, n_clusters)
    N, H = L.shape
    K = int(n_clusters)
    k = int(n_groups or K)
    if not 1 <= k <= N:
        raise ValueError(f"n_groups must be in [1, N={N}], got {n_groups}")
    cols = (np.arange(H) * K)[None, :] + L  # the cluster of each partition: one column each
    B = sparse.csr_matrix((np.ones(N * H), (np.repeat(np.arange(N), H), cols.ravel())),
                          shape=(N, H * K))
    d2 = np.asarray(B.sum(0)).ravel()
    keep = np.flatnonzero(d2)  # clusters no point was given have no edge
    B = B[:, keep]
    M = B @ sparse.diags(1.0 / np.sqrt(H * d2[keep]))  # D₁^{-1/2} B D₂^{-1/2}, D₁ = H
    G = (M.T @ M).toarray()
    r = min(k, len(keep))
    s2, V = eigh(G, subset_by_index=[len(keep) - r, len(keep) - 1])
    s2, V = s2[::-1], V[:, ::-1]
    nz = s2 > 1e-10 * s2[0]
    U = M @ (V[:, nz] / np.sqrt(s2[nz]))  # the top left singular vectors of M
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    km = KMeans(k, n_init=n_init, random_state=random_state).fit(U)
    return km.labels_.astype(np.int64)


def align_partitions(labels, reference, n_clusters: int) -> np.ndarray:
    """``perm`` (H, K) with ``perm[h, c]`` the cluster of ``reference`` that cluster c of
    partition h is relabelled to: the one-to-one map sharing the most points (Hungarian)."""
    L = _check_labels(labels, n_clusters)
    ref = _check_labels(np.asarray(reference).reshape(-1, 1), n_clusters)[:, 0]
    if len(ref) != len(L):
        raise ValueError(f"reference has {len(ref)} labels for {len(L)} points")
    K = int(n_clusters)
    perm = np.empty((L.shape[1], K), dtype=np.int64)
    for h in range(L.shape[1]):  # H small Hungarian problems of K × K
        C = np.bincount(L[:, h] * K + ref, minlength=K * K).reshape(K, K)  # shared points
        rows, cols = linear_sum_assignment(-C)
        perm[h, rows] = cols
    return perm
