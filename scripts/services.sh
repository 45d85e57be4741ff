#!/usr/bin/env bash
# Local services for development and the demo, on loopback only, state under var/.
#
#   scripts/services.sh start          dockerd (if the engine does not answer), Redis, Prometheus,
#                                      the registry, HAProxy (when the demo's pipelines have a
#                                      traffic: block)
#   scripts/services.sh start-docker   only dockerd (what CI needs: tests start their own rest)
#   scripts/services.sh start-registry only the image registry (the demo pushes to it)
#   scripts/services.sh stop           stops what this script started (never a dockerd it found)
#   scripts/services.sh stop-docker    stops dockerd, if this script started it
#   scripts/services.sh status         one line per service
#
# Redis: 127.0.0.1:6379, append-only file in var/redis.  Prometheus: 127.0.0.1:9090, scraping
# every 1s: job "web" from var/prometheus/targets/*.json (file_sd), job "immune", the bot's
# /metrics on 127.0.0.1:3000, and job "haproxy", HAProxy's exporter on 127.0.0.1:8405.
# HAProxy: the config `python -m bot proxy-config` prints for PIPELINES_FILE (default: the
# demo's, var/demo/pipelines.yml, written by scripts/demo.py), in var/haproxy; its frontends
# and runtime API are where that file's traffic: blocks say.  Registry (Debian's docker-registry,
# the CNCF distribution registry): 127.0.0.1:15000, no auth, config and storage in var/registry.
# Logs in var/log, pid files in var/run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
var=$root/var
run=$var/run
logs=$var/log

readonly REDIS_PORT=6379
readonly PROMETHEUS_PORT=9090
readonly BOT_METRICS=127.0.0.1:3000
readonly DEMO_TARGET=127.0.0.1:18080
readonly HAPROXY_EXPORTER=127.0.0.1:8405
readonly REGISTRY_PORT=15000
python=${VENV:-$root/.venv}/bin/python

die() {
    echo "services: $*" >&2
    exit 1
}

# pid_alive PIDFILE: the pid in PIDFILE names a live process of the program the file is for
# (redis.pid: redis-server), not an unrelated one that got the pid after a reboot.
pid_alive() {
    local pid program
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    program=$(basename "$1" .pid)
    [[ $program == redis ]] && program=redis-server
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$program" ]]
}

# log_tail FILE: the end of a service's log, for a failure message.
log_tail() {
    [[ -s $1 ]] || return 0
    echo "--- last lines of $1:" >&2
    tail -n 20 "$1" >&2
}

# wait_until SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# stop_pid NAME PIDFILE ANSWERS: SIGTERM, then SIGKILL after 30 s; ANSWERS tells whether the
# service answers, to say why one that runs was left alone.
stop_pid() {
    local name=$1 pidfile=$2 answers=$3 pid
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        if "$answers"; then
            echo "$name: running, not started by this script: left alone"
        else
            echo "$name: not running"
        fi
        return 0
    fi
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 30 bash -c "! kill -0 $pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        echo "$name: did not stop within 30 s: killed (pid $pid)"
    else
        echo "$name: stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

# wait_ready NAME PIDFILE LOG SECONDS CHECK: wait for CHECK to pass while the process lives.
wait_ready() {
    local name=$1 pidfile=$2 log=$3 deadline=$((SECONDS + $4)) check=$5
    until "$check"; do
        if ! pid_alive "$pidfile"; then
            log_tail "$log"
            rm -f "$pidfile"
            die "$name: exited during start-up (log $log)"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$log"
            die "$name: not ready within $4 s (log $log)"
        fi
        sleep 0.2
    done
}

need() {
    command -v "$1" >/dev/null || die "$1 not found: run scripts/setup.sh"
}

docker_answers() { docker info >/dev/null 2>&1; }
redis_answers() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
prometheus_answers() {
    curl -fsS --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1
}
registry_answers() {
    curl -fsS --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1
}
haproxy_answers() { curl -fsS --max-time 2 "http://$HAPROXY_EXPORTER/metrics" >/dev/null 2>&1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_docker() {
    need dockerd
    need docker
    local pidfile=$run/dockerd.pid
    if docker_answers; then
        if pid_alive "$pidfile"; then
            echo "docker: running (pid $(<"$pidfile"), started by this script)"
        else
            echo "docker: running (not started by this script; left alone)"
        fi
        return 0
    fi
    mkdir -p "$run" "$logs"
    echo "--- $(date -Is) services.sh: starting dockerd" >>"$logs/dockerd.log"
    # No bridge, no iptables: containers use host networking on 127.0.0.1 only.
    setsid nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        >>"$logs/dockerd.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_ready docker "$pidfile" "$logs/dockerd.log" 60 docker_answers
    echo "docker: started (pid $(<"$pidfile"), log $logs/dockerd.log)"
}

start_redis() {
    need redis-server
    need redis-cli
    local pidfile=$run/redis.pid
    if redis_answers; then
        echo "redis: already running on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    port_in_use "$REDIS_PORT" && die "redis: port $REDIS_PORT is taken by something that is not Redis"
    mkdir -p "$run" "$logs" "$var/redis"
    rm -f "$pidfile"
    if ! redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --appendonly yes --dir "$var/redis" \
        --daemonize yes --pidfile "$pidfile" --logfile "$logs/redis.log"; then
        log_tail "$logs/redis.log"
        die "redis: redis-server failed to start"
    fi
    # The daemonized child writes the pid file a moment after the parent has returned.
    wait_until 5 test -s "$pidfile" || true
    wait_ready redis "$pidfile" "$logs/redis.log" 10 redis_answers
    echo "redis: started on 127.0.0.1:$REDIS_PORT (pid $(<"$pidfile"), data $var/redis)"
}

write_prometheus_config() {
    local dir=$var/prometheus
    mkdir -p "$dir/data" "$dir/targets"
    cat >"$dir/prometheus.yml" <<EOF
# Written by scripts/services.sh on every start: edit the script, not this file.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: web
    file_sd_configs:
      - files: ["$dir/targets/*.json"]
        refresh_interval: 1s
  - job_name: immune
    metrics_path: /metrics
    static_configs:
      - targets: ["$BOT_METRICS"]
  - job_name: haproxy
    metrics_path: /metrics
    static_configs:
      - targets: ["$HAPROXY_EXPORTER"]
EOF
    # The demo's default target (pipelines.yml's web on port 18080), unless targets are set.
    if ! compgen -G "$dir/targets/*.json" >/dev/null; then
        printf '[{"targets": ["%s"], "labels": {}}]\n' "$DEMO_TARGET" >"$dir/targets/web.json"
    fi
}

start_prometheus() {
    need prometheus
    need curl
    local pidfile=$run/prometheus.pid dir=$var/prometheus
    if prometheus_answers; then
        echo "prometheus: already running on 127.0.0.1:$PROMETHEUS_PORT"
        return 0
    fi
    port_in_use "$PROMETHEUS_PORT" &&
        die "prometheus: port $PROMETHEUS_PORT is taken by something that is not Prometheus"
    mkdir -p "$run" "$logs"
    write_prometheus_config
    echo "--- $(date -Is) services.sh: starting prometheus" >>"$logs/prometheus.log"
    setsid nohup prometheus --config.file="$dir/prometheus.yml" \
        --storage.tsdb.path="$dir/data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        >>"$logs/prometheus.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_ready prometheus "$pidfile" "$logs/prometheus.log" 30 prometheus_answers
    echo "prometheus: started on http://127.0.0.1:$PROMETHEUS_PORT (pid $(<"$pidfile"), targets $dir/targets/*.json)"
}

start_registry() {
    need docker-registry
    need curl
    local pidfile=$run/docker-registry.pid dir=$var/registry
    if registry_answers; then
        echo "registry: already running on 127.0.0.1:$REGISTRY_PORT"
        return 0
    fi
    port_in_use "$REGISTRY_PORT" &&
        die "registry: port $REGISTRY_PORT is taken by something that is not a registry"
    mkdir -p "$run" "$logs" "$dir/data"
    cat >"$dir/config.yml" <<EOF
# Written by scripts/services.sh on every start: edit the script, not this file.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
    echo "--- $(date -Is) services.sh: starting docker-registry" >>"$logs/registry.log"
    setsid nohup docker-registry serve "$dir/config.yml" >>"$logs/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_ready registry "$pidfile" "$logs/registry.log" 15 registry_answers
    echo "registry: started on 127.0.0.1:$REGISTRY_PORT (pid $(<"$pidfile"), storage $dir/data)"
}

start_haproxy() {
    need haproxy
    need curl
    [[ -x $python ]] || die "haproxy: $python not found: run scripts/setup.sh"
    local pidfile=$run/haproxy.pid dir=$var/haproxy pipelines=${PIPELINES_FILE:-$var/demo/pipelines.yml}
    if pid_alive "$pidfile"; then
        echo "haproxy: already running (pid $(<"$pidfile"), config $dir/haproxy.cfg)"
        return 0
    fi
    mkdir -p "$run" "$logs" "$dir"
    if [[ -z ${PIPELINES_FILE:-} ]]; then
        # The demo's own pipelines, as scripts/demo.py will run them.
        "$python" "$here/demo.py" --write-pipelines "$pipelines" >>"$logs/haproxy.log" 2>&1 ||
            die "haproxy: scripts/demo.py could not write $pipelines (log $logs/haproxy.log)"
    fi
    if ! "$python" -m bot proxy-config --pipelines-file "$pipelines" --exporter "$HAPROXY_EXPORTER" \
        >"$dir/haproxy.cfg.new" 2>"$dir/proxy-config.err"; then
        rm -f "$dir/haproxy.cfg.new"
        if grep -q "no pipeline has a traffic: block" "$dir/proxy-config.err"; then
            echo "haproxy: not started: no pipeline in $pipelines has a traffic: block"
            return 0
        fi
        cat "$dir/proxy-config.err" >&2
        die "haproxy: python -m bot proxy-config failed for $pipelines"
    fi
    mv "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"
    port_in_use "${HAPROXY_EXPORTER##*:}" &&
        die "haproxy: $HAPROXY_EXPORTER (its exporter) is taken by something this script did not start"
    echo "--- $(date -Is) services.sh: starting haproxy" >>"$logs/haproxy.log"
    if ! haproxy -c -q -f "$dir/haproxy.cfg" >>"$logs/haproxy.log" 2>&1; then
        log_tail "$logs/haproxy.log"
        die "haproxy: $dir/haproxy.cfg does not pass haproxy -c"
    fi
    # -db: in the foreground (no daemon of its own), so the pid file names it.
    setsid nohup haproxy -db -f "$dir/haproxy.cfg" >>"$logs/haproxy.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_ready haproxy "$pidfile" "$logs/haproxy.log" 10 haproxy_answers
    echo "haproxy: started (pid $(<"$pidfile"), config $dir/haproxy.cfg, exporter http://$HAPROXY_EXPORTER/metrics)"
}

status() {
    local pidfile
    if docker_answers; then
        pidfile=$run/dockerd.pid
        if pid_alive "$pidfile"; then
            echo "docker: running (pid $(<"$pidfile"), started by this script)"
        else
            echo "docker: running (not started by this script)"
        fi
    else
        echo "docker: not answering"
    fi
    if redis_answers; then
        echo "redis: running on 127.0.0.1:$REDIS_PORT$(pid_alive "$run/redis.pid" && echo " (pid $(<"$run/redis.pid"))")"
    else
        echo "redis: not answering on 127.0.0.1:$REDIS_PORT"
    fi
    if prometheus_answers; then
        echo "prometheus: running on 127.0.0.1:$PROMETHEUS_PORT$(pid_alive "$run/prometheus.pid" && echo " (pid $(<"$run/prometheus.pid"))")"
    else
        echo "prometheus: not answering on 127.0.0.1:$PROMETHEUS_PORT"
    fi
    if registry_answers; then
        echo "registry: running on 127.0.0.1:$REGISTRY_PORT$(pid_alive "$run/docker-registry.pid" && echo " (pid $(<"$run/docker-registry.pid"))")"
    else
        echo "registry: not answering on 127.0.0.1:$REGISTRY_PORT"
    fi
    if pid_alive "$run/haproxy.pid"; then
        echo "haproxy: running (pid $(<"$run/haproxy.pid"), config $var/haproxy/haproxy.cfg)$(haproxy_answers || echo ", exporter not answering on $HAPROXY_EXPORTER")"
    elif haproxy_answers; then
        echo "haproxy: an exporter answers on $HAPROXY_EXPORTER (not started by this script)"
    else
        echo "haproxy: not running"
    fi
}

case ${1:-} in
    start)
        start_docker
        start_redis
        start_prometheus
        start_registry
        start_haproxy
        ;;
    start-docker) start_docker ;;
    start-registry) start_registry ;;
    stop)
        stop_pid haproxy "$run/haproxy.pid" haproxy_answers
        stop_pid registry "$run/docker-registry.pid" registry_answers
        stop_pid prometheus "$run/prometheus.pid" prometheus_answers
        stop_pid redis "$run/redis.pid" redis_answers
        stop_pid docker "$run/dockerd.pid" docker_answers
        ;;
    stop-docker) stop_pid docker "$run/dockerd.pid" docker_answers ;;
    status) status ;;
    *)
        sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
esac
