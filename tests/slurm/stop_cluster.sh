#!/usr/bin/env bash
# Stop the test cluster started by start_cluster.sh: cancel its jobs, stop exactly the daemons
# whose PIDs it recorded in $TOMOCLUST_SLURM_DIR/pids (default /tmp/tomoclust-slurm), and remove
# the /etc/slurm/{slurm,gres}.conf it wrote (with a controller gone but slurm.conf present,
# every snakemake start is ~9 s slower). Safe to run twice, and when nothing was started.
set -uo pipefail

STATE=${TOMOCLUST_SLURM_DIR:-/tmp/tomoclust-slurm}
PIDS="$STATE/pids"
CONF_DIR=/etc/slurm
MARKER="# tomoclust test cluster (written by tests/slurm/start_cluster.sh)"
log() { echo "stop_cluster: $*" >&2; }

ours() { [ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; }

remove_conf() {
    for f in slurm.conf gres.conf; do
        if [ -f "$CONF_DIR/$f" ] && grep -qF "$MARKER" "$CONF_DIR/$f"; then
            rm -f "$CONF_DIR/$f"
        fi
    done
}

if [ ! -f "$PIDS" ]; then
    log "nothing to stop ($PIDS not found)"
    remove_conf
    exit 0
fi

# Jobs left by an interrupted run (the controller is ours: slurm.conf carries our marker).
if ours && command -v scancel >/dev/null 2>&1; then
    timeout 10 scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
fi

# Stop in reverse start order: slurmd, slurmctld, munged.
mapfile -t entries < <(tac "$PIDS")
for entry in "${entries[@]}"; do
    read -r name pid <<<"$entry"
    [ -n "${pid:-}" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo "?")
        if [ "$comm" != "$name" ]; then
            log "PID $pid is '$comm', not $name: left alone"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (PID $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    log "stopped $name (PID $pid)"
done
rm -f "$PIDS"
remove_conf
