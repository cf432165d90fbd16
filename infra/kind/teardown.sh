#!/usr/bin/env bash
# Delete the kind cluster (and everything deployed in it).
source "$(dirname "$0")/../lib.sh"
need kind "Install it: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
kind delete cluster --name vllm-workshop
