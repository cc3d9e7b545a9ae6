"""FaceForensics++'s face-crop Xception (``…/face_detection/xception/all_c23.p``) → ``xception``.

The published file is a whole pickled ``network.models.TransferModel`` wrapping a Cadene-style
``network.xception.Xception`` (``block1``…``block12`` of ``Block``/``SeparableConv2d``) whose
``last_linear`` is ``Linear(2048, 2)`` or ``Sequential(Dropout, Linear(2048, 2))``; index 1 =
fake, input 299 px, mean = std = 0.5. It loads through the restricted unpickler, which resolves
those four class names to the stand-ins below: FaceForensics++'s code is never imported. The
stand-ins carry the source network's forward, so the source model runs for the parity check.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from app.models.importers.errors import CheckpointImportError
from app.models.importers.safe_unpickle import ForbiddenGlobal, load_restricted

N_BLOCKS = 12


class SeparableConv2d(nn.Module):
    """Stand-in for ``network.xception.SeparableConv2d``: depthwise ``conv1``, ``pointwise``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.pointwise.weight
        # Some old copies store the pointwise kernel 2-D ([out, in]): it is a 1x1 conv.
        w = w[:, :, None, None] if w.dim() == 2 else w
        return F.conv2d(self.conv1(x), w, self.pointwise.bias)


class Block(nn.Module):
    """Stand-in for ``network.xception.Block``: ``rep`` plus an identity or 1x1-conv skip."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """Stand-in for ``network.xception.Xception`` (entry flow, 8 middle blocks, exit flow)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, N_BLOCKS + 1):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))  # the source applies this ReLU in ``logits``
        return self.last_linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TransferModel(nn.Module):
    """Stand-in for ``network.models.TransferModel``: the Xception under ``model``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


STAND_INS = {
    ("network.models", "TransferModel"): TransferModel,
    ("network.xception", "Xception"): Xception,
    ("network.xception", "Block"): Block,
    ("network.xception", "SeparableConv2d"): SeparableConv2d,
}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def load_source(path: Path) -> nn.Module:
    """The pickled source model (stand-in classes, CPU tensors), in eval mode."""
    try:
        obj = load_restricted(path, STAND_INS)
    except ForbiddenGlobal as e:
        raise CheckpointImportError("forbidden_global", f"{Path(path).name}: {e}") from None
    except Exception as e:  # a truncated or foreign file: say what it is not
        raise CheckpointImportError(
            "bad_checkpoint", f"{Path(path).name} is not a readable torch pickle: {e}"
        ) from None
    net = obj.model if isinstance(obj, TransferModel) else obj
    if not isinstance(net, Xception):
        raise CheckpointImportError(
            "bad_checkpoint",
            f"{Path(path).name} holds a {type(obj).__name__}, not a FaceForensics++ "
            "TransferModel/Xception; check --format",
        )
    _refuse_hooks(obj)
    return obj.eval()


def _refuse_hooks(model: nn.Module) -> None:
    # A pickle may smuggle hooks into a module's state; none is legitimate in a checkpoint.
    for name, module in model.named_modules():
        if any(getattr(module, attr, None) for attr in _HOOK_DICTS):
            raise CheckpointImportError(
                "bad_checkpoint", f"module {name or '<root>'!r} carries hooks; refusing it"
            )


def convert(source: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the registry's ``xception`` (timm ``legacy_xception``) from the source."""
    net = source.model if isinstance(source, TransferModel) else source
    state: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if "pointwise" in key and value.dim() == 2:
            value = value[:, :, None, None]  # 1x1 conv kernel stored as a matrix
        state[_timm_key(key)] = value.detach().float().clone()
    _add_missing_bn_counters(state)
    if state.get("fc.weight", torch.empty(0)).shape[:1] != (2,):
        raise CheckpointImportError(
            "bad_checkpoint", "last_linear must have 2 outputs [real, fake]; this is another head"
        )
    return state


def _timm_key(key: str) -> str:
    # timm names the classifier ``fc``; FaceForensics++ wrapped it as Sequential(Dropout, Linear).
    for head in ("last_linear.1.", "last_linear."):
        if key.startswith(head):
            return "fc." + key[len(head):]
    return key


def _add_missing_bn_counters(state: dict[str, torch.Tensor]) -> None:
    # torch < 0.4.1 BatchNorm had no num_batches_tracked; it only matters when training.
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key.removesuffix("running_mean") + "num_batches_tracked"
        state.setdefault(counter, torch.tensor(0, dtype=torch.long))


@torch.no_grad()
def source_logits(source: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The source's 2 logits [real, fake] for a normalised 299 px batch."""
    return source(x)
