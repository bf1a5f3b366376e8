#!/usr/bin/env bash
# Start or stop the real services the test suite talks to (a single-node Slurm, a PostgreSQL
# server, and headless Chromium for the Note and the run browser), installing them from Debian's
# packages when missing. Everything listens on this host only; all state
# lives under $TWINKLES_SERVICES_DIR (default: .services/ in the repository); `stop` stops
# only what `start` started (pid files). Facts from ../shared/reference/SERVICES.md.
#
#   scripts/services.sh start [slurm] [postgres] [chromium]   install if needed, start, wait
#   scripts/services.sh stop  [slurm] [postgres] [chromium]
#   scripts/services.sh status
#
# `start` writes $STATE/services.env (SLURM_CONF=..., TWINKLES_TEST_POSTGRES_URL=...,
# TWINKLES_CHROMIUM=...), which the tests and benchmarks read. Chromium is not a daemon: the
# browser tests launch it (headless) and close it themselves.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${TWINKLES_SERVICES_DIR:-$ROOT/.services}
ENV_FILE=$STATE/services.env
SLURM_DIR=$STATE/slurm
SLURM_CONF_FILE=$SLURM_DIR/slurm.conf
# munged runs as the munge user: its pid file lives in a folder that user may write
MUNGE_PID=$SLURM_DIR/munge/munged.pid
PG_DIR=$STATE/postgres
PG_PORT=${TWINKLES_POSTGRES_PORT:-55432}
PG_DB=twinkles_test

log() { echo "services: $*" >&2; }
die() { log "$*"; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "starting $1 needs root (to install Debian packages and run daemons)"
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}

env_set() {  # env_set KEY VALUE: keep services.env up to date
    mkdir -p "$STATE"
    touch "$ENV_FILE"
    grep -v "^$1=" "$ENV_FILE" > "$ENV_FILE.tmp" || true
    echo "$1=$2" >> "$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- Slurm --------------------------------------------------------------------------------

slurm_start() {
    require_root Slurm
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        log "installing slurmd slurmctld slurm-client munge"
        apt_install slurmd slurmctld slurm-client munge
    fi
    mkdir -p "$SLURM_DIR"/{state,spool}
    local host cpus mem_mb
    host=$(hostname -s)
    if ! getent hosts "$host" >/dev/null; then
        echo "127.0.0.1 $host" >> /etc/hosts
    fi
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

    # munge: authentication between the Slurm daemons and clients
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key -f; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge /var/lib/munge /var/log/munge "$(dirname "$MUNGE_PID")"
        chown munge:munge /run/munge /var/lib/munge /var/log/munge "$(dirname "$MUNGE_PID")"
        runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
        munge -n | unmunge >/dev/null || die "munged did not start"
    fi

    cat > "$SLURM_CONF_FILE" <<EOF
# written by scripts/services.sh
ClusterName=twinkles
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$SLURM_CONF_FILE
    env_set SLURM_CONF "$SLURM_CONF_FILE"
    # a config change needs both daemons restarted
    slurm_stop_daemons
    slurmctld -f "$SLURM_CONF_FILE"
    slurmd -f "$SLURM_CONF_FILE"
    for _ in $(seq 100); do
        if sinfo -h -o "%T" 2>/dev/null | grep -qE "^idle"; then
            log "Slurm up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
            return 0
        fi
        sleep 0.2
    done
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sinfo -h -o "%T" | grep -qE "^idle" || die "Slurm node not idle: $(sinfo -h 2>&1); see $SLURM_DIR/*.log"
}

slurm_stop_daemons() {
    local f
    for f in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid"; do
        if pid_alive "$f"; then
            kill "$(cat "$f")" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$f" || break; sleep 0.1; done
        fi
        rm -f "$f"
    done
}

slurm_stop() {
    [ -d "$SLURM_DIR" ] || return 0
    SLURM_CONF=$SLURM_CONF_FILE slurm_stop_daemons
    if pid_alive "$MUNGE_PID"; then
        kill "$(cat "$MUNGE_PID")" 2>/dev/null || true
        for _ in $(seq 50); do pid_alive "$MUNGE_PID" || break; sleep 0.1; done
    fi
    rm -f "$MUNGE_PID"
    log "Slurm stopped"
}

slurm_status() {
    if [ -f "$SLURM_CONF_FILE" ] && SLURM_CONF=$SLURM_CONF_FILE sinfo -h >/dev/null 2>&1; then
        echo "slurm: up ($(SLURM_CONF=$SLURM_CONF_FILE sinfo -h -o '%T'))"
    else
        echo "slurm: down"
    fi
}

# --- PostgreSQL ---------------------------------------------------------------------------

pg_bin() {  # the newest installed server's binaries
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$dir" ] && echo "$dir"
}

postgres_start() {
    require_root PostgreSQL
    if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
        log "installing postgresql"
        apt_install postgresql
    fi
    local bin
    bin=$(pg_bin)
    mkdir -p "$PG_DIR"
    chown postgres:postgres "$PG_DIR"
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
        # run from / : the postgres user cannot read the repository's directory
        (cd / && runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres \
            -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1) || die "initdb failed; see $PG_DIR/initdb.log"
    fi
    if ! (cd / && runuser -u postgres -- "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"); then
        (cd / && runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
            -o "-p $PG_PORT -h 127.0.0.1 -k $PG_DIR" start >/dev/null) \
            || die "PostgreSQL did not start; see $PG_DIR/server.log"
    fi
    if ! (cd / && runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") | grep -q 1; then
        (cd / && runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$PG_DB")
    fi
    env_set TWINKLES_TEST_POSTGRES_URL "postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/$PG_DB"
    log "PostgreSQL up on 127.0.0.1:$PG_PORT (database $PG_DB)"
}

postgres_stop() {
    [ -f "$PG_DIR/data/postmaster.pid" ] || return 0
    local bin
    bin=$(pg_bin)
    (cd / && runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1) || true
    log "PostgreSQL stopped"
}

postgres_status() {
    local bin
    bin=$(pg_bin)
    if [ -n "$bin" ] && (cd / && runuser -u postgres -- "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null); then
        echo "postgres: up (127.0.0.1:$PG_PORT)"
    else
        echo "postgres: down"
    fi
}

# --- Chromium (headless, launched by the tests; `make demo` prints the Note with it) -------

CHROMIUM_FLAGS="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync"

chromium_start() {
    if ! command -v chromium >/dev/null; then
        require_root chromium
        log "installing chromium (Debian)"
        apt_install chromium
    fi
    local profile
    profile=$(mktemp -d)
    # shellcheck disable=SC2086
    timeout 60 chromium $CHROMIUM_FLAGS --user-data-dir="$profile" --dump-dom about:blank >/dev/null 2>&1 \
        || { rm -rf "$profile"; die "chromium is installed but does not run headless"; }
    rm -rf "$profile"
    env_set TWINKLES_CHROMIUM "$(command -v chromium)"
    log "chromium ready: $(chromium --version 2>/dev/null)"
}

chromium_stop() { :; }

chromium_status() {
    if command -v chromium >/dev/null; then echo "chromium: $(command -v chromium)"; else echo "chromium: not installed"; fi
}

# --- main ---------------------------------------------------------------------------------

cmd=${1:-}
shift || true
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(slurm postgres chromium)

case "$cmd" in
    start) for s in "${services[@]}"; do "${s}_start"; done ;;
    stop) for s in "${services[@]}"; do "${s}_stop"; done ;;
    status) slurm_status; postgres_status; chromium_status ;;
    *) echo "usage: $0 start|stop|status [slurm] [postgres] [chromium]" >&2; exit 2 ;;
esac
