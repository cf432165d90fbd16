#!/usr/bin/env bash
# Create the EKS cluster, then the cluster-wide pieces every overlay needs. Costs money while it runs:
# delete it with infra/eks/teardown.sh.
source "$(dirname "$0")/../lib.sh"
need eksctl "Install it: https://eksctl.io/installation/"
need aws "Install the AWS CLI and run \`aws configure\`."
aws sts get-caller-identity >/dev/null || die "AWS credentials are not configured (aws sts get-caller-identity failed)"
say "creating EKS cluster from $INFRA_DIR/eks/cluster.yaml (about 20 minutes)"
# eksctl would install its own NVIDIA and Neuron device plugins on accelerated node groups; the pinned charts
# below install them instead (two plugins on one node would advertise the devices twice).
eksctl create cluster -f "$INFRA_DIR/eks/cluster.yaml" --install-nvidia-plugin=false --install-neuron-plugin=false
"$INFRA_DIR/eks/create-efs-storageclass.sh"
"$INFRA_DIR/eks/install-cluster-autoscaler.sh"  # first: the accelerator groups start empty
"$INFRA_DIR/eks/install-nvidia-device-plugin.sh"
"$INFRA_DIR/eks/install-neuron-device-plugin.sh"
"$INFRA_DIR/monitoring/install-monitoring.sh"
"$PY" -m vllm_workshop preflight --accelerator cpu
