#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (Debian's SLURM 22.05) for tests/test_slurm.py.
#
#   TOMOCLUST_SLURM=1 bash tests/slurm/start_cluster.sh
#   bash tests/slurm/stop_cluster.sh
#
# What it does:
#   * installs slurmctld slurmd slurm-client munge (apt-get, --no-install-recommends) when they
#     are missing, but only when CI=true or TOMOCLUST_SLURM=1 (needs root);
#   * writes /etc/slurm/slurm.conf and /etc/slurm/gres.conf (refusing to replace files it did
#     not write; stop_cluster.sh removes them again). SLURM_CONF elsewhere does not work: the
#     plugin's job step drops SLURM_* variables before its inner srun. State, logs and a
#     TaskProlog go to $TOMOCLUST_SLURM_DIR (default /tmp/tomoclust-slurm);
#   * starts munged (unless a munged already answers), slurmctld and `slurmd -N localhost` in
#     the background and records their PIDs in $TOMOCLUST_SLURM_DIR/pids (stop_cluster.sh stops
#     exactly those);
#   * waits (at most TOMOCLUST_SLURM_TIMEOUT seconds, default 60) until sinfo shows the node idle.
#
# The cluster works without systemd and cgroups: proctrack/linuxproc, task/none, no accounting
# (so status must be queried with squeue, see profiles/slurm). One fake GPU (gres gpu:1 backed by
# /dev/null) lets GPU jobs be scheduled: they see CUDA_VISIBLE_DEVICES=0, torch finds no CUDA
# device and the scripts fall back to the CPU. The TaskProlog appends "<jobid> <env>" lines to
# $TOMOCLUST_SLURM_DIR/task_env.log so a test can see what a job's environment looked like.
set -euo pipefail

STATE=${TOMOCLUST_SLURM_DIR:-/tmp/tomoclust-slurm}
TIMEOUT=${TOMOCLUST_SLURM_TIMEOUT:-60}
PARTITION=${TOMOCLUST_SLURM_PARTITION:-debug}

log() { echo "start_cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

allowed() { [ "${CI:-}" = "true" ] || [ "${TOMOCLUST_SLURM:-}" = "1" ]; }

# ------------------------------------------------------------------------------ packages
need_install=0
for tool in slurmctld slurmd sbatch squeue munged; do
    command -v "$tool" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    allowed || die "SLURM/munge are not installed; set CI=true or TOMOCLUST_SLURM=1 to install"
    [ "$(id -u)" = 0 ] || die "installing SLURM needs root"
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
[ "$(id -u)" = 0 ] || die "the test cluster runs its daemons as root (SlurmUser=root)"

# ------------------------------------------------------------------------------ state dir
if [ -f "$STATE/pids" ]; then
    while read -r _name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            die "a test cluster from $STATE is still running (PID $pid); run stop_cluster.sh"
        fi
    done <"$STATE/pids"
fi
for daemon in slurmctld slurmd; do
    if pgrep -x "$daemon" >/dev/null; then
        die "a $daemon is already running on this machine; stop it first (stop_cluster.sh)"
    fi
done
if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -f "$STATE/.tomoclust-slurm" ]; then
    die "$STATE is not empty and not a test-cluster directory; set TOMOCLUST_SLURM_DIR"
fi
rm -rf "$STATE"
mkdir -p "$STATE/spool" "$STATE/ctld"
touch "$STATE/.tomoclust-slurm"
chmod 755 "$STATE"
: >"$STATE/pids"
: >"$STATE/task_env.log"
chmod 666 "$STATE/task_env.log"
CONF_DIR=/etc/slurm
MARKER="# tomoclust test cluster (written by tests/slurm/start_cluster.sh)"
for f in slurm.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
        die "$CONF_DIR/$f exists and was not written by this script; not replacing it"
    fi
done
mkdir -p "$CONF_DIR"

record() { echo "$1 $2" >>"$STATE/pids"; }

# ------------------------------------------------------------------------------ munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running; using it"
else
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    owner=$(stat -c %U /etc/munge/munge.key)
    chown "$owner" /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    if [ "$owner" = root ]; then
        setsid munged --foreground --force >"$STATE/munged.out" 2>&1 </dev/null &
    else
        # setpriv execs munged itself, so $! is munged's PID
        setsid setpriv --reuid="$owner" --regid="$(stat -c %G /etc/munge/munge.key)" \
            --init-groups munged --foreground >"$STATE/munged.out" 2>&1 </dev/null &
    fi
    record munged $!
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged did not start (see $STATE/munged.out)"
fi

# ------------------------------------------------------------------------------ config
# Hardware as slurmd sees it, but at least 4 CPUs (two `threads: 2` jobs side by side) and 32 GB
# (rules ask for up to 16 GB); config_overrides makes slurmd trust slurm.conf. Nothing is
# enforced (no cgroups), so tiny test jobs simply share the real cores.
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
cpus=$(( ${cpus:-0} < 4 ? 4 : cpus ))
mem=$(( ${mem:-0} < 32000 ? 32000 : mem ))

cat >"$STATE/task_prolog.sh" <<EOF
#!/bin/sh
# Record each task's environment (GPU visibility) for the test; stdout must stay quiet.
echo "\${SLURM_JOB_ID:-?} CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES:-unset} \
SLURM_JOB_GPUS=\${SLURM_JOB_GPUS:-unset}" >>"$STATE/task_env.log"
EOF
chmod 755 "$STATE/task_prolog.sh"

cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=tomoclust-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$STATE/task_prolog.sh
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=1800
ReturnToService=2
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
# One fake GPU: without a File= line the node goes INVAL.
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF

# ------------------------------------------------------------------------------ daemons
setsid slurmctld -D -c -i >"$STATE/slurmctld.out" 2>&1 </dev/null &
record slurmctld $!
setsid slurmd -D -N localhost >"$STATE/slurmd.out" 2>&1 </dev/null &
record slurmd $!

deadline=$(( SECONDS + TIMEOUT ))
state=""
while [ $SECONDS -lt $deadline ]; do
    state=$(timeout 5 sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && break
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || die "$name (PID $pid) exited; see $STATE/$name.out / .log"
    done <"$STATE/pids"
    sleep 0.5
done
if [ "$state" != idle ]; then
    die "node not idle after ${TIMEOUT}s (state '${state:-none}'); see $STATE/*.log"
fi
log "cluster up: partition $PARTITION, $cpus CPUs, ${mem} MB, 1 fake GPU"
