"""``build_report``: one self-contained ``report.html`` for a run directory.

The page needs no network and no JavaScript: figures are PNGs embedded as base64 ``data:``
URIs, the style sheet is inline. Sections: configuration, metrics next to a k-means baseline fitted
on the same input, training curves, cluster sizes, confusion matrix (Hungarian order), 2-D map,
the method extras found in the run directory (see :mod:`diffclust.report.artifacts`), sample
grids, per-cluster galleries when the input was images.
"""

from __future__ import annotations

import base64
import html
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .artifacts import read_run

__all__ = ["build_report", "resolve_input"]

_PCT = ("acc", "nmi", "ari", "ami", "purity", "overcluster_acc")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 10px;
border-bottom:2px solid #d8dde6;padding-bottom:4px}
.sub{color:#5a6375;font-size:.92em;margin:0 0 18px}
table{border-collapse:collapse;background:#fff;font-size:.9em;margin:6px 0}
th,td{border:1px solid #d8dde6;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.col{max-width:560px}
figure{display:inline-block;margin:0 0 12px;background:#fff;border:1px solid #d8dde6;padding:8px;border-radius:4px;
max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:.85em;color:#5a6375;margin-top:4px;max-width:760px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:.9em;
margin:6px 0}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em}
pre{background:#fff;border:1px solid #d8dde6;padding:8px;overflow:auto;max-height:320px}
.best{font-weight:700}
footer{margin-top:40px;color:#7a8396;font-size:.8em}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def resolve_input(data=None, config=None, data_home=None, key=None):
    """The run's input as the report needs it: ``{"X", "y", "images", "class_names", "desc"}``.

    ``data``: an array ((N, D) features or (N, H, W[, C]) images), a file path or a dataset
    name; default ``config["data"]``. Named image datasets and image arrays are flattened and
    scaled to [0, 1] exactly as ``diffclust fit`` does (``cli.load_input``), so the k-means
    baseline sees the same input as the run; the unflattened images are kept for galleries.
    Raises ValueError / FileNotFoundError when the input cannot be had.
    """
    from ..data import available_datasets, load_array, load_dataset

    config = config or {}
    src = data if data is not None else config.get("data")
    out = {"X": None, "y": None, "images": None, "class_names": None, "desc": None}
    if src is None:
        raise ValueError("the run's config.json names no input data; pass data=... "
                         "(CLI: --data)")
    if isinstance(src, np.ndarray) or hasattr(src, "__array__") and not isinstance(src, str):
        X, y, desc = np.asarray(src), None, f"array {np.asarray(src).shape}"
    elif Path(str(src)).exists():
        X, y = load_array(Path(str(src)), key=key)
        desc = str(src)
    elif str(src) in available_datasets():
        ds = load_dataset(str(src), data_home=data_home)
        X, y, desc = ds.x, ds.y, str(src)
        names = ds.extra.get("class_names")
        out["class_names"] = [str(n) for n in names] if names is not None else None
    else:
        raise FileNotFoundError(f"input {src!r} is neither an existing file nor a dataset name "
                                f"({', '.join(available_datasets())})")
    if X.ndim >= 3:
        out["images"] = X
        X = X.reshape(len(X), -1)
        X = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)
    out.update(X=np.asarray(X, dtype=np.float32), y=None if y is None else np.asarray(y),
               desc=desc)
    return out


def _labels_from(labels):
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        from ..data import load_array

        arr, y = load_array(Path(labels), label_key=None)
        labels = y if y is not None else arr
    return np.asarray(labels).reshape(-1).astype(np.int64)


class _Page:
    """Collects HTML fragments; figures go in as base64 PNG."""

    def __init__(self):
        self.parts: list[str] = []
        self.n_images = 0
        self.problems: list[str] = []

    def add(self, s: str):
        self.parts.append(s)

    def h2(self, title: str, anchor: str):
        self.add(f'<h2 id="{anchor}">{_esc(title)}</h2>')

    def note(self, text: str):
        self.add(f'<p class="note">{_esc(text)}</p>')

    def png(self, data: bytes, alt: str, caption: str = "") -> str:
        self.n_images += 1
        b64 = base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(alt)}">{cap}</figure>'

    def figure(self, make, alt: str, caption: str = "", dpi: int = 96) -> str:
        """Render ``make()`` (a Figure factory); a failure becomes a visible note, never a
        silent gap."""
        from ..viz import figure_to_png

        try:
            fig = make()
            return self.png(figure_to_png(fig, dpi=dpi), alt, caption)
        except Exception as e:                                   # noqa: BLE001
            msg = f"{alt}: could not be drawn ({type(e).__name__}: {e})"
            self.problems.append(msg)
            return f'<p class="note">{_esc(msg)}</p>'


def _fmt(k, v):
    if v is None:
        return "–"
    if isinstance(v, float) and k in _PCT:
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _esc(v)


def _kv_table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            v = f"<code>{_esc(json.dumps(v, default=str))}</code>"
        elif isinstance(v, float):
            v = f"{v:.6g}"
        else:
            v = _esc(v)
        rows.append(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _metrics_table(cols: dict[str, dict]) -> str:
    keys: list[str] = []
    for m in cols.values():
        keys += [k for k in m if k not in keys]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    rows = []
    for k in keys:
        vals = [m.get(k) for m in cols.values()]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        best = max(nums) if k in _PCT and len(nums) > 1 else None
        cells = "".join(
            f'<td class="num{" best" if best is not None and v == best else ""}">'
            f"{_fmt(k, v)}</td>" for v in vals)
        name = f"{k} (%)" if k in _PCT else k
        rows.append(f"<tr><th>{_esc(name)}</th>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _label_free(X, pred, K):
    from ..metrics import calinski_harabasz

    sizes = np.bincount(pred, minlength=K)
    out = {"n_clusters_used": int((sizes > 0).sum()), "smallest_cluster": int(sizes.min()),
           "largest_cluster": int(sizes.max())}
    if X is not None:
        out["calinski_harabasz"] = calinski_harabasz(X, pred)
    return out


def build_report(run_dir, data=None, labels=None, out=None, *, data_home=None, key=None,
                 baseline: bool = True, embed_method: str = "auto", max_points: int = 2000,
                 gallery_n: int = 8, max_gallery_clusters: int = 60, random_state=None,
                 title=None, verbose: bool = False) -> Path:
    """Write a self-contained HTML report of the run in ``run_dir``; returns its path
    (``out``, default ``run_dir/report.html``).

    ``data`` (array, file or dataset name; default the run's ``config["data"]``) and ``labels``
    (array or file; default the data's own labels) enable the parts that need them: the
    k-means baseline on the same input, the label metrics and confusion matrix, the 2-D map and
    the image galleries. Parts that cannot be made say why in the page.
    ``embed_method``/``max_points`` control the 2-D map (:func:`diffclust.viz.embed_2d`);
    ``baseline=False`` skips the k-means fit.
    """
    from .. import __version__, viz
    from ..data import atomic_write_text
    from ..metrics import evaluate

    t_start = time.perf_counter()
    run = read_run(run_dir)
    run_dir = Path(run_dir)
    cfg, pred, conf = run["config"], run["pred"], run["confidence"]
    N = len(pred)
    K = int(cfg.get("n_clusters") or (int(pred.max()) + 1))
    seed = cfg.get("seed", 0) if random_state is None else random_state
    method = str(cfg.get("method", run["model_config"].get("class", "run")))
    page = _Page()

    def log(msg):
        if verbose:
            print(f"[report] {msg} ({time.perf_counter() - t_start:.1f}s)", flush=True)

    # ---- input ---------------------------------------------------------------------------
    inp = {"X": None, "y": None, "images": None, "class_names": None, "desc": None}
    input_note = None
    try:
        inp = resolve_input(data, cfg, data_home, key)
        if len(inp["X"]) != N:
            input_note = (f"the input {inp['desc']} has {len(inp['X'])} samples but labels.csv "
                          f"has {N}; it was not used")
            inp = dict(inp, X=None, y=None, images=None)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        input_note = f"input data not available ({e}); plots that need it are left out"
    y = _labels_from(labels) if labels is not None else inp["y"]
    if y is not None and len(y) != N:
        input_note = f"{len(y)} true labels for {N} samples: labels ignored"
        y = None
    X = inp["X"]
    log("input resolved")

    # ---- metrics -------------------------------------------------------------------------
    cols: dict[str, dict] = {}
    run_m = dict(evaluate(y, pred, extended=True)) if y is not None else dict(run["metrics"] or {})
    run_m.update(_label_free(X, pred, K))
    if cfg.get("fit_seconds") is not None:
        run_m["fit_seconds"] = float(cfg["fit_seconds"])
    cols[f"{method} (this run)"] = run_m
    base_note = None
    if baseline and X is not None:
        from ..methods.baselines import KMeansClusterer

        t = time.perf_counter()
        km = KMeansClusterer(K, random_state=seed).fit(X)
        km_s = time.perf_counter() - t
        km_m = dict(evaluate(y, km.labels_, extended=True)) if y is not None else {}
        km_m.update(_label_free(X, km.labels_, K))
        km_m["fit_seconds"] = km_s
        cols["k-means (same input)"] = km_m
        base_note = (f"k-means: scikit-learn KMeans, k-means++ init, 10 restarts, "
                     f"K = {K}, random_state = {seed}, on the same {X.shape[0]} × {X.shape[1]} "
                     f"input the run saw; fitted while building this report.")
        log("k-means baseline")
    elif baseline:
        base_note = "no k-means baseline: the input data could not be loaded."

    # ---- page head -------------------------------------------------------------------------
    data_desc = inp["desc"] or cfg.get("data", "?")
    title = title or f"diffclust report: {method} on {data_desc}"
    page.add(f"<h1>{_esc(title)}</h1>")
    sub = [f"run directory <code>{_esc(run_dir.name)}</code>", f"N = {N}", f"K = {K}"]
    if "acc" in run_m:
        sub.append(f"ACC {100 * run_m['acc']:.1f}% · NMI {100 * run_m['nmi']:.1f}% · "
                   f"ARI {100 * run_m['ari']:.1f}%")
    page.add(f'<p class="sub">{" · ".join(sub)}</p>')
    if input_note:
        page.note(input_note)
    from ..diagnostics import cluster_warnings

    for w in dict.fromkeys(list(cfg.get("warnings") or []) + cluster_warnings(pred, K)):
        page.note(f"warning: {w}")

    sizes_fig = page.figure(lambda: viz.plot_cluster_sizes(pred, n_clusters=K),
                            "cluster sizes",
                            "Clusters sorted by size; dashed line: a uniform split N/K.")
    page.h2("Metrics", "metrics")
    left = _metrics_table(cols)
    if base_note:
        left += (f'<p class="sub">{_esc(base_note)} Percentages for ACC/NMI/ARI/AMI/purity; '
                 f"bold = better of the two.</p>")
    if y is None and not run["metrics"]:
        left += ('<p class="note">no true labels: only label-free statistics are shown '
                 "(pass --labels FILE to score the run)</p>")
    page.add(f'<div class="grid"><div class="col">{left}</div>{sizes_fig}</div>')

    # ---- plots -------------------------------------------------------------------------------

    if y is not None:
        page.h2("Confusion matrix", "confusion")
        page.add(page.figure(
            lambda: viz.plot_confusion_matrix(y, pred, class_names=inp["class_names"]),
            "confusion matrix",
            "Rows: clusters, reordered so the Hungarian-matched cluster of each class lies on "
            "the diagonal (dashed lines separate unmatched clusters/classes). Colour: fraction "
            "of the class; numbers: counts."))
        log("confusion")

    emb_src, E = None, None
    if run["embeddings"] is not None and len(run["embeddings"]) == N:
        emb_src, E = "embeddings.npy", run["embeddings"]
    elif X is not None:
        emb_src, E = "the input features", X
    if E is not None:
        page.h2("2-D map", "map")
        info = {}

        def _map():
            coords, idx, used = viz.embed_2d(E, embed_method, max_points, seed)
            info.update(n=len(idx), used=used)
            return viz.plot_embedding(coords, pred[idx], None if y is None else y[idx],
                                      method_name=used)
        fig_html = page.figure(_map, "2-D map of the embeddings")
        cap = (f"{info.get('used', '?')} of {emb_src} ({info.get('n', '?')} of {N} points"
               f"{', random subsample' if info.get('n', N) < N else ''}).")
        if y is not None:
            cap += " Left: clusters in the colour of their matched class; right: true labels."
        page.add(fig_html.replace("</figure>", f"<figcaption>{_esc(cap)}</figcaption></figure>"))
        log("2-D map")

    if run["history"]:
        page.h2("Training curves", "training")
        page.add(page.figure(lambda: viz.plot_training_curves(run["history"]),
                             "training curves",
                             f"metrics.jsonl: {len(run['history'])} logged steps"))
        log("curves")

    extras = []
    if run["ots"] is not None:
        o = run["ots"]
        extras.append(page.figure(lambda: viz.plot_ots_curve(o["t"], o["score"], o["t_star"]),
                                  "optimal timestep search",
                                  "DiEC's OTS: clusterability S(t) of the denoiser features "
                                  "at the evaluated timesteps; t* marked."))
    if run["cmax"] is not None:
        c = run["cmax"]
        extras.append(page.figure(lambda: viz.plot_cmax_curve(c["C"], c["r"], c["alpha"],
                                                              c["c_max"]),
                                  "C_max utilisation curve",
                                  "Share of clusters used r_C against C; C_max is the largest "
                                  "C with r_C above α."))
    if extras:
        page.h2("Method diagnostics", "diagnostics")
        page.add('<div class="grid">' + "".join(extras) + "</div>")

    samples = []
    for p in run["sample_pngs"]:
        samples.append(page.png(p.read_bytes(), f"samples {p.name}", p.name))
    if run["samples"] is not None:
        s = run["samples"]
        samples.append(page.figure(
            lambda: viz.plot_sample_grid(s["x"][:256], row_labels=None), "generated samples",
            f"first {min(len(s['x']), 256)} of {len(s['x'])} generated samples"))
    if samples:
        page.h2("Generated samples", "samples")
        page.add('<div class="grid">' + "".join(samples) + "</div>")

    if inp["images"] is not None:
        page.h2("Per-cluster galleries", "galleries")
        ids, counts = np.unique(pred, return_counts=True)
        order = ids[np.argsort(-counts, kind="stable")][:max_gallery_clusters]
        page.add(f'<p class="sub">Each row is a cluster (largest first, {len(order)} of '
                 f"{len(ids)} shown): its {gallery_n} most confident members on the left, its "
                 f"{gallery_n} least confident on the right (least confident first). "
                 + ("Green frame: the image's class is the cluster's matched class; red: "
                    "another class." if y is not None else "") + "</p>")
        mapping = None
        if y is not None:
            from ..metrics import hungarian_match
            mapping = hungarian_match(y, pred)
        for i in range(0, len(order), 20):
            chunk = order[i:i + 20]
            page.add(page.figure(
                lambda chunk=chunk: viz.plot_cluster_gallery(inp["images"], pred, conf,
                                                              n=gallery_n, clusters=chunk, y=y,
                                                              mapping=mapping),
                f"gallery of clusters {', '.join(map(str, chunk[:3]))}…"))
        log("galleries")

    if run["other_pngs"]:
        page.h2("Other figures in the run directory", "other")
        page.add('<div class="grid">' + "".join(page.png(p.read_bytes(), p.name, p.name)
                                                 for p in run["other_pngs"]) + "</div>")

    page.h2("Configuration", "config")
    shown = {k: v for k, v in cfg.items() if k != "params"}
    params = cfg.get("params") if isinstance(cfg.get("params"), dict) else None
    page.add('<div class="grid">'
             + (_kv_table(shown) if shown else "<p>(no config.json)</p>")
             + (_kv_table(params) if params else "") + "</div>")

    if page.problems:
        page.add('<h2 id="problems">Problems</h2><ul>'
                 + "".join(f"<li>{_esc(p)}</li>" for p in page.problems) + "</ul>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page.add(f"<footer>diffclust {__version__} · report built {stamp} in "
             f"{time.perf_counter() - t_start:.0f}s · self-contained (no network, no scripts)"
             f"</footer>")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
           f"<body><main>{''.join(page.parts)}</main></body></html>\n")
    out = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(out, doc)
    log(f"wrote {out}")
    return out
