# shellcheck shell=bash
# Shared helpers of the deploy/ scripts (sourced, not run).
#
# Settings come from the environment and, optionally, an env file of KEY=VALUE
# lines in systemd's EnvironmentFile format: blank lines and lines starting
# with '#' or ';' are skipped, a value may be wrapped in "..." or '...', and
# nothing is expanded or executed. A variable already set in the environment
# wins over the file, so `BRAINFL_LOG_DIR=/tmp/x deploy/supernode.sh site.env`
# overrides one setting for one start.

die() {
  echo "${0##*/}: error: $*" >&2
  exit 2
}

# load_env_file FILE: export the file's variables that the environment does not set yet ("" = none).
load_env_file() {
  local file="$1" line key value number=0
  [[ -z "$file" ]] && return 0
  [[ -f "$file" && -r "$file" ]] || die "env file not found or not readable: $file"
  while IFS= read -r line || [[ -n "$line" ]]; do
    number=$((number + 1))
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*([#\;].*)?$ ]] && continue
    if [[ ! "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      die "$file:$number: not KEY=VALUE: $line"
    fi
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    value="${value%"${value##*[![:space:]]}"}"  # trailing blanks
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    fi
    [[ -n "${!key+set}" ]] || export "$key=$value"
  done <"$file"
}

# use_venv: put $BRAINFL_VENV/bin (a virtual environment made by deploy/install.sh --venv) first on PATH.
use_venv() {
  if [[ -n "${BRAINFL_VENV:-}" ]]; then
    [[ -x "$BRAINFL_VENV/bin/python3" ]] || die "BRAINFL_VENV=$BRAINFL_VENV is not a virtual environment"
    export PATH="$BRAINFL_VENV/bin:$PATH"
  fi
}

# require NAME WHAT: NAME must be set and not empty.
require() {
  [[ -n "${!1:-}" ]] || die "$1 is not set ($2); see the env file example in deploy/"
}

# require_file NAME WHAT: NAME must name a readable file.
require_file() {
  require "$1" "$2"
  [[ -f "${!1}" && -r "${!1}" ]] || die "$1=${!1}: no such readable file ($2)"
}

# require_address NAME: NAME must be host:port (a name, an IPv4 address or [IPv6]).
require_address() {
  require "$1" "host:port"
  [[ "${!1}" =~ ^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]] || die "$1=${!1}: expected host:port"
}

# require_port NAME: NAME, when set, must be a port number.
require_port() {
  [[ -z "${!1:-}" || ( "${!1}" =~ ^[0-9]{1,5}$ && "${!1}" -ge 1 && "${!1}" -le 65535 ) ]] ||
    die "$1=${!1}: expected a port number (1-65535)"
}

# no_single_quote NAME...: values that go into a --node-config 'text' cannot hold a single quote.
no_single_quote() {
  local name
  for name in "$@"; do
    [[ "${!name}" != *"'"* ]] || die "$name=${!name}: a path with a single quote cannot be passed to Flower"
  done
}

# flower_environment: what every Flower process of a site or the coordinator should run with.
flower_environment() {
  # No usage telemetry and no update check leave the host (offline, each process would also
  # wait for them when it exits).
  export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
  export FLWR_DISABLE_UPDATE_CHECK="${FLWR_DISABLE_UPDATE_CHECK:-1}"
  # How often the SuperExec asks for a new ClientApp/ServerApp task (Flower's default: 1 s, the
  # latency each message pays before its app process starts).
  export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"
}

# start COMMAND ARGS...: exec the command (the service manager keeps the PID), or print it with
# BRAINFL_DRY_RUN=1 (to check a configuration without starting anything).
start() {
  if [[ "${BRAINFL_DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
    exit 0
  fi
  command -v "$1" >/dev/null || die "$1 not found on PATH (run deploy/install.sh, or set BRAINFL_VENV)"
  exec "$@"
}
