"""g's logits + input-gradient graph in ONNX Runtime (see ``app.training.export_grad``).

Served when ``DFSHIELD_BACKEND=onnx`` and g's manifest entry lists ``onnx_grad``: Saliency and
Input×Gradient maps then come from ONNX Runtime instead of captum (same function, checked at
export); Guided Backprop and Integrated Gradients stay in torch. The bytes handed to ONNX
Runtime are the sha256-verified ones, as for every artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from app.models.manifest import ManifestEntry
from app.models.store import ModelStoreError, read_verified
from app.runtime.onnx import make_session, run_bound

log = logging.getLogger(__name__)

INPUTS = ("x_norm", "tau", "fake_weight")
OUTPUTS = ("logits", "grad", "select")


class OnnxGradGraph:
    """One verified session of g's gradient graph."""

    def __init__(self, models_dir: Path, entry: ManifestEntry,
                 device: torch.device | str = "cpu", threads: int = 0) -> None:
        if entry.onnx_grad is None:
            raise ModelStoreError(f"model {entry.name!r} has no onnx_grad artifact")
        self.entry, self.device = entry, torch.device(device)
        data = read_verified(Path(models_dir), entry.onnx_grad.file, entry.onnx_grad.sha256)
        self.session, self.provider = make_session(data, self.device, threads, entry.name)
        names = tuple(i.name for i in self.session.get_inputs())
        outs = tuple(o.name for o in self.session.get_outputs())
        if names != INPUTS or outs != OUTPUTS:
            raise ModelStoreError(
                f"gradient graph of {entry.name!r} has inputs {list(names)}, outputs "
                f"{list(outs)}; expected {list(INPUTS)} → {list(OUTPUTS)}: re-export it")
        self.input_size = int(self.session.get_inputs()[0].shape[2])
        log.info("ONNX Runtime %s for the gradient graph of %r (%s threads)", self.provider,
                 entry.name, threads or "default")

    def run(self, x_norm: torch.Tensor, tau: float,
            fake_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B,2], grad [B,3,S,S], select [B,2])`` on ``x_norm``'s device.

        ``x_norm``: g's preprocessed crops at the graph's size. Each face's map is of its real
        logit when p_fake < ``tau``, else of its fake logit times ``fake_weight``."""
        if tuple(x_norm.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"expected [B,3,{self.input_size},{self.input_size}], "
                             f"got {tuple(x_norm.shape)}")
        b = x_norm.shape[0]
        feed = {"x_norm": x_norm.detach(), "tau": torch.tensor([tau]),
                "fake_weight": torch.tensor([fake_weight])}
        shapes = {"logits": (b, 2), "grad": tuple(x_norm.shape), "select": (b, 2)}
        out = run_bound(self.session, self.provider, feed, shapes)
        return tuple(out[n].to(x_norm.device) for n in OUTPUTS)  # type: ignore[return-value]
