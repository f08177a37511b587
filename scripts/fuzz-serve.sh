#!/usr/bin/env bash
# Fuzzes `llmrec serve` from its own OpenAPI document with schemathesis (PyPI),
# bounded in examples per operation: no reply may be a 5xx other than 503.
# Starts the server on 127.0.0.1 (EASE fitted at startup, no LLM).
# Usage: [EXAMPLES=40] [SEED=1] [PORT=18090] [DATASET=ml-1m-sas] [LLMREC_BIN=path] scripts/fuzz-serve.sh
# LLMREC_BIN: an llmrec binary already built (CI passes the test build's);
# without it the release binary is built.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve.sh
command -v schemathesis >/dev/null || python3 -m pip install -q schemathesis
LLMREC_DATA_DIR="$(cd "${LLMREC_DATA_DIR:-../shared/data}" && pwd)"
export LLMREC_DATA_DIR
bin="${LLMREC_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -q -p llmrec
  bin=target/release/llmrec
fi
port="${PORT:-18090}"
work=$(mktemp -d)
cat >"$work/serve.toml" <<TOML
bind = "127.0.0.1:$port"
dataset = "${DATASET:-ml-1m-sas}"
[[models]]
name = "ease"
TOML
start_server "$bin" "$work/serve.toml" "$port" "$work/server.log"
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --max-examples "${EXAMPLES:-40}" --seed "${SEED:-1}" --checks not_a_server_error
kill -0 $server 2>/dev/null || { echo "error: the server died" >&2; cat "$work/server.log"; exit 1; }
echo "ok: no server errors, and the server is still up"
