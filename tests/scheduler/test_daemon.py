"""The daemon as a real process on a real 3-node Ray cluster whose nodes stand for 3 targets.

Each node offers one custom resource (target:a, target:b, target:c); each target declares a
firmware file probe, so a stack change on one target is a file written by the test.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.config.schema import Schedule
from scheduler.ledger import Ledger
from scheduler.schedule import last_due
from tests.scheduler.daemon_support import DaemonProcess, cluster_config, free_port, runs, wait_for

pytestmark = pytest.mark.ray

TARGETS = {"a": "target:a", "b": "target:b", "c": "target:c"}


# Ray's GCS declares a node dead after health_check_failure_threshold failed checks, one every
# health_check_period_ms, each given health_check_timeout_ms (defaults 5, 3000, 10000: 15 s for a refused
# connection, about a minute for an unanswered one). A test that removes a node has it declared dead
# in about 3 s (12 s unanswered) instead; 3 s timeouts leave a loaded machine's live raylets alive.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 3000,
                   "health_check_failure_threshold": 3}


def start_cluster(system_config: dict | None = None):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"target:a": 1}, "include_dashboard": False, "gcs_server_port": free_port(),
        **({"_system_config": system_config} if system_config else {})})
    nodes = {"a": cluster.head_node,
             "b": cluster.add_node(num_cpus=1, resources={"target:b": 1}),
             "c": cluster.add_node(num_cpus=1, resources={"target:c": 1})}
    cluster.wait_for_nodes()
    return cluster, nodes


@pytest.fixture(scope="module")
def cluster():
    cluster, _ = start_cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.close()


def finished(config: Path, **where: str) -> list[dict]:
    return [r for r in runs(config) if r["status"] == "finished" and all(r[k] == v for k, v in where.items())]


def test_a_change_on_one_target_revalidates_only_its_jobs_and_nothing_else(cluster, demo_dir, tmp_path, daemons):
    config = cluster_config(tmp_path, demo_dir, TARGETS)
    daemon = DaemonProcess(config, cluster.address)
    daemons.append(daemon)
    daemon.wait_ready()
    # First start: a catch-up sweep validates every (target, candidate) once, each on its own target.
    wait_for(lambda: len(finished(config)) == 6, 90, "the first sweep")
    first = finished(config)
    assert {r["trigger"] for r in first} == {"catch-up"}
    assert Counter(r["target"] for r in first) == {"a": 2, "b": 2, "c": 2}
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    # The first probes race the workers' start-up (a 2 s probe timeout here): wait for every
    # target's fingerprint, which a later poll records if the first one timed out.
    wait_for(lambda: set(ledger.latest_fingerprints()) == {"a", "b", "c"}, 30, "every target's fingerprint")
    fingerprints = ledger.latest_fingerprints()
    assert fingerprints["b"]["components"]["firmware"] == "1.0"

    # (b) Nothing changed: three polls later (seen in /metrics), nothing has run again.
    daemon.wait_polls(3)
    assert len(runs(config)) == 6

    # (a) One component changes on target b: the next full poll sees it (two completed polls after the
    # write: the first may have probed b before it), and only b's jobs re-run.
    (tmp_path / "firmware-b").write_text("2.0\n")
    daemon.wait_polls(2)
    seen = [(line["target"], line["diff"]["firmware"]) for line in daemon.logs() if line["msg"] == "stack changed"
            and line["diff"].get("firmware", [None])[0] is not None]  # not a first look at a target
    assert seen == [("b", ["1.0", "2.0"])]
    wait_for(lambda: len(finished(config, trigger="stack-change")) == 2, 60, "the re-validation")
    again = finished(config, trigger="stack-change")
    assert {r["target"] for r in again} == {"b"} and {r["candidate"] for r in again} == {"int8", "w8a3"}
    assert len(runs(config)) == 8
    changes = ledger.changes(target="b")
    assert [(c["component"], c["old_value"], c["new_value"]) for c in changes] == [("firmware", "1.0", "2.0")]
    assert ledger.change_counts() == {("b", "firmware"): 1}
    assert ledger.last_good_fingerprint("b", "digits-mlp", "int8") == ledger.latest_fingerprints()["b"]["hash"]
    ledger.close()

    # A manual sweep finds everything already validated on the current stacks; --force re-runs a target.
    assert daemon.post("/sweep") == 202
    assert daemon.post("/sweep?target=c&force=1") == 202
    wait_for(lambda: len(finished(config, trigger="manual")) == 2, 60, "the forced sweep")
    daemon.wait_polls(1)  # a poll later, no other target was swept
    assert {r["target"] for r in finished(config, trigger="manual")} == {"c"}
    assert len(runs(config)) == 10
    status, body = daemon.get("/status")
    assert status == 200 and {t: s["state"] for t, s in body["targets"].items()} == {"a": "ok", "b": "ok", "c": "ok"}

    assert daemon.terminate(timeout=30)[0] == 0


def held_demo(tmp_path: Path, demo_dir: Path, candidates: tuple[str, ...]) -> tuple[Path, list[Path]]:
    """A copy of the demo whose `candidates` files are held: their jobs run until the hold files go."""
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-w8a3.onnx", "digits-eval.npz"):
        shutil.copy(demo_dir / name, demo / name)
    holds = [demo / f"{name}.hold" for name in candidates]
    for hold in holds:
        hold.touch()
    return demo, holds


def test_sigterm_mid_job_stops_at_the_drain_deadline_with_the_ledger_consistent(cluster, demo_dir, tmp_path,
                                                                                daemons):
    # Every job is held: it would never finish, so a stop at all is the drain deadline cutting it.
    demo, holds = held_demo(tmp_path, demo_dir, ("digits-int8-dynamic.onnx", "digits-w8a3.onnx"))
    config = cluster_config(tmp_path, demo, TARGETS, runner="tests.plugins:HeldOnnxRunner")
    try:
        daemon = DaemonProcess(config, cluster.address)
        daemons.append(daemon)
        daemon.wait_ready()
        wait_for(lambda: any(r["status"] == "running" for r in runs(config)), 60, "a running job")
        code, _ = daemon.terminate(timeout=60)
        assert code == 0
        statuses = Counter(r["status"] for r in runs(config))
        assert statuses == {"queued": 6}  # nothing finished, nothing left running: all handed back
        logs = daemon.logs()
        messages = [line["msg"] for line in logs]
        assert "shutting down" in messages and messages[-1] == "stopped"
        cut = [line for line in logs if line["msg"] == "job handed back" and line["reason"] == "cancelled by shutdown"]
        assert cut  # the running ones were cancelled at the deadline, and left queued for the next start
    finally:
        for hold in holds:
            hold.unlink()
    # The next start resumes exactly what was left.
    again = DaemonProcess(config, cluster.address)
    daemons.append(again)
    again.wait_ready()
    wait_for(lambda: Counter(r["status"] for r in runs(config)) == {"finished": 6}, 120, "the resumed jobs")


def test_a_second_signal_exits_at_once_with_3_and_the_run_in_flight_stays_in_the_ledger(cluster, demo_dir, tmp_path,
                                                                                          daemons):
    demo, (hold,) = held_demo(tmp_path, demo_dir, ("digits-int8-dynamic.onnx",))
    # A drain far longer than the test: the graceful stop can only end by the second signal.
    config = cluster_config(tmp_path, demo, {"a": "target:a"}, runner="tests.plugins:HeldOnnxRunner",
                            candidates=("int8",), drain=900)
    daemon = DaemonProcess(config, cluster.address)
    daemons.append(daemon)
    try:
        daemon.wait_ready()
        wait_for(lambda: [r["status"] for r in runs(config)] == ["running"], 60, "the held job to run")
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in [line["msg"] for line in daemon.logs()], 30, "the graceful stop")
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(timeout=60) == 3
        logs = daemon.logs()
        messages = [line["msg"] for line in logs]
        assert "stop requested; a second signal exits at once" in messages
        forced = [line for line in logs if line["msg"].startswith("second signal: exiting now")]
        assert len(forced) == 1 and forced[0]["signal"] == "SIGINT" and forced[0]["exit_code"] == 3
        assert forced[0]["in_flight"]["running"] == 1
        assert "stopped" not in messages and "job handed back" not in messages  # it did not wait for the drain
        recorded = runs(config)  # the run in flight is kept as it was, and is what the next start resumes
        assert [(r["status"], r["candidate"], r["target"]) for r in recorded] == [("running", "int8", "a")]
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        try:
            assert [run_id for run_id, _ in ledger.unfinished()] == [recorded[0]["run_id"]]
        finally:
            ledger.close()
    finally:
        hold.unlink(missing_ok=True)


def test_kill_9_mid_sweep_then_restart_records_everything_exactly_once(cluster, demo_dir, tmp_path, daemons):
    config = cluster_config(tmp_path, demo_dir, TARGETS, slow=True)
    first = DaemonProcess(config, cluster.address)
    daemons.append(first)
    first.wait_ready()
    wait_for(lambda: len(finished(config)) >= 1, 120, "the first result")
    first.kill()  # kill -9: its Ray tasks die with it
    assert len(finished(config)) < 6
    second = DaemonProcess(config, cluster.address)
    daemons.append(second)
    second.wait_ready()
    wait_for(lambda: len(finished(config)) == 6, 180, "the resumed sweep")
    second.wait_polls(1)  # a poll later, nothing was recorded twice
    all_runs = runs(config)
    assert len(all_runs) == 6 and Counter(r["status"] for r in all_runs) == {"finished": 6}
    assert Counter((r["target"], r["candidate"]) for r in all_runs) == {(t, c): 1 for t in "abc" for c in ("int8", "w8a3")}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.connect() as conn:
        per_run = dict(conn.execute(sa.text("SELECT run_id, count(*) FROM results GROUP BY run_id")).all())
        provenance = conn.execute(sa.text("SELECT count(*) FROM provenance")).scalar()
    assert len(per_run) == 6 and set(per_run.values()) == {1 + 3}  # one check: the aggregate and 3 scans
    assert provenance == 6
    resumed = [line for line in second.logs() if line["msg"] == "daemon started"][0]
    assert resumed["resumed_jobs"] >= 1


def test_missed_nightly_is_caught_up_at_start_and_a_recent_one_is_not(cluster, demo_dir, tmp_path, daemons):
    schedule = Schedule(nightly="0 2 * * *")
    due = last_due(schedule, dt.datetime.now(dt.timezone.utc))
    for name, last_sweep, expect_catch_up in (("missed", due.timestamp() - 86400, True),
                                              ("recent", due.timestamp(), False)):
        workdir = tmp_path / name
        workdir.mkdir()
        config = cluster_config(workdir, demo_dir, {"a": "target:a"})
        ledger = Ledger(f"sqlite:///{workdir / 'ledger.db'}")
        ledger.finish_sweep(ledger.start_sweep("scheduled", scheduled_for=last_sweep))
        daemon = DaemonProcess(config, cluster.address)
        daemons.append(daemon)
        daemon.wait_ready()
        if expect_catch_up:
            wait_for(lambda: len(finished(config)) == 2, 60, "the catch-up sweep")
            assert {r["trigger"] for r in runs(config)} == {"catch-up"}
            assert ledger.sweeps()[-1]["scheduled_for"] == pytest.approx(due.timestamp())
        else:
            daemon.wait_polls(2)  # two polls, seen in /metrics: the daemon kept polling and planned nothing
            assert runs(config) == []
        ledger.close()
        assert daemon.terminate(timeout=30)[0] == 0


def test_target_without_a_node_becomes_unschedulable(cluster, demo_dir, tmp_path, daemons):
    config = cluster_config(tmp_path, demo_dir, {"a": "target:a", "d": "target:d"})
    daemon = DaemonProcess(config, cluster.address)
    daemons.append(daemon)
    daemon.wait_ready()
    wait_for(lambda: len([r for r in runs(config) if r["target"] == "d" and r["status"] == "unschedulable"]) == 2,
             6 + 15, "d's jobs to be unschedulable")
    assert {r["status"] for r in runs(config) if r["target"] == "a"} <= {"finished", "running", "queued"}
    wait_for(lambda: len(finished(config, target="a")) == 2, 60, "a's jobs")
    status, body = daemon.get("/status")
    assert body["targets"]["d"]["state"] in ("unreachable", "unschedulable")
    d_runs = [r for r in runs(config) if r["target"] == "d"]
    assert all("no node could take it for 6s" in r["error"] for r in d_runs)


def test_removing_a_node_mid_job_retries_marks_it_and_the_others_carry_on(demo_dir, tmp_path, daemons):
    cluster, nodes = start_cluster(FAST_NODE_DEATH)
    try:
        demo, _ = held_demo(tmp_path, demo_dir, ())  # a copy of its own, for the runner's marker files
        config = cluster_config(tmp_path, demo, TARGETS, runner="tests.plugins:NodeMarkingSlowOnnxRunner")
        daemon = DaemonProcess(config, cluster.address)
        daemons.append(daemon)
        daemon.wait_ready()
        # Running in the ledger is handed to Ray, which may still be asking b's raylet for a lease: a node
        # removed then leaves the task waiting for a node that no longer exists, unreported, until the
        # deadline. Remove b once a job is executing there (its runner is loading, for 4 s).
        wait_for(lambda: any(r["target"] == "b" and r["status"] == "running" for r in runs(config)), 60,
                 "a job running on b")
        wait_for(lambda: list(demo.glob(f"*.loading-on-{nodes['b'].node_id}")), 60, "a job executing on b")
        cluster.remove_node(nodes["b"])
        wait_for(lambda: len(finished(config, target="a")) == 2 and len(finished(config, target="c")) == 2, 120,
                 "a and c to carry on")
        # Ray reports a removed node's running task at once (NodeDiedError), once its health checks
        # give up on the raylet (LocalRayletDiedError, a few seconds with FAST_NODE_DEATH), or, on a
        # loaded machine, not at all: then the job's deadline (120 s here) ends it. Every branch must
        # end every job of b; none may stay queued or running.
        wait_for(lambda: {r["status"] for r in runs(config) if r["target"] == "b"} <= {"unschedulable", "error"}, 180,
                 "b's jobs to end")
        b_runs = [r for r in runs(config) if r["target"] == "b"]
        retried = [line for line in daemon.logs() if line["msg"] == "job retrying" and line["target"] == "b"]
        if retried:  # Ray reported the death: the job was retried, then found no node
            assert any("Died" in line["reason"] for line in retried)
            assert {r["status"] for r in b_runs} == {"unschedulable"}
        else:  # Ray never reported it: the deadline is the backstop, and it says so
            ended = [r for r in b_runs if r["status"] == "error"]
            assert ended and all("timed out" in r["error"] for r in ended)
        status, body = daemon.get("/status")
        assert body["targets"]["b"]["state"] in ("unreachable", "unschedulable")
        # a is ok once a poll's probe of it answers: on a loaded machine one can miss its 2 s while
        # a's last job ends (probes start a worker of their own), so its state is waited for, not sampled.
        wait_for(lambda: daemon.get("/status")[1]["targets"]["a"]["state"] == "ok", 60, "a to be ok")
        assert daemon.terminate(timeout=30)[0] == 0
    finally:
        cluster.shutdown()
