"""Line and bar plots: training curves (``metrics.jsonl``), cluster sizes, DiEC's optimal
timestep search curve S(t) and C-EDM's utilisation curve r_C."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ._common import new_figure, save_figure

__all__ = [
    "plot_cluster_sizes",
    "plot_cmax_curve",
    "plot_ots_curve",
    "plot_training_curves",
    "read_metrics_jsonl",
    "save_cluster_sizes",
    "save_cmax_curve",
    "save_ots_curve",
    "save_training_curves",
]

_X_KEYS = ("step", "epoch", "iteration", "iter")
_SKIP = {"seconds", "time", "wall", "timestamp"}


def read_metrics_jsonl(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (one JSON object per line; blank lines skipped).
    A missing file gives ``[]``; a malformed line raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not valid JSON ({e})") from None
    return out


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_training_curves(history, keys=None, max_panels: int = 9, title=None):
    """One panel per logged quantity of ``history`` (a list of dicts, or a path to
    ``metrics.jsonl``) against ``step`` (or ``epoch``, else the record index). ``keys`` picks
    the quantities (default: every numeric key but the x key and wall-clock times); ``lr`` is
    drawn on a log scale."""
    if isinstance(history, (str, Path)):
        history = read_metrics_jsonl(history)
    history = [r for r in history if isinstance(r, dict)]
    if not history:
        raise ValueError("empty training history: nothing to plot")
    xkey = next((k for k in _X_KEYS if all(k in r for r in history)), None)
    x_all = [r[xkey] if xkey else i for i, r in enumerate(history)]
    if keys is None:
        keys = []
        for r in history:
            for k, v in r.items():
                if k not in keys and k != xkey and k not in _SKIP and _is_num(v):
                    keys.append(k)
    keys = list(keys)[:max_panels]
    if not keys:
        raise ValueError("the training history has no numeric quantity to plot")
    ncol = min(3, len(keys))
    nrow = int(np.ceil(len(keys) / ncol))
    fig = new_figure(figsize=(3.6 * ncol, 2.6 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, k in zip(axes, keys):
        pts = [(x, r[k]) for x, r in zip(x_all, history) if _is_num(r.get(k))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 60 else None)
            if k == "lr" and min(ys) > 0:
                ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(xkey or "record", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_training_curves(path, history, dpi: int = 100, **kw):
    """:func:`plot_training_curves` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_training_curves(history, **kw), path, dpi=dpi)


def plot_cluster_sizes(labels, n_clusters=None, title=None):
    """Cluster sizes sorted in decreasing order, with the uniform size N/K as a dashed line;
    empty clusters (ids < ``n_clusters`` with no member) are counted in the title."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) == 0:
        raise ValueError("no labels")
    K = int(n_clusters) if n_clusters is not None else int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=K)
    order = np.argsort(-sizes, kind="stable")
    fig = new_figure(figsize=(float(np.clip(0.16 * K + 3, 4.5, 12)), 3.2))
    ax = fig.subplots()
    ax.bar(np.arange(K), sizes[order], color="tab:blue", width=0.85)
    ax.axhline(len(labels) / K, color="tab:red", ls="--", lw=1, label=f"N/K = {len(labels) / K:.1f}")
    if K <= 40:
        ax.set_xticks(np.arange(K), [str(c) for c in order], fontsize=7,
                      rotation=90 if K > 20 else 0)
    else:
        ax.set_xticks([])
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("size")
    used = int((sizes > 0).sum())
    ax.set_title(title or f"cluster sizes: {used}/{K} used, min {sizes.min()}, max {sizes.max()}",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save_cluster_sizes(path, labels, dpi: int = 100, **kw):
    """:func:`plot_cluster_sizes` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_cluster_sizes(labels, **kw), path, dpi=dpi)


def plot_ots_curve(t, score, t_star=None, title=None, score_name="CH score"):
    """DiEC's optimal timestep search: the evaluated ``(t, S(t))`` pairs (any order; golden-
    section searches evaluate them out of order) as points joined in t order, with ``t_star``
    marked (default: the argmax of the evaluated scores)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(t) != len(s) or len(t) == 0:
        raise ValueError(f"t and score must be non-empty and equally long, got {len(t)} and "
                         f"{len(s)}")
    o = np.argsort(t, kind="stable")
    t, s = t[o], s[o]
    if t_star is None:
        t_star = t[int(np.nanargmax(s))]
    fig = new_figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    ax.plot(t, s, "-o", ms=3.5, lw=1.2, color="tab:blue", label="evaluated S(t)")
    ax.axvline(t_star, color="tab:red", ls="--", lw=1.2, label=f"t* = {t_star:g}")
    near = np.flatnonzero(np.isclose(t, t_star))
    if len(near):
        ax.plot(t[near], s[near], "*", ms=12, color="tab:red")
    ax.set_xlabel("diffusion timestep t")
    ax.set_ylabel(score_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or f"optimal timestep search ({len(t)} evaluations)", fontsize=10)
    fig.tight_layout()
    return fig


def save_ots_curve(path, t, score, dpi: int = 100, **kw):
    """:func:`plot_ots_curve` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_ots_curve(t, score, **kw), path, dpi=dpi)


def plot_cmax_curve(C, r, alpha: float = 0.96, c_max=None, title=None):
    """C-EDM's upper cluster bound: utilisation ``r_C = C^u / C`` against the tested numbers of
    clusters ``C`` (log₂ axis), the threshold ``alpha`` and ``c_max`` (default: the largest C
    with ``r_C > alpha``)."""
    C = np.asarray(C, dtype=np.float64).reshape(-1)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    if len(C) != len(r) or len(C) == 0:
        raise ValueError(f"C and r must be non-empty and equally long, got {len(C)} and {len(r)}")
    o = np.argsort(C, kind="stable")
    C, r = C[o], r[o]
    if c_max is None and (r > alpha).any():
        c_max = C[r > alpha].max()
    fig = new_figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    ok = r > alpha
    ax.plot(C, r, "-", lw=1.2, color="0.5")
    ax.plot(C[ok], r[ok], "o", color="tab:green", ms=5, label="r_C > α")
    ax.plot(C[~ok], r[~ok], "o", color="tab:red", ms=5, label="r_C ≤ α")
    ax.axhline(alpha, color="tab:orange", ls="--", lw=1.2, label=f"α = {alpha:g}")
    if c_max is not None:
        ax.axvline(c_max, color="tab:blue", ls=":", lw=1.4, label=f"C_max = {c_max:g}")
    if C.min() > 0 and C.max() / C.min() >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("number of clusters C")
    ax.set_ylabel("utilisation r_C = C^u / C")
    ax.set_ylim(min(0.0, r.min() - 0.05) if r.min() < 0.5 else max(0.0, r.min() - 0.1), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "cluster utilisation (C_max search)", fontsize=10)
    fig.tight_layout()
    return fig


def save_cmax_curve(path, C, r, dpi: int = 100, **kw):
    """:func:`plot_cmax_curve` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_cmax_curve(C, r, **kw), path, dpi=dpi)
