#!/usr/bin/env bash
# Start this hospital's Flower SuperNode (brainfl site), from environment variables.
#
#   deploy/supernode.sh [ENV_FILE]      (default: the file named by $BRAINFL_SITE_ENV, if any)
#
# Every setting is documented in deploy/site.env.example; systemd runs this script from
# deploy/brainfl-supernode.service with that file as EnvironmentFile. The SuperNode makes only
# outgoing connections, to the coordinator's SuperLink (TLS, verified against the federation's
# CA; the site authenticates with its private key); the one port it opens, where its
# ClientApp processes fetch their work, is bound to 127.0.0.1. It trains on the scans in
# BRAINFL_DATA_DIR, which never leave this host. The script execs flower-supernode, so the
# service manager holds its PID. BRAINFL_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

[[ $# -le 1 ]] || die "usage: ${0##*/} [ENV_FILE]"
load_env_file "${1:-${BRAINFL_SITE_ENV:-}}"
use_venv

require_address BRAINFL_SUPERLINK
require_file BRAINFL_CA_CERT "the federation's CA certificate, ca.crt"
require_file BRAINFL_SITE_KEY "this site's private key, site_<n> from brainfl certs"
require BRAINFL_DATA_DIR "this hospital's data folder"
[[ -d "$BRAINFL_DATA_DIR" ]] || die "BRAINFL_DATA_DIR=$BRAINFL_DATA_DIR: no such folder"
require BRAINFL_LOG_DIR "where client_<n>.log goes"
require_port BRAINFL_CLIENTAPP_PORT
[[ -z "${BRAINFL_SITE_ID:-}" || "$BRAINFL_SITE_ID" =~ ^[0-9]+$ ]] || die "BRAINFL_SITE_ID=$BRAINFL_SITE_ID: expected a whole number"
no_single_quote BRAINFL_DATA_DIR BRAINFL_LOG_DIR
mkdir -p "$BRAINFL_LOG_DIR"
if [[ -n "$(find "$BRAINFL_SITE_KEY" -maxdepth 0 -perm /077 2>/dev/null)" ]]; then
  echo "${0##*/}: warning: $BRAINFL_SITE_KEY is readable by other users; chmod 600 it" >&2
fi
flower_environment

node_config="data-dir='$BRAINFL_DATA_DIR' log-dir='$BRAINFL_LOG_DIR'"
# Without num-partitions, partition-id only names the site (client_<n>.log, "site <n>" in its log).
[[ -n "${BRAINFL_SITE_ID:-}" ]] && node_config="partition-id=$BRAINFL_SITE_ID $node_config"
# Where the site saves its personalized models (fine-tune-epochs, fedbn), one folder per run.
if [[ -n "${BRAINFL_OUTPUT_DIR:-}" ]]; then
  no_single_quote BRAINFL_OUTPUT_DIR
  mkdir -p "$BRAINFL_OUTPUT_DIR"
  node_config="$node_config output-dir='$BRAINFL_OUTPUT_DIR'"
fi

args=(
  --superlink "$BRAINFL_SUPERLINK"
  --root-certificates "$BRAINFL_CA_CERT"
  --auth-supernode-private-key "$BRAINFL_SITE_KEY"
  --node-config "$node_config"
  --host 127.0.0.1
)
[[ -n "${BRAINFL_CLIENTAPP_PORT:-}" ]] && args+=(--port "$BRAINFL_CLIENTAPP_PORT")
start flower-supernode "${args[@]}"
