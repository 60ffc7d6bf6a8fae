"""Plots (diffclust.viz) and the HTML run report (diffclust.report), including a real headless
Chromium rendering of the report."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from diffclust import viz
from diffclust.metrics import cluster_acc, contingency, hungarian_match
from diffclust.report import build_report, parse_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _noisy_labels(n=300, k=6, c=5, flip=0.3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    perm = rng.permutation(k)
    pred = perm[y % k]
    m = rng.random(n) < flip
    pred[m] = rng.integers(0, k, m.sum())
    return y, pred


# --------------------------------------------------------------------------- confusion matrix
@pytest.mark.parametrize("k,c", [(5, 5), (8, 5), (4, 7)])
def test_reordered_confusion_diagonal_is_the_hungarian_matching(k, c):
    y, pred = _noisy_labels(k=k, c=c)
    rc = viz.reorder_confusion(y, pred)
    n_clu, n_cls = len(np.unique(pred)), len(np.unique(y))
    assert rc.matrix.shape == (n_clu, n_cls)
    assert rc.matrix.sum() == len(y)
    assert rc.n_matched == min(n_clu, n_cls)
    # the diagonal holds the matched counts: their sum is the Hungarian ACC
    assert rc.matched_counts.sum() == round(cluster_acc(y, pred) * len(y))
    M, mapping = contingency(y, pred), hungarian_match(y, pred)
    for i in range(rc.n_matched):
        p, g = rc.clusters[i], rc.classes[i]
        assert mapping[p] == g and rc.matrix[i, i] == M[p, g]
    # rows and columns are permutations of the clusters / classes that occur
    assert sorted(rc.clusters) == sorted(np.unique(pred)) and sorted(rc.classes) == sorted(
        np.unique(y))


def test_confusion_plot_shows_the_reordered_matrix():
    y, pred = _noisy_labels()
    fig = viz.plot_confusion_matrix(y, pred, normalize=None)
    assert isinstance(fig, Figure)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(shown, viz.reorder_confusion(y, pred).matrix)
    acc = cluster_acc(y, pred)
    assert f"ACC {100 * acc:.1f}%" in fig.axes[0].get_title()
    frac = np.asarray(viz.plot_confusion_matrix(y, pred).axes[0].images[0].get_array())
    np.testing.assert_allclose(frac.sum(0), 1.0)            # fraction of each class
    with pytest.raises(ValueError, match="normalize"):
        viz.plot_confusion_matrix(y, pred, normalize="rows")
    with pytest.raises(ValueError, match="entries"):
        viz.reorder_confusion(y[:-1], pred)


# --------------------------------------------------------------------------- images
def test_display_images_accepts_every_layout():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    ref = viz.to_display_images(hwc)
    assert ref.shape == (4, 6, 5, 3) and ref.min() >= 0 and ref.max() <= 1
    np.testing.assert_allclose(viz.to_display_images(hwc.transpose(0, 3, 1, 2)), ref)
    np.testing.assert_allclose(viz.to_display_images(hwc.astype(np.float32) / 127.5 - 1), ref,
                               atol=1e-6)
    np.testing.assert_allclose(viz.to_display_images(hwc.reshape(4, -1), (6, 5, 3)), ref)
    grey = viz.to_display_images(hwc[..., 0])
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match="image_shape"):
        viz.to_display_images(hwc.reshape(4, -1))


def test_gallery_picks_most_and_least_confident_members():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    conf = rng.random(60)
    sel = viz.cluster_gallery_indices(labels, conf, n=4)
    assert list(sel) == list(np.argsort(-np.bincount(labels), kind="stable"))   # largest first
    for c, (most, least) in sel.items():
        members = np.flatnonzero(labels == c)
        ranked = members[np.argsort(-conf[members])]
        np.testing.assert_array_equal(most, ranked[:4])
        np.testing.assert_array_equal(least, ranked[::-1][:4])

    # tiles: cluster 0 = bright images, cluster 1 = dark; frames green where the class matches
    imgs = np.zeros((20, 8, 8), np.uint8)
    labels = np.repeat([0, 1], 10)
    imgs[labels == 0] = 255
    y = labels.copy()
    y[0] = 1                                                  # one wrong member in cluster 0
    conf = np.linspace(1, 0, 20)                              # member 0 is the most confident
    fig = viz.plot_cluster_gallery(imgs, labels, conf, n=3, y=y)
    mos = np.asarray(fig.axes[0].images[0].get_array())
    pad, cell = 2, 8 + 4
    assert mos.shape[0] == 2 * cell                           # one row per cluster
    first = mos[:cell, :cell]                                 # cluster 0's most confident tile
    np.testing.assert_allclose(first[0, 0], [0.84, 0.15, 0.16], atol=1e-6)   # red frame
    np.testing.assert_allclose(first[pad + 3, pad + 3], 1.0)                # bright pixel
    second = mos[:cell, cell:2 * cell]
    np.testing.assert_allclose(second[0, 0], [0.17, 0.63, 0.17], atol=1e-6)  # green frame
    np.testing.assert_allclose(mos[cell + pad + 3, pad + 3], 0.0)           # cluster 1: dark


def test_sample_grid_layout():
    s = np.random.default_rng(0).uniform(-1, 1, (10, 3, 4, 4)).astype(np.float32)
    fig = viz.plot_sample_grid(s, nrow=5)
    mos = np.asarray(fig.axes[0].images[0].get_array())
    assert mos.shape[:2] == (2 * 6, 5 * 6)                    # 2 rows × 5 columns, pad 1
    np.testing.assert_allclose(mos[1:5, 1:5], (s[0].transpose(1, 2, 0) + 1) / 2, atol=1e-6)


# --------------------------------------------------------------------------- curves
def test_cluster_sizes_bars():
    labels = np.array([0] * 5 + [2] * 9 + [3] * 1)
    fig = viz.plot_cluster_sizes(labels, n_clusters=5)
    heights = [b.get_height() for b in fig.axes[0].patches]
    assert heights == [9, 5, 1, 0, 0]
    assert "3/5 used" in fig.axes[0].get_title()


def test_training_curves_one_panel_per_quantity():
    hist = [{"step": 10 * i, "loss": 1.0 / (i + 1), "lr": 1e-3 * 0.9 ** i, "seconds": i,
             "tag": "x"} for i in range(8)]
    fig = viz.plot_training_curves(hist)
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == ["loss", "lr"]
    x, yv = visible[0].lines[0].get_data()
    np.testing.assert_allclose(x, [10 * i for i in range(8)])
    np.testing.assert_allclose(yv, [1.0 / (i + 1) for i in range(8)])
    assert visible[1].get_yscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        viz.plot_training_curves([])


def test_training_curves_from_jsonl(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n')
    assert len(viz.read_metrics_jsonl(p)) == 2
    assert isinstance(viz.plot_training_curves(p), Figure)
    p.write_text('{"step": 1\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        viz.read_metrics_jsonl(p)


def test_ots_curve_marks_t_star():
    t, s = [500, 100, 300, 200], [1.0, 2.0, 5.0, 4.0]
    ax = viz.plot_ots_curve(t, s, t_star=300).axes[0]
    x, yv = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, [100, 200, 300, 500])           # joined in t order
    np.testing.assert_array_equal(yv, [2.0, 4.0, 5.0, 1.0])
    assert ax.lines[1].get_xdata()[0] == 300
    ax = viz.plot_ots_curve(t, s).axes[0]                            # default t*: the argmax
    assert ax.lines[1].get_xdata()[0] == 300


def test_cmax_curve_default_cmax_and_alpha():
    C, r = [16, 32, 64, 128, 80], [1.0, 1.0, 0.99, 0.8, 0.97]
    ax = viz.plot_cmax_curve(C, r, alpha=0.96).axes[0]
    hl = [ln for ln in ax.lines if np.ptp(ln.get_ydata()) == 0 and len(ln.get_ydata()) == 2]
    vl = [ln for ln in ax.lines if np.ptp(ln.get_xdata()) == 0 and len(ln.get_xdata()) == 2]
    assert hl[0].get_ydata()[0] == 0.96
    assert vl[0].get_xdata()[0] == 80                                 # largest C with r > α
    assert ax.get_xscale() == "log"


# --------------------------------------------------------------------------- embedding
def test_embed_2d_subsamples_and_projects():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(8, 1, (40, 5))]).astype(np.float32)
    coords, idx, used = viz.embed_2d(X, "tsne", max_points=60, random_state=0)
    assert used == "t-SNE" and coords.shape == (60, 2) and len(np.unique(idx)) == 60
    far = (idx < 40) != (idx[:, None] < 40)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    assert d[far].mean() > 2 * d[~far].mean()                 # the two blobs stay apart
    c2, i2, u2 = viz.embed_2d(X[:, :2], max_points=1000)
    assert u2 == "identity" and np.array_equal(c2, X[:, :2]) and len(i2) == 80
    assert viz.embed_2d(X, "pca")[2] == "PCA"
    with pytest.raises(ValueError, match="method"):
        viz.embed_2d(X, "isomap")


def test_embedding_plot_colours_clusters_like_their_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    pred = (y + 1) % 3                                        # a perfect, permuted clustering
    fig = viz.plot_embedding(rng.normal(size=(90, 2)), pred, y)
    a, b = fig.axes[:2]
    ca = a.collections[0].get_facecolors()
    cb = b.collections[0].get_facecolors()
    np.testing.assert_allclose(ca, cb)                        # same colour for cluster & class
    assert len(viz.plot_embedding(rng.normal(size=(90, 2)), pred).axes) == 1


# --------------------------------------------------------------------------- saving
def test_save_helpers_write_png_atomically(tmp_path):
    y, pred = _noisy_labels()
    out = viz.save_confusion_matrix(tmp_path / "cm.png", y, pred)
    viz.save_cluster_sizes(tmp_path / "sizes.png", pred)
    viz.save_ots_curve(tmp_path / "ots.png", [1, 2, 3], [1, 3, 2])
    viz.save_cmax_curve(tmp_path / "cmax.png", [16, 32], [1.0, 0.5])
    for p in tmp_path.iterdir():
        assert p.read_bytes()[:8] == PNG_MAGIC, p
    assert Path(out) == tmp_path / "cm.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "cmax.png", "ots.png",
                                                          "sizes.png"]   # no temp files left


def test_parse_curve_forms():
    ref = (np.array([1.0, 2.0]), np.array([0.5, 0.7]))
    forms = [{"t": [1, 2], "score": [0.5, 0.7]}, {"1": 0.5, "2": 0.7, "t_star": 2},
             [[1, 0.5], [2, 0.7]], [{"t": 1, "score": 0.5}, {"t": 2, "score": 0.7}],
             {"scores": {"2": 0.7, "1": 0.5}}]
    for f in forms:
        got = parse_curve(f, ("t",), ("score", "scores"))
        np.testing.assert_allclose(got[0], ref[0])
        np.testing.assert_allclose(got[1], ref[1])
    cm = {"c_max": 32, "alpha": 0.96, "table": [{"C": 16, "r_C": 1.0}, {"C": 32, "r_C": 0.97}]}
    np.testing.assert_allclose(parse_curve(cm, ("C",), ("r", "r_C"))[1], [1.0, 0.97])
    assert parse_curve("nonsense", ("t",), ("score",)) is None


# --------------------------------------------------------------------------- the report
def _make_run(root: Path, with_extras=True) -> Path:
    """A run directory as `diffclust fit digits --method kmeans` writes it, plus extras."""
    from diffclust import KMeansClusterer, load_dataset
    from diffclust.cli import write_labels_csv
    from diffclust.metrics import evaluate

    X, y = load_dataset("digits", return_X_y=True, flatten=True)
    est = KMeansClusterer(10, n_init=2, random_state=0).fit(X)
    run = root / "run"
    run.mkdir()
    est.save_pretrained(run / "model")
    write_labels_csv(run / "labels.csv", est.labels_, est.predict_proba(X))
    hist = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 21)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
    cfg = {"method": "kmeans", "data": "digits", "n_samples": len(X), "n_features": X.shape[1],
           "n_clusters": 10, "seed": 0, "params": est.get_params(), "fit_seconds": 0.5}
    (run / "config.json").write_text(json.dumps(cfg, default=str))
    (run / "metrics.json").write_text(json.dumps(evaluate(y, est.labels_, extended=True)))
    if with_extras:
        (run / "ots.json").write_text(json.dumps({"t": [50, 100, 200, 400],
                                                  "score": [3.0, 5.0, 4.0, 1.0], "t_star": 100}))
        (run / "cmax.json").write_text(json.dumps(
            {"c_max": 32, "alpha": 0.96, "table": [{"C": 16, "r_C": 1.0}, {"C": 32, "r_C": 0.97},
                                                   {"C": 64, "r_C": 0.8}]}))
        np.save(run / "samples.npy", np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = _make_run(tmp_path_factory.mktemp("rep"))
    path = build_report(run, embed_method="pca", max_points=400)
    return run, path, path.read_text()


def _img_srcs(text):
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)


def test_report_is_self_contained(report):
    run, path, text = report
    assert path == run / "report.html"
    assert "<title>diffclust report: kmeans on digits</title>" in text
    plain = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", text)
    assert not re.search(r"(https?|ftp|file):|//[a-z0-9]", plain, re.IGNORECASE), "URL in the report"
    assert not re.search(r"<(script|link|iframe|object|embed)\b|@import|url\(|\shref=", plain)
    srcs = _img_srcs(text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "Problems" not in text and "could not be drawn" not in text


def test_report_has_every_section(report):
    _, _, text = report
    for anchor in ("metrics", "confusion", "map", "training", "diagnostics", "samples",
                   "galleries", "config"):
        assert f'id="{anchor}"' in text, anchor
    alts = re.findall(r'<img[^>]*alt="([^"]*)"', text)
    for a in ("cluster sizes", "confusion matrix", "2-D map of the embeddings", "training curves",
              "optimal timestep search", "C_max utilisation curve", "generated samples"):
        assert a in alts, a
    assert any(a.startswith("gallery of clusters") for a in alts)


def test_report_metrics_table_has_run_and_kmeans_baseline(report):
    from diffclust import KMeansClusterer, load_dataset
    from diffclust.metrics import evaluate

    run, _, text = report
    X, y = load_dataset("digits", return_X_y=True, flatten=True)
    pred = np.loadtxt(run / "labels.csv", delimiter=",", skiprows=1, usecols=1).astype(int)
    km = KMeansClusterer(10, random_state=0).fit(X)
    table = text[text.index('id="metrics"'):text.index('id="confusion"')]
    assert "kmeans (this run)" in table and "k-means (same input)" in table
    row = re.search(r"<th>acc \(%\)</th>(.*?)</tr>", table).group(1)
    cells = re.findall(r">([0-9.]+)</td>", row)
    assert cells == [f"{100 * evaluate(y, pred)['acc']:.1f}",
                     f"{100 * evaluate(y, km.labels_)['acc']:.1f}"]


def test_report_without_input_still_builds(tmp_path):
    run = _make_run(tmp_path, with_extras=False)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(cfg, data=str(tmp_path / "gone.npy"))))
    path = build_report(run, out=tmp_path / "r.html")
    text = path.read_text()
    assert "input data not available" in text and "no k-means baseline" in text
    assert 'id="confusion"' not in text and 'id="galleries"' not in text
    assert "k-means (same input)" not in text
    assert "79" in text or "acc (%)" in text                   # metrics.json still shown
    labels = np.loadtxt(run / "labels.csv", delimiter=",", skiprows=1, usecols=1).astype(int)
    np.save(tmp_path / "feats.npy", np.random.default_rng(0).normal(size=(len(labels), 3)))
    text = build_report(run, data=str(tmp_path / "feats.npy"), baseline=False,
                        embed_method="pca", out=tmp_path / "r2.html").read_text()
    assert 'id="map"' in text and 'id="galleries"' not in text
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        build_report(tmp_path)


def test_report_cli(tmp_path):
    from typer.testing import CliRunner

    from diffclust.cli import app

    from diffclust.runs import write_manifest

    run = _make_run(tmp_path, with_extras=False)
    res = CliRunner().invoke(app, ["report", str(run), "--no-baseline", "--embed", "pca", "-q"])
    assert res.exit_code == 2 and "not a complete run" in res.output  # no manifest yet
    write_manifest(run)  # what `diffclust fit` writes last
    res = CliRunner().invoke(app, ["report", str(run), "--no-baseline", "--embed", "pca", "-q",
                                   "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run directory" in res.output


# --------------------------------------------------------------------------- real browser
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
_PROBE = ('<script>window.addEventListener("load",function(){var im=document.images,ok=0;'
          'for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}'
          'document.body.setAttribute("data-images-loaded",ok+"/"+im.length);});</script>')


def _chromium(tmp: Path, url: str, *extra) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if ":CONSOLE" in ln or "Failed to load resource" in ln or "net::ERR" in ln]


def _render(tmp: Path, html_path: Path):
    """(screenshot PNG path, DOM with the image probe, console lines) of ``html_path``."""
    shot = tmp / "shot.png"
    r1 = _chromium(tmp, html_path.as_uri(), f"--screenshot={shot}", "--window-size=1200,2000")
    probe = tmp / "probe.html"            # the same page plus a script that counts loaded images
    probe.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    r2 = _chromium(tmp, probe.as_uri(), "--dump-dom")
    return shot, r2.stdout, _console_lines(r1.stderr) + _console_lines(r2.stderr)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                             "chromium; .ci/run installs it): no browser test")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    # control: the checks below do detect a console error and a broken image
    bad = tmp_path / "bad" / "bad.html"
    bad.parent.mkdir()
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                   "</body></html>")
    _, dom, console = _render(bad.parent, bad)
    assert any("boom" in ln for ln in console), console
    assert 'data-images-loaded="0/1"' in dom, dom[-300:]

    _, path, text = report
    shot, dom, console = _render(tmp_path, path)
    n_img = len(_img_srcs(text))
    assert "<title>diffclust report: kmeans on digits</title>" in dom
    assert f'data-images-loaded="{n_img}/{n_img}"' in dom      # every embedded PNG decoded
    assert console == [], console
    assert shot.exists()
    im = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert im.shape == (2000, 1200, 3)
    assert im.std() > 20                                          # not a blank page
    assert len(np.unique(im.reshape(-1, 3) // 16, axis=0)) > 30  # text, tables and plot colours
    blue = (im[..., 2] > im[..., 0] + 60).mean()                  # the plots' blues are painted
    assert blue > 0.005
