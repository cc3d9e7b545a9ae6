"""Images for ``dfshield redteam``: held-out fakes of a crop dataset as whole uploads.

    uv run python benchmarks/redteam_corpus.py runs/data runs/redteam-in
    uv run dfshield redteam runs/redteam-in --url http://127.0.0.1:8011 --attack pgd --attack eot

One fake per test-split identity (the first in index order; no model trained on these
people), its 224 px crop upscaled to 192 px and pasted on a 320x320 grey canvas, so the
service's MTCNN has to find the face again and cut its own crop from the upload: the attack
then goes through the service's crop and shrink, not straight into g's input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from app.training.data import read_index

CANVAS, FACE, GREY = 320, 192, (128, 128, 128)


def build(data_root: Path, out: Path) -> int:
    """Write one canvas per test identity; returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for r in read_index(data_root):
        if r["split"] != "test" or int(r["label"]) != 1 or r["identity"] in seen:
            continue
        seen.add(r["identity"])
        face = Image.open(data_root / r["path"]).convert("RGB")
        canvas = Image.new("RGB", (CANVAS, CANVAS), GREY)
        canvas.paste(face.resize((FACE, FACE), Image.BICUBIC), ((CANVAS - FACE) // 2,) * 2)
        canvas.save(out / f"{Path(r['path']).stem}.png")
    return len(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="crop dataset (train demo-data / prepare)")
    ap.add_argument("out", type=Path, help="folder for the upload images")
    args = ap.parse_args()
    print(f"{build(args.data, args.out)} image(s) in {args.out}")


if __name__ == "__main__":
    main()
