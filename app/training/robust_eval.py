"""Does d catch attacks it was not trained on? Report sections (a), (c), (d) of that question.

(a) detection per attack × budget: every family over the ε grid, Square and NES over query
    budgets; the share of the attacks that fool g (after uint8 rounding) that d flags at its
    served ``tau_attacked``.
(c) false alarms on held-out reals g calls real: clean and under each benign corruption at its
    strongest setting (``benign.NAMED``).
(d) the same question for attacks from an independent library (torchattacks, the ``eval``
    dependency group), side by side with the in-house figures; "not run" when it is absent.
Leave-one-family-out (b) retrains d and lives in ``lofo.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.training.attack_batch import p_fake_of
from app.training.attack_mix import FAMILY, family_of
from app.training.attacks.nes import nes_queries
from app.training.benign import NAMED
from app.training.common import ProgressFn
from app.training.eval_suite import DModel, Suite, compute_maps, p_attacked, run_attacks

log = logging.getLogger("dfshield.training")
NES_PAIRS = 20


@dataclass(frozen=True)
class EvalJob:
    label: str
    attack: str
    overrides: dict[str, Any] = field(default_factory=dict)
    eps: float | None = None  # L∞ budget in /255 (None: L2 or a query budget row)


def nes_iters_for(queries: int, n_pairs: int = NES_PAIRS) -> int:
    """NES iterations (1 restart) that spend about ``queries`` model evaluations per face."""
    per_iter = nes_queries(1, 1, n_pairs)
    return max(1, round(queries / per_iter))


def eval_jobs(
    white_box: Sequence[str] = ("pgd", "pgd_rs", "apgd", "mifgsm", "fgsm", "eot_pgd"),
    eps_grid: Sequence[float] = (2, 4, 8, 16),
    query_budgets: Sequence[int] = (500, 1000, 5000),
    l2_grid: Sequence[float] = (1.0, 2.0, 4.0),
) -> list[EvalJob]:
    """The issue's grid: L∞ families × ε, DDN × L2 bound, Square and NES × queries at 16/255."""
    jobs = [EvalJob(f"{a}@{e:g}", a, {"eps": e / 255}, e) for a in white_box for e in eps_grid]
    jobs += [EvalJob(f"ddn@l2={b:g}", "ddn", {"eps_l2": b, "quantize": True}) for b in l2_grid]
    for q in query_budgets:
        jobs.append(EvalJob(f"square@16 q{q}", "square", {"eps": 16 / 255, "max_queries": q}))
        jobs.append(EvalJob(f"nes@16 q{q}", "nes", {"eps": 16 / 255, "restarts": 1,
                                                    "iters": nes_iters_for(q)}))
    jobs.append(EvalJob("square@8 q1000", "square", {"eps": 8 / 255, "max_queries": 1000}, 8))
    return jobs


def target_for(job: EvalJob) -> float:
    """The issue's bar: ≥ 95 % at 8–16/255, ≥ 85 % at 4/255, ≥ 90 % for score-based attacks."""
    if job.attack in ("square", "nes"):
        return 0.90
    if job.eps is not None and job.eps <= 2:
        return 0.0  # no target below 4/255: reported only
    if job.eps is not None and job.eps <= 4:
        return 0.85
    return 0.95


FlagFn = Callable[[torch.Tensor], np.ndarray]  # crops [N,3,S,S] in [0,1] → p_attacked


def detection_rows(
    suite: Suite, jobs: Sequence[EvalJob], flag: FlagFn, tau: float, batch_size: int, seed: int,
    progress: ProgressFn,
) -> list[dict[str, Any]]:
    """Run each job on the suite's caught fakes; d's flag rate on the ones that fool g."""
    rows = []
    for job in jobs:
        run_attacks(suite, [], {}, batch_size, seed, progress,
                    variants={job.label: (job.attack, dict(job.overrides))})
        res, x = suite.results[job.label], suite.attacked_x(job.label)
        p = flag(x) if len(x) else np.zeros(0)
        stats = res.stats()
        rows.append({"attack": job.label, "family": FAMILY.get(job.attack, job.attack),
                     "attempted": stats["n_attacked"], "fooled_g": int(res.fooled.sum()),
                     "flagged": float(np.mean(p >= tau)) if len(p) else None,
                     "mean_linf": stats["mean_linf"], "mean_queries": stats["mean_queries"],
                     "target": target_for(job)})
        log.info("robust %s: %s", job.label, rows[-1])
    return rows


def false_alarm_rows(
    clean: torch.Tensor, g_p_fake: Callable[[torch.Tensor], np.ndarray], g_tau: float,
    flag: FlagFn, tau: float, seed: int,
) -> list[dict[str, Any]]:
    """d's false alarms on held-out clean reals and on each named benign corruption of them.

    A corrupted face that g now calls fake never reaches d in serving: it is left out (and
    counted), so each rate is over the faces d would actually see.
    """
    rng = np.random.default_rng(seed)
    imgs = [(c.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for c in clean]
    rows = [_fa_row("clean", clean, len(clean), flag, tau, 0.03)]
    for name, fn in NAMED.items():
        x = torch.stack([torch.from_numpy(fn(im, rng)).permute(2, 0, 1) for im in imgs]) / 255
        keep = g_p_fake(x.float()) < g_tau
        rows.append(_fa_row(name, x[torch.from_numpy(keep)].float(), len(x), flag, tau, 0.05))
    return rows


def _fa_row(name: str, x: torch.Tensor, total: int, flag: FlagFn, tau: float,
            goal: float) -> dict[str, Any]:
    p = flag(x) if len(x) else np.zeros(0)
    return {"corruption": name, "n": int(len(x)), "g_called_fake": total - int(len(x)),
            "false_alarm": float(np.mean(p >= tau)) if len(p) else None, "target": goal}


def family_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Worst flag rate per family over its rows with a target (the figure a target holds to)."""
    worst: dict[str, float] = {}
    for r in rows:
        if r["flagged"] is None or not r["target"]:
            continue
        fam = family_of(r["attack"].split(" ")[0])
        worst[fam] = min(worst.get(fam, 1.0), r["flagged"])
    return dict(sorted(worst.items()))


def robust_section(
    suite: Suite, d: DModel, jobs: Sequence[EvalJob], batch_size: int, seed: int,
    progress: ProgressFn, independent: bool = True,
) -> dict[str, Any]:
    """Sections (a), (c), (d) for one d (``eval_suite.DModel``) on the suite's held-out faces."""
    def flag(x: torch.Tensor) -> np.ndarray:
        return p_attacked(d, x, compute_maps(suite.g, d.xai, x, batch_size), batch_size)

    def g_p(x: torch.Tensor) -> np.ndarray:
        return p_fake_of(suite.g, x, batch_size).numpy()

    rows = detection_rows(suite, jobs, flag, d.tau, batch_size, seed, progress)
    out: dict[str, Any] = {
        "d": d.key, "tau_attacked": d.tau, "detection": rows,
        "worst_by_family": family_summary(rows),
        "false_alarms": false_alarm_rows(suite.clean_x(), g_p, suite.tau, flag, d.tau, seed)}
    out["independent"] = (_independent(suite, flag, d.tau, batch_size, seed, rows)
                          if independent else {"skipped": "not requested"})
    return out


IN_HOUSE_TWIN = {"ta_pgd": "pgd_rs@16", "ta_mifgsm": "mifgsm@16", "ta_apgd": "apgd@16",
                 "ta_square": "square@16 q5000"}


def _independent(
    suite: Suite, flag: FlagFn, tau: float, batch_size: int, seed: int,
    in_house: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """torchattacks at the library's own budgets (16/255), judged exactly as ours: g on the
    uint8-rounded result at tau_fake, d at tau_attacked."""
    try:
        import torchattacks  # noqa: F401  (the eval group; absent in a serving install)

        from app.training.independent import INDEPENDENT_ATTACKS, run_independent
    except ImportError as e:
        return {"skipped": f"{e}; run `uv sync --group eval`"}
    x = suite.fakes.float(suite.caught)
    ours = {r["attack"]: r["flagged"] for r in in_house}
    rows = []
    for name in INDEPENDENT_ATTACKS:
        parts = [run_independent(name, suite.g, c.to(next(suite.g.parameters()).device),
                                 seed=seed).x_adv.cpu() for c in x.split(batch_size)]
        adv = (torch.cat(parts) * 255).round() / 255 if parts else x[:0]
        fooled = p_fake_of(suite.g, adv, batch_size).numpy() < suite.tau
        p = flag(adv[torch.from_numpy(fooled)]) if fooled.any() else np.zeros(0)
        rows.append({"attack": name, "attempted": int(len(adv)), "fooled_g": int(fooled.sum()),
                     "flagged": float(np.mean(p >= tau)) if len(p) else None,
                     "in_house": ours.get(IN_HOUSE_TWIN.get(name, "")), "target": 0.90})
        log.info("independent %s: %s", name, rows[-1])
    return {"library": "torchattacks (PGD random start, MIFGSM, APGD-CE, Square 5000 q)",
            "rows": rows}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ok(v: float | None, goal: float, lower_is_better: bool = False) -> str:
    if v is None or not goal:
        return "—"
    return "PASS" if (v <= goal if lower_is_better else v >= goal) else "MISS"


def robust_markdown(sec: dict[str, Any] | None, lofo: dict[str, Any] | None = None) -> list[str]:
    """The report's "d against unseen attacks" section (a)–(d)."""
    if not sec:
        return []
    md = ["## (h) d against attacks it was not trained on", "",
          f"d = `{sec['d']}`, served tau_attacked = {sec['tau_attacked']:.4f}. Flagged = share "
          "of the attacks that fool g (uint8-rounded) with p_attacked ≥ tau_attacked.", "",
          "### (h.a) detection per attack × budget", "",
          "| attack | attempted | fooled g | flagged | target | result | mean L∞·255 | "
          "mean queries |", "|---|---|---|---|---|---|---|---|"]
    for r in sec["detection"]:
        q = "n/a" if r["mean_queries"] is None else f"{r['mean_queries']:.0f}"
        md.append(f"| {r['attack']} | {r['attempted']} | {r['fooled_g']} | "
                  f"{_pct(r['flagged'])} | {_pct(r['target']) if r['target'] else '—'} | "
                  f"{_ok(r['flagged'], r['target'])} | {255 * r['mean_linf']:.1f} | {q} |")
    md += ["", "### (h.b) leave-one-family-out", ""] + _lofo_lines(lofo)
    md += ["### (h.c) false alarms on held-out reals g calls real", "",
           "| corruption | faces d sees | g called fake | false alarms | target | result |",
           "|---|---|---|---|---|---|"]
    for r in sec["false_alarms"]:
        md.append(f"| {r['corruption']} | {r['n']} | {r['g_called_fake']} | "
                  f"{_pct(r['false_alarm'])} | ≤ {_pct(r['target'])} | "
                  f"{_ok(r['false_alarm'], r['target'], True)} |")
    md += ["", "### (h.d) an independent implementation", ""] + _independent_lines(
        sec.get("independent", {}))
    return md


def _lofo_lines(lofo: dict[str, Any] | None) -> list[str]:
    if not lofo or not lofo.get("rows"):
        return ["not run (`dfshield train lofo`; it retrains d once per family).", ""]
    md = ["d retrained without the family (train and val), tested on it; target ≥ 85 %.", "",
          "| held-out family | attacked test crops | flagged | with it in training | result |",
          "|---|---|---|---|---|"]
    for r in lofo["rows"]:
        md.append(f"| {r['family']} | {r['n']} | {_pct(r['flagged'])} | "
                  f"{_pct(r.get('flagged_full'))} | {_ok(r['flagged'], 0.85)} |")
    return [*md, ""]


def _independent_lines(ind: dict[str, Any]) -> list[str]:
    if "rows" not in ind:
        return [f"not run: {ind.get('skipped', 'unknown')}", ""]
    md = [f"Library: {ind['library']}.", "",
          "| attack | attempted | fooled g | flagged | in-house twin | target | result |",
          "|---|---|---|---|---|---|---|"]
    for r in ind["rows"]:
        md.append(f"| {r['attack']} | {r['attempted']} | {r['fooled_g']} | "
                  f"{_pct(r['flagged'])} | {_pct(r['in_house'])} | {_pct(r['target'])} | "
                  f"{_ok(r['flagged'], r['target'])} |")
    return [*md, ""]


def _tgt(name: str, value: float | None, goal: float, detail: str,
         lower: bool = False) -> dict[str, Any]:
    ok = value is not None and (value <= goal if lower else value >= goal)
    gap = None if value is None else (goal - value if lower else value - goal)
    return {"name": name, "value": value, "target": goal, "pass": ok, "gap": gap,
            "detail": detail}


def robust_targets(sec: dict[str, Any] | None,
                   lofo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, each the *worst* cell of its group (a mean would hide a gap)."""
    if not sec:
        return []
    out = []
    for label, goal, pick in (
        ("every family at 8–16/255", 0.95, lambda r: r["target"] == 0.95),
        ("every family at 4/255", 0.85, lambda r: r["target"] == 0.85),
        ("Square and NES at every budget", 0.90,
         lambda r: r["family"] in ("square", "nes")),
    ):
        cells = [r for r in sec["detection"] if pick(r) and r["flagged"] is not None]
        worst = min(cells, key=lambda r: r["flagged"]) if cells else None
        out.append(_tgt(f"d flags {label} (worst cell)", worst and worst["flagged"], goal,
                        f"worst: {worst['attack']}" if worst else "no cell fooled g"))
    fa = {r["corruption"]: r["false_alarm"] for r in sec["false_alarms"]}
    out.append(_tgt("d false alarms, clean held-out reals", fa.get("clean"), 0.03, "", True))
    benign = [(k, v) for k, v in fa.items() if k != "clean" and v is not None]
    worst_b = max(benign, key=lambda kv: kv[1]) if benign else None
    out.append(_tgt("d false alarms, worst benign corruption", worst_b and worst_b[1], 0.05,
                    f"worst: {worst_b[0]}" if worst_b else "", True))
    ind = [r for r in sec.get("independent", {}).get("rows", []) if r["flagged"] is not None]
    worst_i = min(ind, key=lambda r: r["flagged"]) if ind else None
    out.append(_tgt("d flags the independent library's attacks (worst)",
                    worst_i and worst_i["flagged"], 0.90,
                    f"worst: {worst_i['attack']}" if worst_i else "not run"))
    rows = [r for r in (lofo or {}).get("rows", []) if r["flagged"] is not None]
    worst_l = min(rows, key=lambda r: r["flagged"]) if rows else None
    out.append(_tgt("leave-one-family-out (worst held-out family)",
                    worst_l and worst_l["flagged"], 0.85,
                    f"worst: {worst_l['family']}" if worst_l else "not run"))
    return out
