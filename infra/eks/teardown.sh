#!/usr/bin/env bash
# Delete the workshop's workloads, then the EKS cluster (and its node groups). The EFS file system is kept
# unless DELETE_EFS=1: the storage class (efs-storageclass.yaml) gives a re-created claim the same directory,
# so model downloads and Neuron artifacts survive a rebuild.
source "$(dirname "$0")/../lib.sh"
need eksctl "Install it: https://eksctl.io/installation/"
CLUSTER="${CLUSTER:-vllm-workshop}"
REGION="${AWS_REGION:-us-west-2}"
if "$PY" -c 'from vllm_workshop.k8s import cluster_status; raise SystemExit(0 if cluster_status()[0] else 1)'; then
  for overlay in $("$PY" -c 'from vllm_workshop.k8s import all_overlays; print(" ".join(p.name for p in all_overlays()))'); do
    "$PY" -m vllm_workshop k8s undeploy "$overlay" || true
  done
fi
say "deleting EKS cluster $CLUSTER"
eksctl delete cluster --name "$CLUSTER" --region "$REGION" --wait
if [[ "${DELETE_EFS:-0}" == "1" ]]; then
  FS_ID="$(aws efs describe-file-systems --region "$REGION" --query "FileSystems[?Name=='$CLUSTER-models'].FileSystemId | [0]" --output text)"
  [[ "$FS_ID" != "None" ]] && aws efs delete-file-system --region "$REGION" --file-system-id "$FS_ID"
fi
