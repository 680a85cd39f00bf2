#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) from its seed corpus
# (tests/fuzz/corpus/TARGET, read-only: new inputs go to a temporary copy).
#   tests/fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]
# A crash stops with its input saved under $FUZZ_ARTIFACTS (default a
# temporary folder, printed); turn it into a unit test.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$1 seconds=${2:-10}
shift $(( $# >= 2 ? 2 : 1 ))
targets=("$@")
((${#targets[@]})) || targets=(fuzz_session fuzz_data fuzz_address fuzz_reply fuzz_mime fuzz_dsn fuzz_config)
work=$(mktemp -d)
artifacts=${FUZZ_ARTIFACTS:-$work/artifacts}
mkdir -p "$artifacts"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  cp -r "tests/fuzz/corpus/$t/." "$work/$t/" 2>/dev/null || true
  if ASAN_OPTIONS=detect_leaks=1 "$build/bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$artifacts/$t-" -print_final_stats=0 "$work/$t" >"$work/$t.log" 2>&1; then
    echo "fuzz: $t: ok ($(grep -Eo "Done [0-9]+ runs in [0-9]+ second" "$work/$t.log" | tail -1 | cut -d" " -f2) runs)"
  else
    echo "fuzz: $t FAILED; last lines:" >&2
    tail -30 "$work/$t.log" >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  cp -r "$artifacts" "${FUZZ_ARTIFACTS:-/tmp/smtpd-fuzz-artifacts}" 2>/dev/null || true
  echo "fuzz: failed: ${failed[*]} (inputs in ${FUZZ_ARTIFACTS:-/tmp/smtpd-fuzz-artifacts})" >&2
  exit 1
fi
