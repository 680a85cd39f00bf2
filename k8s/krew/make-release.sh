#!/usr/bin/env bash
# Packs build/bin/kubectl-smtpd and smtpctl for Krew and writes the
# manifest next to the archive:
#   k8s/krew/make-release.sh VERSION BASE_URL [OUT_DIR]
# e.g. k8s/krew/make-release.sh 0.1.0 https://example.com/releases dist
# The binaries come from $BIN_DIR (default build/bin).
set -euo pipefail
cd "$(dirname "$0")/../.."
if (($# < 2)); then
  echo "usage: $0 VERSION BASE_URL [OUT_DIR]" >&2
  exit 2
fi
version=$1 base=${2%/} out=${3:-dist}
bin=${BIN_DIR:-build/bin}
for f in "$bin/kubectl-smtpd" "$bin/smtpctl" docs/SMTPCTL.md; do
  [[ -f $f ]] || { echo "$0: $f is missing (run scripts/dev build)" >&2; exit 1; }
done
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$bin/kubectl-smtpd" "$bin/smtpctl" docs/SMTPCTL.md "$stage/"
archive="kubectl-smtpd-v$version-linux-amd64.tar.gz"
tar -C "$stage" -czf "$out/$archive" kubectl-smtpd smtpctl SMTPCTL.md
sha=$(sha256sum "$out/$archive" | cut -d' ' -f1)
sed -e "s|@VERSION@|$version|g" -e "s|@URI@|$base/$archive|g" -e "s|@SHA256@|$sha|g" \
    -e "s|@HOMEPAGE@|$base|g" k8s/krew/smtpd.yaml.in > "$out/smtpd.yaml"
echo "$out/$archive"
echo "$out/smtpd.yaml"
