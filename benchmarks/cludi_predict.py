"""CLUDI's prediction speed and quality against the number of DDIM steps at prediction.

Fits one CLUDI on the 1,250 ImageNet-50 DINO features, then for each ``eval_steps`` measures
ACC/NMI/ARI on those 1,250 and the wall time of ``predict`` on 10,000 points (the features tiled,
plus N(0, 0.01²) noise), on the thread count CLUDI uses by default (one). Appends records to
``results/cludi_predict.json``.

    python benchmarks/cludi_predict.py [--n-steps 800] [--eval-steps 50 25 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import DATA_HOME, append_results, record
from diffclust import CLUDI, evaluate, load_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="imagenet50_dino_vits16_val_dev")
    ap.add_argument("--n-steps", type=int, default=800)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[50, 25, 10])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    X, y = load_dataset(a.dataset, data_home=DATA_HOME, return_X_y=True)
    K = len(np.unique(y))
    params = dict(teacher_steps=5, n_chains=4, n_steps=a.n_steps)
    est = CLUDI(K, random_state=a.seed, verbose=False, **params).fit(X)
    rng = np.random.default_rng(0)
    X10 = (np.concatenate([X] * (10_000 // len(X) + 1))[:10_000]
           + 0.01 * rng.standard_normal((10_000, X.shape[1]))).astype(np.float32)
    recs = []
    for steps in a.eval_steps:
        est.set_params(eval_steps=steps)
        m = evaluate(y, est.predict_proba(X).argmax(1))
        t = time.perf_counter()
        est.predict(X10)
        dt = time.perf_counter() - t
        print(f"eval_steps={steps}: ACC {100 * m['acc']:.2f} NMI {100 * m['nmi']:.2f} "
              f"ARI {100 * m['ari']:.2f}; predict 10,000 in {dt:.1f} s", flush=True)
        recs.append(record("cludi", a.dataset, len(X), K, a.seed, m, est.fit_seconds_, dt,
                           params={**params, "eval_steps": steps}, predict_n=10_000))
    append_results("cludi_predict", recs)


if __name__ == "__main__":
    main()
