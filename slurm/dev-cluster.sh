#!/usr/bin/env bash
# A local development Slurm cluster on this one machine: slurmctld plus two slurmd daemons that
# pretend to be the nodes n1 (127.0.0.1) and n2 (127.0.0.2), so that multi-node sbatch/srun,
# requeue and signal forwarding can be exercised without a real cluster.
#
#   slurm/dev-cluster.sh up       install slurm-wlm + munge if missing, start everything, wait for idle nodes
#   slurm/dev-cluster.sh down     cancel jobs, stop the daemons (packages, state and config stay)
#   slurm/dev-cluster.sh status   which daemons run, sinfo; exit 0 only if all are up
#
# State (config, logs, spool, controller state, pid files) lives in ORCH_SLURM_DIR (default
# /tmp/orch-slurm). `up` and `down` need root: they install packages, edit /etc/hosts, write
# /etc/slurm/slurm.conf and run the daemons as root; as another user, run them with sudo. `status`
# works as any user, as do the client commands (sinfo, squeue) once the cluster is up.
# slurm/README.md explains the non-obvious parts and what does not work (sacct).
set -euo pipefail

STATE=${ORCH_SLURM_DIR:-/tmp/orch-slurm}
# slurm.conf has no quoting: a path with blanks would be cut at the first one.
[[ $STATE == /* && $STATE != *[[:space:]]* ]] || { echo "dev-cluster: ORCH_SLURM_DIR must be an absolute path without blanks" >&2; exit 2; }
CONF=$STATE/slurm.conf
# This script's own Slurm commands talk to this cluster, whatever SLURM_CONF the caller had.
export SLURM_CONF=$CONF
# Plain client commands (sbatch, squeue, and srun inside jobs) read this path when SLURM_CONF is
# unset; users expect them to work without setup, so the config is mirrored there.
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# written by orch slurm/dev-cluster.sh"
CTLD_PORT=6817
NODES=(n1 n2)
declare -A ADDR=([n1]=127.0.0.1 [n2]=127.0.0.2)
declare -A PORT=([n1]=6818 [n2]=6819)
WAIT_S=60

say() { echo "dev-cluster: $*"; }
die() { echo "dev-cluster: error: $*" >&2; exit 1; }

# True if the pid file names a live process called $2. kill -0 alone is not enough: it also
# succeeds for zombies and for an unrelated process that reused a stale pid.
alive() {
    local pidfile=$1 name=$2 pid stat
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # /proc/PID/stat is "pid (comm) state ...": the state letter follows the closing parenthesis.
    [[ ${stat##*) } != Z* ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# munged is "up" when a credential round-trips, whoever started it (a system munged counts too).
munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ctld_pidfile() { echo "$STATE/slurmctld.pid"; }
slurmd_pidfile() { echo "$STATE/slurmd-$1.pid"; }
munged_pidfile() { echo "$STATE/munge/munged.pid"; }

any_slurm_daemon() {
    local node
    alive "$(ctld_pidfile)" slurmctld && return 0
    for node in "${NODES[@]}"; do alive "$(slurmd_pidfile "$node")" slurmd && return 0; done
    return 1
}

all_daemons() {
    munge_ok && alive "$(ctld_pidfile)" slurmctld || return 1
    local node
    for node in "${NODES[@]}"; do alive "$(slurmd_pidfile "$node")" slurmd || return 1; done
}

need_root() { [[ $EUID -eq 0 ]] || die "run as root, e.g. sudo $0 ${1:-up} (it installs packages, writes /etc/hosts and $SYSTEM_CONF, and runs the daemons as root)"; }

install_packages() {
    local missing=() pkg
    for pkg in slurm-wlm munge; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get: install Slurm and munge by hand"
    say "installing ${missing[*]} (apt-get, log in $STATE/apt.log)"
    # The packages' scripts try to start services; without systemd that fails or is refused
    # (policy-rc.d), which is harmless: the daemons are started below, our way.
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
           >"$STATE/apt.log" 2>&1; then
        tail -n 20 "$STATE/apt.log" >&2
        die "apt-get failed (full log: $STATE/apt.log)"
    fi
}

# The node names must resolve: slurmd looks up its own name, srun and slurmstepd their peers'.
# 127.0.0.2 needs no interface setup: all of 127.0.0.0/8 is loopback.
hosts_entries() {
    local node
    for node in "${NODES[@]}"; do
        if ! awk -v n="$node" '$1 !~ /^#/ { for (i = 2; i <= NF && $i !~ /^#/; i++) if ($i == n) found = 1 } END { exit !found }' /etc/hosts; then
            echo "${ADDR[$node]} $node  # orch dev-cluster" >>/etc/hosts
            say "added ${ADDR[$node]} $node to /etc/hosts"
        fi
    done
}

start_munge() {
    munge_ok && return 0
    local key=/etc/munge/munge.key
    # The Debian package usually creates the key on install; make one if it did not.
    if [[ ! -s $key ]]; then
        if command -v mungekey >/dev/null; then mungekey -c -k "$key"; else create-munge-key -f; fi
        say "created $key"
    fi
    # munged refuses to run as root (unless --force) and insists that its key, log and pid
    # directories belong to the user it runs as and are not writable by others. Running it as the
    # packaged `munge` user satisfies that. The socket stays at the default path, because that is
    # where every Slurm daemon and client looks for it (no AuthInfo=socket= needed).
    chown munge:munge "$key"
    chmod 0600 "$key"
    install -d -o munge -g munge -m 0755 /run/munge   # normally made by systemd-tmpfiles
    install -d -o munge -g munge -m 0700 "$STATE/munge"
    runuser -u munge -- munged --pid-file="$(munged_pidfile)" --log-file="$STATE/munge/munged.log"
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not start (log: $STATE/munge/munged.log)"
}

render_conf() {
    local node
    echo "$MARKER; state in $STATE"
    cat <<EOF
ClusterName=orch-dev
# slurmctld only starts on a host named in SlurmctldHost: this machine's own short name.
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
# Root runs everything: no slurm user to set up, and jobs may run as any user.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No mail here; with the default (/usr/bin/mail, not installed) slurmctld logs an error.
MailProg=/bin/true
# Lifetime of job step credentials, and also how long a requeued job waits before it may start
# again (default 120 s). Launches here are local and instant, so a short one keeps requeue tests fast.
AuthInfo=cred_expire=10

StateSaveLocation=$STATE/ctld
# %n is the node name: two slurmd on one host must not share spool dirs, logs or pid files.
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups to rely on (containers, no systemd): track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Both "nodes" share this machine's cores and memory: slurmd accepts the sizes below instead of
# the node being drained because they do not match what it detects.
SlurmdParameters=config_overrides

SchedulerType=sched/backfill
# Look at the queue every few seconds, not every 60/30 s: a requeued job starts again promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Reject at submission (and in sbatch --test-only) jobs beyond a partition's limits, as
# production clusters usually do, instead of leaving them pending forever.
EnforcePartLimits=ALL
# A node that was down (e.g. across down/up) comes back by itself once its slurmd registers.
ReturnToService=2
# Jobs may be requeued (scontrol requeue, the orchestrator's preemption path).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL: room for a graceful checkpoint on cancel/requeue.
KillWait=30
# Finished jobs stay visible in scontrol (and squeue -t all) for 5 minutes.
MinJobAge=300

# No slurmdbd: sacct does not work on this cluster (see README).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

EOF
    for node in "${NODES[@]}"; do
        echo "NodeName=$node NodeAddr=${ADDR[$node]} NodeHostname=$node Port=${PORT[$node]} CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=30 State=UP"
    echo "# For limit tests: one node, five minutes."
    echo "PartitionName=short Nodes=n1 MaxTime=5 State=UP"
}

conf_current() { [[ -f $CONF ]] && cmp -s <(render_conf) "$CONF"; }

write_conf() {
    # Never clobber a real cluster's configuration: only a file this script wrote is replaced.
    if [[ -e $SYSTEM_CONF ]] && ! head -n 1 "$SYSTEM_CONF" | grep -qF "$MARKER"; then
        die "$SYSTEM_CONF exists and was not written by this script; move it away first"
    fi
    conf_current && cmp -s "$CONF" "$SYSTEM_CONF" && return 0
    # Daemons that run keep the config they started with; mixing two would be confusing.
    any_slurm_daemon && die "the config changed while some Slurm daemons run: run 'down', then 'up'"
    local tmp
    tmp=$(mktemp "$STATE/slurm.conf.XXXXXX")
    render_conf >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$CONF"
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    install -m 0644 "$CONF" "$SYSTEM_CONF"
}

start_slurm() {
    local node
    mkdir -p "$STATE/ctld" "$STATE/log"
    for node in "${NODES[@]}"; do mkdir -p "$STATE/spool/$node"; done
    # Without -D both daemons fork into the background, so this script returns.
    if ! alive "$(ctld_pidfile)" slurmctld; then
        slurmctld -f "$CONF" || die "slurmctld failed to start (log: $STATE/log/slurmctld.log)"
    fi
    for node in "${NODES[@]}"; do
        alive "$(slurmd_pidfile "$node")" slurmd && continue
        # -N: this slurmd is $node, not the node named like this machine's hostname.
        # In its own UTS namespace the node also gets its own hostname, inherited by slurmstepd
        # and the job: `srun hostname` prints n1/n2 and srun's --output=%N (the host's short
        # name) gives one file per node, as on a real cluster, instead of one shared file.
        if unshare --uts true 2>/dev/null; then
            # shellcheck disable=SC2016  # $1/$2 are the inner shell's arguments
            unshare --uts sh -c 'hostname "$1" && exec slurmd -f "$2" -N "$1"' sh "$node" "$CONF"
        else
            slurmd -f "$CONF" -N "$node"
        fi || die "slurmd $node failed to start (log: $STATE/log/slurmd-$node.log)"
    done
    unshare --uts true 2>/dev/null ||
        say "note: no UTS namespaces here (unshare --uts failed): jobs on n1 and n2 both see hostname $(hostname -s)"
}

# "n1 idle n2 idle"; a trailing * on a state means the node does not respond.
node_states() { sinfo -h -N -o '%N %t' 2>/dev/null | sort -u | tr '\n' ' '; }

# Every node responds and can take jobs (idle, or busy with jobs that survived a restart).
nodes_ready() {
    local node state
    for node in "${NODES[@]}"; do
        state=$(sinfo -h -n "$node" -o '%t' 2>/dev/null | head -n 1)
        [[ $state =~ ^(idle|mix|alloc|comp)$ ]] || return 1
    done
}

wait_ready() {
    local deadline=$((SECONDS + WAIT_S))
    until nodes_ready; do
        if ((SECONDS >= deadline)); then
            echo "sinfo: $(node_states)" >&2
            die "nodes not idle after ${WAIT_S}s (logs: $STATE/log/)"
        fi
        sleep 1
    done
}

one_line() { echo "slurm dev cluster up: nodes $(node_states)(config $CONF, logs $STATE/log)"; }

cmd_up() {
    need_root up
    mkdir -p "$STATE"
    if all_daemons && nodes_ready; then
        # Already running: leave it alone; a changed config would not reach the running daemons.
        conf_current || say "note: this script's config differs from the running one; run 'down', then 'up' to apply it"
        one_line
        return 0
    fi
    install_packages
    hosts_entries
    write_conf
    start_munge
    start_slurm
    wait_ready
    one_line
}

# SIGTERM, then SIGKILL if the daemon has not gone within 10 s.
stop_pidfile() {
    local pidfile=$1 name=$2 label=$3 pid
    if ! alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pidfile" "$name" || break; sleep 0.1; done
    if alive "$pidfile" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
    say "stopped $label"
}

cmd_down() {
    need_root down
    local node active=RUNNING,PENDING,SUSPENDED,CONFIGURING,COMPLETING
    # Cancel jobs first: slurmstepd and the job's processes outlive slurmd and would keep running
    # with nobody to report to, and pending jobs would come back on the next `up`.
    # Jobs get SIGTERM, then SIGKILL after KillWait.
    if alive "$(ctld_pidfile)" slurmctld && [[ -n $(squeue -h -t "$active" -o %A 2>/dev/null) ]]; then
        say "cancelling jobs"
        squeue -h -t "$active" -o %A | xargs -r scancel 2>/dev/null || true
        local deadline=$((SECONDS + 45))
        while [[ -n $(squeue -h -t "$active" -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 1; done
    fi
    for node in "${NODES[@]}"; do stop_pidfile "$(slurmd_pidfile "$node")" slurmd "slurmd $node"; done
    stop_pidfile "$(ctld_pidfile)" slurmctld slurmctld
    # Only a munged this script started (its pid file is in the state dir); a system one stays.
    stop_pidfile "$(munged_pidfile)" munged munged
    say "down (packages, $STATE and $SYSTEM_CONF kept)"
}

cmd_status() {
    local ok=0 node
    if munge_ok; then echo "munged     up"; else echo "munged     DOWN"; ok=1; fi
    if alive "$(ctld_pidfile)" slurmctld; then echo "slurmctld  up (pid $(<"$(ctld_pidfile)"))"; else echo "slurmctld  DOWN"; ok=1; fi
    for node in "${NODES[@]}"; do
        if alive "$(slurmd_pidfile "$node")" slurmd; then
            echo "slurmd $node  up (pid $(<"$(slurmd_pidfile "$node")"), ${ADDR[$node]}:${PORT[$node]})"
        else
            echo "slurmd $node  DOWN"; ok=1
        fi
    done
    if [[ -f $CONF ]] && command -v sinfo >/dev/null; then
        sinfo 2>&1 || ok=1
    fi
    return $ok
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status  (state dir: \$ORCH_SLURM_DIR, default /tmp/orch-slurm)" >&2; exit 2 ;;
esac
