"""Deterministic random-init placeholder weights, so the service runs before any training.

They are NOT detectors: every manifest entry says ``trained: false`` and every result carries
that flag through ``ModelInfo``. The training pipeline replaces them via ``store.write_entry``.

    uv run python -m app.models.placeholder models/
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from app.models.manifest import ManifestEntry
from app.models.registry import create_model
from app.models.store import write_entry

PLACEHOLDER_VERSION = "0.0.0-untrained"
PLACEHOLDERS: tuple[tuple[str, str], ...] = (
    ("placeholder-detector", "resnet10t_df"),
    ("placeholder-adversarial", "detect_resnet10t"),
)
DESCRIPTION = "UNTRAINED placeholder, random weights, not a detector ({arch}, seed {seed})"


def write_placeholders(models_dir: Path, seed: int = 0) -> list[ManifestEntry]:
    """Publish the placeholder pair; same seed → byte-identical weights (same sha256).

    They become the defaults only for roles that have no default yet, so re-running this
    never demotes trained models.
    """
    entries = []
    for name, arch in PLACEHOLDERS:
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
                    "command": f"uv run python -m app.models.placeholder <models_dir> {seed}",
                    "seed": seed,
                    "init": "timm default random init, torch.manual_seed(seed)",
                },
                metrics={},
                set_default=None,
            )
        )
    return entries


def main(argv: list[str]) -> None:
    if not 1 <= len(argv) <= 2:
        raise SystemExit("usage: python -m app.models.placeholder MODELS_DIR [SEED]")
    seed = int(argv[1]) if len(argv) == 2 else 0
    for e in write_placeholders(Path(argv[0]), seed=seed):
        print(f"{e.name}: {e.architecture} {e.file} sha256={e.sha256}")


if __name__ == "__main__":
    main(sys.argv[1:])
