"""Shared test fixtures.

The tests mirror the source (``tests/data/`` tests ``fvloss/data/`` ...). This folder and its
sub-folders are put on ``sys.path`` (test modules' names are unique across them), so that a
test module may import another's helpers wherever either lives (``from test_recipes import
argv``, ``from heads_common import ...``), in spawned rank processes too.

``../shared`` (next to the repository root, or ``$FVLOSS_SHARED``) holds real data sets that are
never copied into the repository; tests that need them take the ``shared_dir`` fixture and are
skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for _folder in [
    TESTS,
    *sorted(p for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"),
]:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def pytest_configure(config) -> None:
    """One torch / OpenMP thread for every process the tests start (bench scripts, notebooks,
    DDP ranks, CLI runs): the suite runs one pytest worker per core, and a subprocess taking
    every core beside the other worker oversubscribes them (the bench scripts ran 2x slower in
    the suite than with one thread each). A value set outside pytest is kept."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tests train tiny models on two cores shared with other jobs: two torch threads thrash
    there, one is faster and steadier. Restored after each module."""
    if "torch" not in sys.modules:  # keep torch-free test modules torch-free
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """6 synthetic identities x 4 images at 32 px, generated once per test session."""
    from fvloss.data.synthetic import SyntheticSpec, make_synthetic

    return make_synthetic(SyntheticSpec(6, 4, 32, 0), tmp_path_factory.mktemp("syn"), quiet=True)


@pytest.fixture(scope="module")
def dls(tiny_synthetic):
    """Tiny DataLoaders over :func:`tiny_synthetic` (img 32, batch 8, no workers)."""
    from fvloss.data import face_dls

    return face_dls(tiny_synthetic, img_size=32, bs=8, num_workers=0)
