#!/usr/bin/env bash
# The test command: fetches the small models, then runs every test of the
# workspace on the real datasets and models.
#
#   scripts/test.sh [cargo test arguments...]
#
# Datasets: $LLMREC_DATA_DIR, else ../shared/data beside the repository.
# Models:   $LLMREC_MODELS_DIR, else ./models (filled by scripts/fetch-models.sh).
#
# A test whose dataset or model is missing FAILS, naming what is missing and
# how to get it. Setting LLMREC_ALLOW_SKIP=1 lets such tests skip instead; this
# script then prints how many skipped and why, after cargo's own summary (cargo
# test hides the output of passing tests). It also prints the notes tests leave
# about what they exercised: which embedding kernels ran, and which kernels this
# CPU lacks (AMX, AVX-512) and so did not run; LLMREC_REQUIRE_CPU=amx,avx512
# makes those fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LLMREC_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    LLMREC_DATA_DIR=../shared/data
fi
if [ -n "${LLMREC_DATA_DIR:-}" ] && [ -d "$LLMREC_DATA_DIR" ]; then
    # Absolute: cargo runs each test binary from its own crate folder.
    LLMREC_DATA_DIR="$(cd "$LLMREC_DATA_DIR" && pwd)"
    export LLMREC_DATA_DIR
fi
export LLMREC_MODELS_DIR="${LLMREC_MODELS_DIR:-$PWD/models}"

if ! bash scripts/fetch-models.sh; then
    if [ -n "${LLMREC_ALLOW_SKIP:-}" ] && [ "${LLMREC_ALLOW_SKIP}" != 0 ]; then
        echo "fetch-models failed; LLMREC_ALLOW_SKIP is set, so the tests that need the models skip"
    else
        echo "error: scripts/fetch-models.sh failed (set LLMREC_ALLOW_SKIP=1 to run the other tests anyway)" >&2
        exit 1
    fi
fi

log="$(mktemp "${TMPDIR:-/tmp}/llmrec-test-log.XXXXXX")"
trap 'rm -f "$log"' EXIT
export LLMREC_TEST_LOG="$log"

status=0
cargo test --workspace "$@" || status=$?

echo
echo "== what the tests exercised"
notes=$(awk -F'\t' '$1 == "note" { print "  " $2 ": " $3 }' "$log")
if [ -n "$notes" ]; then echo "$notes"; else echo "  (no notes)"; fi
skips=$(awk -F'\t' '$1 == "skip"' "$log" | wc -l)
echo "== skipped: $skips test(s)"
awk -F'\t' '$1 == "skip" { print "  " $2 ": " $3 }' "$log"
if [ "$skips" -gt 0 ]; then
    echo "  (LLMREC_ALLOW_SKIP is set; without it these tests fail)"
fi
exit "$status"
