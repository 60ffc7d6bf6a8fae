"""The upper cluster bound C_max from the TEMI cluster utilization ratio (C-EDM §3.3;
METHODS.md §4.3).

``r_C = C^u / C`` with ``C^u`` the number of clusters that receive at least one training
sample after clustering with C clusters (TEMI with γ = 0.6 in the paper). The search:

1. start at ``C = c_start`` and double C while ``r_C > α`` (α = 0.96);
2. with ``C_lo`` the last value with ``r > α`` and ``C_hi`` the first with ``r ≤ α``, bisect
   between them until ``C_hi − C_lo ≤ refine_rel_width · C_lo`` (our choice [PROP]: the paper
   only says "a more fine-grained grid search");
3. ``C_max`` is the largest C tested with ``r_C > α``.

Decisions where the paper is silent [PROP]: ``c_start = 16`` (2^⌈log₂ 10⌉); if already
``r_{c_start} ≤ α`` the search halves C (down to 2) to find the lower end of the bracket; C
never exceeds ``c_limit`` (default: the number of samples) — if r_C is still above α there the
result says ``converged=False``; ``n_seeds > 1`` averages r_C over several seeds per C (r_C from
one run is noisy, METHODS.md §4.6).

This module does not import ``diffclust.methods``: the clusterer is passed in as a factory
``clusterer_factory(n_clusters, random_state) -> estimator`` whose ``fit(X)`` sets
``labels_``. The package wires TEMI in as the default (``diffclust.estimate_cmax``,
``diffclust estimate-k``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..metrics import cluster_utilization

__all__ = ["estimate_cmax", "CmaxResult", "set_default_clusterer"]

_DEFAULT_FACTORY = None


def set_default_clusterer(factory):
    """Set the clusterer used when :func:`estimate_cmax` gets no ``clusterer_factory``
    (``diffclust/__init__.py`` sets TEMI)."""
    global _DEFAULT_FACTORY
    _DEFAULT_FACTORY = factory


@dataclass
class CmaxResult:
    """Outcome of :func:`estimate_cmax`.

    ``table``: one row per C tested, sorted by C: ``{"C", "C_used", "r_C", "phase",
    "seconds"}`` (``C_used`` and ``r_C`` averaged over seeds; ``r_C_seeds`` per seed).
    ``bracket``: ``(C_lo, C_hi)`` of the final bisection interval (``C_hi`` is ``None`` when
    no tested C had ``r_C ≤ α``).
    """

    c_max: int
    alpha: float
    table: list = field(default_factory=list)
    bracket: tuple = (None, None)
    converged: bool = True

    def as_arrays(self):
        """``(C, r_C)`` as numpy arrays, for plotting."""
        return (np.array([r["C"] for r in self.table]), np.array([r["r_C"] for r in self.table]))

    def format_table(self) -> str:
        lines = [f"{'C':>6} {'C_used':>8} {'r_C':>7} {'> alpha':>8} {'phase':>7} {'seconds':>8}"]
        for r in self.table:
            lines.append(f"{r['C']:>6d} {r['C_used']:>8.1f} {r['r_C']:>7.3f} "
                         f"{'yes' if r['r_C'] > self.alpha else 'no':>8} {r['phase']:>7} "
                         f"{r['seconds']:>8.1f}")
        lines.append(f"C_max = {self.c_max} (alpha = {self.alpha}"
                     f"{'' if self.converged else '; r_C never fell to alpha: C_max is a lower bound'})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bracket"] = list(self.bracket)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, ax=None):
        """r_C against C (log₂ axis) with the threshold α and C_max marked."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.2))
        C, r = self.as_arrays()
        ax.plot(C, r, "o-", label="$r_C$")
        ax.axhline(self.alpha, color="gray", ls="--", label=f"α = {self.alpha}")
        ax.axvline(self.c_max, color="C3", ls=":", label=f"$C_{{max}}$ = {self.c_max}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of clusters C")
        ax.set_ylabel("utilization ratio $r_C$")
        ax.legend(frameon=False)
        return ax


def estimate_cmax(X, clusterer_factory=None, c_start: int = 16, alpha: float = 0.96,
                  refine_rel_width: float = 0.1, c_limit: int | None = None, n_seeds: int = 1,
                  random_state: int = 0, verbose: bool = True, callback=None) -> CmaxResult:
    """Search the upper cluster bound C_max (C-EDM §3.3).

    Parameters
    ----------
    X : array (N, D)
        The features the clusterer is fitted on (passed through unchanged).
    clusterer_factory : callable ``(n_clusters, random_state) -> estimator``, optional
        Builds an unfitted clusterer; ``fit(X)`` must set ``labels_``. Default: TEMI (set by
        the ``diffclust`` package).
    c_start : int
        First C (16).
    alpha : float
        Threshold on r_C (0.96).
    refine_rel_width : float
        Stop bisecting once ``C_hi − C_lo ≤ refine_rel_width · C_lo`` (0.1); 0 bisects down to
        neighbouring integers.
    c_limit : int, optional
        Largest C allowed (default: the number of samples).
    n_seeds : int
        Seeds (``random_state, random_state + 1, …``) whose r_C are averaged at every C.
    callback : callable ``(row) -> None``, optional
        Called after every C with its table row (e.g. to log progress).

    Returns
    -------
    CmaxResult with ``c_max``, ``table`` (every C tested with C_used and r_C), ``bracket``.
    """
    factory = clusterer_factory if clusterer_factory is not None else _DEFAULT_FACTORY
    if factory is None:
        raise ValueError("estimate_cmax needs a clusterer_factory(n_clusters, random_state) -> "
                         "estimator, e.g. lambda C, s: TEMI(C, random_state=s) (importing "
                         "diffclust sets TEMI as the default)")
    n = len(X)
    c_limit = n if c_limit is None else int(c_limit)
    if not (isinstance(c_start, (int, np.integer)) and 2 <= c_start <= c_limit):
        raise ValueError(f"c_start must be an integer in [2, {c_limit}] (c_limit / number of "
                         f"samples), got {c_start!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if refine_rel_width < 0:
        raise ValueError(f"refine_rel_width must be >= 0, got {refine_rel_width}")
    if int(n_seeds) < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")

    rows: dict[int, dict] = {}

    def ratio(C: int, phase: str) -> float:
        if C in rows:
            return rows[C]["r_C"]
        t = time.perf_counter()
        rs = []
        for s in range(int(n_seeds)):
            est = factory(int(C), int(random_state) + s)
            est.fit(X)
            rs.append(cluster_utilization(est.labels_, C))
        r = float(np.mean(rs))
        row = {"C": int(C), "C_used": r * C, "r_C": r, "r_C_seeds": rs, "phase": phase,
               "seconds": time.perf_counter() - t}
        rows[C] = row
        if verbose:
            print(f"[C_max] C={C:<5d} r_C={r:.3f} ({phase}, {row['seconds']:.1f}s)", flush=True)
        if callback is not None:
            callback(dict(row))
        return r

    # 1. doubling (or halving when c_start is already past the threshold)
    C = int(c_start)
    converged = True
    if ratio(C, "double") > alpha:
        lo, hi = C, None
        while hi is None:
            if lo >= c_limit:
                converged = False
                break
            C = min(2 * lo, c_limit)
            if ratio(C, "double") > alpha:
                lo = C
            else:
                hi = C
    else:
        lo, hi = None, C
        while lo is None:
            if hi <= 2:
                break
            C = max(hi // 2, 2)
            if ratio(C, "halve") > alpha:
                lo = C
            else:
                hi = C

    # 2. bisection refine inside (lo, hi)
    if lo is not None and hi is not None:
        while hi - lo > max(refine_rel_width * lo, 1):
            mid = (lo + hi) // 2
            if ratio(mid, "refine") > alpha:
                lo = mid
            else:
                hi = mid

    table = [rows[c] for c in sorted(rows)]
    above = [r["C"] for r in table if r["r_C"] > alpha]
    if above:
        c_max = max(above)
    else:
        c_max = min(rows)  # nothing passed the threshold: the smallest C tried
        converged = False
    return CmaxResult(c_max=int(c_max), alpha=float(alpha), table=table, bracket=(lo, hi),
                      converged=converged)

