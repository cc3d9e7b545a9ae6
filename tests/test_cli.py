"""``dfshield analyze`` through the real console script (subprocess), real models and media."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _dfshield(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_analyze_video_writes_per_frame_json(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    video = DATA / "pexels_woman_3063838.mp4"
    proc = _dfshield("analyze", str(video), "--json", str(out), "--max-frames", "4",
                     "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "per-frame verdicts" in proc.stdout
    result = json.loads(out.read_text())
    assert result["media"]["kind"] == "video"
    assert len(result["frames"]) == 4
    stamps = [f["timestamp"] for f in result["frames"]]
    assert stamps == sorted(stamps) and stamps[-1] > 10.0  # spread over the 19.7 s clip
    for frame in result["frames"]:
        assert len(frame["faces"]) >= 1
        face = frame["faces"][0]
        assert 0.0 <= face["p_fake"] <= 1.0
        assert face["verdict"] in {"real", "fake", "attacked"}
        # d runs exactly on the faces g called real
        called_real = face["p_fake"] < result["thresholds"]["tau_fake"]
        assert (face["p_attacked"] is not None) == called_real
    assert result["summary"]["verdict"] in {"real", "fake", "attacked"}
    assert {m["role"] for m in result["models"]} == {"detector", "adversarial"}
    assert result["xai_method"] == "saliency"


def test_analyze_image_with_other_xai(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = _dfshield("analyze", str(DATA / "obama.jpg"), "--json", str(out),
                     "--xai", "guided_backprop", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["media"]["kind"] == "image"
    assert len(result["frames"]) == 1 and result["frames"][0]["faces"]
    assert result["xai_method"] == "guided_backprop"


def test_bad_file_exits_2_with_one_line_code(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    proc = _dfshield("analyze", str(bad), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "unsupported_media" in lines[0]
    assert "Traceback" not in proc.stderr


def test_models_list_verifies_hashes(tmp_path: Path) -> None:
    proc = _dfshield("models", "list", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["role"] for r in rows} >= {"detector", "adversarial"}
    assert all(r["sha256_ok"] for r in rows)
