"""Parity of an imported model with its source, on real face crops.

Crops are cut exactly as the service cuts them (MTCNN, square of 1.3 x the box, resized to the
model's input size); both models then see the same normalised tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from app.config import REPO_ROOT
from app.models.importers.errors import CheckpointImportError
from app.models.wrappers import Detector

# Public-domain portraits bundled with the repository (tests/data/ATTRIBUTION.md).
BUNDLED_PORTRAITS = tuple(REPO_ROOT / "tests" / "data" / n
                          for n in ("obama.jpg", "biden.jpg", "grace_hopper.jpg"))
SourceFn = Callable[[torch.Tensor], torch.Tensor]  # normalised batch → [B, 2] source logits


def face_crops(images: Sequence[Path], size: int) -> torch.Tensor:
    """The largest face of each image as a [N, 3, size, size] batch in [0, 1]."""
    from app.pipeline.faces import FaceDetector
    from app.training.common import read_rgb, to_tensor

    detector = FaceDetector(crop_size=size)
    crops = []
    for path in images:
        if not Path(path).is_file():
            raise CheckpointImportError("not_found", f"parity image {path} does not exist")
        faces = detector.detect([read_rgb(Path(path))])[0]
        if not faces:
            raise CheckpointImportError("no_face", f"no face found in parity image {path}")
        crops.append(to_tensor(faces[0].crop))
    return torch.stack(crops)


@torch.no_grad()
def max_logit_difference(model: Detector, source: SourceFn, crops: torch.Tensor) -> float:
    """max |Δlogit| between ``model`` and ``source`` on ``crops`` (float32, eval mode)."""
    model = model.eval()
    ours = model(crops)
    try:
        theirs = source(model.prep(crops))
    except (AttributeError, RuntimeError, TypeError) as e:
        raise CheckpointImportError(
            "bad_checkpoint", f"the source model does not run on a face crop: {e}"
        ) from None
    if theirs.shape != ours.shape:
        raise CheckpointImportError(
            "bad_checkpoint", f"the source gives logits of shape {tuple(theirs.shape)}, "
            f"expected {tuple(ours.shape)}"
        )
    return float((ours - theirs).abs().max())
