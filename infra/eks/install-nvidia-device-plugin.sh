#!/usr/bin/env bash
# NVIDIA device plugin (pinned chart): advertises nvidia.com/gpu on the GPU nodes. The chart's default node
# affinity only admits nodes labelled nvidia.com/gpu.present=true (or NFD's PCI labels): the GPU node groups
# carry that label (infra/eks/cluster.yaml).
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
say "installing nvidia-device-plugin chart $NVIDIA_DEVICE_PLUGIN_CHART_VERSION"
"$HELM" repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update >/dev/null
"$HELM" upgrade --install nvdp nvdp/nvidia-device-plugin --namespace nvidia-device-plugin --create-namespace \
  --version "$NVIDIA_DEVICE_PLUGIN_CHART_VERSION" \
  --set-json 'nodeSelector={"workshop.vllm.ai/accelerator":"nvidia"}' \
  --set-json 'tolerations=[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]' \
  --wait
"$PY" -m vllm_workshop preflight --accelerator nvidia
