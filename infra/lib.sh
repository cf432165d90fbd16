#!/usr/bin/env bash
# Shared helpers for the infra scripts: pinned versions, tool lookup and clear failures.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
PY="$REPO_DIR/.venv/bin/python"

# Pinned chart and operator versions (bump deliberately, then re-run `make validate`).
NVIDIA_DEVICE_PLUGIN_CHART_VERSION="0.17.4"
NEURON_HELM_CHART_VERSION="1.3.0"
KUBE_PROMETHEUS_STACK_VERSION="77.12.0"
PROMETHEUS_ADAPTER_VERSION="5.2.0"
LWS_VERSION="v0.7.0"
KUBERAY_OPERATOR_VERSION="1.4.2"
CLUSTER_AUTOSCALER_CHART_VERSION="9.38.0"
CLUSTER_AUTOSCALER_IMAGE_TAG="v1.33.0"  # the autoscaler's minor version follows the cluster's (1.33)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need() {  # need TOOL HINT
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed. $2"
}

kubectl_bin() {  # kubectl on PATH when new enough, else the pinned one in tools/bin (installed on demand)
  [[ -x "$PY" ]] || die "run \`make install\` first (no $PY)"
  "$PY" -c 'from vllm_workshop.kubetools import find_kubectl; print(find_kubectl())'
}

helm_bin() {
  [[ -x "$PY" ]] || die "run \`make install\` first (no $PY)"
  "$PY" -c 'from vllm_workshop.kubetools import find_helm; print(find_helm())'
}

require_cluster() {  # stops with the reason when no cluster is reachable
  "$PY" -c 'from vllm_workshop.k8s import require_cluster; require_cluster()' \
    || die "no reachable cluster (see above); nothing was changed"
}
