#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and the demo.
#
#   scripts/slurm-cluster.sh start    install slurm-wlm + munge if missing (apt, as root),
#                                     write /etc/slurm/slurm.conf, start munged, slurmctld,
#                                     slurmd, wait until the node is idle (no-op if running;
#                                     a node drained or down while the daemons run is resumed)
#   scripts/slurm-cluster.sh stop     stop the daemons
#   scripts/slurm-cluster.sh status   exit 0 when the node answers and is usable
#
# The configuration goes to /etc/slurm/slurm.conf, where sbatch/squeue (called by
# submitit and snakemake) find it without SLURM_CONF; state, spool, logs and pid
# files live under $PCN_SLURM_DIR (default: slurm-state/ in the project), a folder private to
# the user (mode 700): `stop` kills the pids it finds there, so no one else may write them.
# Exit codes: 0 ok, 1 failure, 3 SLURM cannot be installed here (no root / no apt).
set -Eeuo pipefail
# A command failing under `set -e` ends the script: say which, so a caller never gets a bare exit 1.
trap 'echo "slurm-cluster: error: line $LINENO: \`$BASH_COMMAND\` exited $?" >&2' ERR

STATE_DIR="${PCN_SLURM_DIR:-$(cd "$(dirname "$0")/.." && pwd)/slurm-state}"
CONF=/etc/slurm/slurm.conf
START_TIMEOUT_S="${PCN_SLURM_START_TIMEOUT_S:-60}"

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The state folder holds the pid files `stop` kills by: it must be this user's and writable
# by no one else (a shared, predictable /tmp path would let any user name a pid to kill).
private_state_dir() {
    mkdir -p -m 700 "$STATE_DIR"
    [ -O "$STATE_DIR" ] || die "$STATE_DIR is not owned by $(id -un); set PCN_SLURM_DIR to a folder of yours"
    if [ -n "$(find "$STATE_DIR" -maxdepth 0 -perm /022)" ]; then
        die "$STATE_DIR is writable by other users; chmod 700 it or set PCN_SLURM_DIR to a private folder"
    fi
}

node_name() { hostname -s; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "slurm-wlm/munge are not installed and cannot be installed here (needs root and apt-get)"
        exit 3
    fi
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }; then
        log "apt-get install slurm-wlm munge failed"
        exit 3
    fi
}

write_config() {
    local node cpus mem_mb
    node="$(node_name)"
    cpus="$(env -u OMP_NUM_THREADS nproc)"  # nproc obeys OMP_NUM_THREADS, a test's setting
    # RealMemory must not exceed what slurmd sees, or the node is drained: take 80 % of available.
    mem_mb="$(awk '/MemAvailable/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
    mkdir -p "$STATE_DIR"/{state,spool,log,run} /etc/slurm
    cat >"$CONF" <<EOF
# Written by scripts/slurm-cluster.sh: a one-node test cluster.
ClusterName=pcn
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait for the credential lifetime before they start again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,defer_batch=0
JobRequeue=1
KillWait=5
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
MpiDefault=none
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if command -v runuser >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --force
    else
        su -s /bin/sh munge -c "/usr/sbin/munged --force"
    fi
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "munged does not answer (munge -n | unmunge fails)"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -1; }

usable() {
    local s
    s="$(node_state)" || return 1
    case "$s" in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

status() {
    if [ -f "$CONF" ] && pid_alive "$STATE_DIR/run/slurmctld.pid" && pid_alive "$STATE_DIR/run/slurmd.pid" && usable; then
        echo "running: node $(node_name) $(node_state)"
        return 0
    fi
    echo "not running"
    return 1
}

# The daemons run but slurmctld drained or downed the node: after a machine pause it
# misses slurmd's heartbeats ("Not responding") or sees a job id again ("Duplicate
# jobid"). Resume it, keeping the jobs, and say so.
resume_node() {
    local s reason
    pid_alive "$STATE_DIR/run/slurmctld.pid" && pid_alive "$STATE_DIR/run/slurmd.pid" || return 1
    s="$(node_state)" || return 1
    case "$s" in
        drain* | down* | fail*) ;;
        *) return 1 ;;
    esac
    reason="$(sinfo -h -N -n "$(node_name)" -o '%E' 2>/dev/null | head -1)"
    scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || return 1
    for _ in $(seq 1 "$START_TIMEOUT_S"); do
        if usable; then
            log "node $(node_name) was $s (reason: ${reason:-none given}); resumed it"
            return 0
        fi
        sleep 1
    done
    return 1
}

start() {
    if status >/dev/null 2>&1; then
        log "already running ($(node_state))"
        return 0
    fi
    if resume_node; then
        return 0
    fi
    install_packages
    stop_daemons quiet
    write_config
    start_munge
    /usr/sbin/slurmctld || die "slurmctld did not start; see $STATE_DIR/log/slurmctld.log"
    /usr/sbin/slurmd || die "slurmd did not start; see $STATE_DIR/log/slurmd.log"
    cancel_leftover_jobs
    local waited=0 s=""
    while [ "$waited" -lt "$START_TIMEOUT_S" ]; do
        s="$(node_state || true)"
        case "$s" in
            idle*) log "node $(node_name) is idle"; return 0 ;;
            drain* | down*) scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
        waited=$((waited + 1))
    done
    log "last lines of slurmctld.log:"
    tail -n 20 "$STATE_DIR/log/slurmctld.log" >&2 || true
    log "last lines of slurmd.log:"
    tail -n 20 "$STATE_DIR/log/slurmd.log" >&2 || true
    die "node $(node_name) not idle after ${START_TIMEOUT_S}s (state: '${s:-no answer}')"
}

# The controller keeps its job table across restarts (so job ids, and with them
# submitit's per-job folders, never repeat). Jobs recovered from a cluster that
# died under them have no live process: left alone, one recovered as RUNNING
# holds the node "allocated" until the controller times it out, so a cold start
# cancels them. A cancelled one can still stay COMPLETING when its step daemon
# outlived the old slurmd (CI saw the node "mixed" for the whole start timeout), so
# the node is then downed and resumed: the controller releases every job on a downed
# node, and a cancelled job is not requeued.
cancel_leftover_jobs() {
    local waited=0 jobs
    until squeue -h >/dev/null 2>&1; do
        [ "$waited" -lt "$START_TIMEOUT_S" ] || die "slurmctld does not answer; see $STATE_DIR/log/slurmctld.log"
        sleep 1
        waited=$((waited + 1))
    done
    jobs="$(squeue -h -o %i | tr '\n' ' ')" || die "squeue failed; see $STATE_DIR/log/slurmctld.log"
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs left from the cluster's previous run: $jobs"
        # shellcheck disable=SC2086  # one argument per job id
        scancel $jobs || true
        scontrol update NodeName="$(node_name)" State=DOWN Reason="jobs left from a previous run" >/dev/null 2>&1 || true
        scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
        log "node $(node_name) downed and resumed to release them"
    fi
}

descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

kill_steps() {
    local steps victims pid
    # pgrep exits 1 when none runs (a fresh machine): not a failure
    steps="$(pgrep -x slurmstepd 2>/dev/null | tr '\n' ' ' || true)"
    [ -n "${steps// /}" ] || return 0
    victims="$steps"
    for pid in $steps; do victims="$victims $(descendants "$pid" | tr '\n' ' ')"; done
    # SIGTERM first, so a job can save its state; then SIGKILL what is still there after 5 s
    # shellcheck disable=SC2086  # one argument per pid
    kill $victims 2>/dev/null || true
    for _ in $(seq 1 10); do
        # shellcheck disable=SC2086
        ps -p "$(echo $victims | tr ' ' ',')" >/dev/null 2>&1 || return 0
        sleep 0.5
    done
    # shellcheck disable=SC2086
    kill -9 $victims 2>/dev/null || true
}

stop_daemons() {
    local name pidfile pid
    for name in slurmd slurmctld; do
        pidfile="$STATE_DIR/run/$name.pid"
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    # Step daemons outlive a killed slurmd, and SIGTERM does not always end them. Their jobs
    # are cancelled on the next start, but a controller killed before it saved its state
    # hands their ids out again, and a live step of the same id drains the node ("Duplicate
    # jobid"). So each step daemon goes, with the job processes it started (SIGKILL when
    # SIGTERM has not ended them within 5 s).
    kill_steps
    [ "${1:-}" = quiet ] || log "stopped"
}

case "${1:-}" in
    start | stop | status) private_state_dir ;;
esac
case "${1:-}" in
    start) start ;;
    stop) stop_daemons ;;
    status) status || exit 1 ;;  # "not running" is an answer, not an error
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
