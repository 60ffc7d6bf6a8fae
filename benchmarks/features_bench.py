"""k-means, Self-Classifier, TEMI and CLUDI on the feature sets of `features.py` (EfficientNet-
Lite0, built by the project's own `embed`), each with its library defaults on the same matrix.

The 1,280-d features are reduced by PCA to ``--dim`` (384, the width CLUDI was designed at:
DINO ViT-S/16) for every method alike: CLUDI's denoiser is 1.5·D wide, and at D = 1,280 one of
its steps costs ~2 TFLOP (hours per fit on a 2-core CPU). Appends records (with fit seconds and
peak memory) to results/features_bench.json.

    python benchmarks/features_bench.py --set usps --seeds 0 [--methods kmeans sc temi cludi]
    python benchmarks/features_bench.py --set fashion_mnist --methods temi --checkpoints DIR
    python benchmarks/features_bench.py --set usps --methods cludi --param teacher_steps=10

``--checkpoints DIR``: TEMI and CLUDI fits save their training state there (per set, method,
seed and parameters) and a rerun of the same command continues an interrupted fit. ``--param``
changes a parameter of the non-k-means methods; the records then name it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Timer, append_results, parse_params, record
from features import DEFAULT_CACHE, load_set

from diffclust import CLUDI, TEMI, KMeansClusterer, SelfClassifier, evaluate

METHODS = {"kmeans": KMeansClusterer, "sc": SelfClassifier, "temi": TEMI, "cludi": CLUDI}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--param", nargs="*", default=[], help="KEY=VALUE for the methods")
    ap.add_argument("--save", default=None, help="save each fitted TEMI/CLUDI model under DIR")
    ap.add_argument("--per-class", type=int, default=0,
                    help="a fixed random subset of this many points of every class (0: all)")
    a = ap.parse_args()
    params = parse_params(a.param)
    tag = "".join(f"[{k}={v}]" for k, v in sorted(params.items()))
    X, y = load_set(a.set, a.backbone, a.dim, a.cache)
    K = len(np.unique(y))
    set_name = a.set
    if a.per_class:  # drawn once (seed 0), the same for every method and seed
        rng = np.random.default_rng(0)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), a.per_class, replace=False)
                              for c in np.unique(y)])
        X, y, set_name = X[idx], y[idx], f"{a.set}-{a.per_class}pc"
    for seed in a.seeds:
        for m in a.methods:
            kw = {} if m == "kmeans" else {"verbose": False, **params}
            fit_kw = {}
            if a.checkpoints and m in ("temi", "cludi"):
                fit_kw["checkpoint_dir"] = (Path(a.checkpoints) /
                                            f"{set_name}-pca{a.dim}-{m}{tag}-seed{seed}")
            with Timer() as t:
                est = METHODS[m](K, random_state=seed, **kw).fit(X, **fit_kw)
            r = evaluate(y, est.labels_)
            if a.save and m in ("temi", "cludi"):
                est.save_pretrained(Path(a.save) / f"{set_name}-pca{a.dim}-{m}{tag}-seed{seed}")
            name = m if m == "kmeans" else m + tag
            rec = record(name, f"{set_name}-{a.backbone}-pca{a.dim}", len(X), K, seed, r, t.seconds,
                         n_used=int(len(np.unique(est.labels_))),
                         n_steps=getattr(est, "n_steps_", None),
                         readout=getattr(est, "readout", None),
                         # training seconds, the resumed run's clock included (a fit restored
                         # from its final checkpoint only labels in this call)
                         train_seconds=getattr(est, "fit_seconds_", None))
            append_results("features_bench", [rec])
            print(f"{set_name} seed {seed} {name}: {100 * r['acc']:.1f} / {100 * r['nmi']:.1f} / "
                  f"{100 * r['ari']:.1f} in {t.seconds:.0f}s", flush=True)


if __name__ == "__main__":
    main()
