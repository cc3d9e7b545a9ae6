"""Session fixtures shared by the live-service suites (tests/service, tests/faults)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.pipeline.analyze import Analyzer


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    """Loaded once: the placeholder g and d from models/, on CPU."""
    return Analyzer.from_settings(Settings(_env_file=None, device="cpu"))
