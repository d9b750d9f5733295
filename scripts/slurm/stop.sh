#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by scripts/slurm/start.sh (only its daemons,
# by the pid files it wrote). Keeps the state dir unless --clean is given.
set -uo pipefail
DIR="${CAI_SLURM_DIR:-/tmp/cai-slurm}"
stop() {
    local pidfile="$DIR/run/$1.pid"
    [ -s "$pidfile" ] || return 0
    local pid; pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}
if [ -s "$DIR/slurm.conf" ] && command -v scancel >/dev/null 2>&1; then
    SLURM_CONF="$DIR/slurm.conf" scancel --user="$(id -un)" >/dev/null 2>&1 || true
fi
stop slurmd
stop slurmctld
stop munged
if [ "${1:-}" = "--clean" ]; then rm -rf "$DIR"; fi
echo "slurm/stop: stopped" >&2
