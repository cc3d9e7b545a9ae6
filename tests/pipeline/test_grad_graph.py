"""g's logits + input-gradient graph (app.training.export_grad) in ONNX Runtime: published by
the real publish code, it must give captum's Saliency on real portraits, pick each face's
target as the Analyzer's rule does, and serve the same results as the torch fused path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from torch import nn
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.models.fast import fold_batchnorm
from app.models.registry import create_model
from app.models.store import MANIFEST_NAME, ModelBundle, ModelStoreError, load_bundle
from app.models.wrappers import Detector
from app.pipeline.analyze import Analyzer
from app.pipeline.fused import ALL_REAL, TargetRule
from app.runtime.onnx_grad import OnnxGradGraph
from app.schemas import Thresholds
from app.training.export_grad import (
    GradGraphUnsupported,
    check_grad_parity,
    parity_verdict,
    pixel_rel,
    trace_logits_grad,
)
from app.training.publish import publish
from tests.pipeline.test_fused import _close_fraction, assert_same_face_scores
from tests.pipeline.test_onnx_backend import (
    CPU,
    SIZE,
    _portrait_crops,
    _split_threshold,
    _to_tensor,
    fitted_runs,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A fitted g and d published by the real publish code (ONNX + gradient graph)."""
    models = tmp_path_factory.mktemp("store") / "models"
    publish(*fitted_runs(tmp_path_factory.mktemp("runs")), models, version="grad-test")
    return models


@pytest.fixture(scope="module")
def bundle(store: Path) -> ModelBundle:
    return load_bundle(store, CPU)


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def graph(store: Path, bundle: ModelBundle) -> OnnxGradGraph:
    return OnnxGradGraph(store, bundle.detector_entry, CPU, threads=1)


def _x_norm(bundle: ModelBundle, size: int = SIZE) -> torch.Tensor:
    with torch.no_grad():
        return bundle.detector.prep(_to_tensor(_portrait_crops(size)))


def test_publish_lists_a_checked_gradient_graph(store: Path, bundle: ModelBundle) -> None:
    raw = json.loads((store / MANIFEST_NAME).read_text())
    g = next(m for m in raw["models"] if m["role"] == "detector")
    d = next(m for m in raw["models"] if m["role"] == "adversarial")
    assert g["onnx_grad"]["file"].endswith(".grad.onnx") and d["onnx_grad"] is None
    parity = g["training"]["onnx_grad_parity"]
    assert parity["ok"] and parity["grad_share_within_rtol_of_captum"] >= 0.999
    assert bundle.detector_entry.onnx_grad is not None


def test_graph_gives_captums_saliency_and_the_analyzers_targets(
        graph: OnnxGradGraph, bundle: ModelBundle) -> None:
    x = _x_norm(bundle)
    with torch.no_grad():
        p_fake = bundle.detector.net(x).softmax(1)[:, Detector.FAKE]
    tau = float(p_fake.median()) + 1e-7
    logits, grad, select = graph.run(x, tau, 1.0)
    want_targets = TargetRule(tau, explain_fake=True)(p_fake)
    assert select.argmax(1).tolist() == want_targets.tolist()
    assert set(want_targets.tolist()) == {Detector.REAL, Detector.FAKE}
    # captum on the network torch serves (BatchNorm folded), as the export's parity check does
    served = fold_batchnorm(bundle.detector.net)
    ref = Saliency(served).attribute(x, target=want_targets, abs=False)
    share = float(np.mean(pixel_rel(grad.numpy(), ref.detach().double().numpy()) <= 1e-4))
    assert share >= 0.99, share  # this 4-step net is rough; the served g's bar is below
    torch.testing.assert_close(logits.softmax(1)[:, 1], p_fake, rtol=0, atol=1e-5)
    _, grad_none, select_none = graph.run(x, tau, 0.0)  # fake-called faces: no map asked
    fake_rows = want_targets == Detector.FAKE
    assert bool((grad_none[fake_rows] == 0).all()) and bool((select_none[fake_rows] == 0).all())


def test_committed_graph_of_the_served_g_matches_captum_on_portraits() -> None:
    models = MODELS
    served = load_bundle(models, CPU)
    entry = served.detector_entry
    assert entry.onnx_grad is not None
    parity = check_grad_parity(served.detector, models / entry.onnx_grad.file,
                               crops=_to_tensor(_portrait_crops(served.detector.input_size)))
    assert parity["ok"] and parity["grad_share_within_rtol_of_captum"] >= 0.999, parity
    assert parity["logits_max_abs_diff"] <= 1e-4


def test_batch_axis_is_dynamic_and_the_size_checked(graph: OnnxGradGraph,
                                                    bundle: ModelBundle) -> None:
    x = _x_norm(bundle)
    _, full, _ = graph.run(x, ALL_REAL.tau_fake, 0.0)
    for rows in (slice(0, 1), slice(2, 5)):
        _, part, select = graph.run(x[rows], ALL_REAL.tau_fake, 0.0)
        assert part.shape == full[rows].shape and bool((select[:, 0] == 1).all())
        assert _close_fraction(part, full[rows]) >= 0.999
    with pytest.raises(ValueError, match=rf"expected \[B,3,{SIZE},{SIZE}\]"):
        graph.run(torch.rand(1, 3, SIZE + 2, SIZE + 2), ALL_REAL.tau_fake, 0.0)


@pytest.mark.parametrize("explain_fake", [False, True])
def test_onnx_analyzer_serves_the_torch_fused_result(explain_fake: bool) -> None:
    # The committed store, as served (the 4-step test net's fake-logit gradients are too rough
    # for map images to agree to one level: ReLU gates sit at float32 rounding there).
    served = load_bundle(MODELS, CPU)
    crops = _portrait_crops(served.detector.input_size)
    with torch.no_grad():
        p_fake = served.detector.p_fake(_to_tensor(crops)).numpy()
    th = Thresholds(tau_fake=_split_threshold(p_fake), tau_attacked=0.5)
    torch_side = Analyzer(served, CPU, th, explain_fake=explain_fake, xai_fused="on")
    onnx_side = Analyzer(served, CPU, th, explain_fake=explain_fake, xai_fused="on",
                         backend="onnx", models_dir=MODELS, threads=1)
    assert onnx_side.grad_graph is not None and onnx_side._use_fused(["saliency"])
    for fused in ("on", "off"):  # off: ORT forward, then the graph on the real-called faces
        onnx_side.xai_fused = fused
        got, want = onnx_side.score_crops(crops), torch_side.score_crops(crops)
        assert_same_face_scores(got, want, p_fake_atol=1e-4)


def test_tampered_gradient_graph_is_refused(store: Path, bundle: ModelBundle,
                                            tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(store, copy)
    path = copy / bundle.detector_entry.onnx_grad.file
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(ModelStoreError, match="sha256"):
        OnnxGradGraph(copy, bundle.detector_entry, CPU)


class _PartialAvgPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).mean((2, 3)))


def test_ops_without_an_onnx_gradient_are_named() -> None:
    # 13 px → 11 after the conv: ceil_mode leaves a partial window, which no conv weight fits.
    with pytest.raises(GradGraphUnsupported, match="partial windows"):
        trace_logits_grad(_PartialAvgPool().eval(), 13)


def test_parity_rule_falls_back_to_the_float64_truth_only_within_noise() -> None:
    captum = {"median_rel": 2e-3, "min_cosine": 0.99997}
    assert parity_verdict({"median_rel": 1.0, "min_cosine": 0.0}, captum, vs_captum=0.9995)
    assert parity_verdict({"median_rel": 2.2e-3, "min_cosine": 0.999965}, captum, 0.1)
    assert not parity_verdict({"median_rel": 4e-3, "min_cosine": 0.99997}, captum, 0.1)
    assert not parity_verdict({"median_rel": 2e-3, "min_cosine": 0.9990}, captum, 0.1)


def test_cli_exports_and_lists_the_graph(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(store, copy)
    raw = json.loads((copy / MANIFEST_NAME).read_text())
    g = next(m for m in raw["models"] if m["role"] == "detector")
    old = g.pop("onnx_grad")
    (copy / old["file"]).unlink()
    g["onnx_grad"] = None
    (copy / MANIFEST_NAME).write_text(json.dumps(raw))
    runner = CliRunner()
    res = runner.invoke(cli_app, ["models", "export-grad", g["name"], "--models-dir", str(copy)])
    assert res.exit_code == 0, res.output
    assert re.search(r"parity: max \|Δlogit\| \S+; [\d.]+% of gradient pixels within 0.0001 of "
                     r"captum; median rel. error vs float64", res.output), res.output
    listed = json.loads((copy / MANIFEST_NAME).read_text())
    entry = next(m for m in listed["models"] if m["name"] == g["name"])
    assert (copy / entry["onnx_grad"]["file"]).is_file()
    d_name = next(m["name"] for m in raw["models"] if m["role"] == "adversarial")
    res = runner.invoke(cli_app, ["models", "export-grad", d_name, "--models-dir", str(copy)])
    assert res.exit_code == 1 and "only detectors get a grad graph" in res.output


def test_a_deep_untrained_net_traces_without_backward_ops() -> None:
    # Xception-class blocks: depthwise + pointwise convs, max-pool with padding, skip adds.
    net = create_model("xception").net.eval()
    body = nn.Sequential(net.conv1, net.bn1, net.act1, net.conv2, net.bn2, net.act2, net.block1)
    gm = trace_logits_grad(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(128, 2)).eval(), 61)
    names = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any("backward" in n for n in names)
    x = torch.randn(3, 3, 61, 61)
    logits, grad, select = gm(x, torch.tensor([ALL_REAL.tau_fake]), torch.zeros(1))
    assert grad.shape == x.shape and bool((select[:, 0] == 1).all())
