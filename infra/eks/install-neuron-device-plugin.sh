#!/usr/bin/env bash
# AWS Neuron device plugin and scheduler extension (pinned chart): advertises aws.amazon.com/neuroncore on inf2.
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
say "installing neuron-helm-chart $NEURON_HELM_CHART_VERSION"
"$HELM" upgrade --install neuron-helm-chart oci://public.ecr.aws/neuron/neuron-helm-chart \
  --namespace kube-system --version "$NEURON_HELM_CHART_VERSION" \
  --set "npd.enabled=false" \
  --set-json 'devicePlugin.tolerations=[{"key":"aws.amazon.com/neuron","operator":"Exists","effect":"NoSchedule"}]' \
  --wait
"$PY" -m vllm_workshop preflight --accelerator neuron
