"""Warnings for degenerate results: a clustering that uses few of its clusters, one cluster
that swallows most points, a loss that never went down, a search that stopped at the edge of
its range. ``fit`` issues each as a ``UserWarning`` and keeps them in ``fit_warnings_``; the CLI
prints them as ``warning:`` lines and the report shows them."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_warnings", "loss_warnings", "edge_warning", "MIN_USED_FRACTION",
           "fit_with_warnings"]

#: a fit that uses fewer than this share of its n_clusters is flagged
MIN_USED_FRACTION = 0.5
#: one cluster holding more than this share of the points (when K >= 5) is flagged
MAX_LARGEST_SHARE = 0.5


def cluster_warnings(labels, n_clusters: int) -> list[str]:
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    counts = np.bincount(labels, minlength=n_clusters)
    used = int((counts > 0).sum())
    out = []
    if used < MIN_USED_FRACTION * n_clusters:
        out.append(f"degenerate result: only {used} of {n_clusters} clusters are used "
                   f"(fewer than {MIN_USED_FRACTION:.0%}); train longer, lower n_clusters, or "
                   f"check the input scaling")
    share = counts.max() / labels.size
    if n_clusters >= 5 and share > MAX_LARGEST_SHARE:
        out.append(f"degenerate result: one cluster holds {share:.0%} of the points; train "
                   f"longer or check the input scaling")
    return out


def loss_warnings(history, key: str = "loss") -> list[str]:
    """A loss whose last logged value is not below its first (at least 4 records; within the
    last training phase when the records name one)."""
    recs = [r for r in history or [] if isinstance(r, dict) and key in r]
    if recs and "phase" in recs[-1]:
        recs = [r for r in recs if r.get("phase") == recs[-1]["phase"]]
    vals = [r[key] for r in recs]
    vals = [v for v in vals if np.isfinite(v)]
    if len(vals) >= 4 and vals[-1] >= vals[0]:
        return [f"the training loss did not decrease ({vals[0]:.4g} at the first record, "
                f"{vals[-1]:.4g} at the last); the fit may have stalled: check lr and n_steps"]
    return []


def edge_warning(name: str, value, low, high) -> list[str]:
    """A search (``name``) that ended at an edge of its range ``[low, high]``."""
    if value in (low, high):
        return [f"the search for {name} stopped at the edge of its range [{low}, {high}] "
                f"({name} = {value}); the optimum may lie outside it: widen the range"]
    return []


def fit_with_warnings(est, X, **fit_kw):
    """``est.fit(X)``, timed, with every ``UserWarning`` it raised collected (each message
    once) instead of printed: ``(seconds, messages)``; the CLI prints them as ``warning:``
    lines and writes them into the run's ``config.json``."""
    import time
    import warnings

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, **fit_kw)
    msgs = list(dict.fromkeys(str(w.message) for w in caught
                              if issubclass(w.category, UserWarning)))
    return time.perf_counter() - t, msgs
