"""XAI maps of the detector g, and the one rule that turns them into images.

d judges maps of g's *real* logit (the paper's rule), so that is the default target; the
moderator UI also shows, for faces g called fake, a map of the *fake* logit (``target="fake"``):
why g called it fake. Same methods, same map rule, only the explained logit differs.

One interface over four captum methods (``XAI_METHODS``). Attributions are taken w.r.t. the exact
tensor the raw network sees: ``detector.prep(crops)`` (resized + normalised), so maps are
``[B,3,S,S]`` with S the detector's input size, whatever the crop size.

Method notes (verified by tests/pipeline/test_explain.py):

- captum's ``GuidedBackprop`` only rewires ``nn.ReLU`` *modules* (functional relu and every other
  activation are untouched). On SiLU networks such as EfficientNet it therefore equals the plain
  gradient (``Saliency`` without ``abs``); on ReLU networks (Xception, ResNet) it differs.
- In-place ReLUs: captum 0.9 hooks ReLUs with tensor hooks on a clone of their input, so there
  in-place ReLUs give the same result as out-of-place ones (tested; also checked on timm's
  resnet10t and legacy_xception). Hook mechanisms that wrap a module's output (torch's full
  backward hooks, older captum) refuse in-place ops, so for ``guided_backprop`` every ``nn.ReLU``
  of ``detector.net`` is defensively made out-of-place for the pass and restored afterwards.
- ``IntegratedGradients`` uses an all-zero baseline *in normalised space*, i.e. the dataset-mean
  colour image rather than black; ``n_steps=ig_steps``, chunked by ``internal_batch_size``.

Model state is always restored in ``finally``: train/eval flag, parameters' ``requires_grad`` and
ReLU ``inplace`` flags; captum removes its own hooks in its ``finally`` (tested, also on errors).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Saliency
from torch import nn

from app.models.wrappers import Detector

XAI_TARGETS: dict[str, int] = {"real": Detector.REAL, "fake": Detector.FAKE}
XAI_METHODS: tuple[str, ...] = (
    "saliency",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
)
_EPS = 1e-12


class Explainer:
    """Attribution of one of ``detector``'s logits (``target``: real by default) w.r.t. its
    normalised input, for one method."""

    def __init__(
        self,
        detector: Detector,
        method: str = "saliency",
        ig_steps: int = 16,
        internal_batch_size: int = 16,
        target: str = "real",
    ) -> None:
        if target not in XAI_TARGETS:
            choices = ", ".join(XAI_TARGETS)
            raise ValueError(f"unknown XAI target {target!r}; choose one of {choices}")
        if method not in XAI_METHODS:
            raise ValueError(
                f"unknown XAI method {method!r}; choose one of {', '.join(XAI_METHODS)}"
            )
        if ig_steps < 1 or internal_batch_size < 1:
            raise ValueError("ig_steps and internal_batch_size must be >= 1")
        self.detector = detector
        self.method = method
        self.ig_steps = ig_steps
        self.internal_batch_size = internal_batch_size
        self.target = target

    def attribute(self, crops: torch.Tensor) -> torch.Tensor:
        """crops ``[B,3,H,W]`` in [0,1] → attribution ``[B,3,S,S]`` (float32, detached)."""
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"expected crops [B,3,H,W], got {tuple(crops.shape)}")
        det = self.detector
        device = next(det.parameters()).device
        with torch.no_grad():
            # clone: a fresh leaf even if crops are inference-mode tensors.
            x_n = det.prep(crops.to(device, torch.float32)).detach().clone()
        x_n.requires_grad_(True)
        guided = self.method == "guided_backprop"
        with (
            frozen_eval(det),
            _relu_out_of_place(det.net, guided),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),  # gradients in fp32, even inside AMP
            warnings.catch_warnings(),
        ):
            # captum warns on every GuidedBackprop call that it sets (and removes) hooks.
            warnings.filterwarnings("ignore", message="Setting backward hooks")
            attr = self._run(det.net, x_n)
        return attr.detach().float()

    def maps(self, crops: torch.Tensor) -> torch.Tensor:
        """``attribution_to_map(self.attribute(crops))``: 3-channel maps in [0,1]."""
        return attribution_to_map(self.attribute(crops))

    def _run(self, net: nn.Module, x_n: torch.Tensor) -> torch.Tensor:
        target = XAI_TARGETS[self.target]
        if self.method == "saliency":
            return Saliency(net).attribute(x_n, target=target, abs=True)
        if self.method == "guided_backprop":
            return GuidedBackprop(net).attribute(x_n, target=target)
        if self.method == "input_x_gradient":
            return InputXGradient(net).attribute(x_n, target=target)
        return IntegratedGradients(net).attribute(
            x_n,
            baselines=torch.zeros_like(x_n),
            target=target,
            n_steps=self.ig_steps,
            internal_batch_size=self.internal_batch_size,
        )


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the pass; previous state restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextmanager
def _relu_out_of_place(module: nn.Module, active: bool) -> Iterator[None]:
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU) and m.inplace] if active else []
    try:
        for m in relus:
            m.inplace = False
        yield
    finally:
        for m in relus:
            m.inplace = True


def attribution_to_map(attr: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """THE map rule, shared by training and serving: ``[B,C,H,W]`` attribution → map in [0,1].

    Per sample: ``a = |attr|``; divide by the nearest-rank ``percentile``-th percentile of all
    of that sample's values (the value of rank ``ceil(p/100 * N)``); clip to [0,1]. When that
    percentile is 0 (very sparse attribution) the sample's max is used instead; an all-zero
    attribution gives an all-zero map. Channels are kept.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    a = attr.detach().abs().float()
    flat = a.flatten(1)
    k = max(1, math.ceil(percentile / 100.0 * flat.shape[1]))
    q = flat.kthvalue(k, dim=1).values
    denom = torch.where(q > _EPS, q, flat.amax(dim=1)).clamp_min(_EPS)
    return (a / denom.view(-1, *([1] * (a.ndim - 1)))).clamp_(0.0, 1.0)


def map_to_image(xai_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """One map ``[3,H,W]`` (or ``[1,3,H,W]``) in [0,1] → uint8 ``HxWx3`` for storage and reuse."""
    m = _as_chw(xai_map)
    return np.ascontiguousarray(
        (np.clip(m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    )


def image_to_map(image: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`map_to_image`: uint8 ``HxWx3`` → float ``[3,H,W]`` in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


def map_to_heatmap(
    xai_map: torch.Tensor | np.ndarray, crop: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """For moderators: channel-max of the map, JET colormap, resized to the crop, blended on it."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError("crop must be an HxWx3 uint8 RGB array")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = _as_chw(xai_map)
    intensity = (np.clip(m.max(axis=0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(intensity, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    heat = _resize_to(heat, crop.shape[1], crop.shape[0])
    return cv2.addWeighted(crop, 1.0 - alpha, heat, alpha, 0.0)


def _resize_to(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def _as_chw(xai_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[3,H,W]``, ``[1,3,H,W]`` (tensor or array) or ``HxWx3`` array → float ``[C,H,W]``."""
    if isinstance(xai_map, torch.Tensor):
        m = xai_map.detach().float().cpu().numpy()
    else:
        m = np.asarray(xai_map, dtype=np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3 and m.shape[0] not in (1, 3) and m.shape[2] in (1, 3):
        m = m.transpose(2, 0, 1)
    if m.ndim != 3 or m.shape[0] not in (1, 3):
        raise ValueError(f"expected one map [3,H,W], got shape {m.shape}")
    return m
