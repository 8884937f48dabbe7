"""Are the verdicts sound? A simulation with known truth, each decision policy side by side.

Paired outcomes are drawn from a known population: the baseline is right on 90% of rows; a clean
int8 candidate flips near-ties both ways (2% of rows right only for the baseline, 2% only for the
candidate; half of the rows both get wrong are answered differently). Each run has 20 slices and
three checks per slice (max_drop 0.05, min_accuracy 0.85, min_agreement 0.85: 60 tests) and is
judged with the code the harness uses (runners/stats.py, runners/decision.py). Three candidates:
(a) clean (true drop 0), (b) a true drop of exactly the tolerance on every slice, (c) twice the
tolerance on one slice, clean elsewhere. Printed per policy and slice size: the share of runs
that fail (family-wise: any test fails), the share whose gate passes, the share inconclusive.

Targets, at confidence 0.95: under `alert`, a clean candidate fails in at most 5% of runs; under
`release`, the twice-the-tolerance candidate passes in at most 5% of runs once its slices have
the rows `revalidator plan-rows` asks for.

Usage: python benchmarks/verdict_soundness.py [--runs 2000]
Last line: {"metric": "verdict_soundness", ..., "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runners.decision import classify, plan_rows  # noqa: E402
from runners.stats import holm, lower_p, paired_score_z, proportion_score_z, upper_p  # noqa: E402

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
SLICES = 20
SIZES = (30, 100, 300, 3000)
DROP_LIMIT, ACCURACY_LIMIT, AGREEMENT_LIMIT = 0.05, 0.85, 0.85
BASELINE_ACCURACY, FLIP = 0.90, 0.02  # FLIP: rows right only for the baseline (and only for the candidate)


def cells(drop: float) -> np.ndarray:
    """Probabilities of: both right, baseline only, candidate only, both wrong alike, both wrong differently."""
    baseline_only, candidate_only = FLIP + drop, FLIP
    both_wrong = 1 - BASELINE_ACCURACY - candidate_only
    return np.array([BASELINE_ACCURACY - baseline_only, baseline_only, candidate_only, both_wrong / 2, both_wrong / 2])


def draw(rng: np.random.Generator, runs: int, n: int, drops: np.ndarray) -> np.ndarray:
    """(runs, slices, 5) cell counts; `drops` gives each slice's true drop."""
    out = np.empty((runs, SLICES, 5), dtype=np.int64)
    for s, drop in enumerate(drops):
        out[:, s] = rng.multinomial(n, cells(drop), size=runs)
    return out


def tests(counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per run, all 60 tests: p_beyond, p_within and the point rule's breach, as the harness computes them."""
    b, c = counts[..., 1], counts[..., 2]
    correct_candidate = counts[..., 0] + c
    agree = counts[..., 0] + counts[..., 3]
    z_drop = paired_score_z(b, c, np.full(b.shape, n), np.full(b.shape, DROP_LIMIT))
    z_acc = proportion_score_z(correct_candidate, np.full(b.shape, n), ACCURACY_LIMIT)
    z_agree = proportion_score_z(agree, np.full(b.shape, n), AGREEMENT_LIMIT)
    p_beyond = np.concatenate([upper_p(z_drop), lower_p(z_acc), lower_p(z_agree)], axis=1)
    p_within = np.concatenate([lower_p(z_drop), upper_p(z_acc), upper_p(z_agree)], axis=1)
    point = np.concatenate([(b - c) / n > DROP_LIMIT + 1e-12, correct_candidate / n < ACCURACY_LIMIT - 1e-12,
                            agree / n < AGREEMENT_LIMIT - 1e-12], axis=1)
    return p_beyond, p_within, point


def outcomes(counts: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    """Per policy: the share of runs that fail, whose gate passes, and that are inconclusive."""
    p_beyond, p_within, point = tests(counts, n)
    verdicts = classify(holm(p_beyond), p_within, ALPHA)  # Holm over each run's 60 tests
    failed = (verdicts == "fail").any(axis=1)
    inconclusive = ~failed & (verdicts == "inconclusive").any(axis=1)
    return {
        "point": {"fail": float(point.any(axis=1).mean()), "gate_pass": float((~point.any(axis=1)).mean()),
                  "inconclusive": 0.0},
        "release": {"fail": float(failed.mean()), "gate_pass": float((~failed & ~inconclusive).mean()),
                    "inconclusive": float(inconclusive.mean())},
        "alert": {"fail": float(failed.mean()), "gate_pass": float((~failed).mean()),
                  "inconclusive": float(inconclusive.mean())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per candidate and slice size")
    args = parser.parse_args()
    rng = np.random.default_rng(20261201)
    clean_agreement = 1 - 2 * FLIP - (1 - BASELINE_ACCURACY - FLIP) / 2
    def planned_rows(tests: int) -> int:
        return max(plan_rows("max_drop", DROP_LIMIT, CONFIDENCE, 2 * FLIP, None, tests),
                   plan_rows("min_accuracy", ACCURACY_LIMIT, CONFIDENCE, 2 * FLIP, BASELINE_ACCURACY, tests),
                   plan_rows("min_agreement", AGREEMENT_LIMIT, CONFIDENCE, 2 * FLIP, clean_agreement, tests))
    planned = planned_rows(1)
    print(f"plan-rows at confidence {CONFIDENCE}: {planned} rows per slice for each test alone, "
          f"{planned_rows(3 * SLICES)} for all {3 * SLICES} tests of a run to pass together (80% power)")
    candidates = {"clean": np.zeros(SLICES), "at_tolerance": np.full(SLICES, DROP_LIMIT),
                  "twice_on_one_slice": np.r_[2 * DROP_LIMIT, np.zeros(SLICES - 1)]}
    table: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for name, drops in candidates.items():
        table[name] = {n: outcomes(draw(rng, args.runs, n, drops), n) for n in SIZES}
    print(f"{args.runs} runs per cell; 20 slices x 3 checks per run; share of runs")
    print(f"{'candidate':20} {'rows':>5}  " + "  ".join(f"{p + ' fail/pass/inc':>24}" for p in ("point", "release",
                                                                                                "alert")))
    for name, by_size in table.items():
        for n, policies in by_size.items():
            cells_text = "  ".join(f"{o['fail']:7.3f} {o['gate_pass']:7.3f} {o['inconclusive']:7.3f}  "
                                   for o in policies.values())
            print(f"{name:20} {n:5d}  {cells_text}")
    # Monte Carlo slack: two standard errors of a share near the target.
    slack = 2 * np.sqrt(ALPHA * (1 - ALPHA) / args.runs)
    alert_clean = max(table["clean"][n]["alert"]["fail"] for n in SIZES)
    release_twice = max(table["twice_on_one_slice"][n]["release"]["gate_pass"] for n in SIZES if n >= planned)
    point_clean_small = table["clean"][SIZES[0]]["point"]["fail"]
    ok = alert_clean <= ALPHA + slack and release_twice <= ALPHA + slack
    print(json.dumps({"metric": "verdict_soundness", "alert_clean_fail_max": round(alert_clean, 4),
                      "release_twice_tolerance_pass_max": round(release_twice, 4), "target": round(ALPHA, 4),
                      "monte_carlo_slack": round(float(slack), 4), "planned_rows": planned,
                      "point_clean_fail_at_30_rows": round(point_clean_small, 4), "ok": bool(ok)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
