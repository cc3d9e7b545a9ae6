"""``reports/protect/report.md``: every figure beside its target from the issue, met or not."""

from __future__ import annotations

import math
from typing import Any

TARGETS = {
    "psnr": 32.0, "ssim": 0.95, "success": 0.90, "mtcnn_recall": 0.20, "jpeg90": 0.70,
    "seconds_1280x720": 30.0,
}


def _pct(v: tuple[float, float, float] | float) -> str:
    if isinstance(v, tuple):
        m, lo, hi = v
        return "n/a" if math.isnan(m) else f"{m:.0%} [{lo:.0%}, {hi:.0%}]"
    return "n/a" if math.isnan(v) else f"{v:.0%}"


def _verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"missed ({miss})"


def target_lines(s: dict[str, Any]) -> list[str]:
    """The issue's targets for one (mode, eps) summary line."""
    t = TARGETS
    succ, mt, j90 = s["success_bundled"][0], s["mtcnn_found"][0], s["success_bundled_jpeg90"][0]
    rows = [
        ("PSNR protected vs original (crop region, mean / min)",
         f"{s['psnr_db']:.1f} / {s['psnr_min']:.1f} dB", f">= {t['psnr']:.0f} dB",
         _verdict(s["psnr_min"] >= t["psnr"], f"min {s['psnr_min'] - t['psnr']:+.1f} dB")),
        ("SSIM (crop region, mean / min)", f"{s['ssim']:.3f} / {s['ssim_min']:.3f}",
         f">= {t['ssim']}", _verdict(s["ssim_min"] >= t["ssim"],
                                     f"min {s['ssim_min'] - t['ssim']:+.3f}")),
        ("generator success, bundled (L2_mask > 0.05)", _pct(s["success_bundled"]),
         ">= 90 %", _verdict(succ >= t["success"], f"{(succ - t['success']) * 100:+.0f} pts")),
        ("generator success, held-out (transfer)", _pct(s["success_heldout"]), "reported", "-"),
        ("MTCNN recall on protected photos (IoU >= 0.7)", _pct(s["mtcnn_found"]),
         "<= 20 % (tsdf)", "-" if s["mode"] != "tsdf" else
         _verdict(mt <= t["mtcnn_recall"], f"{(mt - t['mtcnn_recall']) * 100:+.0f} pts")),
        (f"cascade recall (its own clean boxes, {s['cascade_faces']} faces)",
         _pct(s["cascade_found"]), "reported", "-"),
        ("success after JPEG-90, bundled", _pct(s["success_bundled_jpeg90"]), ">= 70 %",
         _verdict(j90 >= t["jpeg90"], f"{(j90 - t['jpeg90']) * 100:+.0f} pts")),
        ("success after JPEG-90, held-out", _pct(s["success_heldout_jpeg90"]), "reported", "-"),
        ("MTCNN recall after JPEG-90", _pct(s["mtcnn_found_jpeg90"]), "reported", "-"),
    ]
    return [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]


def to_markdown(summary: list[dict[str, Any]], meta: dict[str, Any],
                timing: dict[str, Any] | None, extra: str = "") -> str:
    lines = [
        "# Active defence (`dfshield protect`): evaluation",
        "",
        f"Data: {meta['photos']} held-out photos, {meta['faces']} faces ({meta['source']}); "
        "no generator saw these people. Generators: bundled "
        f"`{meta['bundled']}` (optimised against), held out `{meta['heldout']}` (transfer, "
        f"never optimised against). Steps: {meta['steps']} (stage 1) + {meta['poison_steps']} "
        "(stage 2, tsdf). Rates: mean over faces with bootstrap 95 % CIs. Timings on a shared, "
        "contended 2-core CPU, `OMP_NUM_THREADS=1`. Cascade = OpenCV's LBP frontal-face "
        "cascade via scikit-image (the opencv 5 wheel ships no Haar cascade).",
        "",
    ]
    for s in summary:
        lines += [f"## mode `{s['mode']}`, eps {s['eps']:g} ({s['eps'] * 255:.1f}/255)", "",
                  "| figure | measured | target | verdict |", "|---|---|---|---|",
                  *target_lines(s), "",
                  f"Mean L2_mask: bundled {s['l2_bundled']:.4f}, held-out "
                  f"{s['l2_heldout']:.4f} (success threshold 0.05); mean "
                  f"{s['seconds_photo']:.1f} s per photo.", ""]
    if timing:
        ok = timing["seconds"] <= TARGETS["seconds_1280x720"]
        over = f"{timing['seconds'] - 30:+.1f} s"
        lines += ["## Time of `protect` on a 1280x720 photo", "",
                  f"{timing['seconds']:.1f} s for {timing['faces']} face(s), mode "
                  f"`{timing['mode']}`, default settings; target <= 30 s: "
                  f"{_verdict(ok, over)}"
                  + (f" (runs: {timing['all']} s)" if "all" in timing else "") + ".", ""]
    return "\n".join(lines) + ("\n" + extra if extra else "")
