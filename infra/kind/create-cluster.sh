#!/usr/bin/env bash
# kind cluster for the CPU overlay (needs Docker or Podman and 8 GB free memory), then metrics-server for the
# CPU HPA. Deploy with: make deploy OVERLAY=cpu-lab
source "$(dirname "$0")/../lib.sh"
need kind "Install it: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need docker "kind runs its nodes as containers: install Docker (or set KIND_EXPERIMENTAL_PROVIDER=podman)."
docker info >/dev/null 2>&1 || die "the Docker daemon is not running"
if kind get clusters | grep -qx vllm-workshop; then
  say "kind cluster vllm-workshop exists"
else
  say "creating kind cluster vllm-workshop"
  kind create cluster --config "$INFRA_DIR/kind/kind-config.yaml"
fi
HELM="$(helm_bin)"
"$HELM" repo add metrics-server https://kubernetes-sigs.github.io/metrics-server/ --force-update >/dev/null
"$HELM" upgrade --install metrics-server metrics-server/metrics-server --namespace kube-system \
  --set 'args={--kubelet-insecure-tls}' --wait
"$PY" -m vllm_workshop preflight --accelerator cpu
