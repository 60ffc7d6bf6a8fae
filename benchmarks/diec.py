"""DiEC on real images: our own pretrained DDPM, the Optimal Timestep Search, then DiEC, next to
k-means on pixels and k-means on the raw bottleneck features at t* (what the training adds).

    python benchmarks/diec.py --dataset usps --seeds 0
    python benchmarks/diec.py --dataset mnist --n 10000 --seeds 0          # documented subset
    python benchmarks/diec.py --dataset fashion_mnist --n 10000 --seeds 0

Step 1 pretrains an ε-prediction DDPM on the (subset of the) dataset with
:func:`diffclust.diffusion.pretrain.pretrain_ddpm` into ``benchmarks/models/<name>/`` (reused
by later runs with the same settings; resumable when killed) and copies its DDIM sample grid to
``benchmarks/results/diec_<name>_samples.png``. Step 2 runs ``DiEC(K, unet=<that folder>)``:
OTS on the subset, k-means initialisation on the bottleneck features at t* (recorded as
``kmeans-bottleneck``, the ablation without training), then the joint training. The CH-vs-t
curve goes to ``benchmarks/results/diec_<name>_ots.png``. Records are appended to
``benchmarks/results/diec.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from _common import RESULTS, Timer, append_results, parse_params, record
from diffclust import DiEC, KMeansClusterer, evaluate
from diffclust.diffusion.pretrain import pretrain_ddpm

MODELS = Path(__file__).resolve().parent / "models"


def load_images(name, n, seed=0):
    from _common import DATA_HOME

    d = np.load(Path(DATA_HOME) / f"{name}.npz")
    X, y = d["x"], d["y"].astype(np.int64)
    if n and n < len(X):  # a stratified-by-chance fixed subset
        keep = np.sort(np.random.default_rng(seed).choice(len(X), n, replace=False))
        X, y = X[keep], y[keep]
    return X, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="usps")
    ap.add_argument("--n", type=int, default=0, help="random subset size (0 = all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--pretrain-steps", type=int, default=6000)
    ap.add_argument("--pretrain-batch", type=int, default=128)
    ap.add_argument("--unet", default=None,
                    help="a shipped U-Net's name or a U-Net folder to use instead of "
                         "pretraining one")
    ap.add_argument("--param", nargs="*", default=[], help="extra DiEC params KEY=VALUE")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    extra = parse_params(args.param)
    X, y = load_images(args.dataset, args.n)
    k = len(np.unique(y))
    name = args.dataset + (f"-n{len(X)}" if args.n else "")
    print(f"{name}: X {X.shape}, K={k}", flush=True)

    # 1. our own DDPM on these images (or the one given)
    from diffclust.pretrained import PRETRAINED, pretrained_path

    shipped = args.unet in PRETRAINED
    mdir = (pretrained_path(args.unet) if shipped else Path(args.unet) if args.unet
            else MODELS / f"{name}-{args.preset}-{args.pretrain_steps}")
    if not args.unet:
        pretrain_ddpm(X, mdir, preset=args.preset, n_steps=args.pretrain_steps,
                      batch_size=args.pretrain_batch, seed=0, verbose=True)
    tag = name + (f"-unet-{mdir.name}" if args.unet else "")  # the figures' file names
    info_path = mdir / "pretrain.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    pre_s = info.get("train_seconds", info.get("seconds"))
    pre_steps = info.get("steps_done", args.pretrain_steps)
    if args.unet and (mdir.parent.parent / "pretrain.json").exists():  # a milestone copy
        pre_s, pre_steps = None, int(mdir.name.split("-")[-1])
    print(f"DDPM {mdir}: {pre_steps} steps, {pre_s} s of pretraining", flush=True)
    if not args.no_save and (mdir / "samples.png").exists():
        shutil.copyfile(mdir / "samples.png", RESULTS / f"diec_{tag}_samples.png")

    recs = []
    Xf = X.reshape(len(X), -1).astype(np.float32) / 255.0
    for seed in args.seeds:
        with Timer() as tk:
            km = KMeansClusterer(k, random_state=seed).fit(Xf)
        recs.append(record("kmeans-pixels", name, len(X), k, seed, evaluate(y, km.labels_),
                           tk.seconds))
        m = DiEC(k, unet=args.unet if shipped else str(mdir), random_state=seed, verbose=False,
                 **extra)
        with Timer() as tf:
            m.fit(X)
        res_km = evaluate(y, m.init_labels_)
        recs.append(record(f"{m.partition}-bottleneck", name, len(X), k, seed, res_km,
                           tf.seconds - m.train_seconds_, t_star=m.t_star_, params=extra,
                           unet=str(mdir.name), pretrain_steps=pre_steps,
                           note="fit_seconds = DiEC fit up to its initial partition (OTS, "
                                "embed)"))
        with Timer() as tpr:
            labels = m.predict(X)
        res_d = evaluate(y, m.labels_)
        epochs = max(m.n_iter_ / np.ceil(len(X) / min(m.batch_size, len(X))), 1e-9)
        ots = {str(t): float(s) for t, s in sorted(m.ots_scores_.items())}
        recs.append(record("diec", name, len(X), k, seed, res_d, tf.seconds, tpr.seconds,
                           t_star=m.t_star_, ots_scores=ots, ots_n_evals=m.ots_n_evals_,
                           ots_seconds=round(m.ots_seconds_, 1),
                           train_seconds=round(m.train_seconds_, 1), epochs=round(epochs, 2),
                           seconds_per_epoch=round(m.train_seconds_ / epochs, 1),
                           converged=bool(m.converged_),
                           pretrain_seconds=None if pre_s is None else round(pre_s, 1),
                           pretrain_steps=pre_steps, unet=str(mdir.name),
                           params=extra,
                           predict_agrees_with_labels=float((labels == m.labels_).mean())))
        print(f"seed {seed}: kmeans-pixels {recs[-3]['acc']:.3f}  {m.partition}-bottleneck"
              f"@t*={m.t_star_}"
              f" {res_km['acc']:.3f}  diec {res_d['acc']:.3f}/{res_d['nmi']:.3f}/"
              f"{res_d['ari']:.3f}  fit {tf.seconds:.0f}s ({m.train_seconds_ / epochs:.0f}s/epoch)",
              flush=True)
        if not args.no_save and ots:
            from diffclust.viz import save_ots_curve

            ts = np.array([int(t) for t in ots])
            save_ots_curve(RESULTS / f"diec_{tag}_ots.png", ts, np.array(list(ots.values())),
                           t_star=m.t_star_, title=f"OTS on {tag}",
                           score_name="−Ncut" if m.ots_criterion == "ncut" else "CH score")
    if not args.no_save:
        append_results("diec", recs)


if __name__ == "__main__":
    main()
