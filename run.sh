#!/usr/bin/env bash
# One command for a whole federation on this machine.
#
# Default (deployment engine): a real flower-superlink and one flower-supernode
# per site on 127.0.0.1, each with its own log, then `flwr run` streams the
# run; every process started here is stopped at the end, on error or Ctrl-C.
# --simulation runs the same app on Flower's simulation engine instead.
#
# The run's settings: pyproject.toml's defaults, then each --run-config (a conf
# file or "key=value" pairs, later ones winning), then this script's options.
# `brainfl prepare` checks them (and the data) and writes them to one TOML file
# that `flwr run` reads (Flower takes one file or pairs, not both).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SITES=""      # empty: from the run config (num-partitions)
ROUNDS=""     # empty: from the run config (num-server-rounds)
DATA_DIR="$ROOT/sample_data"
MODEL=""      # empty: from the run config (model)
OUTPUT_DIR=""
PORT=9191
MODE=deployment
RUN_CONFIGS=()
SECURE=0
MIN_SITES=""  # empty: from the run config (min-sites)
RESUME_DIR=""
SITE_DIRS=()  # --site-data-dir, once per site in site order
CERTS_DIR=""
BASELINES=0
VALIDATE=()   # --validate, once per model file or run folder
ADAPT=0

usage() {
  cat <<USAGE
Usage: ./run.sh [options]
  --sites N          number of sites (SuperNodes), sets num-partitions (default: the run config's, 2)
  --rounds N         federated rounds, sets num-server-rounds (default: the run config's, 3)
  --data-dir DIR     Kaggle layout folder (Training/, Testing/), default sample_data/
  --model NAME       cnn or vgg16 (default: the run config's, cnn)
  --output-dir DIR   where results go, default outputs/<timestamp>
  --min-sites N      rounds go on while at least N sites answer (all are awaited before round 1),
                     sets min-sites (default: the run config's, 1)
  --port N           SuperLink port on 127.0.0.1, default $PORT (SuperNodes use the next N ports)
  --simulation       use Flower's simulation engine (virtual sites) instead of SuperNodes
  --secure           TLS on every connection and SuperNode authentication (deployment only)
  --certs-dir DIR    credentials from 'brainfl certs' (default: made anew in <output-dir>/certs)
  --site-data-dir DIR  a site's own data folder (all its Training images), once per site in site order,
                     instead of a partition of --data-dir, as real hospitals have (both engines)
  --resume DIR       continue an interrupted run from DIR's last checkpoint, with its settings
  --validate MODEL   train nothing: score a saved model at every site on its own labelled scans (numbers
                     only leave the sites) into validation.csv; MODEL is a .keras file or a run folder (its
                     final model and, after --baselines, each site's model alone and the pooled one: the
                     cross-site matrix, cross_site.csv); may be repeated
  --adapt            with --validate: each site first re-estimates the model's BatchNorm statistics on its
                     own scans (no labels used)
  --baselines        after the run, train its baselines with its settings (brainfl local: each site
                     alone; brainfl pooled: the sites' images pooled) into <output-dir>/baselines/ and
                     remake the report with each site's alone / federated / pooled accuracy
  --run-config CONF  a conf file, e.g. conf/dirichlet-0.3.toml, or "K=V ..." overrides, e.g.
                     "local-epochs=2 image-size=96"; may be repeated (later ones win); the options
                     above win over it. Every setting: docs/settings.md
  -h, --help         this help
USAGE
}

need_value() { [[ $# -ge 2 && -n "$2" ]] || { echo "run.sh: error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sites) need_value "$@"; SITES="$2"; shift 2 ;;
    --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --model) need_value "$@"; MODEL="$2"; shift 2 ;;
    --output-dir) need_value "$@"; OUTPUT_DIR="$2"; shift 2 ;;
    --port) need_value "$@"; PORT="$2"; shift 2 ;;
    --min-sites) need_value "$@"; MIN_SITES="$2"; shift 2 ;;
    --simulation) MODE=simulation; shift ;;
    --secure) SECURE=1; shift ;;
    --certs-dir) need_value "$@"; CERTS_DIR="$2"; shift 2 ;;
    --run-config) need_value "$@"; RUN_CONFIGS+=("$2"); shift 2 ;;
    --resume) need_value "$@"; RESUME_DIR="$2"; shift 2 ;;
    --site-data-dir) need_value "$@"; SITE_DIRS+=("$2"); shift 2 ;;
    --site-data-dirs)  # the spelling of earlier releases: the folders in one argument
      need_value "$@"; echo "$(basename "$0"): warning: --site-data-dirs is deprecated, use --site-data-dir DIR once per site" >&2
      read -r -a more_dirs <<<"$2"; SITE_DIRS+=("${more_dirs[@]}"); shift 2 ;;
    --baselines) BASELINES=1; shift ;;
    --validate) need_value "$@"; VALIDATE+=("$2"); shift 2 ;;
    --adapt) ADAPT=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: error: unknown option '$1' (see ./run.sh --help)" >&2; exit 2 ;;
  esac
done
for setting in SITES ROUNDS PORT MIN_SITES; do
  option="${setting,,}"
  [[ -z "${!setting}" || "${!setting}" =~ ^[0-9]+$ ]] || {
    echo "run.sh: error: --${option//_/-} must be a whole number, got '${!setting}'" >&2; exit 2
  }
done
(( 10#$PORT >= 1 && 10#$PORT + 10#${SITES:-0} <= 65535 )) || {
  echo "run.sh: error: --port $PORT: the SuperLink's port and the ${SITES:-0} SuperNodes' next ports must lie in 1-65535" >&2
  exit 2
}
if [[ -n "$SITES" && -n "$MIN_SITES" ]] && (( 10#$MIN_SITES > 10#$SITES )); then
  echo "run.sh: error: --min-sites $MIN_SITES is more than --sites $SITES: the rounds would wait forever" >&2; exit 2
fi
# A TOML basic string of any text (paths may hold quotes, backslashes or spaces).
toml_string() { local text="${1//\\/\\\\}"; printf '"%s"' "${text//\"/\\\"}"; }

abspath() { python3 -c 'import os,sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))' "$1"; }

if [[ -n "$RESUME_DIR" ]]; then
  RESUME_DIR="$(abspath "$RESUME_DIR")"
  [[ -f "$RESUME_DIR/run_config.json" ]] || { echo "run.sh: error: --resume: no run_config.json in $RESUME_DIR" >&2; exit 2; }
  # The interrupted run's settings, as shell assignments (sites, rounds, data, model, the rest);
  # keys this version of the app no longer declares are left out.
  eval "$(python3 - "$RESUME_DIR/run_config.json" "$ROOT/pyproject.toml" <<'PY'
import json, shlex, sys, tomllib
config = json.load(open(sys.argv[1]))
declared = tomllib.load(open(sys.argv[2], "rb"))["tool"]["flwr"]["app"]["config"]
skip = {"num-server-rounds", "num-partitions", "min-sites", "wait-for-sites", "model", "data-dir", "output-dir", "resume"}
rest = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}" for k, v in config.items() if k in declared and k not in skip)
print(f"SITES={config['num-partitions']} ROUNDS={config['num-server-rounds']} MIN_SITES={config['min-sites']}")
print(f"MODEL={shlex.quote(config['model'])} DATA_DIR={shlex.quote(config['data-dir'])}")
print(f"RESUMED_CONFIG={shlex.quote(rest)}")
PY
)"
  OUTPUT_DIR="$RESUME_DIR"
  RUN_CONFIGS=("$RESUMED_CONFIG resume=true" "${RUN_CONFIGS[@]}")
fi
DATA_DIR="$(abspath "$DATA_DIR")"
OUTPUT_DIR="$(abspath "${OUTPUT_DIR:-$ROOT/outputs/$(date +%Y%m%d-%H%M%S)}")"
LOG_DIR="$OUTPUT_DIR/logs"
# This script's options, applied after every --run-config.
OPTIONS="data-dir=$(toml_string "$DATA_DIR") output-dir=$(toml_string "$OUTPUT_DIR")"
[[ -n "$SITES" ]] && OPTIONS+=" num-partitions=$SITES"
[[ -n "$ROUNDS" ]] && OPTIONS+=" num-server-rounds=$ROUNDS"
[[ -n "$MIN_SITES" ]] && OPTIONS+=" min-sites=$MIN_SITES"
[[ -n "$MODEL" ]] && OPTIONS+=" model=$(toml_string "$MODEL")"
if [[ "$MODE" == simulation && ${#SITE_DIRS[@]} -gt 0 ]]; then  # each virtual site's own folder
  joined=""
  for site_dir in "${SITE_DIRS[@]}"; do joined+="${joined:+:}$(abspath "$site_dir")"; done
  OPTIONS+=" site-data-dirs=$(toml_string "$joined")"
fi
if [[ ${#VALIDATE[@]} -gt 0 ]]; then  # an evaluation-only run: the models, checked by brainfl prepare
  [[ $BASELINES == 0 && -z "$RESUME_DIR" ]] || {
    echo "run.sh: error: --validate trains nothing: it takes no --baselines or --resume" >&2; exit 2
  }
  joined=""
  for model in "${VALIDATE[@]}"; do joined+="${joined:+:}$(abspath "$model")"; done
  OPTIONS+=" validate-models=$(toml_string "$joined")"
  [[ $ADAPT == 1 ]] && OPTIONS+=" validate-adapt=true"
elif [[ $ADAPT == 1 ]]; then
  echo "run.sh: error: --adapt goes with --validate MODEL" >&2; exit 2
fi
CONFIG_ARGS=()
for run_config in "${RUN_CONFIGS[@]}"; do CONFIG_ARGS+=(--run-config "$run_config"); done

if [[ $SECURE == 1 && $MODE == simulation ]]; then
  echo "run.sh: error: --secure applies to the deployment engine, not --simulation" >&2; exit 2
fi

PIDS=()
FLWR_HOME="$(mktemp -d "${TMPDIR:-/tmp}/brainfl-flwr.XXXXXX")"
export FLWR_HOME
# No usage telemetry leaves a hospital's machine (offline, each process would also wait for it at exit).
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
# The SuperExecs look for new work (a ClientApp or ServerApp to start) every second by default.
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"
trap 'rm -rf "$FLWR_HOME"' EXIT
RUN_CONFIG_FILE="$FLWR_HOME/run_config.toml"

# Check settings and data, and decode the images once, before any Flower process starts;
# every site is awaited before round 1 (wait-for-sites = num-partitions).
SITE_ARGS=()
for site_dir in "${SITE_DIRS[@]}"; do SITE_ARGS+=(--site-data-dir "$(abspath "$site_dir")"); done
brainfl prepare --app-dir "$ROOT" "${CONFIG_ARGS[@]}" --run-config "$OPTIONS" "${SITE_ARGS[@]}" \
  --await-all-sites --write-run-config "$RUN_CONFIG_FILE"
eval "$(python3 - "$RUN_CONFIG_FILE" <<'PY'
import shlex, sys, tomllib
config = tomllib.load(open(sys.argv[1], "rb"))
print(f"SITES={config['num-partitions']} ROUNDS={config['num-server-rounds']} MODEL={shlex.quote(config['model'])}")
PY
)"
mkdir -p "$LOG_DIR"
running() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }
stop_processes() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 20); do  # up to 10 s to stop gracefully, then force
    alive=0
    for pid in "${PIDS[@]}"; do running "$pid" && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_processes
  rm -rf "$FLWR_HOME"
  echo "outputs: $OUTPUT_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_port() {  # wait_for_port PORT PID NAME LOG
  for _ in $(seq 1 120); do
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || { echo "run.sh: error: $3 exited early, see $4" >&2; tail -5 "$4" >&2; exit 1; }
    sleep 0.5
  done
  echo "run.sh: error: $3 did not open port $1 within 60 s, see $4" >&2
  exit 1
}

# Another federation (or anything else) on our ports would take our SuperNodes or our `flwr run`.
last_port=$PORT
[[ "$MODE" == deployment ]] && last_port=$((PORT + SITES))
for ((port = PORT; port <= last_port; port++)); do
  if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; then
    echo "run.sh: error: port $port on 127.0.0.1 is in use (another run?); choose others with --port" >&2
    exit 2
  fi
done

if [[ $SECURE == 1 ]]; then
  CERTS_DIR="$(abspath "${CERTS_DIR:-$OUTPUT_DIR/certs}")"
  [[ -f "$CERTS_DIR/ca.crt" ]] || brainfl certs --output-dir "$CERTS_DIR" --sites "$SITES"
  for site_file in ca.crt server.pem server.key; do
    [[ -f "$CERTS_DIR/$site_file" ]] || { echo "run.sh: error: missing $CERTS_DIR/$site_file" >&2; exit 2; }
  done
  SUPERLINK_ARGS=(--ssl-ca-certfile "$CERTS_DIR/ca.crt" --ssl-certfile "$CERTS_DIR/server.pem"
    --ssl-keyfile "$CERTS_DIR/server.key" --enable-supernode-auth)
  CONNECTION="root-certificates = \"$CERTS_DIR/ca.crt\""
else
  SUPERLINK_ARGS=(--insecure)
  CONNECTION="insecure = true"
fi
SUPERLINK_ARGS+=(--port "$PORT" --disable-runtime-dependency-installation)
[[ "$MODE" == simulation ]] && SUPERLINK_ARGS+=(--simulation)
flower-superlink "${SUPERLINK_ARGS[@]}" >"$LOG_DIR/superlink.log" 2>&1 &
PIDS+=($!)
wait_for_port "$PORT" "${PIDS[-1]}" SuperLink "$LOG_DIR/superlink.log"

FEDERATION_ARGS=()
[[ "$MODE" == simulation ]] && FEDERATION_ARGS=(--federation-config "num-supernodes=$SITES")
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "brainfl"

[superlink.brainfl]
address = "127.0.0.1:$PORT"
$CONNECTION
TOML

if [[ "$MODE" == deployment ]]; then
  SUPERNODE_SECURITY=(--insecure)
    if [[ ${#SITE_DIRS[@]} -gt 0 && ${#SITE_DIRS[@]} -ne $SITES ]]; then
    echo "run.sh: error: --site-data-dir names ${#SITE_DIRS[@]} folders for $SITES sites" >&2; exit 2
  fi
  # The SuperNodes share this machine's cores: each site's TensorFlow gets cores / sites threads
  # (at least 1), so that sites training at once do not oversubscribe the cores.
  SITE_THREADS=$(( $(nproc) / SITES ))
  (( SITE_THREADS >= 1 )) || SITE_THREADS=1
  for ((site = 0; site < SITES; site++)); do
    if [[ ${#SITE_DIRS[@]} -gt 0 ]]; then
      NODE_DATA="partition-id=$site data-dir='$(abspath "${SITE_DIRS[$site]}")'"
    else
      NODE_DATA="partition-id=$site num-partitions=$SITES data-dir='$DATA_DIR'"
    fi
    if [[ $SECURE == 1 ]]; then
      # Only registered public keys may join: register each site's key with the SuperLink.
      flwr supernode register "$CERTS_DIR/site_$site.pub" brainfl >>"$LOG_DIR/superlink.log" 2>&1 ||
        { echo "run.sh: error: could not register $CERTS_DIR/site_$site.pub, see $LOG_DIR/superlink.log" >&2; exit 1; }
      SUPERNODE_SECURITY=(--root-certificates "$CERTS_DIR/ca.crt" --auth-supernode-private-key "$CERTS_DIR/site_$site")
    fi
    TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$SITE_THREADS}" \
      flower-supernode "${SUPERNODE_SECURITY[@]}" --superlink "127.0.0.1:$PORT" --port $((PORT + 1 + site)) \
      --node-config "$NODE_DATA log-dir='$LOG_DIR'" \
      >"$LOG_DIR/supernode_$site.log" 2>&1 &
    PIDS+=($!)
  done
  for ((site = 0; site < SITES; site++)); do
    wait_for_port $((PORT + 1 + site)) "${PIDS[$((site + 1))]}" "SuperNode $site" "$LOG_DIR/supernode_$site.log"
  done
fi

WORK="$ROUNDS rounds, model $MODEL"
if [[ ${#VALIDATE[@]} -gt 0 ]]; then
  WORK="validation of ${VALIDATE[*]}"
  if [[ $ADAPT == 1 ]]; then WORK+=", adapted at each site"; fi
fi
echo "$MODE run$([[ $SECURE == 1 ]] && echo ' (TLS, authenticated SuperNodes)'): $SITES sites, $WORK, data $DATA_DIR"
# In the background and waited for, so that a TERM or Ctrl-C reaches the cleanup at once.
flwr run "$ROOT" brainfl --stream "${FEDERATION_ARGS[@]}" --run-config "$RUN_CONFIG_FILE" 2>&1 | tee "$LOG_DIR/flwr_run.log" &
PIDS+=($!)
wait "${PIDS[-1]}"
grep -q "outputs written to" "$LOG_DIR/server.log" 2>/dev/null || {
  echo "run.sh: error: the run did not finish; see $LOG_DIR/server.log and $LOG_DIR/superlink.log" >&2
  exit 1
}
if [[ $BASELINES == 1 ]]; then
  stop_processes  # the baselines need no federation: the cores are theirs
  PIDS=()
  for kind in local pooled; do
    echo "baseline: brainfl $kind into $OUTPUT_DIR/baselines/$kind"
    brainfl "$kind" --app-dir "$ROOT" --run-config "$RUN_CONFIG_FILE" \
      --run-config "output-dir='$OUTPUT_DIR/baselines/$kind'" "${SITE_ARGS[@]}"
  done
  brainfl report "$OUTPUT_DIR" --baselines "$OUTPUT_DIR/baselines/local" "$OUTPUT_DIR/baselines/pooled"
fi
