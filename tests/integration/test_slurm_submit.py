"""`orch submit` on a real Slurm cluster: two slurmd daemons acting as two nodes on this machine,
started by `slurm/dev-cluster.sh up` (which installs Debian's slurm-wlm and munge if missing) for the
session, and stopped at its end when the session started it (the `slurm_cluster` fixture)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.rundir.checkpoint_records import read_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.recovery_events import AttemptFailed, Hang, NodeUnhealthy
from orchestrator.rundir.rows import SlurmStart
from tests.helpers.processes import losses, orch
from tests.helpers.project import FAST, ROOT

pytestmark = pytest.mark.integration

TWO_NODES = [
    "recipes/tiny-pretrain.yaml", *FAST, "train.steps=12", "distributed.nodes=2", "distributed.procs_per_node=1",
    "distributed.zero_stage=2", "checkpoint.interval_steps=4", "slurm.partition=debug", "slurm.time_limit=00:15:00",
    "slurm.cpus_per_task=1",
]


@pytest.fixture(scope="module", autouse=True)
def cluster(slurm_cluster):
    """Every test here runs on the local cluster, started once a session and stopped at its end (conftest)."""


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)["JobState"]


def wait_for_state(job_id: str, states: set[str], timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := job_state(job_id)) not in states:
        assert state not in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}, state
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(1)
    return state


def submit(run_dir: Path, *extra: str) -> str:
    result = orch("submit", *TWO_NODES, *extra, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((run_dir / "slurm.json").read_text())["job_ids"][-1]


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("slurm") / "run"
    job_id = submit(run_dir)
    assert wait_for_state(job_id, {"COMPLETED"}) == "COMPLETED"
    return run_dir


def test_two_node_job_completes_with_both_nodes(completed):
    run_dir = completed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["final_loss"] < summary["first_loss"]
    assert len(set(summary["param_fingerprints"])) == 1 and len(summary["param_fingerprints"]) == 2
    checkpoints = orch("checkpoints", str(run_dir))
    assert checkpoints.returncode == 0 and "step-00000012" in checkpoints.stdout
    assert "node n1" in (run_dir / "logs" / "rank-0.log").read_text()
    assert "node n2" in (run_dir / "logs" / "rank-1.log").read_text()
    status = orch("status", str(run_dir))
    assert "COMPLETED" in status.stdout and "step 12/12" in status.stdout
    bill = json.loads((run_dir / "energy.json").read_text())
    assert set(bill["nodes"]) == {"n1", "n2"}  # each node's leader billed its own CPU and memory
    for node in bill["nodes"].values():
        assert {d["device"] for d in node["devices"]} == {"cpu", "memory"} and node["kwh"] > 0
    assert bill["totals"]["kwh"] == pytest.approx(sum(node["kwh"] for node in bill["nodes"].values()))
    # Every log the job wrote says something: the batch step's and each node launcher's own lines.
    logs = run_dir / "logs"
    assert not [p.name for p in logs.iterdir() if p.stat().st_size == 0]
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_ids"][-1]
    said = said_by(logs / f"slurm-{job_id}.out", "orchestrator.slurm.batch")
    assert said[0] == "health check: 2 node(s) healthy"
    assert said[1].startswith(f"job {job_id} (restart 0) on n[1-2]: started srun") and said[-1] == "the nodes ended: the job exits 0"
    for node_rank, node in enumerate(("n1", "n2")):
        said = said_by(logs / f"node-{node}.out", "launch.node")
        assert said[0].startswith(f"node {node_rank} of 2 (deepspeed, 1 rank(s) here), rendezvous n1:"), said
        assert f"rank {node_rank} (pid" in said[1] and said[-2:] == [said[-2], f"node {node_rank} exits 0"] and said[-2].endswith("finished")


def said_by(log: Path, who: str) -> list[str]:
    """What `who` wrote in the log, line by line, without the time and its name."""
    return [line.split(f" {who}: ", 1)[1] for line in log.read_text().splitlines() if f" {who}: " in line]


def test_runs_with_the_controller_down_asks_once_and_says_so_once(tmp_path, completed):
    """A controller nobody answers at: `orch runs` asks about all the runs' jobs at once, says so once,
    and shows each run's state as its directory records it."""
    runs = tmp_path / "runs"
    for name in ("first", "second"):
        shutil.copytree(completed, runs / name, ignore=shutil.ignore_patterns("checkpoints"))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "runs", str(runs)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "SLURM_CONF": str(controller_down(tmp_path))})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("scheduler unreachable") == 1, result.stderr
    assert [line.split()[4] for line in result.stdout.splitlines()[1:]] == ["COMPLETED", "COMPLETED"], result.stdout


def controller_down(tmp_path: Path) -> Path:
    """This cluster's configuration with the controller's port changed to one nobody listens on."""
    conf = tmp_path / "slurm.conf"
    conf.write_text(Path("/etc/slurm/slurm.conf").read_text().replace("SlurmctldPort=", "SlurmctldPort=1"))
    return conf


def test_two_node_horovod_job_completes_without_ssh(tmp_path, completed):
    """Horovod across the two nodes: srun starts one node launcher per node, the first one serves
    Horovod's Gloo rendezvous; the ranks' parameters agree after every step."""
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "distributed.backend=horovod", "distributed.zero_stage=0", "train.replica_check_interval=1")
    assert wait_for_state(job_id, {"COMPLETED"}) == "COMPLETED"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13)) and all(r.get("param_digest") for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "node n1" in (run_dir / "logs" / "rank-0.log").read_text()
    assert "node n2" in (run_dir / "logs" / "rank-1.log").read_text()
    assert orch("checkpoints", str(run_dir)).returncode == 0
    # Same data, weights and optimizer as the DeepSpeed job: only ZeRO-2's reduction order differs.
    assert all(abs(a - b) < 2e-3 * b for (_, a), (_, b) in zip(losses(run_dir), losses(completed)))


def test_preemption_signal_requeues_and_resumes_to_the_same_losses(tmp_path, completed):
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "slurm.signal=USR1")
    deadline = time.monotonic() + 600
    while not ((run_dir / "metrics.jsonl").exists() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 5):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    again = orch("submit", *TWO_NODES, "slurm.signal=USR1", "--skip-doctor", "--run-dir", str(run_dir))
    assert again.returncode == 1 and f"train job {job_id} of " in again.stderr and "is still RUNNING" in again.stderr, again.stderr
    assert json.loads((run_dir / "slurm.json").read_text())["job_ids"] == [job_id]  # a second job would train beside it
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    wait_for_state(job_id, {"COMPLETED"}, timeout_s=900)
    records = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    starts = [e for e in records if e["event"] == "slurm_start"]
    # The batch step records when Slurm will end the job: ranks skip a save that could not commit in time.
    assert all(e["time"] < e["end_time"] <= e["time"] + 15 * 60 + 5 for e in starts)
    assert [e["saved"] for e in records if e["event"] == "preempted"] == [True]
    history = [e["event"] for e in records]
    assert "preempted" in history and "slurm_requeued" in history and "resumed" in history
    assert history.count("slurm_start") == 2
    assert losses(run_dir) == losses(completed)
    # Each attempt's lines, in the logs both attempts appended to.
    said = said_by(run_dir / "logs" / f"slurm-{job_id}.out", "orchestrator.slurm.batch")
    assert "SIGUSR1 forwarded to srun, which passes it to every node launcher" in said
    assert "the ranks checkpointed on USR1: requeued the job (restart 1 of at most 3)" in said
    assert said[-1] == "the nodes ended: the job exits 0" and any(line.startswith(f"job {job_id} (restart 1) on") for line in said)
    for node_rank, node in enumerate(("n1", "n2")):
        said = said_by(run_dir / "logs" / f"node-{node}.out", "launch.node")
        assert f"SIGUSR1 forwarded to rank(s) {node_rank}" in said and f"node {node_rank} exits 75 (the ranks checkpointed and stopped on a signal)" in said
        assert said[-1] == f"node {node_rank} exits 0"


def test_a_rank_hung_on_the_second_node_restarts_inside_the_same_job(tmp_path, completed):
    """Rank 1, on n2, stops itself at step 6 (SIGSTOP, as a wedged device leaves a process): the
    watchdogs end the attempt, the batch step starts a new srun step in the same allocation, and the
    run ends as the uninterrupted one did, within one job."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "ORCH_INJECT_FAULTS": "stop@6:rank1"}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", *TWO_NODES, "fault_tolerance.timeouts.setup_s=600",
         "fault_tolerance.timeouts.auto_floor_s=10", "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (job_id,) = json.loads((run_dir / "slurm.json").read_text())["job_ids"]
    assert wait_for_state(job_id, {"COMPLETED"}, timeout_s=900) == "COMPLETED"
    history = RunDir(run_dir).history()
    hang = next(e for e in history if isinstance(e, Hang) and e.node == 1)
    assert hang.stopped_ranks == [1] and hang.step == 6 and (run_dir / hang.stacks / "rank-1.txt").exists()
    (failed,) = [e for e in history if isinstance(e, AttemptFailed)]
    assert failed.failure == "hang" and failed.restarting and failed.restarts == 1
    assert [e.job_id for e in history if isinstance(e, SlurmStart)] == [int(job_id)]  # no requeue: the same job
    assert losses(run_dir) == losses(completed)
    said = said_by(run_dir / "logs" / f"slurm-{job_id}.out", "orchestrator.slurm.batch")
    assert sum(line.startswith(f"job {job_id} (restart 0) on") for line in said) == 2 and said[-1] == "the nodes ended: the job exits 0"


FAIL_FIRST_NODE = """if mkdir {marker}.lock 2>/dev/null; then echo "$SLURMD_NODENAME" > {marker}; echo "injected fault on $SLURMD_NODENAME"; exit 1; fi
[ "$(cat {marker} 2>/dev/null)" != "$SLURMD_NODENAME" ]
"""
"""Fails the first node to run it (mkdir is atomic, so of two nodes checked at once only one), and only that one."""


def train_past_a_failing_node(tmp_path: Path, *overrides: str) -> tuple[Path, str, list]:
    """A one-node job whose health check fails the first node it runs on, trained to completion: its
    run directory, the failed node and the run's history."""
    marker, hook = tmp_path / "failed-node", tmp_path / "health.sh"
    hook.write_text(FAIL_FIRST_NODE.format(marker=marker))
    run_dir = tmp_path / "run"
    result = orch("submit", "recipes/tiny-pretrain.yaml", *FAST, "train.steps=4", "distributed.nodes=1", "distributed.procs_per_node=1",
                  "slurm.partition=debug", "slurm.time_limit=00:15:00", "slurm.cpus_per_task=1", *overrides,
                  f"fault_tolerance.node_health_check=bash {hook}", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_ids"][-1]
    assert wait_for_state(job_id, {"COMPLETED"}, timeout_s=900) == "COMPLETED"
    bad = marker.read_text().strip()
    assert not (run_dir / "logs" / f"node-{bad}.out").exists()  # no launcher, no rank ever started there
    assert read_summary(RunDir(run_dir)).steps == 4
    return run_dir, bad, RunDir(run_dir).history()


def test_a_node_failing_its_health_check_is_left_out_and_the_run_completes(tmp_path):
    """The site's health check fails the first node the job lands on (and only that one): the job is
    requeued without it, before any rank started there, and trains to the end on the other node."""
    run_dir, bad, history = train_past_a_failing_node(tmp_path)
    (unhealthy,) = [e for e in history if isinstance(e, NodeUnhealthy)]
    assert unhealthy.excluded and list(unhealthy.problems) == [bad] and "injected fault on " + bad in unhealthy.problems[bad][0]
    starts = [e.nodes for e in history if isinstance(e, SlurmStart)]
    assert starts[0] == bad and len(starts) == 2 and starts[1] != bad


def test_a_spare_node_takes_the_place_of_one_failing_its_health_check_without_a_requeue(tmp_path):
    """One node trains, one is spare: the health check fails one of the two, and the job goes on on
    the other at once, in the same allocation."""
    run_dir, bad, history = train_past_a_failing_node(tmp_path, "fault_tolerance.spare_nodes=1")
    (unhealthy,) = [e for e in history if isinstance(e, NodeUnhealthy)]
    assert unhealthy.replaced and not unhealthy.excluded and list(unhealthy.problems) == [bad]
    assert [e.nodes for e in history if isinstance(e, SlurmStart)] == ["n[1-2]"]  # one start: no requeue


@pytest.mark.parametrize(
    "override, flags, message",
    [
        ("slurm.partition=nope", (), "`nope` does not exist"),
        ("distributed.nodes=4 train.global_batch_size=32", (), "ask for at most 2 nodes"),
        # Past the pre-flight checks, `sbatch --test-only` refuses before anything is written.
        ("slurm.partition=nope", ("--skip-doctor",), "invalid partition"),
        ("distributed.nodes=4 train.global_batch_size=32", ("--skip-doctor",), "node count specification invalid"),
        ("slurm.time_limit=02:00:00", ("--skip-doctor",), "time limit"),
    ],
)
def test_impossible_requests_submit_nothing(tmp_path, override, flags, message):
    run_dir = tmp_path / "run"
    result = orch("submit", *TWO_NODES, *override.split(), *flags, "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr.lower()
    assert not run_dir.exists()


def test_unreachable_controller_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", *TWO_NODES, "--skip-doctor", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "SLURM_CONF": str(controller_down(tmp_path))},
    )
    assert result.returncode == 1 and result.stderr.startswith("error: sbatch failed")
    assert not (tmp_path / "run").exists()


def test_doctor_inside_an_allocation_measures_the_interconnect(tmp_path):
    out = tmp_path / "doctor.out"
    command = f"cd {ROOT} && {sys.executable} -m orchestrator doctor recipes/tiny-zero3-two-nodes.yaml slurm.partition=debug slurm.time_limit=00:05:00"
    subprocess.run(["sbatch", "-N2", "-p", "debug", "-t", "5", "--wait", f"--output={out}", "--wrap", command], check=True, timeout=600)
    table = out.read_text()
    assert "ok   all-reduce" in table and "across 2 nodes" in table
    assert "ok   GPU health" in table and "FAIL" not in table


def test_logs_and_cancel_on_a_running_job_whose_secret_is_passed_by_name(tmp_path):
    """One job for three paths: the secret reaches the job by name only (the script checks it arrived,
    no file holds it), `orch logs` prints a rank's log while it runs, `orch cancel` ends it."""
    run_dir = tmp_path / "run"
    secret = f"tok-{os.getpid()}-passed-by-name"
    submitted = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", *TWO_NODES, "train.steps=100000", "slurm.pass_env=[ORCH_TEST_TOKEN]",
         "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "ORCH_TEST_TOKEN": secret},
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_ids"][-1]
    deadline = time.monotonic() + 600
    rank_log = run_dir / "logs" / "rank-1.log"
    while not (rank_log.exists() and "node n2" in rank_log.read_text()):
        assert job_state(job_id) in {"PENDING", "CONFIGURING", "RUNNING"}, (run_dir / "logs").iterdir()
        assert time.monotonic() < deadline, "rank 1 logged nothing"
        time.sleep(1)
    logs = orch("logs", str(run_dir), "--rank", "1")
    assert logs.returncode == 0 and "node n2" in logs.stdout
    cancelled = orch("cancel", str(run_dir))
    assert cancelled.returncode == 0 and f"cancelled job {job_id}" in cancelled.stdout
    assert wait_for_state(job_id, {"CANCELLED"}) == "CANCELLED"
    assert not [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_script_for_an_awkward_run_directory_passes_sbatch_test_only(tmp_path):
    """Shell characters in the run directory's path stay one quoted word; sbatch accepts every directive."""
    run_dir = tmp_path / "a$(touch${IFS}pwned);b"
    emitted = orch("submit", *TWO_NODES, "slurm.extra_directives=[--comment=orch, --mail-type=NONE]",
                   "slurm.pass_env=[HOME]", "--emit-only", "--run-dir", str(run_dir))
    assert emitted.returncode == 0, emitted.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(emitted.stdout)
    checked = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "to start at" in checked.stderr, checked.stderr


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def test_unprepared_data_is_prepared_by_a_job_that_training_waits_for(tmp_path):
    """Data no run has prepared (a validation share of its own): `orch submit` prepares nothing on
    this, the login, machine; a preparation job does it on a node, and the training job starts after it."""
    run_dir = tmp_path / "run"
    # A data cache of its own: the session's may hold this data from an earlier run on this machine.
    result = subprocess.run([sys.executable, "-m", "orchestrator", "submit", *TWO_NODES, "data.val_fraction=0.07", "data.workers=2", "train.steps=4",
                             "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "ORCH_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout + result.stderr
    prepare, train = json.loads((run_dir / "slurm.json").read_text())["job_ids"]
    assert f"submitted prepare job {prepare}" in result.stdout and f"submitted train job {train} (after the data is prepared)" in result.stdout
    assert "--cpus-per-task=2" in (run_dir / "prepare.sbatch").read_text()
    assert wait_for_state(train, {"COMPLETED"}) == "COMPLETED"
    assert job_state(prepare) == "COMPLETED"
    assert job_fields(train)["StartTime"] >= job_fields(prepare)["EndTime"]  # ISO times: it waited
    (log,) = (run_dir / "logs").glob(f"prepare-{prepare}.out")
    assert "prepared the data" in log.read_text()
    data = json.loads((run_dir / "data.json").read_text())
    assert data["documents"]["train"] > 0 and (run_dir / "provenance.json").exists()
    assert [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
