"""Shared fixtures. Real data is found at $FUNDUSGEN_DATA or ../shared/data beside the repo;
tests that need it skip with a reason where it is absent (a user's fresh clone)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    root = Path(os.environ.get("FUNDUSGEN_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real fundus data not found (set FUNDUSGEN_DATA or place it at ../shared/data)")
    return root


@pytest.fixture(scope="session")
def retina_rgb() -> np.ndarray:
    """A real colour fundus photograph (CC0) that ships with scikit-image."""
    from skimage import data
    return data.retina()


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture()
def one_thread():
    """Small convolutions on one thread: two on a busy 2-core machine run many times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
