"""Reading a run directory: the files ``diffclust fit`` writes, and the optional extras other
methods leave there.

Files looked for (all optional except ``labels.csv``):

================================  ===========================================================
``config.json``                   method, data (file path or dataset name), n_clusters, seed,
                                  params, n_samples, fit_seconds, … (``diffclust fit``)
``labels.csv``                    ``index, cluster, confidence`` (required)
``metrics.jsonl``                 training history, one JSON object per logged step
``metrics.json``                  final metrics when labels were known
``model/config.json``             ``fitted`` section: ``history_`` (fallback for the curves),
                                  DiEC's ``t_star_`` / ``ots_scores_``, ``c_max_`` /
                                  ``cmax_curve_`` / ``utilization_curve_``
``embeddings.npy``                (N, d) embeddings for the 2-D map (default: the input)
``ots.json``                      DiEC's optimal timestep search, any of
                                  ``{"t": [...], "score": [...], "t_star": 312}``,
                                  ``{"scores": {"100": 1.2, ...}, "t_star": ...}``,
                                  ``{"100": 1.2, ...}``, ``[[t, score], ...]``,
                                  ``[{"t": .., "score": ..}, ...]``
``cmax.json``                     C_max search: what ``diffclust estimate-k --out`` writes
                                  (``{"c_max", "alpha", "table": [{"C", "r_C", ...}]}``), or
                                  ``{"C": [...], "r": [...], "alpha": 0.96, "c_max": 80}``
                                  (``r_C`` / ``utilization`` accepted for r; mapping and list
                                  forms as for ``ots.json``)
``samples.png``, ``samples*.png`` generator sample grids, embedded as they are
``samples.npy`` / ``samples.npz``  generated images (``x``/``samples`` and optional
                                  ``labels``/``clusters`` per row), drawn as a grid
``*.png`` (others, top level)     embedded under "other figures" (report's own files skipped)
================================  ===========================================================
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["find_cmax", "find_ots", "parse_curve", "read_run"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def read_labels_csv(path: Path):
    """``(cluster, confidence)`` arrays of a ``labels.csv`` (``index, cluster, confidence``)."""
    try:
        arr = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path} is not a labels.csv written by `diffclust fit` ({e})") from None
    if arr.shape[1] < 2:
        raise ValueError(f"{path} needs the columns index, cluster[, confidence]")
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    conf = arr[:, 2] if arr.shape[1] > 2 else np.ones(len(arr))
    return arr[:, 1].astype(np.int64), conf.astype(np.float64)


def read_run(run_dir) -> dict:
    """Everything the report needs from ``run_dir`` as plain Python objects."""
    from ..viz.curves import read_metrics_jsonl

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; write one with "
                                f"`diffclust fit DATA --method M -k K --out {run_dir}`")
    labels_path = run_dir / "labels.csv"
    if not labels_path.exists():
        raise FileNotFoundError(f"{labels_path} not found: {run_dir} is not a run directory of "
                                f"`diffclust fit` (it needs at least labels.csv)")
    pred, conf = read_labels_csv(labels_path)
    run = {"dir": run_dir, "pred": pred, "confidence": conf,
           "config": _read_json(run_dir / "config.json") if (run_dir / "config.json").exists()
           else {},
           "metrics": _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists()
           else None,
           "history": read_metrics_jsonl(run_dir / "metrics.jsonl")}
    mc = run_dir / "model" / "config.json"
    model_cfg = _read_json(mc) if mc.exists() else {}
    run["model_config"] = model_cfg
    fitted = model_cfg.get("fitted", {}) if isinstance(model_cfg, dict) else {}
    run["fitted"] = fitted if isinstance(fitted, dict) else {}
    if not run["history"] and isinstance(run["fitted"].get("history_"), list):
        run["history"] = run["fitted"]["history_"]
    emb = run_dir / "embeddings.npy"
    run["embeddings"] = np.load(emb, allow_pickle=False) if emb.exists() else None
    run["ots"] = find_ots(run_dir, run["fitted"])
    run["cmax"] = find_cmax(run_dir, run["fitted"])
    run["sample_pngs"] = sorted(p for p in run_dir.glob("samples*.png") if p.is_file())
    run["samples"] = _read_samples(run_dir)
    own = {"report.png", "report_screenshot.png", "screenshot.png"}
    run["other_pngs"] = sorted(p for p in run_dir.glob("*.png")
                               if p.is_file() and p not in run["sample_pngs"] and p.name not in own)
    return run


def parse_curve(obj, x_keys, y_keys):
    """``(x, y)`` float arrays from the usual JSON shapes of a curve: ``{xk: [...], yk: [...]}``,
    ``{"<x>": y, ...}``, ``[[x, y], ...]`` or ``[{xk: x, yk: y}, ...]``; ``None`` when ``obj``
    is none of these."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        xk = next((k for k in x_keys if k in obj), None)
        yk = next((k for k in y_keys if k in obj), None)
        if xk and yk and isinstance(obj[xk], list):
            return np.asarray(obj[xk], float), np.asarray(obj[yk], float)
        if yk and isinstance(obj[yk], (dict, list)):
            return parse_curve(obj[yk], x_keys, y_keys)
        for v in obj.values():          # a nested table, e.g. CmaxResult.to_json()["table"]
            if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
                cur = parse_curve(v, x_keys, y_keys)
                if cur is not None:
                    return cur
        pairs = []
        for k, v in obj.items():
            try:
                pairs.append((float(k), float(v)))
            except (TypeError, ValueError):
                continue                      # e.g. a "t_star" entry next to the scores
        pairs.sort()
        return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else None
    if isinstance(obj, list) and obj:
        if all(isinstance(r, dict) for r in obj):
            xk = next((k for k in x_keys if k in obj[0]), None)
            yk = next((k for k in y_keys if k in obj[0]), None)
            if xk and yk:
                return (np.array([r[xk] for r in obj], float), np.array([r[yk] for r in obj],
                                                                        float))
            return None
        try:
            a = np.asarray(obj, float)
        except (TypeError, ValueError):
            return None
        if a.ndim == 2 and a.shape[1] == 2:
            return a[:, 0], a[:, 1]
    return None


_T_KEYS, _S_KEYS = ("t", "timesteps", "timestep"), ("score", "scores", "S", "ch")
_C_KEYS, _R_KEYS = ("C", "c", "n_clusters", "clusters"), ("r", "r_C", "utilization",
                                                            "utilisation", "ratio")


def find_ots(run_dir: Path, fitted: dict):
    """``{"t", "score", "t_star"}`` from ``ots.json`` or the model's ``ots_scores_`` /
    ``t_star_``; ``None`` when the run has no OTS curve."""
    raw, t_star = None, fitted.get("t_star_")
    p = Path(run_dir) / "ots.json"
    if p.exists():
        raw = _read_json(p)
        if isinstance(raw, dict):
            t_star = raw.get("t_star", raw.get("t_star_", t_star))
    elif fitted.get("ots_scores_") is not None:
        raw = fitted["ots_scores_"]
    cur = parse_curve(raw, _T_KEYS, _S_KEYS)
    if cur is None:
        return None
    return {"t": cur[0], "score": cur[1], "t_star": t_star}


def find_cmax(run_dir: Path, fitted: dict):
    """``{"C", "r", "alpha", "c_max"}`` from ``cmax.json`` or the model's ``cmax_curve_`` /
    ``utilization_curve_`` / ``c_max_``; ``None`` when absent."""
    raw, alpha, c_max = None, fitted.get("alpha", 0.96), fitted.get("c_max_")
    p = Path(run_dir) / "cmax.json"
    if p.exists():
        raw = _read_json(p)
    else:
        raw = fitted.get("cmax_curve_", fitted.get("utilization_curve_"))
    if isinstance(raw, dict):
        alpha = raw.get("alpha", alpha)
        c_max = raw.get("c_max", raw.get("C_max", c_max))
    cur = parse_curve(raw, _C_KEYS, _R_KEYS)
    if cur is None:
        return None
    return {"C": cur[0], "r": cur[1], "alpha": float(alpha), "c_max": c_max}


def _read_samples(run_dir: Path):
    for name in ("samples.npy", "samples.npz"):
        p = run_dir / name
        if p.exists():
            if p.suffix == ".npy":
                return {"x": np.load(p, allow_pickle=False), "labels": None}
            with np.load(p, allow_pickle=False) as z:
                xk = next((k for k in ("samples", "x", "images") if k in z.files), None)
                lk = next((k for k in ("labels", "clusters", "y") if k in z.files), None)
                if xk is None:
                    raise ValueError(f"{p} has no 'samples'/'x'/'images' array "
                                     f"(keys: {z.files})")
                return {"x": z[xk], "labels": z[lk] if lk else None}
    return None
