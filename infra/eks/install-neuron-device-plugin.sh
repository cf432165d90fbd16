#!/usr/bin/env bash
# AWS Neuron device plugin and scheduler extension (pinned chart): advertises aws.amazon.com/neuroncore on inf2
# nodes, and runs a kube-scheduler named my-scheduler that gives a pod contiguous NeuronCores. The Neuron
# overlays ask for it (schedulerName: my-scheduler in components/neuron-inf2).
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
say "installing neuron-helm-chart $NEURON_HELM_CHART_VERSION (device plugin + scheduler extension)"
"$HELM" upgrade --install neuron-helm-chart oci://public.ecr.aws/neuron/neuron-helm-chart \
  --namespace kube-system --version "$NEURON_HELM_CHART_VERSION" \
  --set "npd.enabled=false" \
  --set "scheduler.enabled=true" \
  --set "scheduler.customScheduler.fullnameOverride=my-scheduler" \
  --set-json 'devicePlugin.tolerations=[{"key":"aws.amazon.com/neuron","operator":"Exists","effect":"NoSchedule"}]' \
  --wait
"$PY" -m vllm_workshop preflight --accelerator neuron
