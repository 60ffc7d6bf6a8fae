"""2-D maps of embeddings (t-SNE from scikit-learn, UMAP when ``umap-learn`` is installed)."""

from __future__ import annotations

import numpy as np

from ._common import cluster_colors, new_figure, save_figure

__all__ = ["embed_2d", "plot_embedding", "plot_embedding_2d", "save_embedding_2d"]


def embed_2d(X, method: str = "auto", max_points: int = 2000, random_state=0,
             pca_dim: int = 50):
    """Project ``X`` (N, D) to 2-D. Returns ``(coords, index, method_used)``: ``index`` are the
    rows of ``X`` that were kept (a seeded random subsample of ``max_points`` when N is larger,
    t-SNE being O(N log N) per iteration and slow on a shared CPU).

    ``method``: ``'auto'`` (UMAP if importable, else t-SNE), ``'umap'``, ``'tsne'`` or
    ``'pca'``. Inputs wider than ``pca_dim`` are first reduced by PCA (standard practice,
    denoises and speeds up t-SNE). 2-D inputs are returned as they are.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        X = X.reshape(len(X), -1)
    n = len(X)
    if n < 3:
        raise ValueError(f"need at least 3 points for a 2-D map, got {n}")
    rng = np.random.default_rng(random_state)
    index = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    Z = X[index]
    if Z.shape[1] == 2:
        return Z.copy(), index, "identity"
    if method == "auto":
        try:
            import umap
            method = "umap"
        except ImportError:
            method = "tsne"
    if Z.shape[1] > pca_dim and method != "pca":
        from sklearn.decomposition import PCA

        Z = PCA(min(pca_dim, len(Z) - 1), random_state=random_state).fit_transform(Z)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=random_state).fit_transform(Z), index, "PCA"
    if method == "umap":
        import umap

        nn = int(min(15, len(Z) - 1))
        return (umap.UMAP(n_neighbors=nn, random_state=random_state).fit_transform(Z), index,
                "UMAP")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(Z) - 1) / 3.0)))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=random_state,
                      n_jobs=1).fit_transform(Z)
        return coords, index, "t-SNE"
    raise ValueError(f"method must be 'auto', 'umap', 'tsne' or 'pca', got {method!r}")


def _scatter(ax, coords, lab, title, legend_title, color_of=None):
    """``color_of`` maps a label to a colour index (so clusters can share their matched
    class's colour); default: the label itself."""
    ids = np.unique(lab)
    color_of = color_of or {int(i): int(i) for i in ids}
    cols = cluster_colors(max(color_of.values()) + 1)
    c_idx = np.array([color_of[int(i)] for i in lab])
    s = float(np.clip(3000.0 / len(coords), 2.0, 25.0))
    ax.scatter(coords[:, 0], coords[:, 1], c=cols[c_idx], s=s, linewidths=0, alpha=0.8)
    if len(ids) <= 20:
        for i in ids:
            ax.scatter([], [], c=[cols[color_of[int(i)]]], s=20, label=str(i))
        ax.legend(title=legend_title, fontsize=7, title_fontsize=7, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.0)
    else:
        med = np.array([np.median(coords[lab == i], 0) for i in ids])
        for i, (x, yy) in zip(ids, med):
            ax.text(x, yy, str(i), fontsize=6, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _matched_colors(labels, y):
    """Cluster → colour index: a matched cluster takes its class's colour, the others fresh
    colours after the last class."""
    from ..metrics import hungarian_match

    classes = set(np.unique(y).tolist())
    m = hungarian_match(y, labels)
    nxt = int(max(int(y.max()), int(labels.max()))) + 1
    out = {}
    for c in np.unique(labels).tolist():
        g = m.get(c, -1)
        if g in classes:
            out[c] = g
        else:
            out[c], nxt = nxt, nxt + 1
    return out


def plot_embedding(coords, labels, y=None, method_name: str = "2-D map", title=None):
    """Scatter ``coords`` (n, 2) coloured by cluster and, when ``y`` is given, a second panel
    coloured by true label."""
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(labels):
        raise ValueError(f"coords must be (n, 2) matching {len(labels)} labels, got "
                         f"{coords.shape}")
    panels = [(labels, "coloured by cluster", "cluster", None)]
    if y is not None:
        y = np.asarray(y, np.int64).reshape(-1)
        panels[0] = (labels, "coloured by cluster (matched class colour)", "cluster",
                     _matched_colors(labels, y))
        panels.append((y, "coloured by true label", "label", None))
    fig = new_figure(figsize=(5.6 * len(panels), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (lab, sub, leg, col) in zip(axes, panels):
        _scatter(ax, coords, lab, f"{method_name}: {sub}", leg, col)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_embedding_2d(X, labels, y=None, method: str = "auto", max_points: int = 2000,
                      random_state=0, title=None):
    """:func:`embed_2d` then :func:`plot_embedding` on the kept points."""
    coords, idx, used = embed_2d(X, method, max_points, random_state)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    sub = f" ({len(idx)} of {n} points)" if len(idx) < n else ""
    return plot_embedding(coords, labels[idx], None if y is None else np.asarray(y)[idx],
                          method_name=used + sub, title=title)


def save_embedding_2d(path, X, labels, y=None, dpi: int = 100, **kw):
    """:func:`plot_embedding_2d` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_embedding_2d(X, labels, y, **kw), path, dpi=dpi)
