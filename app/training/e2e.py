"""End to end on whole videos: the served pipeline (f → g → XAI → d → verdicts) on the dataset's
videos, as a user's ``dfshield analyze`` would run it.

The crop tables score stored face crops; this section is the check that the same models also
work where faces come from decoded, compressed video frames through MTCNN. g and d go into a
temporary model store, so loading, thresholds and verdict rules are exactly the service's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from app.media import MediaLimits
from app.models.publishing import write_entry
from app.models.store import load_bundle
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.pipeline.run import analyze_path
from app.schemas import Thresholds
from app.training.common import ProgressFn, no_progress
from app.training.data import read_meta

if TYPE_CHECKING:
    from app.training.eval_suite import DModel

# A fake video counts as caught when it is called fake, or attacked (a fake disguised as real).
CAUGHT = ("fake", "attacked")
HELD_OUT = ("test", "val")  # identities g and d never trained on (val only chose thresholds)


def dataset_videos(root: Path, splits: Sequence[str]) -> list[dict[str, Any]]:
    """The videos ``dataset.json`` lists (the demo corpus writes them) in ``splits``."""
    return [v for v in read_meta(root).get("videos", []) if v.get("split") in splits]


def _analyzer(g: nn.Module, d: nn.Module, tau: Thresholds, xai: str, store: Path,
              dev: torch.device) -> Analyzer:
    write_entry(store, g, "eval-g", version="eval", threshold=tau.tau_fake, set_default=True)
    write_entry(store, d, "eval-d", version="eval", threshold=tau.tau_attacked,
                set_default=True)
    bundle = load_bundle(store, dev)
    return Analyzer(bundle, dev, tau, xai_method=xai, amp=False)


def _row(video: dict[str, Any], result: Any) -> dict[str, Any]:
    p = [f.p_fake for frame in result.frames for f in frame.faces]
    verdict = result.summary.verdict.value
    caught = verdict in CAUGHT
    return {"path": video["path"], "identity": video.get("identity"), "split": video["split"],
            "label": int(video["label"]), "verdict": verdict,
            "frames": result.summary.frames.model_dump(),
            "p_fake_median": float(np.median(p)) if p else None,
            "correct": caught if int(video["label"]) == 1 else verdict == "real"}


def video_end_to_end(
    root: Path, g: nn.Module, tau_fake: float, d: DModel | None, dev: torch.device,
    splits: Sequence[str] = ("test", "val", "train"), max_frames: int = 16,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Per-video verdicts over the dataset's videos in ``splits`` with g and the served d;
    accuracy on the held-out ones (test + val) and on all of them."""
    progress = progress or no_progress
    videos = dataset_videos(Path(root), splits)
    if not videos or d is None:
        why = "no adversarial detector" if videos else f"the dataset has no videos in {splits}"
        return {"status": "not run", "reason": why}
    thresholds = Thresholds(tau_fake=tau_fake, tau_attacked=d.tau)
    xai = d.xai
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = _analyzer(g, d.model, thresholds, xai, Path(tmp), dev)
        faces = FaceDetector(device=dev, max_faces=1, crop_size=analyzer.crop_size)
        limits = MediaLimits(max_frames=max_frames, max_frames_cap=max(max_frames, 1))
        rows = []
        for k, video in enumerate(videos):
            result = analyze_path(Path(root) / video["path"], analyzer, faces, limits,
                                  max_frames)
            rows.append(_row(video, result))
            progress("end-to-end videos", k + 1, len(videos))
    return {"status": "ok", "max_frames": max_frames, "thresholds": thresholds.model_dump(),
            "xai": xai, "videos": rows, "accuracy": _accuracy(rows, HELD_OUT),
            "accuracy_all": _accuracy(rows, splits)}


def _accuracy(rows: list[dict[str, Any]], splits: Sequence[str]) -> dict[str, Any]:
    """Share of correct verdicts over the videos of ``splits``, overall and per label."""
    sel = [r for r in rows if r["split"] in splits]

    def share(rs: list[dict[str, Any]]) -> float | None:
        return float(np.mean([r["correct"] for r in rs])) if rs else None

    return {"splits": list(splits), "n": len(sel), "all": share(sel),
            "real": share([r for r in sel if r["label"] == 0]),
            "fake": share([r for r in sel if r["label"] == 1])}
