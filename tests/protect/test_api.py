"""``POST /v1/protect`` on the real API (uvicorn on loopback, embedded Redis): a PNG and a
report back; bad input refused with the same problem+json codes as ``/v1/analyze``."""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.protect.settings import get_protect_settings
from app.redis_conn import EmbeddedRedis, client_from_url
from tests.protect.conftest import PHOTO
from tests.service.live import DATA, LiveApi, make_settings, start_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, gen_store: Path) -> Iterator[LiveApi]:
    root = Path(tempfile.mkdtemp(prefix="dfp-"))  # short: unix sockets cap at 108 bytes
    server = EmbeddedRedis(root).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("DFSHIELD_PROTECT_STEPS", "2")
    mp.setenv("DFSHIELD_PROTECT_POISON_STEPS", "2")
    get_protect_settings.cache_clear()
    settings = make_settings(tmp_path_factory.mktemp("data"), server.url, models_dir=gen_store,
                             max_upload_mb=1)
    live = start_api(settings, client_from_url(server.url))
    yield live
    live.stop()
    mp.undo()
    get_protect_settings.cache_clear()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _post(api: LiveApi, name: str, data: bytes, **fields: str):  # noqa: ANN202
    return api.client.post("/v1/protect", files={"file": (name, data)}, data=fields,
                           timeout=120)


def test_returns_the_protected_png_and_a_report(api: LiveApi) -> None:
    r = _post(api, "gh.jpg", PHOTO.read_bytes(), mode="tsdf")
    assert r.status_code == 200, r.text
    body = r.json()
    report = body["report"]
    assert report["mode"] == "tsdf" and report["linf"] <= report["eps"] == 0.025
    assert report["measured_against"]["generators"] == ["test-gen"]
    assert any("JPEG" in c for c in report["caveats"])
    png = base64.b64decode(body["png_base64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = np.asarray(Image.open(io.BytesIO(png)))
    orig = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert img.shape == orig.shape
    assert 0 < np.abs(img.astype(int) - orig.astype(int)).max() <= 0.025 * 255
    assert r.headers["x-request-id"]


def test_format_png_returns_the_image_itself(api: LiveApi) -> None:
    r = _post(api, "gh.jpg", PHOTO.read_bytes(), mode="interrupt", format="png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-protect-mode"] == "interrupt"
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)


@pytest.mark.parametrize(("name", "data", "fields", "status", "code"), [
    ("notes.txt", b"hello, not an image", {}, 415, "unsupported_media"),
    ("empty.jpg", b"", {}, 400, "empty_file"),
    ("clip.mp4", (DATA / "no_face_cartoon.mp4").read_bytes(), {}, 415, "unsupported_media"),
    ("big.mp4", (DATA / "no_face_cartoon.mp4").read_bytes(), {}, 413, "file_too_large"),
    ("gh.jpg", PHOTO.read_bytes(), {"eps": "0.5"}, 422, "bad_option"),
    ("gh.jpg", PHOTO.read_bytes(), {"mode": "nope"}, 422, "validation_error"),
    ("bad.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 64, {}, 422, "corrupt_media"),
])
def test_rejects_bad_input_like_analyze(api: LiveApi, name: str, data: bytes,
                                        fields: dict[str, str], status: int, code: str) -> None:
    if name == "big.mp4":
        data = data * 8  # over the 1 MB cap of this service
    r = _post(api, name, data, **fields)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


def test_a_photo_without_a_face_is_a_422(api: LiveApi) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(buf, format="PNG")
    r = _post(api, "grey.png", buf.getvalue())
    assert r.status_code == 422 and r.json()["code"] == "no_face"


def test_missing_file_part_is_a_422(api: LiveApi) -> None:
    r = api.client.post("/v1/protect", data={"mode": "tsdf"},
                        files={"other": ("x", b"1")})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
