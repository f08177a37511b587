#!/usr/bin/env bash
# Benchmarks the baselines: one process per (dataset, model), so that wall time
# and peak memory belong to that model alone. Prints a Markdown table.
# Usage: [TIES=pessimistic|expected] scripts/bench-baselines.sh [datasets...]
#   (default: ml-100k ml-1m-sas amazon-beauty; ties: pessimistic, the evaluator's default)
set -euo pipefail
cd "$(dirname "$0")/.."
LLMREC_DATA_DIR="$(cd "${LLMREC_DATA_DIR:-../shared/data}" && pwd)"
export LLMREC_DATA_DIR
cargo build --release -q -p llmrec
bin=target/release/llmrec
out=$(mktemp -d)
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(ml-100k ml-1m-sas amazon-beauty)
echo "| dataset | model | HR@10 | NDCG@10 | MRR@10 | fit s | eval s | wall s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for d in "${datasets[@]}"; do
  for m in mostpop itemknn bpr ease; do
    /usr/bin/time -f "%e %M" -o "$out/time" "$bin" eval --dataset "$d" --model "$m" --ks 10 --ties "${TIES:-pessimistic}" --out "$out/runs" >/dev/null 2>"$out/err" || { cat "$out/err"; exit 1; }
    read -r wall rss_kb <"$out/time"
    run=$(ls -td "$out"/runs/* | head -1)
    python3 - "$run/metrics.json" "$d" "$m" "$wall" "$rss_kb" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
m = r["metrics"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {m['MRR@10']:.4f} | "
      f"{r['fit_seconds']:.2f} | {r['eval_seconds']:.2f} | {float(sys.argv[4]):.2f} | {int(sys.argv[5])/1024:.0f} |")
PY
  done
done
rm -rf "$out"
