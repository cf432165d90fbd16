#!/usr/bin/env bash
# Cluster Autoscaler (pinned chart and image): adds a node to a node group when a pod is pending for one, and
# removes idle nodes. The accelerator node groups start at zero; their labels, taints and device counts are
# node-template tags (propagateASGTags and tags in cluster.yaml), so the autoscaler can scale them from zero.
# Its IAM role comes from eksctl (iam.serviceAccounts: kube-system/cluster-autoscaler).
source "$(dirname "$0")/../lib.sh"
require_cluster
HELM="$(helm_bin)"
CLUSTER="${CLUSTER:-vllm-workshop}"
REGION="${AWS_REGION:-us-west-2}"
say "installing cluster-autoscaler chart $CLUSTER_AUTOSCALER_CHART_VERSION (image $CLUSTER_AUTOSCALER_IMAGE_TAG)"
"$HELM" repo add autoscaler https://kubernetes.github.io/autoscaler --force-update >/dev/null
"$HELM" upgrade --install cluster-autoscaler autoscaler/cluster-autoscaler --namespace kube-system \
  --version "$CLUSTER_AUTOSCALER_CHART_VERSION" \
  --set "image.tag=$CLUSTER_AUTOSCALER_IMAGE_TAG" \
  --set "autoDiscovery.clusterName=$CLUSTER" --set "awsRegion=$REGION" \
  --set "rbac.serviceAccount.create=false" --set "rbac.serviceAccount.name=cluster-autoscaler" \
  --set-json 'nodeSelector={"workshop.vllm.ai/accelerator":"none"}' \
  --set "extraArgs.balance-similar-node-groups=true" --set "extraArgs.scale-down-unneeded-time=10m" \
  --wait
