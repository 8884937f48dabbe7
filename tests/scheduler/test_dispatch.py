"""Dispatch on a real local Ray: every job is a task, crashes and hangs become that job's error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runners.contracts import JobSpec
from scheduler.config import load_config
from scheduler.dispatch import RayDispatcher
from scheduler.tasks import placement_options
from scheduler.config.schema import Placement
from scheduler.ledger import Ledger
from scheduler.planning import plan
from scheduler.validate import run_validation
from tests.conftest import demo_config

pytestmark = pytest.mark.ray


@pytest.fixture
def setup(tmp_path: Path, demo_dir: Path, ray_local):
    path = tmp_path / "targets.yaml"
    path.write_text(demo_config(demo_dir, tmp_path / "ledger.db"))
    loaded = load_config(path)
    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    dispatcher = RayDispatcher(loaded)
    dispatcher.start()
    yield loaded, ledger, dispatcher
    dispatcher.shutdown()  # a no-op: the session's Ray was not started by this dispatcher
    ledger.close()


def with_runner(spec: JobSpec, runner: str, candidate: str) -> JobSpec:
    return replace(spec, job_id=f"{spec.job_id}-{candidate}", candidate=candidate,
                   candidate_artifact=replace(spec.candidate_artifact, runner=runner))


def test_every_job_is_recorded_before_and_after(setup) -> None:
    loaded, ledger, dispatcher = setup
    seen_running = []
    jobs = plan(loaded)
    report = run_validation(loaded, jobs, ledger, dispatcher,
                            progress=lambda done, total, rec: seen_running.append(ledger.run(rec.run_id)["status"]))
    assert [r.spec.candidate for r in report.records] == ["ort-int8-dynamic", "ort-w8a3"]
    assert [r.result.verdict for r in report.records] == ["pass", "fail"]
    assert seen_running == ["finished", "finished"]  # recorded before progress is reported
    history = ledger.history()
    assert sorted(h["verdict"] for h in history) == ["fail", "pass"]
    assert all(h["status"] == "finished" and h["fingerprint_hash"] for h in history)
    assert report.exit_code() == 1


def test_worker_crash_is_that_jobs_error_and_others_go_on(setup) -> None:
    loaded, ledger, dispatcher = setup
    jobs = plan(loaded)
    crashing = with_runner(jobs[0], "tests.plugins:CrashingRunner", "crashes")
    report = run_validation(loaded, [jobs[0], crashing, jobs[1]], ledger, dispatcher)
    verdicts = {r.spec.candidate: r.result for r in report.records}
    assert verdicts["ort-int8-dynamic"].verdict == "pass"
    assert verdicts["ort-w8a3"].verdict == "fail"
    crashed = verdicts["crashes"]
    assert crashed.verdict == "error" and crashed.error_kind == "internal"
    assert "WorkerCrashedError" in crashed.error and "gave up after 2 attempts" in crashed.error
    stored = [h for h in ledger.history() if h["candidate"] == "crashes"][0]
    assert stored["status"] == "error" and stored["error"] == crashed.error and stored["attempts"] == 2
    assert report.exit_code() == 3


def test_hung_job_times_out_and_is_cancelled(setup, tmp_path: Path) -> None:
    loaded, ledger, dispatcher = setup
    fast = replace(loaded, config=loaded.config.model_copy(
        update={"ray": loaded.config.ray.model_copy(update={"job_timeout_seconds": 3})}))
    dispatcher.loaded = fast
    jobs = plan(fast)
    hung = with_runner(jobs[0], "tests.plugins:SleepingRunner", "hangs")
    report = run_validation(fast, [hung, jobs[0]], ledger, dispatcher)
    results = {r.spec.candidate: r.result for r in report.records}
    assert "timed out after 3s" in results["hangs"].error
    assert results["ort-int8-dynamic"].verdict == "pass"


def test_placement_pins_by_resource_or_label() -> None:
    assert placement_options("local") == {}
    assert placement_options(Placement(resource="target:h100")) == {"resources": {"target:h100": 0.001}}
    assert placement_options(Placement(labels={"pool": "l4"})) == {"label_selector": {"pool": "l4"}}


def test_after_a_stack_change_jobs_run_in_workers_started_after_it(setup, tmp_path: Path) -> None:
    loaded, ledger, dispatcher = setup
    firmware = tmp_path / "firmware"
    firmware.write_text("1.0\n")
    path = tmp_path / "targets.yaml"
    probe = f"    probes: {{firmware: {{file: {firmware}}}}}\n"
    path.write_text(path.read_text().replace("    runners: [onnxruntime, torch]\n",
                                             "    runners: [onnxruntime, torch]\n" + probe))
    dispatcher.loaded = loaded = load_config(path)
    job = plan(loaded)[0]

    def worker_pid() -> int:
        report = run_validation(loaded, [job], ledger, dispatcher)
        result = report.records[0].result
        assert result.status == "finished", result.error
        return result.provenance["loaded"]["pid"]

    before = set()
    for _ in range(2):  # one stack, probed twice: one generation
        assert isinstance(dispatcher.probe(["local-cpu"], timeout=60)["local-cpu"], dict)
        before.add(worker_pid())
    firmware.write_text("2.0\n")
    stack = dispatcher.probe(["local-cpu"], timeout=60)["local-cpu"]
    assert stack["components"]["firmware"] == "2.0"
    after = worker_pid()
    assert after not in before  # a worker of the earlier stack can no longer take the target's jobs


def test_a_probe_slower_than_a_poll_stays_in_flight_and_answers_a_later_poll(setup, tmp_path: Path) -> None:
    loaded, ledger, dispatcher = setup
    hold, starts = tmp_path / "probe.hold", tmp_path / "probe.starts"
    hold.touch()
    # A command probe that notes each start, then waits while the hold file exists.
    probe = (f'    probes: {{firmware: {{command: [sh, -c, "echo started >> {starts}; '
             f'while [ -e {hold} ]; do sleep 0.05; done; echo 1.0"], timeout_seconds: 120}}}}\n')
    path = tmp_path / "targets.yaml"
    path.write_text(path.read_text().replace("    runners: [onnxruntime, torch]\n",
                                             "    runners: [onnxruntime, torch]\n" + probe))
    dispatcher.loaded = load_config(path)
    for _ in range(2):  # two polls that do not wait long enough: one probe, still waited for
        answer = dispatcher.probe(["local-cpu"], timeout=0.5)["local-cpu"]
        assert isinstance(answer, str) and "still waiting" in answer, answer
    hold.unlink()
    stack = dispatcher.probe(["local-cpu"], timeout=60)["local-cpu"]
    assert isinstance(stack, dict) and stack["components"]["firmware"] == "1.0"
    assert starts.read_text().splitlines() == ["started"]  # never cancelled and started again


def test_a_stale_runtime_in_a_worker_moves_the_targets_next_jobs_to_new_workers(setup) -> None:
    loaded, ledger, dispatcher = setup
    dispatcher.generations.note("local-cpu", "probed")
    job = plan(loaded)[0]
    stale = with_runner(job, "tests.plugins:StaleLibraryRunner", "stale")
    report = run_validation(loaded, [job, stale], ledger, dispatcher)
    ran, found = (r.result for r in report.records)
    assert (found.status, found.error_kind) == ("error", "stale_runtime") and not found.checks
    assert report.exit_code() == 3
    assert [h["error_kind"] for h in ledger.history() if h["candidate"] == "stale"] == ["stale_runtime"]
    after = run_validation(loaded, [job], ledger, dispatcher).records[0].result
    assert after.status == "finished"
    assert after.provenance["loaded"]["pid"] not in {ran.provenance["loaded"]["pid"], found.provenance["loaded"]["pid"]}
