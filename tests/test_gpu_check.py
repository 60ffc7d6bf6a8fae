"""The GPU check script's code paths, run tiny on the CPU (`--cpu`): every check must pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_pass(tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 passed, 0 failed" in r.stdout
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["ok"] for c in doc["checks"]] == [True] * 9
