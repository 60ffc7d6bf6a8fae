"""CLUDI vs k-means on real data (ACC/NMI/ARI, time, memory) and CLUDI's training throughput.

    python benchmarks/cludi.py --dataset imagenet50_dino_vits16_val_dev --seeds 0 1 2
    python benchmarks/cludi.py --dataset usps --seeds 0
    python benchmarks/cludi.py --dataset coil20 --pca 128 --seeds 0
    python benchmarks/cludi.py --throughput          # samples/s and GFLOP/s at the paper's size

Image datasets are used as flat pixels in [0, 1] (optionally PCA-reduced with ``--pca``); the
same matrix goes to k-means. Records are appended to ``benchmarks/results/cludi.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import (DATA_HOME, Timer, append_results, command_line, parse_params, record,
                     summarize)
from diffclust import CLUDI, KMeansClusterer, evaluate, load_dataset


def load(name, pca):
    X, y = load_dataset(name, data_home=DATA_HOME, return_X_y=True, flatten=True)
    if pca:
        from sklearn.decomposition import PCA

        X = PCA(pca, random_state=0).fit_transform(X).astype(np.float32)
    return X, y


def bf16_matmul_rate(n=2048, k=576, reps=200):
    a = torch.randn(n, k, dtype=torch.bfloat16)
    w = torch.randn(k, k, dtype=torch.bfloat16)
    for _ in range(5):
        a @ w
    t = time.perf_counter()
    for _ in range(reps):
        a @ w
    return 2 * n * k * k * reps / (time.perf_counter() - t) / 1e9


def throughput(steps=20, **kw):
    """Training samples/s at batch 256, 8 chains, the default 10 teacher steps (``--param
    teacher_steps=25``: the paper's; D = 384, K = 50) and the achieved GFLOP/s, with FLOPs
    counted by torch's FlopCounterMode on one real step."""
    from torch.utils.flop_counter import FlopCounterMode

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4096, 384)).astype(np.float32)
    m = CLUDI(50, n_steps=1, random_state=0, verbose=False, **kw)
    m._validate_input(X, fitting=True)
    m._setup_runtime()
    m._make_schedule()
    net = m._build(384)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    Xt = torch.from_numpy(X)
    g = m.generator_

    def one():
        idx = torch.randint(0, len(X), (m.batch_size,), generator=g)
        loss, _ = m._train_step(net, net, Xt[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        one()
    flops = fc.get_total_flops()
    for _ in range(2):
        one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    dt = (time.perf_counter() - t) / steps
    return {"samples_per_s": m.batch_size / dt, "seconds_per_step": dt,
            "gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9,
            "bf16_matmul_gflops": bf16_matmul_rate()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="imagenet50_dino_vits16_val_dev")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pca", type=int, default=0)
    ap.add_argument("--n-steps", default="auto")
    ap.add_argument("--param", nargs="*", default=[], help="extra CLUDI params KEY=VALUE")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    extra = parse_params(args.param)
    if args.throughput:
        res = throughput(**extra)
        print(res)
        if not args.no_save:
            append_results("cludi", [{"method": "cludi-throughput", **res,
                                      "command": command_line(),
                                      "date": time.strftime("%Y-%m-%d")}])
        return
    X, y = load(args.dataset, args.pca)
    k = len(np.unique(y))
    name = args.dataset + (f"-pca{args.pca}" if args.pca else "")
    print(f"{name}: X {X.shape}, K={k}")
    recs = []
    for seed in args.seeds:
        with Timer() as tk:
            km = KMeansClusterer(k, random_state=seed).fit(X)
        recs.append(record("kmeans", name, len(X), k, seed, evaluate(y, km.labels_), tk.seconds))
        n_steps = args.n_steps if args.n_steps == "auto" else int(args.n_steps)
        m = CLUDI(k, n_steps=n_steps, random_state=seed, verbose=False, **extra)
        with Timer() as tf:
            m.fit(X)
        with Timer() as tp:
            labels = m.predict(X)
        res = evaluate(y, m.labels_)
        recs.append(record("cludi", name, len(X), k, seed, res, tf.seconds, tp.seconds,
                           n_steps=m.n_steps_, params={k_: v for k_, v in extra.items()},
                           predict_agrees_with_labels=float((labels == m.labels_).mean())))
        print(f"seed {seed}: kmeans {recs[-2]['acc']:.3f}/{recs[-2]['nmi']:.3f}/"
              f"{recs[-2]['ari']:.3f}  cludi {res['acc']:.3f}/{res['nmi']:.3f}/{res['ari']:.3f}"
              f"  fit {tf.seconds:.0f}s predict {tp.seconds:.1f}s", flush=True)
    for meth in ("kmeans", "cludi"):
        s = summarize([r for r in recs if r["method"] == meth])
        print(meth, {k_: f"{100 * m_:.1f} ± {100 * s_:.1f}" for k_, (m_, s_) in s.items()})
    if not args.no_save:
        append_results("cludi", recs)


if __name__ == "__main__":
    main()
