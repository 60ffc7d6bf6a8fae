"""Run directories are complete or absent: real ``diffclust fit`` processes killed (SIGKILL) at
every point of the write and at random times, and concurrent fits into one folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diffclust.runs import RunError, open_run, staged_run

CLI = [sys.executable, "-m", "diffclust.cli"]


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(3 * c, 0.3, (40, 4)) for c in range(3)]).astype("f4")
    np.savez(d / "feats.npz", x=X, y=np.repeat(np.arange(3), 40))
    return d / "feats.npz"


def _env(**kw):
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.pop("DIFFCLUST_CRASH_AT", None)
    env.update(kw)
    return env


def _fit(feats, out, *extra, method="kmeans", **env):
    return subprocess.run([*CLI, "fit", str(feats), "-m", method, "-k", "3", "-o", str(out),
                           "-q", *extra], env=_env(**env), capture_output=True, text=True,
                          timeout=300)


def _assert_complete_or_absent(out):
    """What every reader sees: nothing, or a run whose every file matches its manifest."""
    if not out.exists():
        return None
    doc = open_run(out, verify=True)
    assert {"config.json", "labels.csv", "model/config.json",
            "model/model.safetensors"} <= set(doc["files"])
    return json.loads((out / "config.json").read_text())["method"]


@pytest.mark.parametrize("point", ["model", "files", "manifest"])
def test_killed_first_fit_leaves_nothing(point, feats, tmp_path):
    out = tmp_path / "run"
    r = _fit(feats, out, DIFFCLUST_CRASH_AT=point)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _assert_complete_or_absent(out) is None
    assert list(tmp_path.glob(".run.partial-*"))  # the dead process's staging folder
    r = _fit(feats, out)  # the next fit cleans it and writes a whole run
    assert r.returncode == 0, r.stderr
    assert _assert_complete_or_absent(out) == "kmeans"
    assert not list(tmp_path.glob(".run.partial-*"))


@pytest.mark.parametrize("point", ["model", "manifest", "swap"])
def test_killed_overwrite_keeps_old_run_or_nothing(point, feats, tmp_path):
    out = tmp_path / "run"
    assert _fit(feats, out).returncode == 0
    r = _fit(feats, out, "--overwrite", method="gmm", DIFFCLUST_CRASH_AT=point)
    assert r.returncode == -signal.SIGKILL
    seen = _assert_complete_or_absent(out)
    assert seen == ("kmeans" if point != "swap" else None)  # old run intact, or none
    assert _fit(feats, out, "--overwrite", method="gmm").returncode == 0
    assert _assert_complete_or_absent(out) == "gmm"
    assert not list(tmp_path.glob(".run.*-*"))  # staging and swapped-out folders cleaned


def test_kill_at_random_times_never_exposes_a_partial_run(feats, tmp_path):
    out = tmp_path / "run"
    args = [*CLI, "fit", str(feats), "-m", "cludi", "-k", "3", "-o", str(out), "-q",
            "-p", "n_steps=40", "-p", "teacher_steps=2", "-p", "eval_steps=2",
            "-p", "batch_size=60"]
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        p = subprocess.Popen(args + ["--overwrite"], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        assert _assert_complete_or_absent(out) in (None, "cludi")


def test_concurrent_fits_into_one_folder_never_mix(feats, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([*CLI, "fit", str(feats), "-m", m, "-k", "3", "-o", str(out),
                               "-q"], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in ("kmeans", "gmm")]
    codes = sorted(p.wait(timeout=300) for p in procs)
    errs = "".join(p.stderr.read() for p in procs)
    assert codes == [0, 2], errs  # one wins, the other says so in one line
    assert "--overwrite" in errs
    assert _assert_complete_or_absent(out) in ("kmeans", "gmm")
    procs = [subprocess.Popen([*CLI, "fit", str(feats), "-m", m, "-k", "3", "-o", str(out),
                               "-q", "--overwrite"], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for m in ("kmeans", "gmm")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    method = _assert_complete_or_absent(out)
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["class"] == {"kmeans": "KMeansClusterer", "gmm": "GMMClusterer"}[method]


def test_staged_run_error_leaves_target_untouched(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with staged_run(out) as tmp:
            (tmp / "labels.csv").write_text("index,cluster\n")
            1 / 0
    assert not out.exists() and not list(tmp_path.glob(".run.partial-*"))
    with pytest.raises(RunError, match="not a run directory"):
        open_run(out)


def test_stale_atomic_temp_files_are_removed(tmp_path):
    from diffclust.data import atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".labels.csv.tmp{dead.pid}"
    stale.write_text("half")
    atomic_write_text(tmp_path / "labels.csv", "index,cluster\n")
    assert not stale.exists()


RESUMABLE = {
    "cludi": (["-p", "n_steps=60", "-p", "teacher_steps=3", "-p", "eval_steps=3", "-p",
               "n_chains=2", "-p", "batch_size=60", "--checkpoint-every", "5"], 60),
    "temi": (["-p", "n_steps=600", "-p", "n_heads=2", "-p", "batch_size=60",
              "--checkpoint-every", "5"], 600),
}


@pytest.mark.parametrize("method", sorted(RESUMABLE))
def test_killed_fit_resumes_to_the_same_labels(method, feats, tmp_path):
    """kill -9 mid-fit, `fit --resume` with the same arguments: the run ends with the labels of
    an uninterrupted fit (same seed, same thread count)."""
    args, total = RESUMABLE[method]
    ref = _fit(feats, tmp_path / "ref", *args, method=method)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    p = subprocess.Popen([*CLI, "fit", str(feats), "-m", method, "-k", "3", "-o", str(out),
                          "-q", *args], env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    state = tmp_path / ".run.checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["step"] >= 15:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not out.exists() and json.loads(state.read_text())["step"] < total
    r = _fit(feats, out, *args, "--resume", method=method)
    assert r.returncode == 0, r.stderr
    assert (out / "labels.csv").read_text() == (tmp_path / "ref" / "labels.csv").read_text()
    # the resumed run's clock continues where the checkpointed one stopped
    seconds = [json.loads(line)["seconds"] for line in
               (out / "metrics.jsonl").read_text().splitlines() if '"seconds"' in line]
    assert len(seconds) >= 2 and seconds == sorted(seconds)
    assert not state.parent.exists()  # removed once the run is complete
    r = _fit(feats, tmp_path / "k", "--resume")  # k-means has no checkpoints (yet)
    assert r.returncode == 2 and "not available" in r.stderr


def test_killed_checkpoint_writes_are_cleaned(tmp_path):
    from diffclust.data.io import clean_stale_tmp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".state-00000400.safetensors.tmp{dead.pid}"
    live = tmp_path / f".state-00000600.safetensors.tmp{os.getpid()}"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    clean_stale_tmp(tmp_path)
    assert not stale.exists() and live.exists()
