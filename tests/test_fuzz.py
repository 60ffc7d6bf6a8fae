"""Bad input of every kind, through the CLI and the Python API: each case must end in one clear
``error:`` line (exit 2) or a ``ValueError``/``TypeError`` naming what was wrong — never a
traceback, a silent "result" or a half-written run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffclust import (
    CLUDI,
    GCC,
    TEMI,
    ClusterDDPM,
    DiEC,
    GMMClusterer,
    KMeansClusterer,
    SelfClassifier,
    load_pretrained,
)
from diffclust.cli import app
from diffclust.runs import open_run

runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def _blobs(n=60, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(3 * c, 0.3, (n // k, d)) for c in range(k)]).astype("f4")
    return X, np.repeat(np.arange(k), n // k)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    X, y = _blobs()
    np.savez(d / "feats.npz", x=X, y=y)
    np.save(d / "feats.npy", X)
    good = (d / "feats.npz").read_bytes()
    (d / "empty.npz").write_bytes(b"")
    (d / "empty.npy").write_bytes(b"")
    (d / "garbage.npz").write_bytes(os.urandom(300))
    (d / "garbage.npy").write_bytes(os.urandom(300))
    (d / "garbage.pt").write_bytes(os.urandom(300))
    (d / "truncated.npz").write_bytes(good[: len(good) // 2])
    np.savez(d / "nokey.npz", weights=X)
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "nan.npy", np.where(np.eye(60, 4) > 0, np.nan, X))
    np.save(d / "complex.npy", X.astype(np.complex64))
    np.save(d / "huge.npy", X.astype(np.float64) * 1e30)
    np.save(d / "vector.npy", X[:, 0])
    np.save(d / "strings.npy", np.array(["a", "b", "c"]))
    (d / "text.csv").write_text("a,b\n1,2\n3,oops\n")
    (d / "header.csv").write_text("a,b\n")
    (d / "feats.xyz").write_text("1 2 3\n")
    (d / "noimages").mkdir()
    np.save(d / "y_short.npy", y[:10])
    (d / "a_file").write_text("x")
    return d


CLI_CASES = {
    "missing file": ["fit", "{d}/nope.npz", "-k", "3"],
    "empty npz": ["fit", "{d}/empty.npz", "-k", "3"],
    "empty npy": ["fit", "{d}/empty.npy", "-k", "3"],
    "corrupt npz": ["fit", "{d}/garbage.npz", "-k", "3"],
    "corrupt npy": ["fit", "{d}/garbage.npy", "-k", "3"],
    "corrupt pt": ["fit", "{d}/garbage.pt", "-k", "3"],
    "truncated npz": ["fit", "{d}/truncated.npz", "-k", "3"],
    "npz without a feature key": ["fit", "{d}/nokey.npz", "-k", "3"],
    "missing --key": ["fit", "{d}/feats.npz", "-k", "3", "--key", "nothere"],
    "pickled npy": ["fit", "{d}/object.npy", "-k", "3"],
    "NaN features": ["fit", "{d}/nan.npy", "-k", "3"],
    "complex features": ["fit", "{d}/complex.npy", "-k", "3"],
    "overflowing features": ["fit", "{d}/huge.npy", "-k", "3"],
    "1-D features": ["fit", "{d}/vector.npy", "-k", "3"],
    "string array": ["fit", "{d}/strings.npy", "-k", "3"],
    "text in csv": ["fit", "{d}/text.csv", "-k", "3"],
    "header-only csv": ["fit", "{d}/header.csv", "-k", "3"],
    "unknown suffix": ["fit", "{d}/feats.xyz", "-k", "3"],
    "folder without images": ["fit", "{d}/noimages", "-k", "3"],
    "k = 0": ["fit", "{d}/feats.npz", "-k", "0"],
    "k > N": ["fit", "{d}/feats.npz", "-k", "500"],
    "unknown method": ["fit", "{d}/feats.npz", "-k", "3", "-m", "nope"],
    "unknown param": ["fit", "{d}/feats.npz", "-k", "3", "-p", "bogus=1"],
    "param without =": ["fit", "{d}/feats.npz", "-k", "3", "-p", "n_steps"],
    "n_steps=abc": ["fit", "{d}/feats.npz", "-k", "3", "-m", "cludi", "-p", "n_steps=abc"],
    "n_steps=0": ["fit", "{d}/feats.npz", "-k", "3", "-m", "cludi", "-p", "n_steps=0"],
    "n_steps=-5": ["fit", "{d}/feats.npz", "-k", "3", "-m", "cludi", "-p", "n_steps=-5"],
    "lr=NaN": ["fit", "{d}/feats.npz", "-k", "3", "-m", "cludi", "-p", "lr=NaN"],
    "embedding_dim=0": ["fit", "{d}/feats.npz", "-k", "3", "-m", "cludi", "-p",
                        "embedding_dim=0"],
    "TEMI gamma=2": ["fit", "{d}/feats.npz", "-k", "3", "-m", "temi", "-p", "gamma=2"],
    "device bogus": ["fit", "{d}/feats.npz", "-k", "3", "--device", "bogus"],
    "missing labels file": ["fit", "{d}/feats.npz", "-k", "3", "--labels", "{d}/nope.npy"],
    "labels of the wrong length": ["fit", "{d}/feats.npz", "-k", "3", "--labels",
                                   "{d}/y_short.npy"],
    "corrupt labels": ["fit", "{d}/feats.npz", "-k", "3", "--labels", "{d}/garbage.npy"],
    "--out is a file": ["fit", "{d}/feats.npz", "-k", "3", "-o", "{d}/a_file"],
    "--out under a file": ["fit", "{d}/feats.npz", "-k", "3", "-o", "{d}/a_file/run"],
    "predict: no run": ["predict", "{d}/nope", "{d}/feats.npz"],
    "predict: a folder that is no run": ["predict", "{d}/noimages", "{d}/feats.npz"],
    "evaluate: no run": ["evaluate", "{d}/nope"],
    "report: no run": ["report", "{d}/noimages"],
    "generate: no generator": ["generate", "{d}/noimages"],
    "sample: no run": ["sample", "{d}/nope"],
}


def _expand(args, d, out):
    args = [a.format(d=d) for a in args]
    if args[0] == "fit" and "-o" not in args:
        args += ["-o", str(out), "-m", "kmeans"] if "-m" not in args else ["-o", str(out)]
    return args + (["-q"] if args[0] == "fit" else [])


def _assert_one_error_line(r, case):
    assert r.exit_code == 2, f"{case}: exit {r.exit_code}, output {r.output!r}"
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {r.output!r}"
    assert "Traceback" not in r.output and "allow_pickle" not in r.output, case
    return lines[0]


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_is_one_error_line(case, files, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, _expand(CLI_CASES[case], files, out))
    line = _assert_one_error_line(r, case)
    assert not out.exists(), f"{case}: a run directory was left behind"
    if case.startswith(("n_steps", "lr", "embedding_dim", "TEMI")):
        name = case.split("=")[0].split()[-1]
        assert f"'{name}'" in line, line  # the message names the parameter


@pytest.fixture
def run(files, tmp_path):
    r = runner.invoke(app, ["fit", str(files / "feats.npz"), "-m", "kmeans", "-k", "3",
                            "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


def test_refit_refuses_then_overwrites_whole(run, files):
    r = runner.invoke(app, ["fit", str(files / "feats.npz"), "-m", "gmm", "-k", "3",
                            "-o", str(run), "-q"])
    _assert_one_error_line(r, "refit")
    assert "--overwrite" in r.output
    runner.invoke(app, ["predict", str(run), str(files / "feats.npz")])
    assert (run / "predictions.csv").exists() and (run / "metrics.json").exists()
    r = runner.invoke(app, ["fit", str(files / "feats.npy"), "-m", "gmm", "-k", "3",
                            "-o", str(run), "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    # nothing of the old run survives: no metrics (no labels now), no predictions
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()
    assert json.loads((run / "config.json").read_text())["method"] == "gmm"
    open_run(run, verify=True)


def _tamper_weights(model_dir: Path, fn):
    from safetensors.torch import load_file, save_file

    t = load_file(model_dir / "model.safetensors")
    fn(t)
    save_file(t, model_dir / "model.safetensors")


def _rewrite_config(model_dir: Path, fn):
    cfg = json.loads((model_dir / "config.json").read_text())
    fn(cfg)
    (model_dir / "config.json").write_text(json.dumps(cfg))


MODEL_CASES = {
    "NaN weights": lambda m: _tamper_weights(
        m, lambda t: t["cluster_centers_"].fill_(float("nan"))),
    "truncated weights": lambda m: (m / "model.safetensors").write_bytes(
        (m / "model.safetensors").read_bytes()[:40]),
    "broken config": lambda m: (m / "config.json").write_text("{not json"),
    "config without params": lambda m: _rewrite_config(m, lambda c: c.pop("params")),
    "n_clusters disagrees": lambda m: _rewrite_config(
        m, lambda c: c["params"].update(n_clusters=5)),
    "unknown class": lambda m: _rewrite_config(m, lambda c: c.update({"class": "Nope"})),
    "unknown parameter": lambda m: _rewrite_config(m, lambda c: c["params"].update(zz=1)),
    "future format": lambda m: _rewrite_config(m, lambda c: c.update(format_version=99)),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_tampered_models_are_refused(case, run, files):
    MODEL_CASES[case](run / "model")
    with pytest.raises(ValueError, match=r"model"):
        load_pretrained(run / "model")
    r = runner.invoke(app, ["predict", str(run), str(files / "feats.npz")])
    _assert_one_error_line(r, case)
    assert not (run / "predictions.csv").exists()


def test_labels_out_of_range_and_shape_mismatch_are_refused(tmp_path):
    """A model whose weights and labels are consistent with its checksum but not with its
    config (saved from a tampered estimator) is refused on load."""
    X, _ = _blobs()
    km = KMeansClusterer(3, random_state=0).fit(X)
    km.labels_ = km.labels_.copy()
    km.labels_[0] = 99
    km.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"labels_ must be .* \[0, 3\)"):
        load_pretrained(tmp_path / "m")
    c = CLUDI(3, n_steps=2, teacher_steps=2, eval_steps=2, eval_chains=1, n_chains=2,
              batch_size=30, random_state=0, verbose=False).fit(X)
    c.embedding_dim = 16  # config now says d = 16, the weights are d = 64
    c.net_.z_dim = 16
    c.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="does not match"):
        load_pretrained(tmp_path / "c")


def test_incomplete_run_is_refused(run, files):
    (run / "run.json").unlink()  # as if the fit had been killed before its manifest
    for cmd in (["predict", str(run), str(files / "feats.npz")], ["evaluate", str(run)],
                ["report", str(run)]):
        r = runner.invoke(app, cmd)
        line = _assert_one_error_line(r, cmd[0])
        assert "not a complete run" in line


ESTIMATORS = [
    lambda: KMeansClusterer(3), lambda: GMMClusterer(3), lambda: CLUDI(3), lambda: TEMI(3),
    lambda: DiEC(3), lambda: ClusterDDPM(3), lambda: GCC(3), lambda: SelfClassifier(3),
]


@pytest.mark.parametrize("make", ESTIMATORS, ids=lambda f: type(f()).__name__)
def test_every_estimator_refuses_complex_sparse_nonfinite_before_work(make):
    import scipy.sparse as sp

    X = np.random.default_rng(0).normal(size=(40, 64)).astype("f4")
    imgs = est_input = None
    est = make()
    if getattr(est, "_input_kind", "features") == "images":
        imgs = np.random.default_rng(0).random((40, 8, 8)).astype("f4")
        est_input = imgs
    else:
        est_input = X
    with pytest.raises(ValueError, match="complex"):
        est.fit(est_input.astype(np.complex64))
    with pytest.raises(TypeError, match="sparse"):
        est.fit(sp.csr_matrix(est_input.reshape(len(est_input), -1)))
    bad = est_input.copy()
    bad.flat[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(bad)


def test_kmeans_and_gmm_refuse_overflowing_values():
    X, _ = _blobs()
    for est in (KMeansClusterer(3), GMMClusterer(3)):
        with pytest.raises(ValueError, match="overflow"):
            est.fit(X.astype(np.float64) * 1e30)


def test_hyperparameters_are_range_checked_by_name():
    X, _ = _blobs()
    for est, name in ((CLUDI(3, n_steps=0), "n_steps"), (CLUDI(3, n_steps=-5), "n_steps"),
                      (CLUDI(3, lr=float("nan")), "lr"), (CLUDI(3, embedding_dim=0),
                                                           "embedding_dim"),
                      (TEMI(3, batch_size=1), "batch_size"), (GCC(3, temperature=-1),
                                                               "temperature"),
                      (ClusterDDPM(3, covariance_type="spherical"), "covariance_type"),
                      (DiEC(3, ots_grid=0), "ots_grid")):
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            est.fit(X if est._input_kind == "features" else np.zeros((60, 8, 8), "f4"))


def test_numpy_integers_are_valid_n_clusters():
    for cls in (KMeansClusterer, GMMClusterer, CLUDI, TEMI, DiEC, ClusterDDPM, GCC):
        cls(np.int64(3))._validate_params()


def test_every_parameter_has_a_declared_constraint():
    for cls in (KMeansClusterer, GMMClusterer, CLUDI, TEMI, DiEC, ClusterDDPM, GCC,
                SelfClassifier):
        missing = set(cls().get_params()) - set(cls._parameter_constraints)
        assert not missing, f"{cls.__name__}: no constraint for {sorted(missing)}"


def test_channels_last_colour_images_are_read_as_such():
    from diffclust.data import check_images

    X = np.zeros((5, 4, 4, 3), np.uint8)
    X[..., 0] = 255  # red
    out = check_images(X)
    assert out.shape == (5, 3, 4, 4)
    assert np.all(out[:, 0] == 1.0) and np.all(out[:, 1:] == -1.0)


def test_images_given_to_a_feature_method_are_flattened(tmp_path):
    imgs = (np.random.default_rng(0).random((30, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", x=imgs, y=np.repeat(np.arange(3), 10))
    r = runner.invoke(app, ["fit", str(tmp_path / "imgs.npz"), "-m", "kmeans", "-k", "3",
                            "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["n_features"] == 64


def test_predict_refuses_non_finite_output():
    X, _ = _blobs()
    km = KMeansClusterer(3, random_state=0).fit(X)
    km.cluster_centers_ = km.cluster_centers_ * np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        km.predict_proba(X)


def test_unexpected_errors_are_one_line_with_debug_hint(files, tmp_path, monkeypatch):
    from diffclust.methods import baselines

    def boom(self, X):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(baselines.KMeansClusterer, "_fit", boom)
    r = runner.invoke(app, ["fit", str(files / "feats.npz"), "-m", "kmeans", "-k", "3",
                            "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 1 and r.output.startswith("error: internal error")
    assert "--debug" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.partial-*"))
    r = runner.invoke(app, ["--debug", "fit", str(files / "feats.npz"), "-m", "kmeans", "-k",
                            "3", "-o", str(tmp_path / "run"), "-q"])
    assert isinstance(r.exception, RuntimeError)  # --debug lets the traceback through


def test_torch_tensors_and_lists_are_accepted():
    X, y = _blobs()
    a = KMeansClusterer(3, random_state=0).fit(torch.from_numpy(X)).labels_
    b = KMeansClusterer(3, random_state=0).fit(X.tolist()).labels_
    assert np.array_equal(a, b)


def test_degenerate_results_warn():
    from diffclust.diagnostics import cluster_warnings, edge_warning, loss_warnings

    assert cluster_warnings(np.zeros(100, int), 10)  # one cluster of ten used
    assert not cluster_warnings(np.arange(100) % 10, 10)
    assert loss_warnings([{"loss": v} for v in (1.0, 1.2, 1.1, 1.3)])
    assert not loss_warnings([{"loss": v} for v in (1.0, 0.8, 0.7, 0.5)])
    assert not loss_warnings([{"phase": "a", "loss": 0.1}] +  # only the last phase counts
                             [{"phase": "b", "loss": v} for v in (2.0, 1.5, 1.2, 1.0)])
    assert edge_warning("t*", 1, 1, 999) and not edge_warning("t*", 300, 1, 999)
    import warnings as w

    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        X = np.zeros((30, 2), "f4")
        X[:4] = np.arange(1, 9).reshape(4, 2)  # 26 identical points: one cluster holds 87 %
        KMeansClusterer(5, random_state=0).fit(X)
    assert any("degenerate" in str(c.message) for c in caught)
