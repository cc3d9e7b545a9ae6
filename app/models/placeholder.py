r"""Deterministic random-init placeholder weights, so the service runs before any training.

They are NOT detectors: every manifest entry says ``trained: false`` and every result carries
that flag through ``ModelInfo``. The training pipeline replaces them via ``publishing.write_entry``.
Other architectures (the paper's Xception / EfficientNet-B4 g and Detect-ResNet50 d) give
stores for *timing* the real pipeline with the paper's model sizes, clearly labelled untrained:

    uv run python -m app.models.placeholder models/
    uv run python -m app.models.placeholder /tmp/paper \
        --detector xception --adversarial detect_resnet50
    DFSHIELD_MODELS_DIR=/tmp/paper uv run dfshield bench pipeline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from app.models.manifest import ManifestEntry
from app.models.publishing import write_entry
from app.models.registry import create_model, list_models

PLACEHOLDER_VERSION = "0.0.0-untrained"
PLACEHOLDERS: tuple[tuple[str, str], ...] = (
    ("placeholder-detector", "resnet10t_df"),
    ("placeholder-adversarial", "detect_resnet10t"),
)
DESCRIPTION = "UNTRAINED placeholder, random weights, not a detector ({arch}, seed {seed})"


def write_placeholders(models_dir: Path, seed: int = 0, detector: str | None = None,
                       adversarial: str | None = None) -> list[ManifestEntry]:
    """Publish a placeholder pair (the bundled architectures unless told); same seed →
    byte-identical weights (same sha256).

    They become the defaults only for roles that have no default yet, so re-running this
    never demotes trained models. Non-default architectures get the architecture in the name.
    """
    entries = []
    pairs = [(name if arch == default else f"{name}-{arch}", arch)
             for (name, default), arch in zip(PLACEHOLDERS, (detector, adversarial), strict=True)
             for arch in [arch or default]]
    for name, arch in pairs:
        torch.manual_seed(seed)
        model = create_model(arch)
        entries.append(
            write_entry(
                models_dir,
                model,
                name,
                version=PLACEHOLDER_VERSION,
                threshold=0.5,
                trained=False,
                description=DESCRIPTION.format(arch=arch, seed=seed),
                training={
                    "data": None,
                    "command": "uv run python -m app.models.placeholder <models_dir> "
                               f"--seed {seed} --detector {pairs[0][1]} "
                               f"--adversarial {pairs[1][1]}",
                    "seed": seed,
                    "init": "timm default random init, torch.manual_seed(seed)",
                },
                metrics={},
                set_default=None,
            )
        )
    return entries


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.models.placeholder",
                                     description="write UNTRAINED placeholder g and d")
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("legacy_seed", nargs="?", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", choices=list_models("detector"), default=None)
    parser.add_argument("--adversarial", choices=list_models("adversarial"), default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.legacy_seed is None else args.legacy_seed
    for e in write_placeholders(args.models_dir, seed, args.detector, args.adversarial):
        print(f"{e.name}: {e.architecture} {e.file} sha256={e.sha256} (UNTRAINED)")


if __name__ == "__main__":
    main(sys.argv[1:])
