#!/usr/bin/env bash
# Load test of `llmrec serve`: starts the server on 127.0.0.1 (ml-1m-sas, EASE and
# MostPop fitted at startup), waits for /readyz, then drives POST /v1/recommend
# (a random known user per request, k = 10) with wrk (Debian's `wrk`) for
# DURATION seconds at each concurrency, one case at a time.
#   SASREC=RUN/best  adds SASRec from that checkpoint (trained on ml-1m-sas).
#   PALR=1           adds PALR reranking of EASE's top 20 with the local LLM
#                    (SmolLM2 on the CPU, 1 worker, a queue of 8; beyond it 503):
#                    "cold" asks for random users (nearly every answer generated),
#                    "warm" for 4 users whose answers are already cached.
# Prints a Markdown table (replies/s, successful replies/s, p50/p90/p99 latency
# over all replies, non-2xx replies: 503s when the LLM queue is full) and
# writes it as JSON to $OUT/serve-bench.json.
# Usage: [DURATION=20] [THREADS=1] [OUT=runs/bench-serve] [SASREC=..] [PALR=1]
#        scripts/bench-serve.sh [concurrency...]   (default concurrency: 1 8 64)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve.sh
command -v wrk >/dev/null || { echo "error: wrk is missing: apt-get install wrk" >&2; exit 1; }
LLMREC_DATA_DIR="$(cd "${LLMREC_DATA_DIR:-../shared/data}" && pwd)"
export LLMREC_DATA_DIR
cargo build --release -q -p llmrec
bin=$PWD/target/release/llmrec
out="${OUT:-runs/bench-serve}"
mkdir -p "$out"
port="${PORT:-18080}"
conc=("$@")
[ ${#conc[@]} -gt 0 ] || conc=(1 8 64)
work=$(mktemp -d)
cat >"$work/serve.toml" <<EOF
bind = "127.0.0.1:$port"
dataset = "ml-1m-sas"
[[models]]
name = "ease"
[[models]]
name = "mostpop"
EOF
# Cases: label, model, rerank, users drawn from 1..N.
cases=("ease ease none 6040" "mostpop mostpop none 6040")
if [ -n "${SASREC:-}" ]; then
  printf '[[models]]\nname = "sasrec"\ncheckpoint = "%s"\n' "$SASREC" >>"$work/serve.toml"
  cases+=("sasrec sasrec none 6040")
fi
if [ -n "${PALR:-}" ]; then
  printf '[llm]\nbackend = "local"\ncache = "%s/cache.redb"\nworkers = 1\nqueue = 8\n' "$work" >>"$work/serve.toml"
  cases+=("ease+palr(cold) ease palr 6040" "ease+palr(warm) ease palr 4")
fi
start_server "$bin" "$work/serve.toml" "$port" "$work/server.log"
users=$(curl -sf "http://127.0.0.1:$port/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["example_user"])')
[ -n "$users" ] || { echo "error: the server is not ready" >&2; exit 1; }
echo '[' >"$work/rows.json"
first=1
echo "| case | concurrency | replies/s | 2xx/s | p50 ms | p90 ms | p99 ms | non-2xx |"
echo "|---|---|---|---|---|---|---|---|"
for case in "${cases[@]}"; do
  read -r label model rerank nusers <<<"$case"
  if [ "$rerank" = palr ] && [ "$nusers" -le 16 ]; then
    # Warm: each user's answers go to the cache first.
    for u in $(seq 1 "$nusers"); do
      curl -sf -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$port/v1/recommend" \
        -d "{\"user_id\": \"$u\", \"k\": 10, \"model\": \"$model\", \"rerank\": \"palr\"}" >/dev/null
    done
  fi
  cat >"$work/post.lua" <<EOF
math.randomseed(7)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local u = math.random(1, $nusers)
  return wrk.format(nil, "/v1/recommend", nil, '{"user_id": "' .. u .. '", "k": 10, "model": "$model", "rerank": "$rerank"}')
end
done = function(summary, latency, requests)
  local f = io.open("$work/last.json", "w")
  f:write(string.format('{"requests": %d, "seconds": %f, "non2xx": %d, "p50": %f, "p90": %f, "p99": %f}',
    summary.requests, summary.duration / 1e6, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3))
  f:close()
end
EOF
  for c in "${conc[@]}"; do
    wrk -t "${THREADS:-1}" -c "$c" -d "${DURATION:-20}s" --timeout 60s -s "$work/post.lua" "http://127.0.0.1:$port" >/dev/null
    row=$(python3 - "$work/last.json" "$label" "$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["model"], r["concurrency"] = sys.argv[2], int(sys.argv[3])
r["rps"] = r["requests"] / r["seconds"]
r["ok_rps"] = (r["requests"] - r["non2xx"]) / r["seconds"]
print(json.dumps(r))
PY
)
    python3 - "$row" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
f = lambda x: f"{x:.0f}" if x >= 100 else f"{x:.2f}"
print(f"| {r['model']} | {r['concurrency']} | {f(r['rps'])} | {f(r['ok_rps'])} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['non2xx']} |")
PY
    [ $first = 1 ] || echo ',' >>"$work/rows.json"
    first=0
    echo "$row" >>"$work/rows.json"
  done
done
echo ']' >>"$work/rows.json"
cp "$work/rows.json" "$out/serve-bench.json"
echo "written: $out/serve-bench.json"
