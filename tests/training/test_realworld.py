"""Outside-the-corpus check of g: camera degradations, the FPR threshold rule, Poisson pastes,
and ``dfshield train realworld`` end to end on the bundled portraits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.config import REPO_ROOT
from app.training.camera import DEGRADATIONS, degraded_set
from app.training.metrics import threshold_for_fpr
from app.training.realworld import find_faces, load_images, paste

DATA = REPO_ROOT / "tests" / "data"


def test_threshold_for_fpr_keeps_at_most_that_share_above() -> None:
    p = np.random.default_rng(0).random(1000)
    for fpr in (0.0, 0.01, 0.05, 0.2):
        tau = threshold_for_fpr(p, fpr)
        assert (p >= tau).mean() <= fpr + 1e-12
        # and it is the lowest such threshold up to the margin: one more real would cross it
        assert (p >= tau - 1e-3).mean() >= fpr - 2e-3
    assert threshold_for_fpr(np.array([0.9, 0.9, 0.9]), 0.0) > 0.9


def test_degradations_change_the_crop_and_keep_its_shape() -> None:
    crop = np.random.default_rng(1).integers(40, 220, (64, 64, 3), dtype=np.uint8)
    out = degraded_set([crop, crop])
    assert len(out) == 2 * (1 + len(DEGRADATIONS))
    for img in out[2:]:
        assert img.shape == crop.shape and img.dtype == np.uint8
        assert np.abs(img.astype(int) - crop).mean() > 0.5


@pytest.fixture(scope="module")
def faces() -> list:
    return find_faces(load_images(DATA), crop_size=128)


def test_paste_changes_the_inner_face_only(faces: list) -> None:
    target = next(f for f in faces if f.image == "biden.jpg")
    source = next(f for f in faces if f.image == "obama.jpg")
    out = paste(target, source)
    assert out is not None and out.shape == target.frame.shape
    x1, y1, x2, y2 = (int(v) for v in target.det.box)
    diff = np.abs(out.astype(int) - target.frame).sum(-1)
    inner = diff[y1 + (y2 - y1) // 3:y2 - (y2 - y1) // 4, x1 + (x2 - x1) // 4:x2 - (x2 - x1) // 4]
    assert inner.mean() > 5  # Obama's features are in Biden's face now
    assert diff[:max(y1 - 20, 1)].mean() < 0.5  # the frame above the face is untouched


def test_cli_realworld_on_the_portraits(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "app.cli", "train", "realworld", "dfshield-g-resnet10t_df",
           "--media", str(DATA), "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "report.json").read_text())
    assert res["real_faces"] == 5 and res["pastes"] > 5
    assert 0.0 <= res["auc"] <= 1.0
    assert set(res["false_fake_degraded"]) == set(DEGRADATIONS)
    assert "AUC real faces vs pastes" in (tmp_path / "report.md").read_text()
    bad = subprocess.run([*cmd[:-4], "--media", str(tmp_path / "nothing")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stdout
