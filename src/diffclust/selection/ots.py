"""DiEC's Optimal Timestep Search (OTS; METHODS.md §3.3).

The clusterability score ``S(t)`` of diffusion features is roughly unimodal in the timestep t
(DiEC §4, "improving at moderate noise levels and degrading as the noise becomes too strong"),
so its maximiser ``t* = argmax_t S(t)`` (eq. 10) can be found with a golden-section search that
needs only O(log T) evaluations of S instead of a scan of all T steps.

[PROP] (the paper gives no Algorithm 1):

* candidates: an increasing list of integer timesteps (default: every t in ``[lo, hi]``); the
  search runs over their indices, so a coarse candidate set (e.g. every 10th step) also works;
* optional coarse-grid guard: evaluate ``grid`` evenly spaced candidates first and bracket the
  best one by its two grid neighbours — protects against a non-unimodal S;
* golden-section search inside the bracket (reusing one interior point per iteration) until it
  is at most ``tol`` candidates wide, then evaluate ``n_final`` evenly spaced candidates in it
  (all of them when ``n_final`` is ``None``);
* every evaluation is cached; ``t*`` is the best cached candidate.

:func:`clusterability_score` is the paper's score: k-means with K clusters, then the
Calinski–Harabasz index of the partition (eq. 14). :func:`graph_cut_score` [PROP] is the
negative normalised cut of the spectral partition of the features' k-NN graph
(:mod:`diffclust.graph`): CH rises with t past the best timestep on USPS while the cut is
smallest at it (DECISIONS.md, "DiEC: the k-NN graph partition").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["OTSResult", "clusterability_score", "full_scan", "golden_section_argmax",
           "graph_cut_score", "optimal_timestep"]

_INVPHI = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass
class OTSResult:
    """``t_star`` (best candidate), ``scores`` ({t: S(t)} for every evaluated t, sorted by t),
    ``n_evals`` and ``seconds``."""

    t_star: int
    scores: dict = field(default_factory=dict)
    n_evals: int = 0
    seconds: float = 0.0

    @property
    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        t = np.array(sorted(self.scores), dtype=np.int64)
        return t, np.array([self.scores[int(v)] for v in t], dtype=np.float64)


def _check_candidates(candidates) -> np.ndarray:
    c = np.asarray(candidates, dtype=np.int64).reshape(-1)
    if len(c) == 0:
        raise ValueError("OTS needs at least one candidate timestep")
    if np.any(np.diff(c) <= 0):
        raise ValueError("OTS candidates must be strictly increasing integers")
    return c


def golden_section_argmax(score: Callable[[int], float], candidates: Sequence[int], tol: int = 16,
                          grid: int = 8, n_final: int | None = 5, verbose: bool = False,
                          cache: dict | None = None) -> OTSResult:
    """Maximise a (roughly) unimodal ``score(t)`` over ``candidates`` with few evaluations.

    ``tol``: stop the golden-section phase once the bracket spans ≤ ``tol`` candidates.
    ``grid``: size of the coarse guard grid (0 or 1 disables it). ``n_final``: evenly spaced
    evaluations inside the last bracket (``None`` = all of them). ``cache`` ({t: score}) can hold
    earlier evaluations and is filled in place.
    """
    c = _check_candidates(candidates)
    cache = {} if cache is None else cache
    t0 = time.perf_counter()
    n_new = [0]

    def F(i: int) -> float:
        t = int(c[i])
        if t not in cache:
            s = float(score(t))
            cache[t] = s if math.isfinite(s) else -math.inf
            n_new[0] += 1
            if verbose:
                print(f"  OTS t={t:5d}  score={cache[t]:.4g}", flush=True)
        return cache[t]

    a, b = 0, len(c) - 1
    if grid and grid > 1 and len(c) > grid:
        pts = np.unique(np.round(np.linspace(0, len(c) - 1, grid)).astype(int))
        vals = [F(int(i)) for i in pts]
        j = int(np.argmax(vals))
        a, b = int(pts[max(j - 1, 0)]), int(pts[min(j + 1, len(pts) - 1)])
    tol = max(int(tol), 2)
    if b - a > tol:
        x1 = b - int(round(_INVPHI * (b - a)))
        x2 = a + int(round(_INVPHI * (b - a)))
        while b - a > tol:
            if x1 >= x2:  # rounding collapsed the two interior points
                x1, x2 = (a + b) // 2, (a + b) // 2 + 1
            if F(x1) >= F(x2):  # the maximum lies in [a, x2]
                b, x2 = x2, x1
                x1 = b - int(round(_INVPHI * (b - a)))
            else:  # the maximum lies in [x1, b]
                a, x1 = x1, x2
                x2 = a + int(round(_INVPHI * (b - a)))
    m = b - a + 1 if n_final is None else min(int(n_final), b - a + 1)
    for i in np.unique(np.round(np.linspace(a, b, max(m, 1))).astype(int)):
        F(int(i))
    inside = {int(t): s for t, s in cache.items()}
    t_star = max(inside, key=lambda t: (inside[t], -t))
    return OTSResult(int(t_star), dict(sorted(cache.items())), n_new[0],
                     time.perf_counter() - t0)


def full_scan(score: Callable[[int], float], candidates: Sequence[int],
              cache: dict | None = None) -> OTSResult:
    """Evaluate every candidate (the reference the search is compared with)."""
    c = _check_candidates(candidates)
    cache = {} if cache is None else cache
    t0, n = time.perf_counter(), 0
    for t in c:
        if int(t) not in cache:
            cache[int(t)] = float(score(int(t)))
            n += 1
    t_star = max(cache, key=lambda t: (cache[t], -t))
    return OTSResult(int(t_star), dict(sorted(cache.items())), n, time.perf_counter() - t0)


def clusterability_score(features, n_clusters: int, n_init: int = 3, seed: int = 0) -> float:
    """``Ŝ = CH(features, kmeans(features, K))`` (DiEC eq. 14); k-means++ with ``n_init``
    restarts. Returns 0 when k-means finds fewer than two clusters."""
    from sklearn.cluster import KMeans

    from ..metrics import calinski_harabasz

    X = np.asarray(features, dtype=np.float32)
    labels = KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(X)
    if len(np.unique(labels)) < 2:
        return 0.0
    return float(calinski_harabasz(X, labels))


def graph_cut_score(features, n_clusters: int, n_neighbors: int = 10, seed: int = 0) -> float:
    """``Ŝ = −Ncut(spectral_K(G_k(e)))``: the features standardised per dimension, their
    symmetric k-NN graph (cosine), its spectral partition into K groups, and minus that
    partition's normalised cut (:mod:`diffclust.graph`)."""
    from ..graph import spectral_partition

    X = np.asarray(features, dtype=np.float64)
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-6)
    return -spectral_partition(X, n_clusters, n_neighbors=min(n_neighbors, len(X) - 1),
                               random_state=seed)[1]


def optimal_timestep(features: Callable, X, n_clusters: int, candidates: Sequence[int], *,
                     subset: int, generator: torch.Generator, seed: int = 0, n_init: int = 3,
                     tol: int = 16, grid: int = 8, n_final: int | None = 5,
                     criterion: str = "ch", n_neighbors: int = 10,
                     verbose: bool = False) -> OTSResult:
    """The Optimal Timestep Search: ``t* = argmax_t Ŝ(e(t))`` (eq. 10) by
    :func:`golden_section_argmax` over ``candidates``, ``e(t) = features(t, X_m)`` on one random
    subset ``X_m`` of ``subset`` rows of ``X`` (sorted; drawn from ``generator``), the same for
    every t (``features`` should draw its noise alike for every t: common random numbers).
    ``criterion``: ``"ch"`` the paper's CH of k-means (eq. 14, :func:`clusterability_score`),
    ``"ncut"`` :func:`graph_cut_score` with ``n_neighbors``."""
    if criterion not in ("ch", "ncut"):
        raise ValueError(f"criterion must be 'ch' or 'ncut', got {criterion!r}")
    m = min(len(X), int(subset))
    X_m = X[np.sort(torch.randperm(len(X), generator=generator)[:m].numpy())]
    if verbose:
        print(f"OTS: m={m}, t in [{int(candidates[0])}, {int(candidates[-1])}]", flush=True)
    if criterion == "ch":
        def score(t):
            return clusterability_score(features(t, X_m), n_clusters, n_init, seed)
    else:
        def score(t):
            return graph_cut_score(features(t, X_m), n_clusters, n_neighbors, seed)
    return golden_section_argmax(score, candidates, tol=tol, grid=grid, n_final=n_final,
                                 verbose=verbose)
