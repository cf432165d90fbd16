#!/usr/bin/env bash
# metrics-server (CPU HPA), kube-prometheus-stack (ServiceMonitor -> Prometheus) and prometheus-adapter
# (vLLM metrics as custom metrics for the HPA), all pinned.
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
"$HELM" repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
"$HELM" repo add metrics-server https://kubernetes-sigs.github.io/metrics-server/ --force-update >/dev/null
say "metrics-server"
"$HELM" upgrade --install metrics-server metrics-server/metrics-server --namespace kube-system --wait
say "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
"$HELM" upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --namespace monitoring --create-namespace --version "$KUBE_PROMETHEUS_STACK_VERSION" \
  --values "$INFRA_DIR/monitoring/kube-prometheus-stack-values.yaml" --wait
say "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION"
"$HELM" upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \
  --namespace monitoring --version "$PROMETHEUS_ADAPTER_VERSION" \
  --values "$INFRA_DIR/monitoring/prometheus-adapter-values.yaml" --wait
say "dcgm-exporter (GPU nodes) and its ServiceMonitor"
"$HELM" uninstall dcgm-exporter --namespace monitoring >/dev/null 2>&1 || true  # the Helm release of earlier versions
"$(kubectl_bin)" apply -f "$INFRA_DIR/monitoring/dcgm-exporter.yaml"
say "neuron-monitor (Inferentia2 nodes) and its PodMonitor"
"$(kubectl_bin)" apply -f "$INFRA_DIR/monitoring/neuron-monitor.yaml"
