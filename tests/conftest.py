"""Fixtures shared across suites: the bundled Analyzer (live-service suites), a module-wide
one-thread torch setting, and a check that no test leaves the process in real-time scheduling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.config import Settings
from app.pipeline.analyze import Analyzer
from tests.mediagen import scheduling


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


@pytest.fixture(autouse=True)
def _scheduling_unchanged() -> Iterator[None]:
    """A test must not leave the main thread's scheduling policy changed (SVT-AV1 does, as
    root): threads and servers started later inherit it and can starve each other."""
    before = scheduling()
    yield
    after = scheduling()
    assert after == before, f"scheduling policy changed from {before} to {after}"
