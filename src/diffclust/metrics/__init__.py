"""Clustering metrics (METHODS.md §1.9): Hungarian ACC, NMI, ARI, AMI, purity, CH, utilization."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from ..data.validation import check_labels

__all__ = ["contingency", "hungarian_match", "cluster_acc", "overcluster_acc", "nmi", "ari",
           "ami", "purity", "calinski_harabasz", "cluster_utilization", "evaluate",
           "frechet_distance"]


def contingency(y_true, y_pred) -> np.ndarray:
    """M[p, g] = #{i : ŷ_i = p, y_i = g}, padded to a square D × D, D = max(max ŷ, max y) + 1."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    D = int(max(y_pred.max(), y_true.max())) + 1
    M = np.zeros((D, D), dtype=np.int64)
    np.add.at(M, (y_pred, y_true), 1)
    return M


def hungarian_match(y_true, y_pred) -> dict[int, int]:
    """The cluster → class map that maximises matched counts (unmatched clusters map to -1)."""
    M = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(M.max() - M)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def _check(y_true, y_pred):
    y_pred = check_labels(y_pred, name="y_pred")
    y_true = check_labels(y_true, len(y_pred), name="y_true")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty labelling")
    if y_pred.min() < 0 or y_true.min() < 0:
        raise ValueError("labels must be non-negative integers")
    return y_true, y_pred


def cluster_acc(y_true, y_pred) -> float:
    """Hungarian-matched accuracy; works for any numbers of clusters and classes."""
    y_true, y_pred = _check(y_true, y_pred)
    M = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(M.max() - M)
    return float(M[rows, cols].sum() / len(y_true))


def overcluster_acc(y_true, y_pred) -> float:
    """Hungarian match, then clusters matched to a class absent from ``y_true`` (or unmatched)
    take their majority class (TEMI's over-clustering ACC; ≥ Hungarian ACC)."""
    y_true, y_pred = _check(y_true, y_pred)
    M = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(M.max() - M)
    mapping = dict(zip(rows, cols))
    present = set(np.unique(y_true).tolist())
    for p in np.unique(y_pred):
        if mapping.get(p) not in present:
            mapping[p] = int(M[p].argmax())
    mapped = np.array([mapping[p] for p in y_pred])
    return float((mapped == y_true).mean())


def nmi(y_true, y_pred) -> float:
    return float(skm.normalized_mutual_info_score(*_check(y_true, y_pred)))


def ari(y_true, y_pred) -> float:
    return float(skm.adjusted_rand_score(*_check(y_true, y_pred)))


def ami(y_true, y_pred) -> float:
    return float(skm.adjusted_mutual_info_score(*_check(y_true, y_pred)))


def purity(y_true, y_pred) -> float:
    y_true, y_pred = _check(y_true, y_pred)
    M = contingency(y_true, y_pred)
    return float(M.max(axis=1).sum() / len(y_true))


def calinski_harabasz(X, labels) -> float:
    """CH = [tr(S_B)/(K−1)] / [tr(S_W)/(N−K)]; 0 when there is a single cluster."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return 0.0
    return float(skm.calinski_harabasz_score(X, labels))


def cluster_utilization(labels, n_clusters: int) -> float:
    """r_C = (number of clusters with at least one sample) / C (C-EDM)."""
    return float(len(np.unique(np.asarray(labels))) / n_clusters)


def evaluate(y_true, y_pred, extended: bool = False) -> dict[str, float]:
    """``{"acc", "nmi", "ari"}`` (fractions in [0, 1]); ``extended`` adds ami, purity,
    overcluster_acc and the number of clusters used."""
    y_true, y_pred = _check(y_true, y_pred)
    out = {"acc": cluster_acc(y_true, y_pred), "nmi": nmi(y_true, y_pred),
           "ari": ari(y_true, y_pred)}
    if extended:
        out.update(ami=ami(y_true, y_pred), purity=purity(y_true, y_pred),
                   overcluster_acc=overcluster_acc(y_true, y_pred),
                   n_clusters_used=int(len(np.unique(y_pred))))
    return out


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}) via the symmetric form
    tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), computed with eigendecompositions (stable, real)."""
    from scipy.linalg import eigh

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w1, v1 = eigh(s1)
    s1_half = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    w = eigh(s1_half @ s2 @ s1_half, eigvals_only=True)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
