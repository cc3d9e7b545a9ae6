"""Fixtures shared across suites: the bundled Analyzer (live-service suites) and a module-wide
one-thread torch setting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.config import Settings
from app.pipeline.analyze import Analyzer


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    """Loaded once: the placeholder g and d from models/, on CPU."""
    return Analyzer.from_settings(Settings(_env_file=None, device="cpu"))


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for a module (timing-free tests that should not fight for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
