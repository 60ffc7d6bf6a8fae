"""TEMI vs k-means on real features, and the C_max search (C-EDM §3.3) on real data.

    python benchmarks/temi.py --dataset imagenet50_dino_vits16_val_dev --seeds 0 1 2
    python benchmarks/temi.py --cmax --dataset imagenet50_dino_vits16_val_dev
    python benchmarks/temi.py --cmax --dataset usps --pca 64

Image datasets are used as flat pixels in [0, 1] (optionally PCA-reduced with ``--pca``); the
same matrix goes to k-means. Clustering records go to ``benchmarks/results/temi.json``; each
C_max search is one record (``method = "cmax"``) holding the whole (C, r_C) table, and its r_C
curve is plotted to ``benchmarks/results/cmax_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import (RESULTS, Timer, append_results, command_line, parse_params, record,
                     summarize)
from cludi import load
from diffclust import TEMI, KMeansClusterer, estimate_cmax, evaluate


def run_cmax(X, name, args, extra):
    def factory(C, seed):
        return TEMI(C, random_state=seed, verbose=False, **extra)

    with Timer() as t:
        res = estimate_cmax(X, factory, c_start=args.c_start, alpha=args.alpha,
                            n_seeds=args.cmax_seeds, random_state=args.seeds[0])
    print(res.format_table())
    print(f"C_max = {res.c_max} (converged={res.converged}) in {t.seconds:.0f}s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    res.plot(ax=ax)
    ax.set_title(f"r_C on {name}: C_max = {res.c_max}")
    fig.tight_layout()
    png = RESULTS / f"cmax_{name}.png"
    if not args.no_save:
        fig.savefig(png, dpi=120)
        append_results("temi", [{"method": "cmax", "dataset": name, "n": len(X),
                                 "c_max": res.c_max, "alpha": res.alpha,
                                 "converged": res.converged, "table": res.table,
                                 "params": extra, "seconds": round(t.seconds, 1),
                                 "plot": png.name, "command": command_line(),
                                 "date": time.strftime("%Y-%m-%d")}])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="imagenet50_dino_vits16_val_dev")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pca", type=int, default=0)
    ap.add_argument("--param", nargs="*", default=[], help="extra TEMI params KEY=VALUE")
    ap.add_argument("--cmax", action="store_true", help="run the C_max search instead")
    ap.add_argument("--c-start", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.96)
    ap.add_argument("--cmax-seeds", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    extra = parse_params(args.param)
    X, y = load(args.dataset, args.pca)
    k = len(np.unique(y))
    name = args.dataset + (f"-pca{args.pca}" if args.pca else "")
    print(f"{name}: X {X.shape}, K={k}", flush=True)
    if args.cmax:
        return run_cmax(X, name, args, extra)
    recs = []
    for seed in args.seeds:
        with Timer() as tk:
            km = KMeansClusterer(k, random_state=seed).fit(X)
        recs.append(record("kmeans", name, len(X), k, seed, evaluate(y, km.labels_), tk.seconds))
        m = TEMI(k, random_state=seed, verbose=False, **extra)
        with Timer() as tf:
            m.fit(X)
        with Timer() as tp:
            labels = m.predict(X)
        res = evaluate(y, m.labels_)
        # the paper's read-out (the selected head alone) of the same training, for comparison
        best = m.head_ if m.head_.n_heads == 1 else m.head_.select(m.selected_head_)
        with torch.no_grad():
            best_labels = best(m._preprocess(X))[0].argmax(-1).numpy()
        recs.append(record("temi", name, len(X), k, seed, res, tf.seconds, tp.seconds,
                           readout=m.readout, best_head=evaluate(y, best_labels),
                           n_steps=m.n_steps_, selected_head=int(m.selected_head_),
                           utilization=float(m.utilization_), params=extra,
                           predict_agrees_with_labels=float((labels == m.labels_).mean())))
        print(f"seed {seed}: kmeans {recs[-2]['acc']:.3f}/{recs[-2]['nmi']:.3f}/"
              f"{recs[-2]['ari']:.3f}  temi {res['acc']:.3f}/{res['nmi']:.3f}/{res['ari']:.3f}"
              f"  fit {tf.seconds:.0f}s predict {tp.seconds:.1f}s", flush=True)
    for meth in ("kmeans", "temi"):
        s = summarize([r for r in recs if r["method"] == meth])
        print(meth, {k_: f"{100 * m_:.1f} ± {100 * s_:.1f}" for k_, (m_, s_) in s.items()})
    if not args.no_save:
        append_results("temi", recs)


if __name__ == "__main__":
    main()
