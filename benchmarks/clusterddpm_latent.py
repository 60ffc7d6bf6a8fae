"""How clusterable ClusterDDPM's latent is at a training checkpoint: the encoder means μ_φ(x)
of a per-epoch checkpoint folder of ``clusterddpm.py --checkpoint-dir`` (during pre-training or
after EM rounds), partitioned by k-means (10 restarts), the spectral partition of the 10-NN
graph and the multiscale consensus (CLUDI's and GCC's start), with the 3-fold 3-NN accuracy of
the latents; ``--pixels`` does the same on the pixels. No training: it only reads the weights.
Appends to results/clusterddpm_latent.json.

    python benchmarks/clusterddpm_latent.py --dataset mnist --n 10000 --size 16 \
        --param gmm_init=spectral covariance_type=full --checkpoints DIR1 DIR2 --pixels

The data and estimator settings must be those of the run that wrote the checkpoints (the
fingerprint in each folder is checked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Timer, append_results, record
from clusterddpm import add_model_args, parse_run
from sklearn.cluster import KMeans
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from diffclust import ClusterDDPM, evaluate
from diffclust.graph import multiscale_partition, spectral_partition
from diffclust.training.checkpoint import fingerprint, load_training_modules


def latent_of(est, X, folder: Path):
    """μ_φ(X) from the encoder weights of the training checkpoint in ``folder``, and its step."""
    est._setup_runtime()
    Xv = est._validate_input(X, fitting=True)
    est.unet_, est.encoder_ = est._build(Xv)
    try:
        step = load_training_modules(
            folder, fingerprint=fingerprint(est, Xv), modules={"encoder": est.encoder_},
            hint="pass the --dataset/--n/--size/--param of the run that wrote it")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return est._embed(Xv).numpy().astype(np.float64), step


def partitions(Z, y, k, seed):
    """Metrics of each label-free partition of ``Z``, and the 3-NN accuracy."""
    out = {"kmeans": KMeans(k, n_init=10, random_state=seed).fit_predict(Z),
           "spectral10": spectral_partition(Z, k, random_state=seed)[0],
           "multiscale": multiscale_partition(Z, k, random_state=seed)}
    knn3 = float(cross_val_score(KNeighborsClassifier(3), Z, y, cv=3).mean())
    return {name: evaluate(y, lab) for name, lab in out.items()}, round(knn3, 4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    add_model_args(ap)
    ap.add_argument("--checkpoints", nargs="*", default=[], help="checkpoint folders")
    ap.add_argument("--pixels", action="store_true", help="also partition the pixels")
    ap.add_argument("--threads", type=int, default=1)
    args, params, X, y, name = parse_run(ap)
    k = len(np.unique(y))
    inputs = [("pixels", None)] if args.pixels else []
    inputs += [(f, Path(f)) for f in args.checkpoints]
    recs = []
    for label, folder in inputs:
        with Timer() as t:
            if folder is None:
                Z, step = X.reshape(len(X), -1).astype(np.float64) / 255.0, None
            else:
                est = ClusterDDPM(k, random_state=args.seed, verbose=False, **params)
                Z, step = latent_of(est, X, folder)
            scores, knn3 = partitions(Z, y, k, args.seed)
        for method, m in scores.items():
            recs.append(record(f"{method}-on-{'pixels' if folder is None else 'latent'}", name,
                               len(X), k, args.seed, m, t.seconds, checkpoint=label,
                               checkpoint_step=step, knn3_cv=knn3, params=params))
        print(f"{label} (step {step}): " + ", ".join(
            f"{m} {100 * s['acc']:.1f}/{100 * s['nmi']:.1f}" for m, s in scores.items())
            + f", 3-NN {100 * knn3:.1f}", flush=True)
    if recs:
        append_results("clusterddpm_latent", recs)


if __name__ == "__main__":
    main()
