#!/usr/bin/env bash
# An EFS file system (kept across cluster rebuilds) and the `efs-sc` storage class (efs-storageclass.yaml).
source "$(dirname "$0")/../lib.sh"
need aws "Install the AWS CLI."
require_cluster
KUBECTL="$(kubectl_bin)"
CLUSTER="${CLUSTER:-vllm-workshop}"
REGION="${AWS_REGION:-us-west-2}"
VPC_ID="$(aws eks describe-cluster --name "$CLUSTER" --region "$REGION" --query cluster.resourcesVpcConfig.vpcId --output text)"
SG_ID="$(aws eks describe-cluster --name "$CLUSTER" --region "$REGION" --query cluster.resourcesVpcConfig.clusterSecurityGroupId --output text)"
FS_ID="$(aws efs describe-file-systems --region "$REGION" --query "FileSystems[?Name=='$CLUSTER-models'].FileSystemId | [0]" --output text)"
if [[ "$FS_ID" == "None" || -z "$FS_ID" ]]; then
  say "creating EFS file system $CLUSTER-models"
  FS_ID="$(aws efs create-file-system --region "$REGION" --encrypted --tags Key=Name,Value="$CLUSTER-models" --query FileSystemId --output text)"
  aws efs wait file-system-available --region "$REGION" --file-system-id "$FS_ID" 2>/dev/null || sleep 30
fi
# Mount targets in the (new) cluster's subnets; a kept file system has them in the old VPC only.
for subnet in $(aws ec2 describe-subnets --region "$REGION" --filters Name=vpc-id,Values="$VPC_ID" Name=tag:kubernetes.io/role/internal-elb,Values=1 --query 'Subnets[].SubnetId' --output text); do
  aws efs create-mount-target --region "$REGION" --file-system-id "$FS_ID" --subnet-id "$subnet" --security-groups "$SG_ID" >/dev/null 2>&1 || true
done
say "storage class efs-sc -> $FS_ID"
sed "s/FILE_SYSTEM_ID/$FS_ID/" "$INFRA_DIR/eks/efs-storageclass.yaml" | "$KUBECTL" apply -f -
