#!/usr/bin/env bash
# Renders every kustomize overlay under deploy/kubernetes/overlays and validates the output
# offline (Kubernetes schemas, the LeaderWorkerSet and ServiceMonitor CRD schemas under
# deploy/schemas, moeflow's own consistency rules), and lints deploy/Dockerfile. No cluster
# and no container engine needed; the tools come from PyPI into a venv (pinned versions in
# deploy/requirements.txt).
#
#   deploy/check.sh                 # uses target/debug/moeflow too, if built, to check flags
#   MOEFLOW_BIN=path deploy/check.sh
#   DEPLOY_VENV=dir deploy/check.sh # venv location (default deploy/.venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${DEPLOY_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
bin="${MOEFLOW_BIN:-$here/../target/debug/moeflow}"
flags=()
if [ -x "$bin" ]; then
  flags=(--moeflow "$bin")
else
  echo "note: no moeflow binary at $bin; the manifests' flags are not checked against it"
fi
exec "$venv/bin/python" "$here/validate.py" \
  --kubectl "$venv/bin/kubectl" --hadolint "$venv/bin/hadolint" "${flags[@]}"
