"""Confusion matrix of clusters × classes, reordered by the Hungarian matching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import contingency, hungarian_match
from ._common import new_figure, save_figure

__all__ = [
    "ReorderedConfusion",
    "plot_confusion_matrix",
    "reorder_confusion",
    "save_confusion_matrix",
]


@dataclass
class ReorderedConfusion:
    """``matrix[i, j]`` = #{cluster ``clusters[i]`` ∧ class ``classes[j]``}. The first
    ``n_matched`` rows and columns are the Hungarian pairs, in class order, so
    ``matrix.diagonal()[:n_matched]`` are the matched counts (their sum / N is the clustering
    ACC); unmatched clusters (K > C) and classes (K < C) follow."""

    matrix: np.ndarray
    clusters: np.ndarray
    classes: np.ndarray
    n_matched: int

    @property
    def matched_counts(self) -> np.ndarray:
        return self.matrix.diagonal()[:self.n_matched].copy()


def reorder_confusion(y_true, y_pred) -> ReorderedConfusion:
    """Contingency table of the clusters and classes that occur, with rows and columns permuted
    so that the cluster matched to each class (:func:`diffclust.metrics.hungarian_match`) sits
    on the diagonal. Unmatched clusters are appended by their majority class, then size."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot build a confusion matrix from empty labellings")
    if y_true.min() < 0 or y_pred.min() < 0:
        raise ValueError("labels must be non-negative integers")
    M = contingency(y_true, y_pred)                   # M[cluster, class], square padded
    classes = np.unique(y_true)
    clusters = np.unique(y_pred)
    cls_set, clu_set = set(classes.tolist()), set(clusters.tolist())
    pairs = sorted(((g, p) for p, g in hungarian_match(y_true, y_pred).items()
                    if p in clu_set and g in cls_set))
    rows = [p for _, p in pairs]
    cols = [g for g, _ in pairs]
    rest_p = [p for p in clusters.tolist() if p not in set(rows)]
    rest_p.sort(key=lambda p: (int(M[p].argmax()), -int(M[p].sum()), p))
    rest_g = [g for g in classes.tolist() if g not in set(cols)]
    rows, cols = np.array(rows + rest_p, np.int64), np.array(cols + rest_g, np.int64)
    return ReorderedConfusion(M[np.ix_(rows, cols)], rows, cols, len(pairs))


def plot_confusion_matrix(y_true, y_pred, class_names=None, normalize: str = "class",
                          annotate="auto", title=None, ax=None):
    """Heat map of :func:`reorder_confusion`: x = true class, y = cluster (in matched order).

    Colour is the fraction of each class (``normalize='class'``), of each cluster
    (``'cluster'``) or the raw count (``None``); cells carry counts when the table is at most
    15 × 15 (``annotate='auto'``). The title reports the matched total (Hungarian ACC).
    """
    rc = reorder_confusion(y_true, y_pred)
    M = rc.matrix.astype(np.float64)
    if normalize == "class":
        C = M / np.maximum(M.sum(0, keepdims=True), 1)
    elif normalize == "cluster":
        C = M / np.maximum(M.sum(1, keepdims=True), 1)
    elif normalize is None:
        C = M
    else:
        raise ValueError(f"normalize must be 'class', 'cluster' or None, got {normalize!r}")
    n_r, n_c = M.shape
    if ax is None:
        side = float(np.clip(0.28 * max(n_r, n_c) + 2.5, 4.5, 16.0))
        fig = new_figure(figsize=(side * max(n_c / max(n_r, n_c), 0.6) + 1.2,
                                  side * max(n_r / max(n_r, n_c), 0.6)))
        ax = fig.subplots()
    else:
        fig = ax.figure
    im = ax.imshow(C, cmap="Blues", aspect="auto", interpolation="nearest",
                   vmin=0, vmax=C.max() if C.size and normalize is None else 1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03,
                 label={"class": "fraction of class", "cluster": "fraction of cluster",
                        None: "count"}[normalize])
    if class_names is not None:
        names = [str(class_names[g]) if g < len(class_names) else str(g) for g in rc.classes]
    else:
        names = [str(g) for g in rc.classes]
    fs = 8 if max(n_r, n_c) <= 20 else max(4, int(240 / max(n_r, n_c)) // 2)
    ax.set_xticks(range(n_c), names, rotation=90, fontsize=fs)
    ax.set_yticks(range(n_r), [str(p) for p in rc.clusters], fontsize=fs)
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster (Hungarian order)")
    if rc.n_matched < min(n_r, n_c) or n_r != n_c:
        ax.axhline(rc.n_matched - 0.5, color="0.4", lw=0.8, ls="--")
        ax.axvline(rc.n_matched - 0.5, color="0.4", lw=0.8, ls="--")
    if annotate == "auto":
        annotate = max(n_r, n_c) <= 15
    if annotate:
        for i in range(n_r):
            for j in range(n_c):
                if M[i, j]:
                    ax.text(j, i, f"{int(M[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if C[i, j] > 0.6 * (C.max() or 1) else "black")
    n = int(M.sum())
    matched = int(rc.matched_counts.sum())
    ax.set_title(title or f"confusion matrix: {matched}/{n} matched "
                          f"(ACC {100 * matched / max(n, 1):.1f}%)", fontsize=10)
    return fig


def save_confusion_matrix(path, y_true, y_pred, dpi: int = 100, **kw):
    """:func:`plot_confusion_matrix` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_confusion_matrix(y_true, y_pred, **kw), path, dpi=dpi)
