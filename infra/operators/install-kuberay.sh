#!/usr/bin/env bash
# KubeRay operator (pinned Helm chart), needed by the module 5 RayService overlay.
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
say "installing kuberay-operator $KUBERAY_OPERATOR_VERSION"
"$HELM" repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
"$HELM" upgrade --install kuberay-operator kuberay/kuberay-operator \
  --namespace kuberay-system --create-namespace --version "$KUBERAY_OPERATOR_VERSION" --wait
