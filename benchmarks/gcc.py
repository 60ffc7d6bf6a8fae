"""GCC vs its own Stage-I head vs k-means on the Stage-I features (ACC/NMI/ARI, time, memory).

    # USPS, CPU scale (≈ 20–30 min per seed on 2 cores; see the defaults below)
    python benchmarks/gcc.py --dataset usps --seeds 0
    # MNIST subset
    python benchmarks/gcc.py --dataset mnist --n 10000 --seeds 0
    # imbalanced USPS (class k keeps ratio^(k/(K-1)) of its images): GCC vs k-means
    python benchmarks/gcc.py --dataset usps --imbalanced 0.1 --seeds 0
    # ablations: drop L_d / L_cwm / L_ml; the paper's exact Stage II (no real-image anchor)
    python benchmarks/gcc.py --dataset usps --ablation no-mmd
    python benchmarks/gcc.py --dataset usps --paper-stage2
    # CIFAR-10 protocol (train on the train split, evaluate on the test split) at small scale
    python benchmarks/gcc.py --cifar --n 4000 --width 16
    # CIFAR-10 at the paper's scale needs a GPU:
    python benchmarks/gcc.py --cifar --width 64 --clr-epochs 500 --clr-batch 512 \
        --ddpm-epochs 300 --rounds 10 --calib-epochs 5 --gen-epochs 2 --n-generate 0 \
        --sample-steps 100 --unet-preset base --threads 0 --device cuda

The defaults are a CPU scale-down of the paper (§4.1 and METHODS.md §6): a width-16 ResNet-18
(1/16 of the FLOPs), 40 SimCLR epochs instead of 500, 10 DDPM epochs instead of 300, 5 rounds of
(3 calibration + 1 generator) epochs instead of 10 × (5 + 2), a pool of 2000 generated images per
round with 20 DDIM steps. Records go to ``benchmarks/results/gcc.json``: ``gcc`` (the calibrated
head), ``gcc-stage1`` (the head after Stage I) and ``kmeans-stage1-features`` (k-means on the
Stage-I features; the paper's "pretext + k-means"), ``multiscale-stage1-features`` (the head's
pseudo-labels, ``partition``'s default) and ``kmeans-pixels`` (k-means on the same pixels).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import DATA_HOME, Timer, append_results, parse_params, record, summarize

from diffclust import GCC, KMeansClusterer, evaluate, load_dataset


def subset(X, y, n, seed):
    if not n or n >= len(X):
        return X, y
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(X)), train_size=n, stratify=y, random_state=seed)
    idx = np.sort(idx)
    return X[idx], y[idx]


def imbalance(X, y, ratio, seed):
    """Keep ``ratio^(k/(K-1))`` of class k (class 0 whole, the last class ``ratio`` of it)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    keep = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        m = max(1, int(round(len(idx) * ratio ** (i / max(1, len(classes) - 1)))))
        keep.append(rng.choice(idx, m, replace=False))
    keep = np.sort(np.concatenate(keep))
    return X[keep], y[keep]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="usps")
    ap.add_argument("--cifar", action="store_true",
                    help="train on cifar10_lossless_train4000, evaluate on cifar10_jpeg_test")
    ap.add_argument("--n", type=int, default=0, help="stratified subset of the training images")
    ap.add_argument("--n-test", type=int, default=2000, help="test subset with --cifar")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--clr-epochs", type=int, default=40)
    ap.add_argument("--clr-batch", type=int, default=256)
    ap.add_argument("--head-epochs", type=int, default=100)
    ap.add_argument("--ddpm-epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calib-epochs", type=int, default=3)
    ap.add_argument("--gen-epochs", type=int, default=1)
    ap.add_argument("--n-generate", type=int, default=2000, help="0 = N (the paper-style pool)")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--unet-preset", default="auto")
    ap.add_argument("--ablation", choices=["none", "no-mmd", "no-cwm", "no-ml"], default="none")
    ap.add_argument("--paper-stage2", action="store_true",
                    help="the paper's exact eq. 12 (no real-image anchor, summed L_d, labels of "
                         "the moving network in every batch); default: GCC's [PROP] anchor")
    ap.add_argument("--imbalanced", type=float, default=0.0,
                    help="imbalance ratio (e.g. 0.1); 0 = balanced")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--param", nargs="*", default=[], help="extra GCC params KEY=VALUE")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = parse_params(args.param)
    if args.cifar:
        X, y = load_dataset("cifar10_lossless_train4000", data_home=DATA_HOME, return_X_y=True)
        Xte, yte = load_dataset("cifar10_jpeg_test", data_home=DATA_HOME, return_X_y=True)
        Xte, yte = subset(Xte, yte, args.n_test, 0)
        name = "cifar10_train4000->jpeg_test"
    else:
        X, y = load_dataset(args.dataset, data_home=DATA_HOME, return_X_y=True)
        Xte = yte = None
        name = args.dataset
    ablation = {"none": {}, "no-mmd": {"use_mmd": False}, "no-cwm": {"use_cwm": False},
                "no-ml": {"use_ml": False}}[args.ablation]
    recs = []
    for seed in args.seeds:
        Xs, ys = subset(X, y, args.n, seed)
        tag = name
        if args.imbalanced:
            Xs, ys = imbalance(Xs, ys, args.imbalanced, seed)
            tag = f"{name}-imbalanced{args.imbalanced:g}"
        if args.n:
            tag += f"-n{args.n}"
        k = len(np.unique(y))
        print(f"{tag}: X {Xs.shape}, K={k}, class sizes {np.bincount(ys).tolist()}", flush=True)
        params = dict(backbone_width=args.width, clr_epochs=args.clr_epochs,
                      clr_batch_size=args.clr_batch, head_epochs=args.head_epochs,
                      ddpm_epochs=args.ddpm_epochs, n_rounds=args.rounds,
                      calib_epochs=args.calib_epochs, gen_epochs=args.gen_epochs,
                      n_generate=args.n_generate or "auto", sample_steps=args.sample_steps,
                      unet_preset=args.unet_preset, **ablation, **extra)
        if args.paper_stage2:
            params.update(anchor_weight=0.0, mmd_reduce="sum", label_update="batch")
        m = GCC(k, random_state=seed, verbose=args.verbose, device=args.device, **params)
        with Timer() as tf:
            m.fit(Xs, checkpoint_dir=args.checkpoint_dir)
        common = dict(params={kk: v for kk, v in params.items()},
                      ablation=args.ablation + ("+paper-stage2" if args.paper_stage2 else ""),
                      stage_seconds={kk: round(v, 1) for kk, v in m.stage_seconds_.items()})
        ev_y = ys if Xte is None else yte
        n0 = len(recs)
        with Timer() as tp:
            lab = m.labels_ if Xte is None else m.predict(Xte)
        if Xte is None:
            s1, km = m.stage1_labels_, m.kmeans_labels_
        else:
            s1, km = m.predict_stage1(Xte)
        n_eval = len(ev_y)
        res = evaluate(ev_y, lab)
        recs.append(record("gcc", tag, n_eval, k, seed, res, tf.seconds,
                           tp.seconds if Xte is not None else None,
                           history=[{kk: (round(v, 4) if isinstance(v, float) else v)
                                     for kk, v in h.items()} for h in m.history_], **common))
        recs.append(record("gcc-stage1", tag, n_eval, k, seed, evaluate(ev_y, s1),
                           tf.seconds - m.stage_seconds_["calibration"], **common))
        recs.append(record("kmeans-stage1-features", tag, n_eval, k, seed, evaluate(ev_y, km),
                           m.stage_seconds_["contrastive"], **common))
        if Xte is None and m.partition != "kmeans":  # the head's pseudo-labels themselves
            recs.append(record(f"{m.partition}-stage1-features", tag, n_eval, k, seed,
                               evaluate(ev_y, m.init_labels_), m.stage_seconds_["contrastive"],
                               **common))
        if Xte is None:  # k-means on the pixels the method was given
            with Timer() as tk:
                kp = KMeansClusterer(k, random_state=seed).fit(Xs.reshape(len(Xs), -1)
                                                               .astype(np.float32) / 255.0)
            recs.append(record("kmeans-pixels", tag, n_eval, k, seed, evaluate(ys, kp.labels_),
                               tk.seconds))
        for r in recs[n0:]:
            print(f"seed {seed} {r['method']:<24} ACC {r['acc']:.3f} NMI {r['nmi']:.3f} "
                  f"ARI {r['ari']:.3f}", flush=True)
        print(f"  stage seconds {common['stage_seconds']}", flush=True)
    for meth in sorted({r["method"] for r in recs}):
        s = summarize([r for r in recs if r["method"] == meth])
        print(meth, {k_: f"{100 * m_:.1f} ± {100 * s_:.1f}" for k_, (m_, s_) in s.items()})
    if not args.no_save:
        print("appended to", append_results("gcc", recs))


if __name__ == "__main__":
    main()
