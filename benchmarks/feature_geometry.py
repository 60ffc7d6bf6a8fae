"""Do a feature set's classes form the groups that clustering objectives look for?

For each set: k-means (its own start, and started at the true class means), the spectral
partition of the cosine 10-NN graph (`diffclust.graph`), the normalised cut of the true classes
and of those partitions on that graph, the eigengap λ_{K+1}/λ_K of the graph's normalised
Laplacian, and a linear probe (logistic regression, 3-fold, on the unit-normalised features) as
the supervised ceiling. Each partition also gets the unsupervised scores a method could choose
a start by: Calinski–Harabasz, the silhouette (3,000 points), and the share of each point's 10
nearest neighbours in its group. Records in results/feature_geometry.json (one per set and
partition).

A set ``ddpm:DATASET:N:UNET:T`` is DiEC's representation: the standardised bottleneck of the U-Net
``UNET`` (a shipped name or a folder) at timestep T, two noise draws averaged, on the random N
images of ``diec.py --n N`` (0: all). The question there: which start partition DiEC should take.

    python benchmarks/feature_geometry.py --sets usps cifar10_14k fashion_mnist \
        imagenet50_dino_vits16_val_dev
    python benchmarks/feature_geometry.py --sets ddpm:usps:0:usps:161 ddpm:mnist:10000:mnist:225
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp
from _common import append_results, record
from features import load_set

from diffclust import evaluate
from diffclust.graph import knn_graph, normalized_cut, spectral_partition
from diffclust.mixture import gmm_from_labels


def ddpm_features(spec):
    """DiEC's bottleneck features for ``ddpm:DATASET:N:UNET:T`` (see the module docstring)."""
    import torch
    from diec import load_images
    from diffusion_representation import embed

    from diffclust.data.validation import check_images
    from diffclust.diffusion.unet import load_unet
    from diffclust.training.runtime import resolve_precision

    parts = spec.split(":")
    if len(parts) != 5:
        raise SystemExit(f"{spec!r}: a DiEC set is ddpm:DATASET:N:UNET:T, e.g. "
                         f"ddpm:mnist:10000:mnist:225 (UNET: a shipped name or a folder without ':')")
    _, dataset, n, unet, t = parts
    X, y = load_images(dataset, int(n))
    X = torch.from_numpy(check_images(X))
    model = load_unet(unet, tuple(X.shape[1:]))[0].float()
    amp = resolve_precision("auto", torch.device("cpu"))
    return embed(model, X, int(t), 2, amp).astype(np.float32), y


def load(name):
    if name.startswith("ddpm:"):
        return ddpm_features(name)
    if name.startswith("imagenet50"):
        from cludi import load as load_raw

        return load_raw(name, 0)
    return load_set(name)


def eigengap(A, K, seed=0):
    """λ_{K+1} / λ_K of the normalised Laplacian I − D^{-1/2} A D^{-1/2} (LOBPCG)."""
    from scipy.sparse.linalg import lobpcg

    d = np.asarray(A.sum(1)).ravel()
    Dm = sp.diags(1.0 / np.sqrt(d))
    L = sp.eye(A.shape[0]) - Dm @ A @ Dm
    X0 = np.random.default_rng(seed).normal(size=(A.shape[0], K + 5))
    w = np.sort(lobpcg(L, X0, largest=False, tol=1e-6, maxiter=3000)[0])
    return float(w[K] / w[K - 1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", required=True)
    a = ap.parse_args()
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import calinski_harabasz_score, silhouette_score
    from sklearn.model_selection import cross_val_score

    from diffclust.knn import knn_search

    warnings.filterwarnings("ignore", category=UserWarning)
    for name in a.sets:
        X, y = load(name)
        K = len(np.unique(y))
        nb = knn_search(X, 10, metric="cosine")[0]
        A = knn_graph(X, neighbors=nb)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        probe = cross_val_score(LogisticRegression(max_iter=300), Xn, y, cv=3).mean()
        gap = eigengap(A, K)
        mu = np.stack([X[y == c].mean(0) for c in range(K)])
        parts = {}
        t = time.perf_counter()
        parts["kmeans"] = (KMeans(K, n_init=10, random_state=0).fit_predict(X),
                           time.perf_counter() - t)
        t = time.perf_counter()
        parts["kmeans-from-class-means"] = (KMeans(K, init=mu, n_init=1).fit_predict(X),
                                            time.perf_counter() - t)
        t = time.perf_counter()
        parts["spectral-10nn"] = (spectral_partition(X, K, graph=A)[0], time.perf_counter() - t)
        # DiEC's spectral start places its centroids exactly so (an empty group: the mean of all)
        mu_sp = gmm_from_labels(X, parts["spectral-10nn"][0], K)[1]
        parts["kmeans-from-spectral-means"] = (KMeans(K, init=mu_sp, n_init=1).fit_predict(X),
                                               0.0)
        parts["true-classes"] = (y, 0.0)
        recs = []
        for method, (lab, sec) in parts.items():
            r = evaluate(y, lab)
            recs.append(record(method, name, len(X), K, 0, r, sec,
                               ncut=round(normalized_cut(A, lab), 4),
                               ch=round(float(calinski_harabasz_score(X, lab)), 1),
                               silhouette=round(float(silhouette_score(
                                   X, lab, sample_size=min(3000, len(X)), random_state=0)), 4),
                               knn_agreement=round(float((lab[nb] == lab[:, None]).mean()), 4),
                               eigengap=round(gap, 3), linear_probe=round(float(probe), 4)))
            print(f"{name:32s} {method:24s} {100 * r['acc']:5.1f} / {100 * r['nmi']:5.1f}  "
                  f"Ncut {recs[-1]['ncut']:.4f}  CH {recs[-1]['ch']:.1f}  silhouette "
                  f"{recs[-1]['silhouette']:.4f}  10-NN agreement {recs[-1]['knn_agreement']:.4f}",
                  flush=True)
        print(f"{name:32s} eigengap {gap:.3f}  linear probe {100 * probe:.1f}", flush=True)
        append_results("feature_geometry", recs)


if __name__ == "__main__":
    main()
