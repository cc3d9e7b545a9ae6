"""``dfshield bench all --quick`` end to end: the real command, its CSV's shape and targets.

Figures are not asserted (no timing assertions): only that every section produced positive
figures, that targets come with met/missed, and what the decode figure is per.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from typer.testing import CliRunner

from app.bench.csvout import COLUMNS, HARDWARE, Target
from app.cli import app

SECTIONS = ("peak", "forward", "xai", "naive", "decode", "faces", "e2e")
HARDWARE_KEYS = ("cpu_model", "cores", "torch", "onnxruntime-gpu", "timm", "torch_threads",
                 "device")
DECODE_FRAMES = 32


@pytest.fixture(scope="module")
def bench_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, str]], str]:
    tmp = tmp_path_factory.mktemp("bench-all")
    threads = torch.get_num_threads()
    try:  # --threads sets torch's process-wide thread count: give it back afterwards
        result = CliRunner().invoke(app, [
            "bench", "all", "--quick", "--device", "cpu", "--threads", "1",
            "--cache-dir", str(tmp / "cache"), "--out-dir", str(tmp / "out"),
        ])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, (result.output, result.exception)
    written = list((tmp / "out").glob("*.csv"))
    assert len(written) == 1, written
    with written[0].open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    return rows, written[0].name


def _figures(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["section"] in SECTIONS]


def test_csv_is_named_by_host_and_date_with_hardware_rows(bench_csv) -> None:
    rows, name = bench_csv
    hw = {r["name"]: r["value"] for r in rows if r["section"] == HARDWARE}
    assert name == f"{hw['hostname']}-{hw['date']}.csv"
    for key in HARDWARE_KEYS:
        assert hw.get(key) not in (None, "", "-"), key
    assert hw["device"] == "cpu" and hw["torch_threads"] == "1" and int(hw["cores"]) >= 1
    assert rows.index(next(r for r in rows if r["section"] == HARDWARE)) == 0  # header first


def test_every_section_has_positive_figures(bench_csv) -> None:
    rows, _ = bench_csv
    figures = _figures(rows)
    assert {r["section"] for r in figures} == set(SECTIONS)
    assert {r["section"] for r in rows} <= {*SECTIONS, HARDWARE, "note"}
    for r in figures:
        value = float(r["value"])
        assert math.isfinite(value), r
        if r["unit"] != "x g extra":  # fused map's extra over g: a difference, may be ~0
            assert value > 0, r
        assert r["unit"] and r["name"] and r["backend"], r


def test_targets_come_with_met_or_missed(bench_csv) -> None:
    rows, _ = bench_csv
    figures = _figures(rows)
    for r in figures:
        assert (r["met"] in ("yes", "no")) == bool(r["target"]), r
    targeted = {r["name"] for r in figures if r["target"]}
    for expected in ("bundled: naive / dfshield", "bundled: saliency fused, extra over g",
                     "bundled: g + saliency + d (service path) / g",
                     "g resnet10t_df best share of peak", "d detect_resnet10t best share of peak"):
        assert expected in targeted, expected
    (long_clip,) = [r for r in figures if r["section"] == "decode" and r["target"]]
    assert long_clip["name"].startswith("long clip") and long_clip["target"] == "<= 10"
    naive = next(r for r in figures if r["name"] == "bundled: naive / dfshield")
    assert naive["target"] == ">= 2"  # the CPU target (>= 10 on a GPU)


def test_decode_is_per_sampled_frame(bench_csv) -> None:
    rows, _ = bench_csv
    decode = [r for r in _figures(rows) if r["section"] == "decode"]
    assert {r["name"].split(" clip")[0] for r in decode} == {"short", "long"}
    for r in decode:
        assert r["unit"] == "ms/frame" and int(r["batch"]) == DECODE_FRAMES, r


def test_target_comparisons() -> None:
    assert Target(">=", 2.0).met(2.0) and not Target(">=", 2.0).met(1.9)
    assert Target("<=", 10.0).met(9.5) and not Target("<=", 10.0).met(10.5)
    assert str(Target("<=", 1.0)) == "<= 1"


def test_onnx_gradient_graph_rows_for_the_bundled_pair(bench_csv) -> None:
    rows, _ = bench_csv
    onnx = {r["name"]: r for r in _figures(rows) if r["backend"] == "onnx"}
    for name in ("bundled: g + saliency graph (one pass)", "bundled: saliency graph, extra over g",
                 "bundled: naive / dfshield", "bundled: g + saliency + d (service path) / g"):
        assert name in onnx, sorted(onnx)
    assert onnx["bundled: saliency graph, extra over g"]["target"]
    assert float(onnx["bundled: g + saliency graph (one pass)"]["value"]) > 0
