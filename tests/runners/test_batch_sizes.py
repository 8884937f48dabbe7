"""Production batch sizes: the candidate judged at each, and the spread across sizes reported."""

from __future__ import annotations

from pathlib import Path

from runners.contracts import CheckSpec
from runners.harness import run_job
from tests.runners.test_harness import job

CHECKS = (CheckSpec("max_drop", 0.03), CheckSpec("max_mean_kl", 0.2))


def test_every_check_is_judged_at_every_batch_size(demo_dir: Path) -> None:
    sizes = (1, 64, 1024)
    result = run_job(job(demo_dir, "digits-int8-dynamic.onnx", checks=CHECKS, slice_checks=CHECKS,
                         batch_sizes=sizes))
    assert result.status == "finished", result.error
    keys = {(c.check, c.batch_size) for c in result.checks}
    assert keys == {(check.name, size) for check in CHECKS for size in sizes}
    assert all(c.metric is None for c in result.checks)
    per_size = {size: [c for c in result.checks if c.batch_size == size] for size in sizes}
    assert len({len(v) for v in per_size.values()}) == 1  # the same slices at every size
    spread = result.provenance["batch_spread"]
    assert {(s["check"], s["dimension"]) for s in spread} >= {("max_drop", "all"), ("max_mean_kl", "scan")}
    for s in spread:
        measured = [c.candidate for c in result.checks if c.check == s["check"]
                    and (c.dimension, c.value) == (s["dimension"], s["value"])]
        assert s["min"] == min(measured) and s["max"] == max(measured) and s["spread"] == max(measured) - min(measured)
    # Dynamic int8 picks activation scales per batch: the outputs (and so the KL) move with the size.
    kl = next(s for s in spread if s["check"] == "max_mean_kl" and s["dimension"] == "all")
    assert kl["spread"] > 0
