import json

import numpy as np
from typer.testing import CliRunner

from diffclust.cli import app

runner = CliRunner()


def _blobs(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=6, size=(3, 5))
    y = np.repeat(np.arange(3), 40)
    X = (centers[y] + rng.normal(size=(120, 5))).astype(np.float32)
    np.savez(tmp_path / "feats.npz", x=X, y=y)
    return X, y


def test_fit_predict_evaluate_kmeans(tmp_path):
    X, y = _blobs(tmp_path)
    run = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tmp_path / "feats.npz"), "--method", "kmeans", "-k", "3",
                            "--out", str(run), "-q"])
    assert r.exit_code == 0, r.output
    for f in ("config.json", "labels.csv", "metrics.json", "metrics.jsonl", "model/config.json",
              "model/model.safetensors"):
        assert (run / f).exists(), f
    m = json.loads((run / "metrics.json").read_text())
    assert m["acc"] > 0.95
    lines = (run / "labels.csv").read_text().splitlines()
    assert lines[0] == "index,cluster,confidence" and len(lines) == 121
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "feats.npz")])
    assert r.exit_code == 0, r.output
    pred = np.loadtxt(run / "predictions.csv", delimiter=",", skiprows=1, usecols=1)
    own = np.loadtxt(run / "labels.csv", delimiter=",", skiprows=1, usecols=1)
    np.testing.assert_array_equal(pred, own)
    np.save(tmp_path / "y.npy", y)
    r = runner.invoke(app, ["evaluate", str(run), "--labels", str(tmp_path / "y.npy")])
    assert r.exit_code == 0 and '"acc"' in r.output


def test_fit_cludi_with_params(tmp_path):
    _blobs(tmp_path)
    run = tmp_path / "c"
    r = runner.invoke(app, ["fit", str(tmp_path / "feats.npz"), "-m", "cludi", "-k", "3", "-o",
                            str(run), "-q", "-p", "n_steps=5", "-p", "teacher_steps=2",
                            "-p", "eval_steps=2", "-p", "n_chains=2", "-p", "batch_size=32",
                            "-p", "init_partition=None"])
    assert r.exit_code == 0, r.output
    params = json.loads((run / "config.json").read_text())["params"]
    assert params["n_steps"] == 5 and params["init_partition"] is None
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1


def test_cli_errors_are_clear(tmp_path):
    _blobs(tmp_path)
    r = runner.invoke(app, ["fit", "nope.npz", "-k", "3", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "neither an existing file nor a dataset" in r.output
    r = runner.invoke(app, ["fit", str(tmp_path / "feats.npz"), "-k", "0", "-o",
                            str(tmp_path / "r")])
    assert r.exit_code == 2 and "n_clusters" in r.output and "[1, inf)" in r.output
    r = runner.invoke(app, ["fit", str(tmp_path / "feats.npz"), "-k", "3", "-o",
                            str(tmp_path / "r"), "-p", "bogus=1"])
    assert r.exit_code == 2 and "unknown parameter" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "missing"), str(tmp_path / "feats.npz")])
    assert r.exit_code == 2 and "not a run directory" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 2


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("demo", "fit", "predict", "evaluate"):
        assert cmd in r.output


def test_methods_lists_every_parameter():
    from diffclust.methods.registry import get_method, method_names

    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0, r.output
    for name in method_names():
        assert f"{name} (" in r.output
        for p in get_method(name)().get_params():
            assert p == "n_clusters" or f"  {p} " in r.output, (name, p)
    # each documented parameter carries the first sentence of its docstring entry
    out = runner.invoke(app, ["methods", "cludi"]).output
    assert "marginal_entropy" in out and "[PROP] Weight λ_H of ``log K − H(p̄)``" in out
    assert "B (256; the whole data when smaller)." in out


def test_demo_writes_a_complete_run_and_report(tmp_path, monkeypatch):
    from diffclust import demo as demo_mod
    from diffclust.runs import open_run

    monkeypatch.setattr(demo_mod, "DEMO_PARAMS", dict(n_steps=4, teacher_steps=2, eval_steps=2,
                                                      eval_chains=2, center=True,
                                                      neighbor_views=3, marginal_entropy=1.0))
    r = runner.invoke(app, ["demo", "-q", "-o", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert "k-means" in r.output and "CLUDI" in r.output and "report:" in r.output
    doc = open_run(tmp_path / "demo", verify=True)
    assert {"labels.csv", "model/model.safetensors", "report.html"} <= set(doc["files"])
