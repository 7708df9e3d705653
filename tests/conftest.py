"""Shared test fixtures.

``../shared`` (next to the repository root, or ``$FVLOSS_SHARED``) holds real data sets that are
never copied into the repository; tests that need them take the ``shared_dir`` fixture and are
skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_root() -> Path:
    """Where the shared data folder should be: ``$FVLOSS_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("FVLOSS_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; skips the test when it is absent."""
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder not found at {root} (set FVLOSS_SHARED to its path)")
    return root


@pytest.fixture(scope="session")
def lfw_view1(shared_dir: Path) -> Path:
    """``shared/data/lfw-view1`` (LFW View 1 pair files + images); skips when absent."""
    root = shared_dir / "data" / "lfw-view1"
    if not (root / "pairsDevTest.txt").is_file():
        pytest.skip(f"LFW View 1 not found under {root}")
    return root
