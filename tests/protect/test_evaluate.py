"""The evaluation path end to end on one photo with a tiny generator (figures not judged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.pipeline.faces import FaceDetector
from app.protect.eval_cli import merge_runs
from app.protect.eval_report import to_markdown
from app.protect.evaluate import EvalConfig, evaluate, summarise, write_csv
from app.protect.generators import FaceGenerator
from app.protect.protector import Protector
from tests.protect.conftest import tiny_generator


def test_evaluate_summarise_report_and_merge(tmp_path: Path, photo: np.ndarray,
                                             faces_detector: FaceDetector,
                                             tiny_gen: FaceGenerator) -> None:
    protector = Protector([tiny_gen], faces_detector)
    cfg = EvalConfig(modes=("interrupt",), eps=(0.025,), steps=1, poison_steps=1,
                     save_dir=tmp_path / "png")
    rows = evaluate(protector, [tiny_generator(seed=1)], [("gh.jpg", photo)], cfg)
    assert len(rows) == 1 and rows[0]["mtcnn_found"] in (True, False)
    assert (tmp_path / "png" / "interrupt_0.025_gh.png").is_file()
    (line,) = summarise(rows)
    assert line["faces"] == 1 and 0 <= line["success_bundled"][0] <= 1
    meta = {"photos": 1, "faces": 1, "source": "gh", "steps": 1, "poison_steps": 1,
            "bundled": "a", "heldout": "b"}
    text = to_markdown([line], meta, {"seconds": 31.0, "faces": 1, "mode": "tsdf"})
    assert "missed (+1.0 s)" in text and "| PSNR" in text
    run = tmp_path / "run1"
    write_csv(run / "faces.csv", rows)
    (run / "run.json").write_text(json.dumps({"meta": meta, "timing": {
        "seconds": 12.0, "faces": 1, "mode": "tsdf"}}))
    merged = merge_runs([run], tmp_path / "out")
    assert "12.0 s for 1 face(s)" in merged and "met" in merged
    assert (tmp_path / "out" / "summary.csv").is_file()
