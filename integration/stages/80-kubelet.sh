#!/bin/sh
# Stage 80: a real kubelet (v1.37.2, with etcd and kube-apiserver, built from the Go module proxy
# and cached by version) on rsrun-cri, driven through kubectl: the 18 scenarios of
# integration/kubelet/scenarios.py (Kubernetes in Action's workloads). Every scenario must pass.
set -eu
cd "${RSRUN_TOP:-$(dirname "$0")/../..}"
command -v go >/dev/null 2>&1 || { echo "go is required (the kubelet is built from the Go module proxy)"; exit 1; }
exec integration/kubelet/run.sh
