import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("DIFFCLUST_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFCLUST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets folder (../shared/data); CI always has it."""
    if not (SHARED_DATA / "usps.npz").exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set DIFFCLUST_DATA)")
    return SHARED_DATA


def record_restores(monkeypatch, cls) -> list:
    """Patch ``cls._restore_training`` to record the step each fit restored (0: none), so a
    resume test can tell a continued fit from one that started over."""
    restored, orig = [], cls._restore_training

    def spy(self, *a, **k):
        out = orig(self, *a, **k)
        restored.append(out[0])
        return out

    monkeypatch.setattr(cls, "_restore_training", spy)
    return restored


def fit_script(cls_name: str, kw: dict, x_path, ck) -> str:
    """Python source that fits ``diffclust.<cls_name>(3, random_state=0, **kw)`` on the array
    in ``x_path`` with ``checkpoint_dir=ck``, on one thread (a subprocess to kill)."""
    return (f"import numpy as np, torch\ntorch.set_num_threads(1)\n"
            f"from diffclust import {cls_name}\nX = np.load({str(x_path)!r})\n"
            f"{cls_name}(3, random_state=0, **{kw!r}).fit(X, checkpoint_dir={str(ck)!r})\n")


def kill_when(script: str, ready, timeout: float = 240) -> None:
    """Run ``script`` in a fresh interpreter and SIGKILL it as soon as ``ready()`` is true
    (polled every 20 ms; or when it ends, or after ``timeout`` seconds)."""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)


def saved_step(state: Path) -> int:
    """The step of a training state.json (0 while it is missing or being replaced)."""
    try:
        return int(json.loads(state.read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0
