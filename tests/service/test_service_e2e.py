"""End to end over HTTP: upload → queue → worker (real MTCNN + placeholder g/d) → results."""

from __future__ import annotations

import re

import httpx
import numpy as np
import redis
from PIL import Image

from app.store.results import ResultStore
from tests.service.live import IMAGE, VIDEO, LiveApi, submit, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    import io

    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB"
        return im.size


def test_video_analysis_frames_pngs_and_delete(service: LiveApi, redis_client: redis.Redis,
                                               settings) -> None:
    c = service.client
    resp = submit(c, VIDEO, max_frames=4, xai_method="saliency")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    job_id = body["id"]
    assert resp.headers["location"] == f"/v1/analyses/{job_id}" == body["links"]["analysis"]
    assert body["status"] == "queued"

    done = wait_for(c, job_id)
    assert done["status"] == "done", done
    assert done["progress"] == {"frames_done": 4, "frames_total": 4}
    assert done["media"]["kind"] == "video" and done["media"]["frames_sampled"] == 4
    counts = done["summary"]["frames"]
    assert sum(counts.values()) == 4 and counts["no_face"] == 0  # a face in every frame
    assert done["summary"]["verdict"] in ("real", "fake", "attacked")
    assert set(done["thresholds"]) == {"tau_fake", "tau_attacked"}
    assert {m["role"] for m in done["models"]} == {"detector", "adversarial"}
    assert {"decode", "faces", "detector", "total"} <= set(done["timings_ms"])
    # Results say when g or d are untrained placeholders, and only then.
    untrained = not all(m["trained"] for m in done["models"])
    assert any("UNTRAINED" in w for w in done["warnings"]) == untrained
    assert done["attempts"] == 1 and done["error"] is None

    # Pagination covers every frame exactly once, in order.
    page1 = c.get(f"/v1/analyses/{job_id}/frames", params={"limit": 3}).json()
    page2 = c.get(f"/v1/analyses/{job_id}/frames", params={"offset": 3, "limit": 3}).json()
    assert page1["total"] == page2["total"] == 4
    assert [f["index"] for f in page1["items"] + page2["items"]] == [0, 1, 2, 3]

    # Verdict filter: the frames of one verdict, and the union of all verdicts is everything.
    by_verdict = {}
    for v in ("real", "fake", "attacked", "no_face", "uncertain"):
        page = c.get(f"/v1/analyses/{job_id}/frames", params={"verdict": v}).json()
        assert all(f["verdict"] == v for f in page["items"])
        by_verdict[v] = page["total"]
    assert by_verdict == counts
    both = c.get(f"/v1/analyses/{job_id}/frames", params={"verdict": "fake,attacked"}).json()
    assert both["total"] == counts["fake"] + counts["attacked"]

    # Faces carry links to their images; both PNGs are real images of the crop size.
    face = page1["items"][0]["faces"][0]
    assert face["crop_url"] == f"/v1/analyses/{job_id}/frames/0/faces/0/crop.png"
    crop = c.get(face["crop_url"])
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    w, h = _png_size(crop.content)
    assert w == h and w > 0
    # Every face has a heatmap: d's (real logit) where g called it real and d ran, else the
    # fake logit's (DFSHIELD_EXPLAIN_FAKE, on by default).
    for f in (f for fr in page1["items"] + page2["items"] for f in fr["faces"]):
        assert f["explanation_of"] == ("real" if f["p_attacked"] is not None else "fake")
        heat = c.get(f["explanation_url"])
        assert heat.status_code == 200 and _png_size(heat.content) == (w, h)

    # Missing image → problem+json 404.
    miss = c.get(f"/v1/analyses/{job_id}/frames/99/faces/0/crop.png")
    assert miss.status_code == 404 and miss.json()["code"] == "not_found"

    # The media was removed after processing (keep_media is off).
    assert not (settings.data_dir / "media" / job_id).exists()

    # DELETE purges everything; afterwards every route answers 404.
    assert c.delete(f"/v1/analyses/{job_id}").status_code == 204
    for path in ("", "/frames", "/frames/0/faces/0/crop.png"):
        gone = c.get(f"/v1/analyses/{job_id}{path}")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
    store = ResultStore(redis_client, settings.result_ttl_s, settings.data_dir)
    assert not any(redis_client.exists(k) for k in store.keys_of(job_id)[:-1])
    assert c.delete(f"/v1/analyses/{job_id}").status_code == 404


def test_image_with_wait_answers_200_with_frames(service: LiveApi) -> None:
    resp = submit(service.client, IMAGE, wait=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "done" and body["media"]["kind"] == "image"
    assert len(body["frames"]) == 1 and body["progress"]["frames_total"] == 1
    faces = body["frames"][0]["faces"]
    assert faces and all(0.0 <= f["p_fake"] <= 1.0 for f in faces)
    assert faces[0]["detection_prob"] > 0.9


def test_concurrent_jobs_all_finish(service: LiveApi) -> None:
    ids = [submit(service.client, IMAGE).json()["id"] for _ in range(3)]
    ids.append(submit(service.client, VIDEO, max_frames=2).json()["id"])
    results = [wait_for(service.client, i) for i in ids]
    assert [r["status"] for r in results] == ["done"] * 4
    assert [r["progress"]["frames_done"] for r in results] == [1, 1, 1, 2]


def test_request_id_echoed_or_generated(service: LiveApi) -> None:
    c = service.client
    mine = c.get("/healthz", headers={"X-Request-ID": "client-abc.123"})
    assert mine.headers["x-request-id"] == "client-abc.123"
    fresh = c.get("/v1/analyses/" + "0" * 32)
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert fresh.status_code == 404
    assert fresh.json()["request_id"] == fresh.headers["x-request-id"]
    # Unsafe ids (header injection, absurd length) are replaced, not echoed.
    bad = c.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert bad.headers["x-request-id"] != "x" * 500


def test_metrics_and_docs(service: LiveApi) -> None:
    c = service.client
    wait_for(c, submit(c, IMAGE).json()["id"])
    text = c.get("/metrics").text
    for name in ("dfshield_queue_depth", "dfshield_batch_size_bucket",
                 'dfshield_stage_seconds_bucket{le="0.005",stage="faces"}',
                 'stage="detector"', 'dfshield_jobs_total{status="done"}',
                 'dfshield_verdicts_total{level="video"', "dfshield_workers_live 1.0"):
        assert name in text, name
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]


def test_unknown_route_and_bad_query_are_problems(service: LiveApi) -> None:
    c: httpx.Client = service.client
    r = c.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    job_id = submit(c, IMAGE).json()["id"]
    r = c.get(f"/v1/analyses/{job_id}/frames", params={"limit": 0})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    r = c.get(f"/v1/analyses/{job_id}/frames", params={"verdict": "maybe"})
    assert r.status_code == 422 and "verdict" in r.json()["detail"]
    assert np.isfinite(wait_for(c, job_id)["progress"]["frames_done"])
