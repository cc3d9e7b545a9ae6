"""``dfshield protect`` through the typer app: output PNG, JSON report, typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from app.cli import app
from tests.protect.conftest import PHOTO

runner = CliRunner()


def test_protect_writes_png_and_report(tmp_path: Path, gen_store: Path) -> None:
    out, report = tmp_path / "p.png", tmp_path / "r.json"
    res = runner.invoke(app, ["protect", str(PHOTO), "--out", str(out), "--json", str(report),
                              "--mode", "interrupt", "--steps", "2", "--models-dir",
                              str(gen_store)])
    assert res.exit_code == 0, res.output
    body = json.loads(report.read_text())
    assert body["mode"] == "interrupt" and body["steps_done"] == 2
    assert body["measured_against"]["generators"] == ["test-gen"]
    protected = np.asarray(Image.open(out))
    original = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert protected.shape == original.shape
    assert np.abs(protected.astype(int) - original.astype(int)).max() <= 0.025 * 255


def test_bad_inputs_exit_2_with_a_code(tmp_path: Path, gen_store: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = [
        ([str(text), "--out", str(tmp_path / "a.png")], "unsupported_media"),
        ([str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "a.png")], "not_found"),
        ([str(PHOTO), "--out", str(tmp_path / "a.jpg")], "bad_output"),
        ([str(PHOTO), "--out", str(tmp_path / "a.png"), "--eps", "0.5"], "bad_option"),
    ]
    for args, code in cases:
        res = runner.invoke(app, ["protect", *args, "--models-dir", str(gen_store)])
        assert res.exit_code == 2, (args, res.output)
        assert code in res.output, (args, res.output)


def test_evaluate_is_a_subcommand_not_an_image() -> None:
    res = runner.invoke(app, ["protect", "--help"])
    assert res.exit_code == 0
    assert "evaluate" in res.output
