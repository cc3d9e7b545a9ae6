"""The fused path (one forward of g with input gradients) against the separate one (g, then
captum), on the bundled models and real portraits: same scores, verdicts and maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models.wrappers import Detector
from app.pipeline.analyze import Analyzer, FaceScore, crops_to_tensor
from app.pipeline.explain import Explainer
from app.pipeline.fused import NO_TARGET, TargetRule, fused_pass
from app.schemas import Thresholds
from tests.pipeline.test_onnx_backend import SIZE, _portrait_crops

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return _portrait_crops(SIZE)


def _split(analyzer: Analyzer, crops: list[np.ndarray]) -> Thresholds:
    """τ_fake at the median p_fake of the portraits: both verdict paths get faces."""
    with torch.no_grad():
        p = analyzer.detector.p_fake(crops_to_tensor(crops, CPU)).numpy()
    return Thresholds(tau_fake=float(np.median(p)) + 1e-7, tau_attacked=0.5)


def _pair(analyzer: Analyzer, th: Thresholds, explain_fake: bool) -> tuple[Analyzer, Analyzer]:
    make = [Analyzer(analyzer.bundle, CPU, th, explain_fake=explain_fake, xai_fused=m)
            for m in ("off", "on")]
    return make[0], make[1]


def _close_fraction(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> float:
    """Share of elements within ``rel`` relative error (floor at 1e-3 of the max)."""
    scale = b.abs().amax().clamp_min(1e-12)
    err = (a - b).abs() / b.abs().clamp_min(1e-3 * scale)
    return float((err <= rel).float().mean())


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_fused_attributions_match_captum(analyzer: Analyzer, crops: list[np.ndarray],
                                         method: str) -> None:
    x = crops_to_tensor(crops, CPU)
    det = analyzer.detector
    targets = torch.tensor([Detector.REAL, Detector.FAKE, NO_TARGET] * len(crops))[:len(crops)]
    out = fused_pass(det, x, method, lambda p: targets)
    for logit, name in ((Detector.REAL, "real"), (Detector.FAKE, "fake")):
        rows = targets == logit
        ref = Explainer(det, method, target=name).attribute(x[rows])
        assert _close_fraction(out.attributions[rows], ref) >= 0.999
    assert bool((out.attributions[targets == NO_TARGET] == 0).all())
    with torch.no_grad():
        torch.testing.assert_close(out.p_fake, det.p_fake(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("explain_fake", [False, True])
def test_fused_analyzer_gives_the_separate_result(analyzer: Analyzer, crops: list[np.ndarray],
                                                  explain_fake: bool) -> None:
    separate, fused = _pair(analyzer, _split(analyzer, crops), explain_fake)
    got, want = fused.score_crops(crops), separate.score_crops(crops)
    assert {s.verdict.value for s in want} >= {"fake"} and any(s.p_attacked for s in want)
    assert_same_face_scores(got, want, p_fake_atol=1e-6)


def assert_same_face_scores(got: list[FaceScore], want: list[FaceScore],
                            p_fake_atol: float) -> None:
    """Same verdicts and map targets, scores within tolerance (d's 1e-4), uint8 maps at most
    one level apart and equal on >= 99 % of pixels."""
    for a, b in zip(got, want, strict=True):
        assert a.verdict == b.verdict and a.xai_target == b.xai_target
        assert abs(a.p_fake - b.p_fake) <= p_fake_atol
        assert (a.p_attacked is None) == (b.p_attacked is None)
        if b.p_attacked is not None:
            assert abs(a.p_attacked - b.p_attacked) <= 1e-4
        assert (a.xai_map is None) == (b.xai_map is None)
        if b.xai_map is not None:
            diff = np.abs(a.xai_map.astype(int) - b.xai_map.astype(int))
            assert diff.max() <= 1 and (diff == 0).mean() >= 0.99


def test_path_choice(analyzer: Analyzer) -> None:
    th = Thresholds(tau_fake=0.5, tau_attacked=0.5)
    auto = Analyzer(analyzer.bundle, CPU, th, explain_fake=True)
    assert auto._use_fused(["saliency"] * 4)  # every face needs a map
    assert not auto._use_fused(["guided_backprop"] * 4)  # captum-only methods
    assert not auto._use_fused(["saliency", "input_x_gradient"])  # one method per pass
    plain = Analyzer(analyzer.bundle, CPU, th, explain_fake=False)
    assert plain._use_fused(["saliency"])  # until traffic says otherwise: most faces real
    for _ in range(30):  # recent batches: every face called fake, so none needs a map
        plain._note_real_share(np.array([0.9] * 8))
    assert not plain._use_fused(["saliency"])  # the separate path is cheaper then
    assert Analyzer(analyzer.bundle, CPU, th, xai_fused="on")._use_fused(["saliency"])
    assert not Analyzer(analyzer.bundle, CPU, th, explain_fake=True,
                        xai_fused="off")._use_fused(["saliency"])
    rule = TargetRule(0.5, explain_fake=False)
    assert rule(torch.tensor([0.2, 0.8])).tolist() == [Detector.REAL, NO_TARGET]
