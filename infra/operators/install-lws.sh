#!/usr/bin/env bash
# LeaderWorkerSet operator (pinned release manifests), needed by the module 5 LWS overlays.
source "$(dirname "$0")/../lib.sh"
require_cluster
KUBECTL="$(kubectl_bin)"
say "installing LeaderWorkerSet $LWS_VERSION"
"$KUBECTL" apply --server-side \
  -f "https://github.com/kubernetes-sigs/lws/releases/download/${LWS_VERSION}/manifests.yaml"
"$KUBECTL" -n lws-system rollout status deployment/lws-controller-manager --timeout=300s
