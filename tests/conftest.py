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
