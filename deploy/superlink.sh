#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink (brainfl federation), from environment variables.
#
#   deploy/superlink.sh [ENV_FILE]      (default: the file named by $BRAINFL_COORDINATOR_ENV, if any)
#
# Every setting is documented in deploy/coordinator.env.example; systemd runs this script from
# deploy/brainfl-superlink.service with that file as EnvironmentFile. The SuperLink serves TLS
# only (certificate and key from `brainfl certs`), admits only SuperNodes whose public keys were
# registered (deploy/coordinator.sh register), never installs an app's dependencies at run
# time, and runs each ServerApp in a subprocess. In Flower 1.42 its Fleet API (the hospitals),
# Control API (`flwr run`, `flwr supernode register`) and Runtime API (the ServerApp) share one
# HTTPS port: BRAINFL_LISTEN_HOST:BRAINFL_FLEET_PORT. The script execs flower-superlink, so the
# service manager holds its PID. BRAINFL_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

[[ $# -le 1 ]] || die "usage: ${0##*/} [ENV_FILE]"
load_env_file "${1:-${BRAINFL_COORDINATOR_ENV:-}}"
use_venv

require_file BRAINFL_CA_CERT "the federation's CA certificate, ca.crt"
require_file BRAINFL_SERVER_CERT "the SuperLink's TLS certificate, server.pem"
require_file BRAINFL_SERVER_KEY "the SuperLink's TLS private key, server.key"
require_port BRAINFL_FLEET_PORT
listen_host="${BRAINFL_LISTEN_HOST:-0.0.0.0}"
[[ "$listen_host" =~ ^[A-Za-z0-9.:-]+$ ]] || die "BRAINFL_LISTEN_HOST=$listen_host: expected an address"
if [[ -n "${BRAINFL_DATABASE:-}" ]]; then
  mkdir -p "$(dirname "$BRAINFL_DATABASE")"
fi
flower_environment

args=(
  --ssl-ca-certfile "$BRAINFL_CA_CERT"
  --ssl-certfile "$BRAINFL_SERVER_CERT"
  --ssl-keyfile "$BRAINFL_SERVER_KEY"
  --enable-supernode-auth
  --disable-runtime-dependency-installation
  --host "$listen_host"
  --port "${BRAINFL_FLEET_PORT:-9191}"
)
[[ -n "${BRAINFL_DATABASE:-}" ]] && args+=(--database "$BRAINFL_DATABASE")
start flower-superlink "${args[@]}"
