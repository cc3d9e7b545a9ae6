"""BatchNorm folding (app/models/fast.py) on the bundled g and d: same logits, maps, verdicts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from app.config import get_settings
from app.models.fast import count_batchnorm, fold_batchnorm, folded_model
from app.models.store import load_bundle
from app.pipeline.analyze import Analyzer, crops_to_tensor
from app.pipeline.explain import Explainer
from app.schemas import Thresholds
from tests.pipeline.test_fused import _close_fraction
from tests.pipeline.test_onnx_backend import SIZE, _portrait_crops

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return _portrait_crops(SIZE)


@pytest.fixture(scope="module")
def bundle():
    b = load_bundle(get_settings().models_dir, CPU)
    b.detector.eval()
    b.adversarial.eval()
    return b


def test_folded_networks_have_no_batchnorm_and_the_same_logits(bundle, crops) -> None:
    x = crops_to_tensor(crops, CPU)
    g, d = bundle.detector, bundle.adversarial
    g_f, d_f = fold_batchnorm(g.net), fold_batchnorm(d.net)
    assert count_batchnorm(g.net) > 0 and count_batchnorm(g_f) == 0 and count_batchnorm(d_f) == 0
    with torch.no_grad():
        xn = g.prep(x)
        assert torch.allclose(g_f(xn), g.net(xn), atol=1e-4, rtol=1e-4)
        m = torch.rand_like(xn)
        assert torch.allclose(d_f(xn, m), d.net(xn, m), atol=1e-4, rtol=1e-4)
    assert count_batchnorm(g.net) > 0  # the original is left as it was


@pytest.mark.parametrize("method", ["saliency", "guided_backprop"])
def test_maps_of_the_folded_g_match(bundle, crops, method: str) -> None:
    x = crops_to_tensor(crops, CPU)
    folded = folded_model(bundle.detector)
    a = Explainer(bundle.detector, method).attribute(x)
    b = Explainer(folded, method).attribute(x)
    assert _close_fraction(b, a) >= 0.999


def test_analyzer_verdicts_and_scores_do_not_change(bundle, crops) -> None:
    plain = Analyzer(copy.deepcopy(bundle), CPU, _split_thresholds(bundle, crops), fold_bn=False)
    fast = Analyzer(bundle, CPU, plain.thresholds, fold_bn=True)
    assert count_batchnorm(plain.detector.net) > 0 and count_batchnorm(fast.detector.net) == 0
    assert count_batchnorm(bundle.detector.net) > 0  # the shared bundle is not rewritten
    a, b = plain.score_crops(crops), fast.score_crops(crops)
    assert [s.verdict for s in a] == [s.verdict for s in b]
    assert len({s.verdict for s in a}) >= 2  # the threshold splits the faces: both paths ran
    for s, t in zip(a, b, strict=True):
        assert t.p_fake == pytest.approx(s.p_fake, abs=1e-4)
        if s.p_attacked is not None:
            assert t.p_attacked == pytest.approx(s.p_attacked, abs=1e-4)


def _split_thresholds(bundle, crops) -> Thresholds:
    """τ_fake at the median p_fake of the portraits: both verdict paths get faces."""
    with torch.no_grad():
        p = bundle.detector.p_fake(crops_to_tensor(crops, CPU)).numpy()
    return Thresholds(tau_fake=float(np.median(p)) + 1e-7, tau_attacked=0.5)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.mean() > 0 else -y


def test_untraceable_network_is_served_unchanged_and_training_mode_is_refused() -> None:
    net = _Branchy().eval()
    assert fold_batchnorm(net) is net
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(_Branchy().train())
