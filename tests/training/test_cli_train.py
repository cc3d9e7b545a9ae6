"""``dfshield train …`` through the real console entrypoint (subprocess), on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.training.test_train import build_tiny_dataset


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "app.cli", "train", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_detector_with_online_sbi_options(tmp_path: Path) -> None:
    build_tiny_dataset(tmp_path / "data")
    proc = _train("detector", str(tmp_path / "data"), str(tmp_path / "g"), "--epochs", "1",
                  "--batch-size", "8", "--online-sbi", "--mask-weight", "1", "--p-soften",
                  "0.5", "--val-jpeg", "75", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "g" / "record.json").read_text())
    assert record["status"] == "done"
    assert record["args"]["mask_weight"] == 1.0 and record["args"]["val_jpeg"] == 75
    assert "val_auc_jpeg" in record["history"][0]


def test_train_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    proc = _train("detector", str(tmp_path / "missing"), str(tmp_path / "g"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "error:" in proc.stdout and "index.jsonl" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
