#!/usr/bin/env bash
# Compares builds of the gateway under Debian's `hey`, side by side in one
# run: for each binary in turn (repeat them for A/B/A), it starts that
# binary's simulator and gateway as separate processes, and nginx in front
# of the same simulator when nginx is installed, then sends the same load
# straight to the simulator, through nginx and through the gateway.
#
#   host/benches/hey-side-by-side.sh OLD NEW OLD NEW
#   RATE=1000 CONNS=100 SECONDS_EACH=10 host/benches/hey-side-by-side.sh target/release/switchyard
#
# CONNS connections of RATE/CONNS requests a second each: hey paces every
# connection on its own ticker, all started together, so requests arrive
# in bursts of CONNS. It prints p50 and p99 (ms) and, for the gateway and
# nginx, their CPU time a request (µs, from /proc/<pid>/stat).
#
# With OPENAI=1 it also measures OpenAI's `/v1/chat/completions` (onto
# Converse) through the gateway, against the same nginx figure.
#
# With STREAMS=1 it also measures ConverseStream (up to 30 deltas, the
# simulator sending them at once) straight, through nginx and through the
# gateway, and with OPENAI=1 the OpenAI stream too: hey times each whole
# stream; the ratio is to nginx's CPU a stream in the same turn. Then the
# time to first byte of TTFB_STREAMS (300) streams one after another on one
# connection (curl, unloaded): median and p99 straight, through nginx and
# through the gateway, with what each adds over straight.
#
# With MESSAGES=1 it also measures Anthropic's Messages route
# (`/v1/messages`, onto InvokeModel) next to the simulator's InvokeModel
# called straight, in the same run as the Converse route.
#
# With KEYS=1 it also starts a second gateway whose clients need a key, made
# through the admin API in a team, both with RPM, TPM and a daily USD budget
# set (set high, so nothing is refused), and measures Converse through it
# with that key, after a minute's warm-up at the same rate (KEYED_WARM_S):
# the cost of key lookup, limits and cost booking, next to the open gateway. With REDIS=1 as well, both gateways keep their state in
# a redis-server started on a free port, and the keyed phase also prints the
# Redis commands a request cost (from INFO commandstats).
#
# With DEPLOYMENT_QUOTAS=1 the deployment has RPM and TPM quotas.
#
# SATURATION="2000 4000 6000" then measures Converse at each of those rates
# (RATE/10 connections) straight, through nginx and through the gateway,
# printing each p99's excess over straight's: the highest rate that keeps
# it under 50 ms is the saturation rate. The simulator, hey, nginx and the
# gateway share this machine's cores, so it is a rate for this machine.
#
# DEPLOYMENTS=N makes the model group N deployments (all on the one
# simulator, the first with the best priority, so every request still goes
# to it), and SELECTION=name picks the group's built-in selection policy
# (priority when unset): what the group's size costs a request.
#
# With TRACES=1 it also starts a gateway that traces every request
# (sampling ratio 1) to an OTLP endpoint where nothing listens, and
# measures Converse through it right after the untraced one: what a dead
# collector costs. With TRACES=live the endpoint is a small collector (a
# Python HTTP server that takes every export), so every span is made,
# encoded and sent: what tracing every request costs. TRACE_RATIO sets the
# sampling ratio (default 1).
set -euo pipefail

RATE=${RATE:-1000}
CONNS=${CONNS:-$((RATE / 10))}
SECONDS_EACH=${SECONDS_EACH:-10}
[ $# -ge 1 ] || { echo "usage: $0 SWITCHYARD_BINARY [SWITCHYARD_BINARY ...]" >&2; exit 2; }
# hey paces each connection at a whole number of requests a second.
if [ "$CONNS" -lt 1 ] || [ "$CONNS" -gt "$RATE" ] || [ $((RATE % CONNS)) -ne 0 ]; then
  echo "CONNS ($CONNS) must divide RATE ($RATE)" >&2; exit 2
fi
command -v hey >/dev/null || { echo "hey is not installed: apt-get install hey" >&2; exit 2; }
NGINX=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)

WORK=$(mktemp -d /tmp/switchyard-side-by-side.XXXXXX)
PIDS=()
stop_all() {
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

CONVERSE_BODY='{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":16}}'
INVOKE_BODY='{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'
MESSAGES_BODY='{"model":"g","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'
OPENAI_BODY='{"model":"g","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'
STREAM_BODY='{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":30}}'
OPENAI_STREAM_BODY='{"model":"g","max_tokens":30,"stream":true,"messages":[{"role":"user","content":"hello"}]}'
BODY=$CONVERSE_BODY
# hey's summary: "50% in 0.0012 secs"; prints p50 and p99 in ms and the 200s.
HEADERS=()
run_hey() {
  local out
  out=$(hey -z "${SECONDS_EACH}s" -c "$CONNS" -q $((RATE / CONNS)) ${HEADERS[@]+"${HEADERS[@]}"} \
    -m POST -T application/json -d "$BODY" "$1")
  local p50 p99 ok
  p50=$(awk '/ 50% in/ {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in/ {print $3 * 1000}' <<<"$out")
  # Only the status line: the error lines start with a count in brackets too.
  ok=$(awk '$1 == "[200]" && $3 == "responses" {print $2}' <<<"$out")
  echo "$p50 $p99 ${ok:-0}"
}
# Runs hey against $1 and reports, with the CPU a request of pid $2 (or -).
measure() {
  local before=0 after=0
  [ "$2" = - ] || before=$(cpu_ticks "$2")
  read -r p50 p99 ok < <(run_hey "$1")
  [ "$2" = - ] || after=$(cpu_ticks "$2")
  local cpu=-
  [ "$2" = - ] || cpu=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (ok > 0 ? ok : 1) ))
  printf '%-10s p50 %6.1f ms  p99 %6.1f ms  ok %6d  CPU %4s µs/req' "$3" "$p50" "$p99" "$ok" "$cpu"
  # The ratio to nginx's CPU a request in this binary's turn.
  if [ "$3" = nginx ] || [ "$3" = nginx-str ]; then nginx_cpu=$cpu; fi
  if [ "$cpu" != - ] && [ "${3#nginx}" = "$3" ] && [ "${nginx_cpu:-0}" -gt 0 ]; then
    awk -v c="$cpu" -v n="$nginx_cpu" 'BEGIN {printf "  (%.1fx nginx)", c / n}'
  fi
  echo
}

# Time to first byte of $TTFB_STREAMS streams to $1 with body $2, one after
# another on one connection (curl's URL glob; the query is ignored):
# median and p99 in ms, and the median added over the last `direct-ttfb`.
ttfb() {
  local n=${TTFB_STREAMS:-300} p50 p99
  read -r p50 p99 < <(curl -sS -o /dev/null -w '%{time_starttransfer}\n' \
      -H 'content-type: application/json' -d "$2" "$1?n=[1-$n]" \
    | sort -n | awk '{t[NR] = $1 * 1000} END {print t[int((NR + 1) / 2)], t[int(NR * 0.99)]}')
  [ "$3" != direct-ttfb ] || direct_ttfb=$p50
  printf '%-11s p50 %6.2f ms  p99 %6.2f ms  added p50 %6.2f ms\n' "$3" "$p50" "$p99" \
    "$(awk -v a="$p50" -v d="${direct_ttfb:-0}" 'BEGIN {print a - d}')"
}

if [ "${REDIS:-}" = 1 ]; then
  command -v redis-server >/dev/null || { echo "redis-server is not installed: apt-get install redis-server" >&2; exit 2; }
fi
# The Redis commands run since the last call, in all (from INFO commandstats).
redis_commands() {
  redis-cli -p "$1" info commandstats | awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" {n += $3} END {print n + 0}'
}
# Starts a gateway on config $1 and port $2; its pid lands in $started.
start_gateway() {
  RUST_LOG=warn "$binary" serve --config "$1" --listen "127.0.0.1:$2" >/dev/null 2>&1 &
  started=$!
  PIDS+=("$started")
}
ADMIN=bench-admin-token-0123456789
# With DEPLOYMENT_QUOTAS=1 the deployment declares RPM and TPM quotas (set
# high, so nothing waits): the gateway then keeps a minute of reservations
# for each, as it does for a real Bedrock quota.
QUOTAS=
[ "${DEPLOYMENT_QUOTAS:-}" != 1 ] || QUOTAS=$'rpm = 100000000\ntpm = 4000000000'
WARM_S=${WARM_S:-$([ "${DEPLOYMENT_QUOTAS:-}" = 1 ] && echo 60 || echo 2)}

echo "hey -z ${SECONDS_EACH}s -c $CONNS -q $((RATE / CONNS)): $RATE req/s in bursts of $CONNS; ${DEPLOYMENTS:-1} deployment(s), selection ${SELECTION:-priority}"
for binary in "$@"; do
  sim_port=$(free_port); gw_port=$(free_port); nginx_port=$(free_port)
  while [ "$gw_port" = "$sim_port" ]; do gw_port=$(free_port); done
  while [ "$nginx_port" = "$sim_port" ] || [ "$nginx_port" = "$gw_port" ]; do nginx_port=$(free_port); done
  printf '[simulator]\naccept_any_model = true\n' >"$WORK/sim.toml"
  members=()
  : >"$WORK/gateway.toml"
  for i in $(seq "${DEPLOYMENTS:-1}"); do
    id=a; [ "$i" = 1 ] || id="a$i"
    members+=("\"$id\"")
    cat >>"$WORK/gateway.toml" <<TOML
[[deployments]]
id = "$id"
model_id = "model-a"
priority = $i
endpoint_url = "http://127.0.0.1:$sim_port"
credentials = { source = "static", access_key_id = "x", secret_access_key = "x" }
$QUOTAS
TOML
  done
  cat >>"$WORK/gateway.toml" <<TOML
[[model_groups]]
name = "g"
deployments = [$(IFS=,; echo "${members[*]}")]
[model_groups.policies.selection]
name = "${SELECTION:-priority}"
[policy_runtime]
cache_dir = "$WORK/cache"
TOML
  RUST_LOG=warn "$binary" sim --config "$WORK/sim.toml" --listen "127.0.0.1:$sim_port" >/dev/null 2>&1 &
  PIDS+=($!)
  if [ "${REDIS:-}" = 1 ]; then
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$redis_port"
    printf '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s/"\n' "$redis_port" >>"$WORK/gateway.toml"
  fi
  start_gateway "$WORK/gateway.toml" "$gw_port"
  gateway=$started
  if [ "${KEYS:-}" = 1 ]; then
    keyed_port=$(free_port)
    rm -rf "$WORK/keys"
    { cat "$WORK/gateway.toml"; printf '[admin]\ntoken = "%s"\n[key_store]\ndata_dir = "%s"\n' "$ADMIN" "$WORK/keys"
      # One key sends every request: let its user run and queue as many as
      # the open gateway's callers do, so only the key's own work differs.
      printf '[admission]\nmax_per_user = 1024\nmax_queued_per_user = 4096\n'; } >"$WORK/keyed.toml"
    start_gateway "$WORK/keyed.toml" "$keyed_port"
    keyed=$started
  fi
  if [ -n "${TRACES:-}" ]; then
    traced_port=$(free_port)
    collector_port=$(free_port)
    if [ "$TRACES" = live ]; then
      python3 -c '
import http.server, sys
class Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Collector).serve_forever()
' "$collector_port" &
      PIDS+=($!)
      wait_port "$collector_port"
    fi
    { cat "$WORK/gateway.toml"; printf '[observability.otlp]\nendpoint = "http://127.0.0.1:%s"\nsampling_ratio = %s\n' "$collector_port" "${TRACE_RATIO:-1}"; } >"$WORK/traced.toml"
    start_gateway "$WORK/traced.toml" "$traced_port"
    traced=$started
  fi
  nginx_pid=
  if [ -n "$NGINX" ]; then
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
error_log $WORK/nginx/error.log warn; pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  upstream sim { server 127.0.0.1:$sim_port; keepalive 256; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://sim; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 &
    nginx_pid=$!
    PIDS+=("$nginx_pid")
  fi
  wait_port "$sim_port"; wait_port "$gw_port"; [ -z "$nginx_pid" ] || wait_port "$nginx_port"
  # Warm the gateway's connection pool and policy cache (and with
  # deployment quotas, fill a minute of their windows).
  hey -z "${WARM_S}s" -c "$CONNS" -q $((RATE / CONNS)) -m POST -T application/json -d "$BODY" \
    "http://127.0.0.1:$gw_port/model/g/converse" >/dev/null
  echo "== $binary"
  measure "http://127.0.0.1:$sim_port/model/model-a/converse" - direct
  [ -z "$nginx_pid" ] || measure "http://127.0.0.1:$nginx_port/model/model-a/converse" "$nginx_pid" nginx
  measure "http://127.0.0.1:$gw_port/model/g/converse" "$gateway" gateway
  if [ -n "${TRACES:-}" ]; then
    wait_port "$traced_port"
    hey -z "${WARM_S}s" -c "$CONNS" -q $((RATE / CONNS)) -m POST -T application/json -d "$BODY" \
      "http://127.0.0.1:$traced_port/model/g/converse" >/dev/null
    measure "http://127.0.0.1:$traced_port/model/g/converse" "$traced" traced
    counts=$(curl -fsS "http://127.0.0.1:$traced_port/metrics" | awk '/^switchyard_trace_(spans_(exported|failed|dropped)|requests_untraced)_total/ {sub("switchyard_trace_", "", $1); printf "%s=%s ", $1, $2}')
    echo "traced: $counts"
    awk '/VmRSS/ {printf "traced gateway RSS %.1f MiB\n", $2 / 1024}' "/proc/$traced/status"
  fi
  if [ "${KEYS:-}" = 1 ]; then
    wait_port "$keyed_port"
    limits='"limits":{"rpm":100000000,"tpm":100000000000,"daily_usd":1000000}'
    admin() { curl -fsS -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' -d "$2" "http://127.0.0.1:$keyed_port$1"; }
    admin /admin/teams "{\"name\":\"bench\",$limits}" >/dev/null
    secret=$(admin /admin/keys "{\"team\":\"bench\",\"user\":\"bench\",$limits}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
    HEADERS=(-H "authorization: Bearer $secret")
    # A minute at the same rate first: the key's and team's RPM and TPM
    # windows then hold a minute of reservations, as in a steady state.
    hey -z "${KEYED_WARM_S:-60}s" -c "$CONNS" -q $((RATE / CONNS)) "${HEADERS[@]}" -m POST -T application/json -d "$BODY" \
      "http://127.0.0.1:$keyed_port/model/g/converse" >/dev/null
    [ "${REDIS:-}" != 1 ] || { redis-cli -p "$redis_port" config resetstat >/dev/null; }
    measure "http://127.0.0.1:$keyed_port/model/g/converse" "$keyed" keyed
    if [ "${REDIS:-}" = 1 ]; then
      commands=$(redis_commands "$redis_port")
      echo "keyed: $commands Redis commands, $(awk "BEGIN {printf \"%.2f\", $commands / ($ok > 0 ? $ok : 1)}") a request ($(redis-cli -p "$redis_port" info commandstats | grep -v cmdstat_info | sed 's/:calls=\([0-9]*\).*/=\1/;s/cmdstat_//' | tr -d '\r' | grep = | tr '\n' ' '))"
    fi
    HEADERS=()
    awk '/VmRSS/ {printf "keyed gateway RSS %.1f MiB\n", $2 / 1024}' "/proc/$keyed/status"
  fi
  if [ "${OPENAI:-}" = 1 ]; then
    BODY=$OPENAI_BODY
    measure "http://127.0.0.1:$gw_port/v1/chat/completions" "$gateway" openai
    BODY=$CONVERSE_BODY
  fi
  if [ "${STREAMS:-}" = 1 ]; then
    BODY=$STREAM_BODY
    measure "http://127.0.0.1:$sim_port/model/model-a/converse-stream" - direct-str
    [ -z "$nginx_pid" ] || measure "http://127.0.0.1:$nginx_port/model/model-a/converse-stream" "$nginx_pid" nginx-str
    measure "http://127.0.0.1:$gw_port/model/g/converse-stream" "$gateway" stream
    if [ "${OPENAI:-}" = 1 ]; then
      BODY=$OPENAI_STREAM_BODY
      measure "http://127.0.0.1:$gw_port/v1/chat/completions" "$gateway" openai-str
    fi
    BODY=$CONVERSE_BODY
    ttfb "http://127.0.0.1:$sim_port/model/model-a/converse-stream" "$STREAM_BODY" direct-ttfb
    [ -z "$nginx_pid" ] || ttfb "http://127.0.0.1:$nginx_port/model/model-a/converse-stream" "$STREAM_BODY" nginx-ttfb
    ttfb "http://127.0.0.1:$gw_port/model/g/converse-stream" "$STREAM_BODY" stream-ttfb
    [ "${OPENAI:-}" != 1 ] || ttfb "http://127.0.0.1:$gw_port/v1/chat/completions" "$OPENAI_STREAM_BODY" openai-ttfb
  fi
  if [ "${MESSAGES:-}" = 1 ]; then
    BODY=$INVOKE_BODY
    measure "http://127.0.0.1:$sim_port/model/model-a/invoke" - direct-inv
    [ -z "$nginx_pid" ] || measure "http://127.0.0.1:$nginx_port/model/model-a/invoke" "$nginx_pid" nginx-inv
    BODY=$MESSAGES_BODY
    measure "http://127.0.0.1:$gw_port/v1/messages" "$gateway" messages
    BODY=$CONVERSE_BODY
  fi
  if [ -n "${SATURATION:-}" ]; then
    saved_rate=$RATE saved_conns=$CONNS
    for rate in $SATURATION; do
      RATE=$rate CONNS=$((rate / 10))
      echo "-- $rate req/s, $CONNS connections"
      read -r direct_p50 direct_p99 _ < <(run_hey "http://127.0.0.1:$sim_port/model/model-a/converse")
      printf 'direct     p50 %6.1f ms  p99 %6.1f ms\n' "$direct_p50" "$direct_p99"
      for via in nginx gateway; do
        if [ "$via" = nginx ]; then
          [ -n "$nginx_pid" ] || continue
          url="http://127.0.0.1:$nginx_port/model/model-a/converse" pid=$nginx_pid
        else
          url="http://127.0.0.1:$gw_port/model/g/converse" pid=$gateway
        fi
        read -r p50 p99 ok < <(run_hey "$url")
        printf '%-10s p50 %6.1f ms  p99 %6.1f ms  ok %6d  added p99 %6.1f ms\n' "$via" "$p50" "$p99" "$ok" \
          "$(awk -v a="$p99" -v d="$direct_p99" 'BEGIN {print a - d}')"
      done
    done
    RATE=$saved_rate CONNS=$saved_conns
  fi
  awk '/VmRSS/ {printf "gateway RSS %.1f MiB\n", $2 / 1024}' "/proc/$gateway/status"
  stop_all
done
