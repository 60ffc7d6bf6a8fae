"""The GPU check script's code paths, run tiny on the CPU (`--cpu`): every check must pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_pass(tmp_path):
    # one thread: a code-path check, not a speed one, and two threads next to another busy
    # process can run 10-60x slower (RESULTS.md, "Contention")
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    try:  # the script ends a check that hangs after 120 s itself, with every thread's stack
        r = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"gpu_check --cpu still running after 600 s; it printed:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 passed, 0 failed" in r.stdout
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["ok"] for c in doc["checks"]] == [True] * 9
