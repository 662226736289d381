#!/usr/bin/env bash
# The coordinator's operator commands against its SuperLink (started by deploy/superlink.sh).
#
#   deploy/coordinator.sh [--env FILE] register SITE.pub...   admit hospitals (their public keys)
#   deploy/coordinator.sh [--env FILE] list                   the SuperNodes registered and connected
#   deploy/coordinator.sh [--env FILE] run --run-config CONF  start a federated run and stream its log
#   deploy/coordinator.sh [--env FILE] config                 only write the Flower CLI config, print it
#
# FILE defaults to $BRAINFL_COORDINATOR_ENV (the same file as the SuperLink's; settings:
# deploy/coordinator.env.example). Each command first writes $BRAINFL_FLWR_HOME/config.toml,
# which names the SuperLink's address (BRAINFL_SUPERLINK_ADDRESS) and the CA that its
# certificate must chain to, under the name BRAINFL_FEDERATION; the Flower CLI (`flwr`) runs
# with FLWR_HOME=$BRAINFL_FLWR_HOME, so the user's own ~/.flwr is left alone.
# `run` passes its arguments to `flwr run <BRAINFL_APP_DIR> <federation> --stream` unchanged:
# give the run's settings as one --run-config (a TOML file or "key=value ..." pairs; `brainfl
# prepare --run-config ... --write-run-config FILE` checks and combines several). The ServerApp
# writes its outputs to the run config's output-dir, on this host.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

usage() {
  sed -n '4,7s/^# \{0,3\}/  /p' "${BASH_SOURCE[0]}"
}

env_file="${BRAINFL_COORDINATOR_ENV:-}"
if [[ "${1:-}" == --env ]]; then
  [[ $# -ge 2 ]] || die "--env needs a file"
  env_file="$2"
  shift 2
fi
[[ $# -ge 1 ]] || { usage >&2; exit 2; }
command="$1"
shift
load_env_file "$env_file"
use_venv

require_file BRAINFL_CA_CERT "the federation's CA certificate, ca.crt"
require_port BRAINFL_FLEET_PORT
listen_host="${BRAINFL_LISTEN_HOST:-0.0.0.0}"
case "$listen_host" in
  0.0.0.0 | "::") default_address="127.0.0.1:${BRAINFL_FLEET_PORT:-9191}" ;;
  *:*) default_address="[$listen_host]:${BRAINFL_FLEET_PORT:-9191}" ;;
  *) default_address="$listen_host:${BRAINFL_FLEET_PORT:-9191}" ;;
esac
export BRAINFL_SUPERLINK_ADDRESS="${BRAINFL_SUPERLINK_ADDRESS:-$default_address}"
require_address BRAINFL_SUPERLINK_ADDRESS
federation="${BRAINFL_FEDERATION:-brainfl}"
[[ "$federation" =~ ^[A-Za-z0-9_-]+$ ]] || die "BRAINFL_FEDERATION=$federation: letters, digits, - and _ only"
app_dir="${BRAINFL_APP_DIR:-$(dirname "$DEPLOY_DIR")}"
export FLWR_HOME="${BRAINFL_FLWR_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/brainfl/flwr}"
[[ "$BRAINFL_CA_CERT" != *[\"\\]* ]] || die "BRAINFL_CA_CERT: a path with \" or \\ cannot go into config.toml"
flower_environment

mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<TOML
# Written by deploy/coordinator.sh: the Flower CLI's connection to this federation's SuperLink.
[superlink]
default = "$federation"

[superlink.$federation]
address = "$BRAINFL_SUPERLINK_ADDRESS"
root-certificates = "$(cd "$(dirname "$BRAINFL_CA_CERT")" && pwd)/$(basename "$BRAINFL_CA_CERT")"
TOML

case "$command" in
  config)
    echo "# $FLWR_HOME/config.toml (use it with: FLWR_HOME=$FLWR_HOME flwr ...)"
    cat "$FLWR_HOME/config.toml"
    ;;
  register)
    [[ $# -ge 1 ]] || die "register needs one or more public keys (site_<n>.pub)"
    for key in "$@"; do
      [[ -f "$key" ]] || die "no such public key: $key"
      flwr supernode register "$key" "$federation" || die "could not register $key"
    done
    ;;
  list | ls)
    flwr supernode list "$federation"
    ;;
  run)
    [[ -f "$app_dir/pyproject.toml" ]] || die "BRAINFL_APP_DIR=$app_dir: no pyproject.toml (the app's checkout)"
    exec flwr run "$app_dir" "$federation" --stream "$@"
    ;;
  -h | --help | help)
    usage
    ;;
  *)
    usage >&2
    die "unknown command '$command'"
    ;;
esac
