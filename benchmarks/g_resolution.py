"""How often g calls held-out real faces fake as their resolution and quality history change.

    uv run dfshield train demo-data runs/data128 --crop-size 128   # the demo preset's crops
    uv run dfshield train demo-data runs/data224                   # the command's default
    uv run python benchmarks/g_resolution.py runs/data128 runs/data224 [--detector NAME|RUN]

Both corpora hold the same people, poses and build-time degradations (same seed, same identity
split); only the crop size they were rendered and degraded at differs. Rows: the 128 px test
reals as built and after round trips, the 224 px ones shrunk to g's input, and those shrunk
crops degraded again at 128 px. Prints one line per row; no model is trained.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from app.training.common import load_trained
from app.training.realworld import held_out_reals, p_fake

Image = np.ndarray


def _jpeg(q: int) -> Callable[[Image], Image]:
    return lambda i: cv2.imdecode(cv2.imencode(".jpg", i, [cv2.IMWRITE_JPEG_QUALITY, q])[1], 1)


def _round_trip(side: int, size: int) -> Callable[[Image], Image]:
    return lambda i: cv2.resize(cv2.resize(i, (side, side), interpolation=cv2.INTER_CUBIC),
                                (size, size), interpolation=cv2.INTER_AREA)


def _noise(sigma: float, rng: np.random.Generator) -> Callable[[Image], Image]:
    return lambda i: np.clip(i + rng.normal(0, sigma, i.shape), 0, 255).astype(np.uint8)


def rows(native: list[Image], large: list[Image], size: int) -> dict[str, list[Image]]:
    """Each row's images, all at g's input size."""
    def shrink(interp: int) -> list[Image]:
        return [cv2.resize(i, (size, size), interpolation=interp) for i in large]

    area, rng = shrink(cv2.INTER_AREA), np.random.default_rng(0)
    out = {f"{size} px corpus, as built": native}
    for f in (1.25, 1.75, 2.25):
        out[f"{size} px, cubic x{f} and back (area)"] = list(map(_round_trip(round(size * f), size),
                                                             native))
    out[f"{size} px, JPEG q90"] = list(map(_jpeg(90), native))
    out[f"large corpus, area -> {size}"] = area
    out[f"large corpus, linear -> {size}"] = shrink(cv2.INTER_LINEAR)
    for s in (0.5, 0.8, 1.2):
        out[f"  then blur sigma {s}"] = [cv2.GaussianBlur(i, (0, 0), s) for i in area]
    for q in (90, 70, 50):
        out[f"  then JPEG q{q}"] = list(map(_jpeg(q), area))
    for s in (2.0, 4.0):
        out[f"  then noise sigma {s}/255"] = list(map(_noise(s, rng), area))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("native", type=Path, help="demo corpus built at g's input size")
    ap.add_argument("large", type=Path, help="the same corpus built at a larger crop size")
    ap.add_argument("--detector", default="dfshield-g-resnet10t_df",
                    help="g: a training run dir or a model-store name")
    args = ap.parse_args()
    g, rec = load_trained(Path(args.detector))
    tau, size = float(rec["thresholds"]["tau_fake"]), int(g.input_size)
    print(f"g = {args.detector}, tau_fake {tau:.3f}")
    native = held_out_reals(args.native)
    if native and native[0].shape[0] != size:
        raise SystemExit(f"{args.native} holds {native[0].shape[0]} px crops; g's input is {size}")
    for name, imgs in rows(native, held_out_reals(args.large), size).items():
        with torch.no_grad():
            p = p_fake(g, imgs, batch=64)
        print(f"{name:40s} n={len(p)}  called fake {np.mean(p >= tau):6.1%}  mean p {p.mean():.3f}")


if __name__ == "__main__":
    main()
