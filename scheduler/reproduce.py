"""`revalidator reproduce RUN_ID`: run a recorded job again and say whether it did the same thing.

The recorded JobSpec goes through the normal dispatcher (Ray, the target's placement, the ledger: the
re-run is a run of its own, trigger "reproduce"). Before anything runs, every recorded input is hashed
again: an artifact, data file, calibration set or tokenizer whose sha256 moved is refused (bad input,
exit 2), since the re-run would then reproduce something else. After it, every fingerprint component
that differs from the recorded one is listed, and the row outputs are compared row by row.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from runners.contracts import JobSpec
from runners.hashing import artifact_digests, sha256_path
from scheduler import rowdiff
from scheduler.config import LoadedConfig
from scheduler.ledger import Ledger
from scheduler.outcome import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_PASS

DOCUMENT_VERSION = 1


class ReproduceError(ValueError):
    """The run cannot be reproduced as recorded (bad input, exit 2)."""


def find_run(ledger: Ledger, prefix: str) -> dict[str, Any]:
    """The one run whose id starts with `prefix`, with its checks and provenance."""
    matches = [r["run_id"] for r in ledger.history(limit=1_000_000) if r["run_id"].startswith(prefix)]
    if len(matches) != 1:
        raise ReproduceError(f"run id {prefix!r} matches {len(matches)} runs in the ledger {ledger.where}")
    return ledger.run(matches[0])


def recorded_inputs(provenance: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(what, path, recorded sha256) of every input the run hashed."""
    suite = provenance.get("suite") or {}
    quantization = provenance.get("quantization") or {}
    out = [(model, provenance[model]["path"], provenance[model].get("sha256"))
           for model in ("baseline", "candidate") if provenance.get(model)]
    if suite.get("data"):
        out.append(("suite data", suite["data"], suite.get("data_sha256")))
    if quantization.get("calibration_set"):
        out.append(("calibration set", quantization["calibration_set"], provenance.get("calibration_set_sha256")))
    if (suite.get("generation") or {}).get("tokenizer"):
        out.append(("tokenizer", suite["generation"]["tokenizer"], suite.get("tokenizer_sha256")))
    return out


def check_inputs(provenance: dict[str, Any]) -> None:
    """Refuse when any recorded input is missing or its sha256 is not the recorded one."""
    moved = []
    for what, path, recorded in recorded_inputs(provenance):
        now = artifact_digests(path)["sha256"] if what in ("baseline", "candidate") else sha256_path(path)
        if now != recorded:
            moved.append(f"{what} {path}: recorded sha256 {recorded}, now "
                         f"{now if now is not None else 'missing (no such file)'}")
    if moved:
        raise ReproduceError("cannot reproduce: " + "; ".join(moved))


def respec(spec: JobSpec, loaded: LoadedConfig, target: str | None) -> JobSpec:
    """The recorded spec as a new job, on `target` (with that target's options and probes) if given."""
    changes: dict[str, Any] = {"job_id": f"reproduce-{uuid.uuid4().hex[:12]}", "trigger": "reproduce"}
    if target is not None and target != spec.target:
        if target not in loaded.config.targets:
            raise ReproduceError(f"--target {target!r}: no such target in {loaded.path}")
        t = loaded.config.targets[target]
        changes.update(target=target, runner_options=t.options.model_dump(exclude_none=True),
                       probes=loaded.probe_specs(target))
    elif spec.target not in loaded.config.targets:
        raise ReproduceError(f"the run's target {spec.target!r} is not in {loaded.path}: name one with --target")
    return dataclasses.replace(spec, **changes)


def reproduce(loaded: LoadedConfig, ledger: Ledger, run_prefix: str, target: str | None = None,
              dispatcher: Any = None) -> tuple[int, dict[str, Any]]:
    """(exit code, document): 0 when the re-run's rows are identical to the recorded ones."""
    from scheduler.dispatch import RayDispatcher
    from scheduler.validate import run_validation

    run = find_run(ledger, run_prefix)
    spec = ledger.spec(run["run_id"])
    if spec is None or not run["provenance"]:
        raise ReproduceError(f"run {run['run_id']} has no recorded JobSpec or provenance to reproduce")
    check_inputs(run["provenance"])
    job = respec(spec, loaded, target)
    owned = dispatcher is None
    if owned:
        dispatcher = RayDispatcher.for_one_shot(loaded)
        dispatcher.start()
        dispatcher.warm([job])
    try:
        record = run_validation(loaded, [job], ledger, dispatcher).records[0]
    finally:
        if owned:
            dispatcher.shutdown()
    result = record.result
    doc: dict[str, Any] = {"version": DOCUMENT_VERSION, "run_id": run["run_id"], "rerun_id": record.run_id,
                           "target": job.target, "recorded_target": spec.target,
                           "recorded_verdict": run["verdict"], "verdict": result.verdict, "error": result.error,
                           "fingerprint_diff": rowdiff.fingerprint_diff(run["provenance"].get("fingerprint"),
                                                                        result.provenance.get("fingerprint")),
                           "rows": None, "identical": False}
    if result.error:
        return (EXIT_BAD_INPUT if result.error_kind == "input" else EXIT_INTERNAL), doc
    try:
        doc["rows"] = rowdiff.diff_rows(ledger.row_outputs(run["run_id"]), result.row_outputs,
                                        (run["run_id"], record.run_id))
    except rowdiff.RowsUnavailable as exc:
        doc["rows_unavailable"] = str(exc)
        return EXIT_GATE_FAILED, doc
    doc["identical"] = doc["rows"]["identical"] and result.verdict == run["verdict"]
    return (EXIT_PASS if doc["identical"] else EXIT_GATE_FAILED), doc


def human(doc: dict[str, Any]) -> str:
    where = doc["target"] + ("" if doc["target"] == doc["recorded_target"] else f" (recorded on {doc['recorded_target']})")
    lines = [f"reproduce {doc['run_id'][:8]} on {where}: re-run {doc['rerun_id'][:8]}, verdict {doc['verdict']} "
             f"(recorded {doc['recorded_verdict']})"]
    if doc["error"]:
        lines.append(f"  the re-run failed: {doc['error'].strip().splitlines()[0]}")
    if doc["fingerprint_diff"]:
        lines.append("  fingerprint differs from the recorded one:")
        lines += [f"    {d['component']}: {d['first']} -> {d['second']}" for d in doc["fingerprint_diff"]]
    else:
        lines.append("  fingerprint: identical to the recorded one")
    if doc.get("rows_unavailable"):
        lines.append(f"  rows not compared: {doc['rows_unavailable']}")
    elif doc["rows"]:
        lines += rowdiff.describe(doc["rows"], ("the recorded run", "the re-run"))
    lines.append("identical: every row as recorded" if doc["identical"] else "NOT identical")
    return "\n".join(lines)
