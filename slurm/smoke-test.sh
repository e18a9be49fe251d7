#!/usr/bin/env bash
# Checks the dev cluster (slurm/dev-cluster.sh up) does what the orchestrator relies on:
# a 2-node batch job with srun steps on both nodes, sbatch --test-only and partition limits,
# signal delivery to the batch shell, and scontrol requeue of a running job. Takes about a minute.
set -euo pipefail

WORK=$(mktemp -d /tmp/orch-slurm-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

state() { scontrol show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
wait_state() {  # job, wanted state (regex), timeout s
    local i
    for ((i = 0; i < $3 * 2; i++)); do
        [[ $(state "$1") =~ ^($2)$ ]] && return 0
        sleep 0.5
    done
    fail "job $1 is $(state "$1"), not $2, after $3 s"
}

# 1. Two nodes, srun steps across both; each task reports its node, and per-node output files
#    (srun --output=%N, as the orchestrator's node launchers use) do not collide.
job=$(sbatch --parsable -N2 -p debug -t 2 --output="$WORK/two.out" \
    --wrap "srun bash -c 'echo \$SLURM_NODEID \$SLURMD_NODENAME'; srun --output=$WORK/node-%N.out hostname")
wait_state "$job" COMPLETED 60
if ! grep -qx '0 n1' "$WORK/two.out" || ! grep -qx '1 n2' "$WORK/two.out"; then fail "2-node output: $(cat "$WORK/two.out")"; fi
pass "2-node job $job COMPLETED on n1 and n2"
if [[ $(cat "$WORK/node-n1.out" "$WORK/node-n2.out" 2>/dev/null | tr '\n' ' ') == "n1 n2 " ]]; then
    pass "each node has its own hostname and srun --output=%N file"
else
    echo "note: per-node hostnames unavailable (no UTS namespaces?): $(ls "$WORK")"
fi

# 2. --test-only: a fitting job passes; too many nodes or too long a time limit is refused.
sbatch --test-only -N2 -p debug -t 5 --wrap true 2>/dev/null || fail "--test-only refused a fitting job"
! sbatch --test-only -N2 -p short --wrap true 2>/dev/null || fail "--test-only accepted 2 nodes on short"
! sbatch --test-only -p short -t 10 --wrap true 2>/dev/null || fail "--test-only accepted 10 min on short (MaxTime=5)"
pass "sbatch --test-only accepts and refuses as the partitions say"

# 3. Signal to the batch shell, then requeue of the running job: it runs again from the start.
cat >"$WORK/sleeper.sh" <<'EOF'
#!/bin/bash
echo "start restart=${SLURM_RESTART_COUNT:-0} node=$SLURMD_NODENAME"
trap 'echo got USR1' USR1
trap 'echo got TERM; exit 143' TERM
for _ in $(seq 300); do sleep 1; done
EOF
job=$(sbatch --parsable -N1 -p debug -t 10 --open-mode=append --output="$WORK/sleeper.out" "$WORK/sleeper.sh")
wait_state "$job" RUNNING 30
sleep 1  # let the script install its traps
scancel --signal=USR1 --batch "$job"
for _ in $(seq 20); do grep -q 'got USR1' "$WORK/sleeper.out" && break; sleep 0.5; done
grep -q 'got USR1' "$WORK/sleeper.out" || fail "USR1 not delivered: $(cat "$WORK/sleeper.out")"
pass "scancel --signal=USR1 --batch reached job $job's batch shell"

scontrol requeue "$job"
wait_state "$job" PENDING 30
pass "requeued job $job is PENDING ($(scontrol show job "$job" | grep -o 'Reason=[A-Za-z]*'))"
t0=$SECONDS
wait_state "$job" RUNNING 60
for _ in $(seq 20); do grep -q 'restart=1' "$WORK/sleeper.out" && break; sleep 0.5; done
grep -q 'restart=1' "$WORK/sleeper.out" || fail "no second start: $(cat "$WORK/sleeper.out")"
restarts=$(scontrol show job "$job" | grep -o 'Restarts=[0-9]*')
pass "job $job RUNNING again after $((SECONDS - t0)) s, $restarts"

scancel "$job"
wait_state "$job" 'CANCELLED' 45
pass "job $job cancelled"
echo "smoke test passed"
