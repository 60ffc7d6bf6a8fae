"""How CLUDI reads labels out of a fitted model: chains, DDIM steps, and what is averaged.

Loads a CLUDI saved by ``features_bench.py --save`` and labels the same feature set with each
read-out: ``eval_chains`` (ours 8, the authors' validation 64), ``eval_steps`` (ours 10, theirs
50) and ``average`` (ours: probabilities, eq. 3; theirs: logits). Appends records to
``results/cludi_readout.json``.

    python benchmarks/cludi_readout.py --model DIR --set usps
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import append_results, record
from features import DEFAULT_CACHE, build

from diffclust import CLUDI, evaluate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", required=True)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    a = ap.parse_args()
    z = np.load(build(a.set, a.backbone, DEFAULT_CACHE))
    X, y = z["x"], z["y"]
    if a.dim and a.dim < X.shape[1]:
        from sklearn.decomposition import PCA

        X = PCA(a.dim, random_state=0).fit_transform(X).astype(np.float32)
    est = CLUDI.from_pretrained(a.model)
    est.set_params(verbose=False)
    recs = []
    for chains, steps, average in ((8, 10, "probs"), (8, 10, "logits"), (64, 10, "probs"),
                                   (64, 10, "logits"), (8, 50, "probs"), (64, 50, "logits")):
        est.set_params(eval_chains=chains, eval_steps=steps, average=average)
        t = time.perf_counter()
        m = evaluate(y, est.predict(X))
        dt = time.perf_counter() - t
        print(f"chains {chains} steps {steps} {average}: ACC {100 * m['acc']:.2f} "
              f"NMI {100 * m['nmi']:.2f} ARI {100 * m['ari']:.2f} ({dt:.0f} s)", flush=True)
        recs.append(record("cludi", f"{a.set}-{a.backbone}-pca{a.dim}", len(X),
                           len(np.unique(y)), est.random_state, m, est.fit_seconds_, dt,
                           readout={"eval_chains": chains, "eval_steps": steps,
                                    "average": average}, model=a.model))
    append_results("cludi_readout", recs)


if __name__ == "__main__":
    main()
