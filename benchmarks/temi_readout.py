"""How to read clusters out of TEMI's trained heads: each head alone, the paper's lowest-loss
head, and consensus read-outs of all heads, on the same finished fits.

Restores fits of `features_bench.py` from their final training checkpoints (``--checkpoints``:
the refit trains no step) and evaluates, on the training set:

* every head alone (min / median / max ACC) and the selected, lowest-loss head (the paper);
* ``medoid``: the head whose partition agrees most (NMI) with the others;
* ``aligned_to_medoid``: all heads relabelled onto the medoid head (Hungarian) and averaged;
* ``kmeans_concat``: k-means on the concatenated heads' probabilities;
* ``hbgf``: the HBGF consensus partition (:func:`diffclust.consensus.consensus_partition`);
* ``hbgf_aligned``: all heads relabelled onto the HBGF partition and averaged (TEMI's
  ``readout="consensus"``).

Appends one record per fit to results/temi_readout.json.

    python benchmarks/temi_readout.py --set usps --checkpoints DIR --seeds 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import Timer, append_results, record
from features import load_set
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from diffclust import TEMI, evaluate
from diffclust.consensus import align_partitions, consensus_partition


def aligned_mean(P, labels, reference, K):
    """Mean of the heads' probabilities P (H, N, K), each relabelled onto ``reference``."""
    perm = align_partitions(labels, reference, K)
    Q = np.zeros_like(P)
    for h in range(len(P)):
        Q[h][:, perm[h]] = P[h]
    return Q.mean(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    a = ap.parse_args()
    X, y = load_set(a.set, a.backbone, a.dim)
    K = len(np.unique(y))
    for seed in a.seeds:
        folder = Path(a.checkpoints) / f"{a.set}-pca{a.dim}-temi-seed{seed}"
        if not folder.is_dir():
            raise SystemExit(f"no checkpoint folder {folder}; run features_bench.py with "
                             f"--checkpoints first")
        with Timer() as t:
            est = TEMI(K, random_state=seed, verbose=False).fit(X, checkpoint_dir=folder)
        P = est._map_heads(lambda p: p.transpose(0, 1), X).transpose(0, 1).numpy()
        L = P.argmax(-1).T  # (N, H)
        H = L.shape[1]
        acc = {"head_" + str(h): evaluate(y, L[:, h])["acc"] for h in range(H)}
        agree = np.array([[normalized_mutual_info_score(L[:, i], L[:, j]) if i != j else 0.0
                           for j in range(H)] for i in range(H)])
        medoid = int(agree.sum(1).argmax())
        hbgf = consensus_partition(L, K, random_state=seed)
        out = {
            "selected": evaluate(y, L[:, est.selected_head_]),
            "medoid": evaluate(y, L[:, medoid]),
            "aligned_to_medoid": evaluate(y, aligned_mean(P, L, L[:, medoid], K).argmax(1)),
            "kmeans_concat": evaluate(y, KMeans(K, n_init=10, random_state=seed).fit_predict(
                np.concatenate(list(P), 1))),
            "hbgf": evaluate(y, hbgf),
            "hbgf_aligned": evaluate(y, out_labels := aligned_mean(P, L, hbgf, K).argmax(1)),
        }
        heads = np.array(list(acc.values()))
        rec = record("temi-readout", f"{a.set}-{a.backbone}-pca{a.dim}", len(X), K, seed,
                     out["hbgf_aligned"], t.seconds, selected_head=est.selected_head_,
                     medoid_head=medoid, head_acc=[round(v, 4) for v in heads],
                     readouts={k: {m: round(v, 4) for m, v in r.items()}
                               for k, r in out.items()},
                     # the same partition as the estimator's (its cluster ids may be renamed)
                     estimator_labels_match=evaluate(est.labels_, out_labels)["ari"] == 1.0)
        append_results("temi_readout", [rec])
        print(f"{a.set} seed {seed}: heads ACC {100 * heads.min():.1f}–{100 * heads.max():.1f} "
              f"(median {100 * np.median(heads):.1f}); " +
              "; ".join(f"{k} {100 * r['acc']:.1f}" for k, r in out.items()), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
