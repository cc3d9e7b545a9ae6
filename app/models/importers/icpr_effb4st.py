"""icpr2020dfdc's ``EfficientNetB4ST_{FFPP,DFDC}_bestval-*.pth`` → ``efficientnet_b4_st_tf``.

The file is a state dict (optionally wrapped, e.g. ``{"net": …}`` by their training script):
``feat_ext.efficientnet.*`` is an ``efficientnet_pytorch`` EfficientNet-B4 (``_conv_stem``,
``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``), ``classifier.0`` a BatchNorm1d(1792) and
``classifier.1`` a Linear(1792, 1): one logit z, z > 0 = fake, input 224 px, ImageNet norm.
It is read with ``torch.load(weights_only=True)``: tensors and plain containers only.

The parity reference (:func:`source_logits`) runs efficientnet_pytorch's forward directly on
the *source* keys (functional, no efficientnet_pytorch needed), so it checks the key mapping
and the target architecture rather than repeating them.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from app.models.importers.errors import CheckpointImportError
from app.models.same_padding import tf_same_pad

Tensors = dict[str, torch.Tensor]
PREFIX = "feat_ext.efficientnet."
# EfficientNet-B4 per stage: (stride of its first block, blocks); efficientnet_pytorch order.
STAGES = ((1, 2), (2, 4), (2, 4), (2, 6), (1, 6), (2, 8), (1, 2))
IMAGE_SIZE = 380  # the size efficientnet_pytorch pins B4's "SAME" padding for
BN_EPS = 1e-3  # efficientnet_pytorch's batch_norm_epsilon (the classifier's BN1d keeps 1e-5)
# Present in the file but unused by EfficientNetB4ST's forward: EfficientNetGen's own head.
IGNORED_PREFIXES = ("feat_ext.classifier.", PREFIX + "_fc.")
WRAPPER_KEYS = ("net", "model", "state_dict")
# efficientnet_pytorch block member → timm member, for blocks with / without an expansion.
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
            "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
DEPTHWISE_ONLY = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                  "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def load_source(path: Path) -> Tensors:
    """The source state dict, read with ``weights_only=True`` and unwrapped."""
    name = Path(path).name
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointImportError(
            "bad_checkpoint", f"{name} is not a weights-only torch checkpoint: {msg}"
        ) from None
    state = _unwrap(obj)
    if state is None:
        raise CheckpointImportError(
            "bad_checkpoint", f"{name} has no '{PREFIX}*' tensors: not an icpr2020dfdc "
            "EfficientNetB4ST state dict; check --format"
        )
    return state


def _unwrap(obj: object) -> Tensors | None:
    """The state dict itself, or the one under 'net'/'model'/'state_dict'; 'module.' stripped."""
    candidates = [obj] + [obj.get(k) for k in WRAPPER_KEYS] if isinstance(obj, dict) else []
    for cand in candidates:
        if not isinstance(cand, dict):
            continue
        state = {k.removeprefix("module."): v for k, v in cand.items()
                 if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if any(k.startswith(PREFIX) for k in state):
            return state
    return None


def _block_positions() -> Iterator[tuple[int, int, int]]:
    """(flat efficientnet_pytorch index, timm stage, index in stage)."""
    flat = 0
    for stage, (_, repeats) in enumerate(STAGES):
        for j in range(repeats):
            yield flat, stage, j
            flat += 1


def _block_key(state: Tensors, rest: str) -> str:
    flat, member, param = rest.split(".", 2)
    positions = {f: (s, j) for f, s, j in _block_positions()}
    if int(flat) not in positions:
        raise KeyError(rest)
    stage, j = positions[int(flat)]
    expanded = f"{PREFIX}_blocks.{flat}._expand_conv.weight" in state
    target = (EXPANDED if expanded else DEPTHWISE_ONLY)[member]
    return f"features.blocks.{stage}.{j}.{target}.{param}"


def _target_key(state: Tensors, key: str) -> str:
    """Registry key of one source key (KeyError for a key the layout does not have)."""
    if key.startswith("classifier."):
        return key  # classifier.0 = BatchNorm1d, classifier.1 = Linear, as in the registry
    rest = key.removeprefix(PREFIX)
    if rest.startswith("_blocks."):
        return _block_key(state, rest.removeprefix("_blocks."))
    member, param = rest.split(".", 1)
    return f"features.{STEM_HEAD[member]}.{param}"


def convert(state: Tensors) -> Tensors:
    """State dict of the registry's ``efficientnet_b4_st_tf`` from the source state dict."""
    out: Tensors = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        try:
            out[_target_key(state, key)] = value.detach().clone()
        except (KeyError, ValueError):
            unknown.append(key)
    if unknown:
        raise CheckpointImportError(
            "bad_checkpoint", f"{len(unknown)} keys outside the EfficientNetB4ST layout, e.g. "
            f"{unknown[:3]}; check --format"
        )
    return out


# ------------------------------------------------------------ reference forward (source keys)


def _bn(x: torch.Tensor, s: Tensors, key: str, eps: float = BN_EPS) -> torch.Tensor:
    return F.batch_norm(x, s[f"{key}.running_mean"], s[f"{key}.running_var"],
                        s[f"{key}.weight"], s[f"{key}.bias"], False, 0.0, eps)


def _conv_same(x: torch.Tensor, w: torch.Tensor, stride: int, size: int) -> tuple:
    """efficientnet_pytorch's Conv2dStaticSamePadding (no bias): pad fixed for ``size``."""
    before, after = tf_same_pad(size, w.shape[-1], stride)
    x = F.conv2d(F.pad(x, (before, after, before, after)), w, None, stride,
                 groups=x.shape[1] // w.shape[1])
    return x, -(-size // stride)


def _mbconv(s: Tensors, p: str, x: torch.Tensor, stride: int, size: int) -> tuple:
    inp = x
    if f"{p}_expand_conv.weight" in s:
        x = F.silu(_bn(F.conv2d(x, s[f"{p}_expand_conv.weight"]), s, f"{p}_bn0"))
    x, size = _conv_same(x, s[f"{p}_depthwise_conv.weight"], stride, size)
    x = F.silu(_bn(x, s, f"{p}_bn1"))
    squeezed = F.conv2d(x.mean((2, 3), keepdim=True), s[f"{p}_se_reduce.weight"],
                        s[f"{p}_se_reduce.bias"])
    gate = F.conv2d(F.silu(squeezed), s[f"{p}_se_expand.weight"], s[f"{p}_se_expand.bias"])
    x = _bn(F.conv2d(torch.sigmoid(gate) * x, s[f"{p}_project_conv.weight"]), s, f"{p}_bn2")
    if stride == 1 and x.shape == inp.shape:  # id_skip (drop-connect acts in training only)
        x = x + inp
    return x, size


@torch.no_grad()
def source_logits(state: Tensors, x: torch.Tensor) -> torch.Tensor:
    """The source's [-z, z] for a normalised 224 px batch (EfficientNetB4ST forward)."""
    p = PREFIX
    x, size = _conv_same(x, state[f"{p}_conv_stem.weight"], 2, IMAGE_SIZE)
    x = F.silu(_bn(x, state, f"{p}_bn0"))
    for flat, stage, j in _block_positions():
        stride = STAGES[stage][0] if j == 0 else 1
        x, size = _mbconv(state, f"{p}_blocks.{flat}.", x, stride, size)
    x = F.silu(_bn(F.conv2d(x, state[f"{p}_conv_head.weight"]), state, f"{p}_bn1"))
    feats = _bn(x.mean((2, 3)), state, "classifier.0", eps=1e-5)
    z = F.linear(feats, state["classifier.1.weight"], state["classifier.1.bias"])[:, 0]
    return torch.stack([-z, z], dim=1)
