"""Persons and quality flags over the live service: the worker's batched path gives the same
persons and flags as the in-process ``dfshield analyze`` path, and frames filter by person."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.media import MediaLimits
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.pipeline.run import analyze_path
from app.schemas import AnalysisResult
from tests.mediagen import write_video
from tests.pipeline.facemedia import two_person_frames
from tests.service.live import LiveApi, submit, wait_for

FRAMES = 4


def _in_process(path: Path, analyzer: Analyzer, settings: Settings) -> AnalysisResult:
    faces = FaceDetector.from_settings(settings, analyzer.device, analyzer.crop_size)
    return analyze_path(path, analyzer, faces, MediaLimits.from_settings(settings), FRAMES)


def test_persons_quality_and_person_filter_match_the_cli_path(
    service: LiveApi, analyzer: Analyzer, settings: Settings, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "two.mp4", two_person_frames(n=12, blur_right=5.0), fps=6)
    c = service.client
    job_id = submit(c, clip, max_frames=FRAMES).json()["id"]
    done = wait_for(c, job_id)
    assert done["status"] == "done", done
    local = _in_process(clip, analyzer, settings)

    persons = done["persons"]
    assert [p["id"] for p in persons] == [p.id for p in local.persons] == [0, 1]
    for mine, ref in zip(persons, local.persons, strict=True):
        assert mine["frames"] == ref.frames == list(range(FRAMES))
        assert mine["verdict"] == ref.verdict.value
        assert mine["mean_p_fake"] == pytest.approx(ref.mean_p_fake, abs=1e-4)
    assert done["summary"]["persons"] == local.summary.persons.model_dump()
    assert done["summary"]["verdict_rule"] == "frame_majority"
    assert done["rules"]["quality"] == {"min_face_px": 64.0, "min_sharpness": 0.6}

    frames = c.get(f"/v1/analyses/{job_id}/frames").json()["items"]
    service_faces = [(f["person"], f["quality"], f["verdict"]) for fr in frames
                     for f in fr["faces"]]
    local_faces = [(f.person, f.quality, f.verdict.value) for fr in local.frames
                   for f in fr.faces]
    assert service_faces == local_faces
    blurred = next(p["id"] for p in persons if p["verdict"] == "uncertain")

    # ?person=: the frames that person appears in; with verdict=, that person's face verdict.
    page = c.get(f"/v1/analyses/{job_id}/frames", params={"person": blurred}).json()
    assert page["person"] == blurred and page["total"] == FRAMES
    own = c.get(f"/v1/analyses/{job_id}/frames",
                params={"person": blurred, "verdict": "uncertain"}).json()
    assert own["total"] == FRAMES  # every frame's verdict is the sharp face's, not uncertain
    assert all(fr["verdict"] != "uncertain" for fr in own["items"])
    other = c.get(f"/v1/analyses/{job_id}/frames",
                  params={"person": 1 - blurred, "verdict": "uncertain"}).json()
    assert other["total"] == 0
    assert c.get(f"/v1/analyses/{job_id}/frames", params={"person": 9}).json()["total"] == 0
    bad = c.get(f"/v1/analyses/{job_id}/frames", params={"person": -1})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"

    # The moderator page links each person's frames and shows the flag.
    html = c.get(f"/ui/analyses/{job_id}", params={"person": blurred}).text
    assert f"?person={blurred}" in html and "face_too_blurry" in html
    assert f"person {blurred} · face" in html
