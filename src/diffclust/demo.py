"""The main job on bundled data: CLUDI next to k-means on scikit-learn's handwritten digits
(1,797 8×8 images, 10 classes), the same input for both, written as a run directory with an
HTML report. ``benchmarks/demo.py`` runs it for seeds 0–4 in fp32 and bf16."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["DEMO_PARAMS", "run_demo"]

#: CLUDI's settings in the demo (a 1-minute budget on 2 cores, docs/DECISIONS.md, "Demo"): raw
#: pixels carry no augmentation a pretrained backbone would give, so the student sees one of the
#: 10 nearest neighbours of each point (``neighbor_views``), a SCAN-like entropy term keeps the
#: clusters from merging (``marginal_entropy``), and the budget goes into optimiser steps (2,000
#: steps with a 3-step teacher and 3 chains, lr 2e-3); features centred before the unit
#: normalisation.
DEMO_PARAMS = dict(n_steps=2000, teacher_steps=3, n_chains=3, center=True, neighbor_views=10,
                   embedding_dim=32, ce_weight=100.0, marginal_entropy=5.0, lr=2e-3)


#: ``precision="auto"`` in the demo is fp32: the demo's network is so small (width 96) that bf16
#: autocast costs more in casts than it saves (CLUDI 45.5 s in fp32 against 51.4 s in bf16 on a
#: CPU with AMX); both precisions beat k-means in all ten benchmark runs.
DEMO_AUTO_PRECISION = "fp32"


def run_demo(seed: int = 0, precision: str = "auto", out="runs/demo-digits",
             report: bool = True, verbose: bool = True) -> dict:
    """Fit k-means and CLUDI on the digits, write ``out`` (a complete run directory, replaced
    if present) and its ``report.html``. Returns ``{"rows": {name: metrics + seconds}, "out",
    "report", "warnings"}``."""
    from . import CLUDI, KMeansClusterer, evaluate, load_dataset
    from .diagnostics import fit_with_warnings
    from .runs import add_to_run, staged_run, write_run_files

    X, y = load_dataset("digits", return_X_y=True, flatten=True)
    rows = {}
    t = time.perf_counter()
    km = KMeansClusterer(10, random_state=seed).fit(X)
    rows["k-means"] = dict(evaluate(y, km.labels_), seconds=time.perf_counter() - t)
    precision = DEMO_AUTO_PRECISION if precision == "auto" else precision
    est = CLUDI(10, random_state=seed, precision=precision, verbose=verbose, **DEMO_PARAMS)
    with staged_run(out, overwrite=True, info={"command": "demo"}) as tmp:
        fit_s, msgs = fit_with_warnings(est, X)
        write_run_files(tmp, est, X, y, method="cludi", data="digits", seed=seed,
                        fit_seconds=fit_s, warnings=msgs)
    rows["CLUDI"] = dict(evaluate(y, est.labels_), seconds=fit_s)
    path = None
    if report:
        from .report import build_report

        path = build_report(out, embed_method="pca", verbose=False)
        add_to_run(out, Path(path).name, lambda p: p)
    return {"rows": rows, "out": Path(out), "report": path, "warnings": msgs,
            "precision": str(est.amp_dtype_ or "fp32")}
