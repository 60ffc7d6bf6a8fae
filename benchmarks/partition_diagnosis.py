"""What a finished feature-set fit's partition looks like: cluster sizes, each cluster's majority
class and purity, the mean confidence, and the accuracy of a balanced read-out.

Restores fits of `features_bench.py` from their final training checkpoints (``--checkpoints``,
the same folder and the same command's method and parameters: the refit trains no step and only
labels) and compares them on one set. The balanced read-out (Sinkhorn–Knopp equipartition of
``train_proba_``, 50 iterations) asks whether a method loses accuracy by unequal cluster sizes
(a merge) or by the partition itself. Each record also holds the share of the 10 nearest
neighbours (cosine) that share a point's label on this set (``neighbor_agreement``): how much the
pairs TEMI learns from carry the classes. Appends to results/partition_diagnosis.json.

    python benchmarks/partition_diagnosis.py --set cifar10_14k --checkpoints DIR \
        --fits "cludi[n_steps=6562]:0" "temi:1" "cludi[neighbor_views=10]:0"
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from _common import Timer, append_results, record
from features import load_set
from features_bench import METHODS

from diffclust import evaluate
from diffclust.knn import knn_search


def balanced_labels(P, n_iter=50):
    """argmax of the equipartitioned ``P`` (rows sum to 1/N, columns to 1/K)."""
    Q = np.asarray(P, dtype=np.float64).copy()
    N, K = Q.shape
    for _ in range(n_iter):
        Q /= Q.sum(0, keepdims=True) * K
        Q /= Q.sum(1, keepdims=True) * N
    return Q.argmax(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--fits", nargs="+", required=True, help="METHOD[k=v]...:SEED")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    a = ap.parse_args()
    X, y = load_set(a.set, a.backbone, a.dim)
    K = len(np.unique(y))
    nbrs, _ = knn_search(X, 10, metric="cosine", exclude_self=True)
    agreement = float((y[np.asarray(nbrs)] == y[:, None]).mean())
    print(f"{a.set}: {100 * agreement:.1f} % of the 10 nearest neighbours share the label",
          flush=True)
    for fit in a.fits:
        name, seed = fit.rsplit(":", 1)
        method = name.split("[")[0]
        params = {k: (int(v) if v.lstrip("-").isdigit() else v)
                  for k, v in re.findall(r"\[(\w+)=([^\]]+)\]", name)}
        folder = Path(a.checkpoints) / f"{a.set}-pca{a.dim}-{name}-seed{seed}"
        if not folder.is_dir():
            raise SystemExit(f"no checkpoint folder {folder}; run features_bench.py with "
                             f"--checkpoints first")
        with Timer() as t:
            est = METHODS[method](K, random_state=int(seed), verbose=False, **params)
            est.fit(X, checkpoint_dir=folder)
        lab = est.labels_
        C = np.zeros((K, K), int)
        np.add.at(C, (lab, y), 1)
        sizes = C.sum(1)
        rb = evaluate(y, balanced_labels(est.train_proba_))
        rec = record(f"{name}", f"{a.set}-{a.backbone}-pca{a.dim}", len(X), K, int(seed),
                     evaluate(y, lab), t.seconds, sizes=sizes.tolist(),
                     majority_class=C.argmax(1).tolist(),
                     purity=np.round(C.max(1) / np.maximum(sizes, 1), 3).tolist(),
                     classes_without_cluster=sorted(set(range(K)) - set(C.argmax(1).tolist())),
                     mean_confidence=round(float(est.train_proba_.max(1).mean()), 4),
                     balanced_acc=round(float(rb["acc"]), 4),
                     balanced_nmi=round(float(rb["nmi"]), 4),
                     neighbor_agreement=round(agreement, 4))
        append_results("partition_diagnosis", [rec])
        print(f"{name} seed {seed}: ACC {100 * rec['acc']:.1f} (balanced read-out "
              f"{100 * rec['balanced_acc']:.1f}), sizes {rec['sizes']}, classes without a "
              f"cluster {rec['classes_without_cluster']}, mean confidence "
              f"{rec['mean_confidence']:.2f}", flush=True)


if __name__ == "__main__":
    main()
