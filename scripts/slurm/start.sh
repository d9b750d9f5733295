#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for the Slurm engine's tests.
#
# As root, in a container without systemd or cgroups: installs slurmctld, slurmd,
# slurm-client and munge with apt when they are missing, writes a minimal slurm.conf naming
# this host, starts munged, slurmctld and slurmd in the background and waits until the node
# is idle. State and logs live under $CAI_SLURM_DIR (default /tmp/cai-slurm).
# Prints `export SLURM_CONF=...` on success; scripts/slurm/stop.sh tears it all down.
# Exit codes: 0 up, 3 cannot be started here (not root, no apt, install failed), 1 other.
set -euo pipefail

DIR="${CAI_SLURM_DIR:-/tmp/cai-slurm}"
HOST="$(hostname -s)"
say() { echo "slurm/start: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (slurmd and munged need it)"; exit 3
fi

need=()
for b in slurmctld slurmd sbatch munged; do
    command -v "$b" >/dev/null 2>&1 || need+=("$b")
done
if [ "${#need[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${need[*]} and no apt-get to install them"; exit 3
    fi
    say "installing slurmctld slurmd slurm-client munge (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >"$DIR.apt.log" 2>&1 \
        || { apt-get update -qq >>"$DIR.apt.log" 2>&1 \
             && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR.apt.log" 2>&1; }; }; then
        say "apt-get install failed; see $DIR.apt.log:"; tail -5 "$DIR.apt.log" >&2; exit 3
    fi
fi

mkdir -p "$DIR"/{ctld,d,log,run}
chmod 755 "$DIR"

# munge: the shared key (made once) and the daemon, unless one already runs.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then mungekey -c -f -k /etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown root:root /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /var/lib/munge /var/log/munge /run/munge
if ! pgrep -x munged >/dev/null 2>&1; then
    munged --force --key-file=/etc/munge/munge.key --socket=/run/munge/munge.socket.2 \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --num-threads=2 \
        || { say "munged would not start; see $DIR/log/munged.log"; exit 1; }
fi

CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2/1024*0.9)}' /proc/meminfo)"
cat >"$DIR/slurm.conf" <<CONF
ClusterName=cai-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DependencyParameters=kill_invalid_depend
MinJobAge=3600
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$DIR/slurm.conf"
# Tools without SLURM_CONF in their environment read /etc/slurm/slurm.conf.
mkdir -p /etc/slurm
if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    ln -sf "$DIR/slurm.conf" /etc/slurm/slurm.conf
fi

if [ ! -s "$DIR/run/slurmctld.pid" ] || ! kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
    slurmctld -c -f "$SLURM_CONF" || { say "slurmctld would not start; see $DIR/log/slurmctld.log"; tail -5 "$DIR/log/slurmctld.log" >&2; exit 1; }
fi
if [ ! -s "$DIR/run/slurmd.pid" ] || ! kill -0 "$(cat "$DIR/run/slurmd.pid")" 2>/dev/null; then
    slurmd -f "$SLURM_CONF" || { say "slurmd would not start; see $DIR/log/slurmd.log"; tail -5 "$DIR/log/slurmd.log" >&2; exit 1; }
fi

for _ in $(seq 1 60); do
    state="$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -1 || true)"
    case "$state" in
        idle|mix|alloc) say "up: node $HOST is $state ($CPUS CPUs); SLURM_CONF=$SLURM_CONF"
              echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
        down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
say "node $HOST did not become idle (state: ${state:-none}); logs in $DIR/log"
tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
exit 1
