#!/usr/bin/env bash
# Install brainfl (with Flower, TensorFlow and Keras; no development tools) from a checkout,
# on a hospital's host or the coordinator: pip install -e CHECKOUT -c CHECKOUT/constraints.txt, without
# the [dev] extras.
#
#   deploy/install.sh [--venv DIR] [CHECKOUT]
#
# CHECKOUT defaults to the checkout this script is in. With --venv, the package goes into a
# virtual environment at DIR (made if missing); set BRAINFL_VENV=DIR in the env file so that the
# deploy scripts use it. Without it, into the Python of $BRAINFL_PYTHON (default: python3).
# Needs Python 3.11 or 3.12 on Linux x86-64 and the package index (or a local mirror that pip
# is configured to use).
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${BRAINFL_PYTHON:-python3}"
venv=""
if [[ "${1:-}" == --venv ]]; then
  [[ $# -ge 2 ]] || { echo "install.sh: error: --venv needs a folder" >&2; exit 2; }
  venv="$2"
  shift 2
fi
[[ $# -le 1 ]] || { echo "usage: deploy/install.sh [--venv DIR] [CHECKOUT]" >&2; exit 2; }
checkout="${1:-$(dirname "$DEPLOY_DIR")}"
[[ -f "$checkout/pyproject.toml" ]] || { echo "install.sh: error: $checkout has no pyproject.toml" >&2; exit 2; }

if [[ -n "$venv" ]]; then
  [[ -x "$venv/bin/python3" ]] || "$python" -m venv "$venv"
  python="$venv/bin/python3"
fi
# Editable: the installed package is the checkout's src/, and its pyproject.toml (which declares
# the run settings and their defaults, read by brainfl) stays beside it. Flower imports the
# apps' code from this installation, so the coordinator and every hospital install the same
# commit (update with git pull in the checkout).
"$python" -m pip install -e "$checkout" -c "$checkout/constraints.txt"
"$python" -m pip check
for tool in brainfl flower-superlink flower-supernode flwr; do
  command -v "${venv:+$venv/bin/}$tool" >/dev/null || { echo "install.sh: error: $tool missing after install" >&2; exit 1; }
done
echo "installed brainfl from $checkout into $("$python" -c 'import sys; print(sys.prefix)')"
