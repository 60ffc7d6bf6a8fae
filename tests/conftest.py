import os
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
