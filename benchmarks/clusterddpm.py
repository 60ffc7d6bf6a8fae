"""ClusterDDPM next to k-means and a diagonal GMM on the same pixels (ACC/NMI/ARI, time, memory),
the latent-space k-NN check and a sample grid per cluster.

    python benchmarks/clusterddpm.py --dataset usps --n 2000 --seeds 0
    python benchmarks/clusterddpm.py --dataset mnist --n 10000 --paper-defaults --seeds 0
    python benchmarks/clusterddpm.py --dataset fashion_mnist --n 10000 --paper-defaults
    python benchmarks/clusterddpm.py --dataset coil20 --paper-defaults   # 1,440 images at 32×32
    python benchmarks/clusterddpm.py --dataset usps --n 300 --pretrain-epochs 1 --em-iters 1 \\
        --no-save                                                          # smoke test

Images are used as they are (USPS 16×16, MNIST/Fashion-MNIST 28×28 padded to 32×32 inside the
U-Net); COIL-20 is downsampled from 128×128 to 32×32 (area averaging). ``--n`` takes a random
subset (seed 0; 0 = all images): the paper's MNIST run (70k images, 10 + 570 epochs) is a GPU job,
on CPU use a documented subset. ``--paper-defaults`` takes J and λ from the paper
(``PAPER_DEFAULTS``: MNIST J=32 λ=0.1, FMNIST J=64 λ=0.001, COIL-20 J=10 λ=0.05 T=1000).

k-NN check (paper Table 3): the subset is split 70/30 (stratified, seed 0); a k-NN classifier on
the learned latents μ_φ and one on the raw pixels are scored on the held-out 30% for
k ∈ {3, 100, 1000} (k's larger than the training part are skipped). ClusterDDPM itself is fitted
on all the images without labels, as in the paper.

Records are appended to ``benchmarks/results/clusterddpm.json``; the sample grid (8 images per
cluster, one row per cluster) goes to ``benchmarks/results/clusterddpm_<dataset>_seed<s>.png``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from _common import DATA_HOME, RESULTS, Timer, append_results, record, summarize

from diffclust import ClusterDDPM, GMMClusterer, KMeansClusterer, evaluate, load_dataset
from diffclust.methods.clusterddpm import PAPER_DEFAULTS


def load(name, n, size=None):
    X, y = load_dataset(name, data_home=DATA_HOME, return_X_y=True)
    if name == "coil20" and size is None:
        size = 32
    if n and n < len(X):
        idx = np.sort(np.random.default_rng(0).choice(len(X), n, replace=False))
        X, y = X[idx], y[idx]
    if size and X.shape[1] != size:
        t = torch.from_numpy(X).float()
        t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")
        X = t.round().clamp(0, 255).to(torch.uint8).numpy()
        X = X[:, 0] if X.shape[1] == 1 else X.transpose(0, 2, 3, 1)
    return X, y


def knn_check(Z, P, y, ks=(3, 100, 1000)):
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.3, random_state=0, stratify=y)
    out = {}
    for name, F in (("latent", Z), ("pixels", P)):
        for k in ks:
            if k > len(tr):
                continue
            clf = KNeighborsClassifier(k).fit(F[tr], y[tr])
            out[f"knn{k}_{name}"] = round(float((clf.predict(F[te]) == y[te]).mean()), 4)
    return out


def add_model_args(ap):
    """The data and ClusterDDPM settings of a run (shared with ``clusterddpm_latent.py``)."""
    ap.add_argument("--dataset", default="usps")
    ap.add_argument("--n", type=int, default=2000, help="random subset size (0 = all images)")
    ap.add_argument("--size", type=int, default=None, help="resize images to this side")
    ap.add_argument("--pretrain-epochs", type=lambda v: v if v == "auto" else int(v), default=25,
                    help="pre-training epochs, or 'auto' (the estimator's default)")
    ap.add_argument("--em-iters", type=int, default=15, help="EM rounds (the paper's epochs)")
    ap.add_argument("--paper-defaults", action="store_true", help="J and λ of the paper")
    ap.add_argument("--param", nargs="*", default=[], help="extra ClusterDDPM params KEY=VALUE")


def model_params(args, ap) -> dict:
    """ClusterDDPM's keyword arguments from :func:`add_model_args`' options."""
    params = {}
    if args.paper_defaults:
        key = args.dataset.replace("-", "_")
        if key not in PAPER_DEFAULTS:
            ap.error(f"no paper defaults for {args.dataset}; known {sorted(PAPER_DEFAULTS)}")
        params.update(PAPER_DEFAULTS[key])
    for kv in args.param:
        k, v = kv.split("=", 1)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    params.update(pretrain_epochs=args.pretrain_epochs, n_em_iters=args.em_iters)
    return params


def run_name(args, n) -> str:
    """The records' dataset name: the set, the side when resized, the subset size."""
    full = len(load_dataset(args.dataset, data_home=DATA_HOME).y)
    return (args.dataset + (f"{args.size}px" if args.size else "")
            + (f"-n{n}" if n < full else ""))


def parse_run(ap):
    """Parse ``ap`` (with :func:`add_model_args` and ``--threads``), set the threads, load the
    images: ``(args, params, X, y, name)``."""
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y = load(args.dataset, args.n, args.size)
    return args, model_params(args, ap), X, y, run_name(args, len(X))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_model_args(ap)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-knn", action="store_true")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--checkpoint-dir", default=None,
                    help="resumable fits: one sub-folder per seed (per-epoch checkpoints)")
    args, params, X, y, name = parse_run(ap)
    k = len(np.unique(y))
    P = X.reshape(len(X), -1).astype(np.float32) / 255.0
    print(f"{name}: X {X.shape}, K={k}, params {params}", flush=True)
    recs = []
    for seed in args.seeds:
        with Timer() as tk:
            km = KMeansClusterer(k, random_state=seed).fit(P)
        recs.append(record("kmeans", name, len(X), k, seed, evaluate(y, km.labels_), tk.seconds))
        with Timer() as tg:
            gm = GMMClusterer(k, random_state=seed).fit(P)
        recs.append(record("gmm", name, len(X), k, seed, evaluate(y, gm.labels_), tg.seconds))
        m = ClusterDDPM(k, random_state=seed, verbose=True, **params)
        ck = f"{args.checkpoint_dir}/{name}-seed{seed}" if args.checkpoint_dir else None
        with Timer() as tf:
            m.fit(X, checkpoint_dir=ck)
        with Timer() as tp:
            labels = m.predict(X)
        res = evaluate(y, m.labels_)
        n_ep = m.n_pretrain_epochs_ + m.n_em_iters * m.m_step_epochs
        extra = {"params": {**params, "latent_dim": m.latent_dim, "lam": m.lam,
                            "covariance_type": m.covariance_type},
                 "seconds_per_epoch": round(tf.seconds / max(n_ep, 1), 2),
                 "predict_agrees_with_labels": float((labels == m.labels_).mean()),
                 "last_label_change": m.history_[-1].get("label_change") if m.history_ else None}
        if not args.no_knn:
            extra.update(knn_check(m.transform(X), P, y))
        if not args.no_grid:
            from diffclust.viz.images import save_image_grid

            per = 8
            imgs, _ = m.sample(per * k, cluster=np.repeat(np.arange(k), per), random_state=seed)
            if not args.no_save:
                png = RESULTS / f"clusterddpm_{args.dataset}_seed{seed}.png"
                save_image_grid(png, imgs, nrow=per)
                extra["sample_grid"] = str(png.relative_to(RESULTS.parent))
        recs.append(record("clusterddpm", name, len(X), k, seed, res, tf.seconds, tp.seconds,
                           **extra))
        print(f"seed {seed}: kmeans {recs[-3]['acc']:.3f}/{recs[-3]['nmi']:.3f}  gmm "
              f"{recs[-2]['acc']:.3f}/{recs[-2]['nmi']:.3f}  clusterddpm {res['acc']:.3f}/"
              f"{res['nmi']:.3f}/{res['ari']:.3f}  fit {tf.seconds:.0f}s "
              f"({extra['seconds_per_epoch']}s/epoch)", flush=True)
        knn = {k_: v for k_, v in extra.items() if k_.startswith("knn")}
        if knn:
            print("  k-NN accuracy:", knn, flush=True)
    for meth in ("kmeans", "gmm", "clusterddpm"):
        s = summarize([r for r in recs if r["method"] == meth])
        print(meth, {k_: f"{100 * m_:.1f} ± {100 * s_:.1f}" for k_, (m_, s_) in s.items()})
    if not args.no_save:
        append_results("clusterddpm", recs)


if __name__ == "__main__":
    main()
