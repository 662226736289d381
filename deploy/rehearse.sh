#!/usr/bin/env bash
# Rehearse a cross-host federation on this machine, each "host" in its own network namespace.
#
# A Linux bridge stands for the network between the coordinator and the hospitals; the
# coordinator and each site get a network namespace with one address on a private /24 (the
# coordinator .1, site n .(10+n)) and no other route, so a site can reach the coordinator's
# address and nothing else, and nothing outside can reach them. The rehearsal then does what
# the coordinator and each hospital do, with the deploy/ scripts and env files they use:
# credentials from `brainfl certs` naming the coordinator's address, deploy/superlink.sh in the
# coordinator's namespace (TLS, SuperNode authentication), the site keys registered with
# deploy/coordinator.sh, deploy/supernode.sh in each site's namespace with its own data
# folder, and `deploy/coordinator.sh run` (flwr run) from the coordinator's namespace. It
# checks that every site connected from its own address, that no site listens on anything but
# its loopback address, and that the run finished (server.log: "outputs written to"), prints
# the seconds per round and removes everything it made (processes, namespaces, veths, bridge)
# on exit, error or Ctrl-C. Names carry a random per-run id, so rehearsals do not collide.
# Needs root and iproute2 (`ip`, `ss`).
#
# The run's settings: pyproject.toml's defaults, then each --run-config (a conf file or
# "key=value" pairs, later ones winning; passed on as given), then this script's options.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_DIR="$ROOT/deploy"
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

SITES=2
ROUNDS=""
DATA_DIR=""
SITE_DIRS=()  # --site-data-dir, once per site in site order
OUTPUT_DIR=""
RUN_CONFIGS=()
SUBNET=""
PORT=9191
CLIENTAPP_PORT=9094
TIMEOUT=0

usage() {
  cat <<USAGE
Usage: sudo deploy/rehearse.sh [options]
  --sites N            number of hospitals, each in its own namespace (default: $SITES)
  --rounds N           federated rounds, sets num-server-rounds (default: the run config's)
  --data-dir DIR       the coordinator's data (sets data-dir; default: the run config's)
  --site-data-dir DIR  a hospital's own data folder, once per site in site order
                     (default: sample_data/ for every site)
  --output-dir DIR     where the results, logs, credentials and env files go
                       (default: outputs/rehearsal-<time>-<id>)
  --run-config CONF    a conf file or "key=value ..." settings; repeatable, later ones win;
                       the options above win over it. The hosts run in the checkout's folder:
                       a relative path in the settings is taken relative to it
  --subnet A.B.C.0/24  the private network of the hosts (default: 10.X.Y.0/24 from the run's id)
  --port N             the SuperLink's port on the coordinator (default: $PORT)
  --timeout S          give up (and clean up) after S seconds (default: no limit)
  -h, --help           this help
USAGE
}

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sites) need_value "$@"; SITES="$2"; shift 2 ;;
    --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --site-data-dir) need_value "$@"; SITE_DIRS+=("$2"); shift 2 ;;
    --site-data-dirs)  # the spelling of earlier releases: the folders in one argument
      need_value "$@"; echo "$(basename "$0"): warning: --site-data-dirs is deprecated, use --site-data-dir DIR once per site" >&2
      read -r -a more_dirs <<<"$2"; SITE_DIRS+=("${more_dirs[@]}"); shift 2 ;;
    --output-dir) need_value "$@"; OUTPUT_DIR="$2"; shift 2 ;;
    --run-config) need_value "$@"; RUN_CONFIGS+=("$2"); shift 2 ;;
    --subnet) need_value "$@"; SUBNET="$2"; shift 2 ;;
    --port) need_value "$@"; PORT="$2"; shift 2 ;;
    --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see deploy/rehearse.sh --help)" ;;
  esac
done
for setting in SITES ROUNDS PORT TIMEOUT; do
  [[ -z "${!setting}" || "${!setting}" =~ ^[0-9]+$ ]] || die "--${setting,,} must be a whole number, got '${!setting}'"
done
[[ $SITES -ge 1 && $SITES -le 200 ]] || die "--sites must be 1 to 200"
[[ $PORT -ge 1 && $PORT -le 65535 ]] || die "--port must be 1 to 65535"
[[ $EUID -eq 0 ]] || die "needs root (it creates network namespaces, a bridge and veths)"
for tool in ip ss brainfl flwr flower-superlink flower-supernode; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
use_venv
# The env files written below are the only source of the deploy scripts' settings.
unset BRAINFL_SUPERLINK BRAINFL_CA_CERT BRAINFL_SITE_KEY BRAINFL_DATA_DIR BRAINFL_LOG_DIR \
  BRAINFL_CLIENTAPP_PORT BRAINFL_SERVER_CERT BRAINFL_SERVER_KEY BRAINFL_LISTEN_HOST BRAINFL_FLEET_PORT \
  BRAINFL_DATABASE BRAINFL_SUPERLINK_ADDRESS BRAINFL_APP_DIR BRAINFL_FEDERATION BRAINFL_FLWR_HOME \
  BRAINFL_SITE_ID BRAINFL_SITE_ENV BRAINFL_COORDINATOR_ENV BRAINFL_DRY_RUN

abspath() { python3 -c 'import os,sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))' "$1"; }

# --- names and addresses of this run -------------------------------------------------------
RUN_ID="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"  # 6 hex digits
if [[ -z "$SUBNET" ]]; then
  SUBNET="10.$((200 + 0x${RUN_ID:0:2} % 50)).$((0x${RUN_ID:2:2})).0/24"
fi
[[ "$SUBNET" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.[0-9]{1,3}/24$ ]] || die "--subnet must be A.B.C.0/24, got '$SUBNET'"
for octet in "${BASH_REMATCH[@]:1:3}"; do
  [[ $((10#$octet)) -le 255 ]] || die "--subnet: $SUBNET is not an IPv4 network"
done
NET_PREFIX="$((10#${BASH_REMATCH[1]})).$((10#${BASH_REMATCH[2]})).$((10#${BASH_REMATCH[3]}))"
COORD_IP="$NET_PREFIX.1"
BRIDGE="bflbr$RUN_ID"
NS_COORD="brainfl-$RUN_ID-coord"
VETH_COORD="bfl${RUN_ID}c"
NS_SITES=() VETH_SITES=() SITE_IPS=()
for ((site = 0; site < SITES; site++)); do
  NS_SITES+=("brainfl-$RUN_ID-site$site")
  VETH_SITES+=("bfl${RUN_ID}s$site")
  SITE_IPS+=("$NET_PREFIX.$((10 + site))")
done

# --- folders, data and the run config (checked before anything is started) -------------------
OUTPUT_DIR="$(abspath "${OUTPUT_DIR:-$ROOT/outputs/rehearsal-$(date +%Y%m%d-%H%M%S)-$RUN_ID}")"
LOG_DIR="$OUTPUT_DIR/logs"
REHEARSAL_DIR="$OUTPUT_DIR/rehearsal"
CERTS_DIR="$OUTPUT_DIR/certs"
[[ -n "$DATA_DIR" ]] && DATA_DIR="$(abspath "$DATA_DIR")"
if [[ ${#SITE_DIRS[@]} -eq 0 ]]; then
  for ((site = 0; site < SITES; site++)); do SITE_DIRS+=("$ROOT/sample_data"); done
fi
[[ ${#SITE_DIRS[@]} -eq $SITES ]] || die "--site-data-dir names ${#SITE_DIRS[@]} folders for $SITES sites"
for site in "${!SITE_DIRS[@]}"; do
  SITE_DIRS[site]="$(abspath "${SITE_DIRS[site]}")"
  [[ -d "${SITE_DIRS[site]}" ]] || die "site $site's data folder ${SITE_DIRS[site]} does not exist"
done
for path in "$OUTPUT_DIR" "$DATA_DIR" "${SITE_DIRS[@]}"; do
  [[ "$path" != *[\"\'\\]* ]] || die "$path: paths with quotes or backslashes are not supported here"
done
mkdir -p "$LOG_DIR" "$REHEARSAL_DIR"

OPTIONS="output-dir='$OUTPUT_DIR' num-partitions=$SITES wait-for-sites=$SITES"
[[ -n "$ROUNDS" ]] && OPTIONS+=" num-server-rounds=$ROUNDS"
[[ -n "$DATA_DIR" ]] && OPTIONS+=" data-dir='$DATA_DIR'"
RUN_CONFIG_FILE="$REHEARSAL_DIR/run_config.toml"
# The caller's settings as given (keys checked against the app), then this script's options,
# in one file: flwr run takes one --run-config.
ROUNDS="$(python3 - "$ROOT" "$RUN_CONFIG_FILE" "${RUN_CONFIGS[@]}" "$OPTIONS" <<'PY'
import sys
from pathlib import Path

from brainfl.core.errors import BrainFLError
from brainfl.settings.run_config import overrides_from_args, settings_from_args, to_toml

root, out, *configs = sys.argv[1:]
try:
    overrides = overrides_from_args(Path(root), configs)
    settings = settings_from_args(Path(root), configs)
except BrainFLError as error:
    sys.exit(f"rehearse.sh: error: {error}")
Path(out).write_text(to_toml(overrides))
print(settings.federation.num_server_rounds)
PY
)" || exit 2

# --- teardown: every process, namespace and link of this run, whatever happens ---------------
PIDS=()           # processes started here (each an `ip netns exec` that became the command)
NAMESPACES=()     # namespaces made here
LINKS=()          # host-side links made here (the bridge first; removed in reverse order)
PID_RECORD="$REHEARSAL_DIR/pids.txt"  # "pid start-time" of every process seen in our namespaces
: >"$PID_RECORD"

running() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }

recorded_alive() {  # the recorded processes still running (a zombie has ended; init reaps it)
  local pid start stat fields
  while read -r pid start; do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    read -r -a fields <<<"${stat##*) }"
    [[ "${fields[19]}" == "$start" && "${fields[0]}" != Z ]] && echo "$pid"
  done <"$PID_RECORD"
}

record_namespace_pids() {  # note every process now in one of our namespaces
  local ns pid stat fields
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
      read -r -a fields <<<"${stat##*) }"
      echo "$pid ${fields[19]}" >>"$PID_RECORD"
    done
  done
}

namespace_pids() {
  local ns
  for ns in "${NAMESPACES[@]}"; do ip netns pids "$ns" 2>/dev/null || true; done
}

cleanup() {
  local status=$? pid alive leftover ns link
  set +e
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C does not cut the teardown short
  exec 1>&"$STDOUT_COPY" 2>&"$STDERR_COPY"
  record_namespace_pids
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 20); do  # up to 10 s to stop gracefully
    alive=0
    for pid in "${PIDS[@]}"; do running "$pid" && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  # Whatever else still runs in our namespaces (SuperExecs, a ServerApp, ClientApps): by PID.
  leftover="$(namespace_pids)"
  if [[ -n "$leftover" ]]; then
    # shellcheck disable=SC2086 # one PID per word
    kill -TERM $leftover 2>/dev/null
    sleep 2
  fi
  record_namespace_pids
  for pid in "${PIDS[@]}" $(namespace_pids); do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  sort -u -o "$PID_RECORD" "$PID_RECORD"
  for _ in $(seq 1 40); do  # a killed process leaves its namespace before it has ended
    [[ -z "$(namespace_pids)" && -z "$(recorded_alive)" ]] && break
    sleep 0.25
  done
  leftover="$(recorded_alive) $(namespace_pids)"
  if [[ -n "${leftover// /}" ]]; then
    echo "rehearse.sh: error: processes of run $RUN_ID still running: $leftover" >&2
    status=1
  fi
  # Host-side veth ends first (deleting one deletes its peer at once; a namespace's own
  # links go away only asynchronously after `ip netns del`), then the namespaces, the bridge.
  for ((i = ${#LINKS[@]} - 1; i >= 0; i--)); do
    link="${LINKS[i]}"
    ip link show "$link" >/dev/null 2>&1 && { ip link del "$link" || status=1; }
  done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || { echo "rehearse.sh: could not delete namespace $ns" >&2; status=1; }; done
  if ip netns list | grep -q "brainfl-$RUN_ID-" || ip link show "$BRIDGE" >/dev/null 2>&1; then
    echo "rehearse.sh: error: could not remove every namespace and link of run $RUN_ID" >&2
    status=1
  fi
  echo "outputs: $OUTPUT_DIR"
  exit "$status"
}
# The teardown reports on the script's own output, even when a signal arrives while a
# command's output goes to a log (a trap runs inside that redirection).
exec {STDOUT_COPY}>&1 {STDERR_COPY}>&2
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "rehearse.sh: error: $*" >&2
  exit 1
}

# --- the network: a bridge, and one namespace per host with its address ------------------------
ip link add "$BRIDGE" type bridge
LINKS+=("$BRIDGE")
ip link set "$BRIDGE" up
add_host() {  # add_host NAMESPACE VETH ADDRESS
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip link add "$2" type veth peer name eth0 netns "$1"
  LINKS+=("$2")
  ip link set "$2" master "$BRIDGE" up
  ip -n "$1" link set lo up
  ip -n "$1" addr add "$3/24" dev eth0
  ip -n "$1" link set eth0 up
}
add_host "$NS_COORD" "$VETH_COORD" "$COORD_IP"
for ((site = 0; site < SITES; site++)); do
  add_host "${NS_SITES[site]}" "${VETH_SITES[site]}" "${SITE_IPS[site]}"
done
cat >"$REHEARSAL_DIR/names.env" <<NAMES
RUN_ID=$RUN_ID
SUBNET=$NET_PREFIX.0/24
BRIDGE=$BRIDGE
COORDINATOR_NAMESPACE=$NS_COORD
COORDINATOR_IP=$COORD_IP
PORT=$PORT
SITE_NAMESPACES="${NS_SITES[*]}"
SITE_IPS="${SITE_IPS[*]}"
VETHS="$VETH_COORD ${VETH_SITES[*]}"
NAMES
echo "rehearsal $RUN_ID: bridge $BRIDGE, coordinator $COORD_IP ($NS_COORD), sites ${SITE_IPS[*]}"

# --- credentials and each host's env file (deploy/*.env.example) --------------------------------
brainfl certs --output-dir "$CERTS_DIR" --hosts "$COORD_IP" --sites "$SITES" >"$LOG_DIR/certs.log" 2>&1 ||
  fail "brainfl certs failed, see $LOG_DIR/certs.log"
cat >"$REHEARSAL_DIR/coordinator.env" <<ENV
BRAINFL_CA_CERT="$CERTS_DIR/ca.crt"
BRAINFL_SERVER_CERT="$CERTS_DIR/server.pem"
BRAINFL_SERVER_KEY="$CERTS_DIR/server.key"
BRAINFL_LISTEN_HOST=$COORD_IP
BRAINFL_FLEET_PORT=$PORT
BRAINFL_SUPERLINK_ADDRESS=$COORD_IP:$PORT
BRAINFL_APP_DIR="$ROOT"
BRAINFL_FLWR_HOME="$REHEARSAL_DIR/coordinator/flwr-cli"
ENV
for ((site = 0; site < SITES; site++)); do
  cat >"$REHEARSAL_DIR/site_$site.env" <<ENV
BRAINFL_SUPERLINK=$COORD_IP:$PORT
BRAINFL_CA_CERT="$CERTS_DIR/ca.crt"
BRAINFL_SITE_KEY="$CERTS_DIR/site_$site"
BRAINFL_SITE_ID=$site
BRAINFL_DATA_DIR="${SITE_DIRS[site]}"
BRAINFL_LOG_DIR="$OUTPUT_DIR/site_$site"
BRAINFL_CLIENTAPP_PORT=$CLIENTAPP_PORT
ENV
done

# Every host runs in the checkout's folder (a service's WorkingDirectory): a relative path in
# the run config, such as the default data-dir 'sample_data', is taken relative to it.
cd "$ROOT"

# in_host NAMESPACE HOST_NAME COMMAND...: run COMMAND as that host (its own Flower home).
in_host() {
  local ns="$1" host="$2"
  shift 2
  mkdir -p "$REHEARSAL_DIR/$host"
  FLWR_HOME="$REHEARSAL_DIR/$host/flwr" ip netns exec "$ns" "$@" {STDOUT_COPY}>&- {STDERR_COPY}>&-
}
port_open() {  # port_open NAMESPACE ADDRESS PORT: a TCP connection from that namespace succeeds
  # shellcheck disable=SC2016 # expanded by the inner bash
  ip netns exec "$1" timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" 2>/dev/null
}
wait_for_port() {  # wait_for_port NAMESPACE ADDRESS PORT PID NAME LOG
  for _ in $(seq 1 120); do
    port_open "$1" "$2" "$3" && return 0
    running "$4" || { tail -5 "$6" >&2; fail "$5 exited early, see $6"; }
    sleep 0.5
  done
  fail "$5 did not open $2:$3 within 60 s, see $6"
}

# --- the coordinator: SuperLink, then the site keys ---------------------------------------------
in_host "$NS_COORD" coordinator "$DEPLOY_DIR/superlink.sh" "$REHEARSAL_DIR/coordinator.env" \
  >"$LOG_DIR/superlink.log" 2>&1 &
SUPERLINK_PID=$!
PIDS+=("$SUPERLINK_PID")
# Reached from the first site's namespace, across the bridge.
wait_for_port "${NS_SITES[0]}" "$COORD_IP" "$PORT" "$SUPERLINK_PID" SuperLink "$LOG_DIR/superlink.log"
ip netns exec "$NS_COORD" ss -tlnH >"$REHEARSAL_DIR/coordinator_listening.txt"
KEYS=()
for ((site = 0; site < SITES; site++)); do KEYS+=("$CERTS_DIR/site_$site.pub"); done
in_host "$NS_COORD" coordinator "$DEPLOY_DIR/coordinator.sh" --env "$REHEARSAL_DIR/coordinator.env" \
  register "${KEYS[@]}" >"$LOG_DIR/register.log" 2>&1 || fail "registering the site keys failed, see $LOG_DIR/register.log"

# --- the hospitals: one SuperNode each, outgoing connections only -------------------------------
for ((site = 0; site < SITES; site++)); do
  in_host "${NS_SITES[site]}" "site_$site" "$DEPLOY_DIR/supernode.sh" "$REHEARSAL_DIR/site_$site.env" \
    >"$LOG_DIR/supernode_$site.log" 2>&1 &
  PIDS+=($!)
done
for ((site = 0; site < SITES; site++)); do
  log="$LOG_DIR/supernode_$site.log"
  wait_for_port "${NS_SITES[site]}" 127.0.0.1 "$CLIENTAPP_PORT" "${PIDS[site + 1]}" "SuperNode $site" "$log"
  # A hospital accepts no connection from the network: every listening socket is on loopback,
  # and the coordinator cannot connect to the site's address.
  listening="$REHEARSAL_DIR/site_${site}_listening.txt"
  ip netns exec "${NS_SITES[site]}" ss -tulnH >"$listening"
  if awk '$5 !~ /^(127\.[0-9.]+|\[::1\]|::1):/ { found = 1 } END { exit !found }' "$listening"; then
    fail "site $site listens on a non-loopback address: $(tr '\n' ';' <"$listening")"
  fi
  ! port_open "$NS_COORD" "${SITE_IPS[site]}" "$CLIENTAPP_PORT" || fail "site $site accepts connections from the coordinator"
done

# --- the run, from the coordinator -----------------------------------------------------------------
echo "rehearsal run: $SITES sites, $ROUNDS rounds, TLS and SuperNode authentication; outputs $OUTPUT_DIR"
in_host "$NS_COORD" coordinator "$DEPLOY_DIR/coordinator.sh" --env "$REHEARSAL_DIR/coordinator.env" \
  run --run-config "$RUN_CONFIG_FILE" >"$LOG_DIR/flwr_run.log" 2>&1 &
RUN_PID=$!
PIDS+=("$RUN_PID")
CONNECTIONS="$REHEARSAL_DIR/connections.txt"  # the SuperLink's established connections, sampled
: >"$CONNECTIONS"
started=$SECONDS
shown=0
show_log() {  # stream flwr run's output as it grows
  local size
  size=$(stat -c %s "$LOG_DIR/flwr_run.log" 2>/dev/null || echo 0)
  if [[ $size -gt $shown ]]; then
    tail -c +$((shown + 1)) "$LOG_DIR/flwr_run.log" | head -c $((size - shown))
    shown=$size
  fi
}
while running "$RUN_PID"; do
  ip netns exec "$NS_COORD" ss -tnH state established "( sport = :$PORT )" >>"$CONNECTIONS" 2>/dev/null || true
  record_namespace_pids
  show_log
  running "$SUPERLINK_PID" || fail "the SuperLink stopped during the run, see $LOG_DIR/superlink.log"
  if [[ $TIMEOUT -gt 0 && $((SECONDS - started)) -ge $TIMEOUT ]]; then
    fail "the run did not finish within $TIMEOUT s"
  fi
  sleep 1
done
run_status=0
wait "$RUN_PID" || run_status=$?
show_log
[[ $run_status -eq 0 ]] || fail "flwr run exited with status $run_status, see $LOG_DIR/flwr_run.log"
grep -q "outputs written to" "$LOG_DIR/server.log" 2>/dev/null ||
  fail "the run did not finish; see $LOG_DIR/server.log and $LOG_DIR/superlink.log"

# --- where the connections came from, and the time per round -------------------------------------
awk '{ sub(/:[0-9]+$/, "", $4); print $4 }' "$CONNECTIONS" | sort -u >"$REHEARSAL_DIR/peers.txt"
for ((site = 0; site < SITES; site++)); do
  grep -qx "${SITE_IPS[site]}" "$REHEARSAL_DIR/peers.txt" ||
    fail "no connection from site $site's address ${SITE_IPS[site]} was seen, see $CONNECTIONS"
done
echo "connections to $COORD_IP:$PORT came from: $(tr '\n' ' ' <"$REHEARSAL_DIR/peers.txt")"
python3 - "$OUTPUT_DIR/federated_learning_results.csv" <<'PY'
import csv, sys

with open(sys.argv[1], newline="") as handle:
    rows = [row for row in csv.DictReader(handle) if row.get("elapsed_s")]
first, last = rows[0], rows[-1]
rounds = int(last["round"]) - int(first["round"])
if rounds > 0:
    seconds = (float(last["elapsed_s"]) - float(first["elapsed_s"])) / rounds
    print(f"seconds per round: {seconds:.1f} (rounds {int(first['round']) + 1}-{last['round']}, elapsed_s)")
PY
echo "rehearsal ok"
