#!/usr/bin/env bash
# TIGER at the paper's shape on a GPU machine that has no Rust toolchain.
#
# Prepare (on the build machine, from the repository root; `gpu/` is ignored):
#   scripts/build-cuda.sh
#   mkdir -p gpu/data && cp -r "$LLMREC_DATA_DIR/amazon-beauty" gpu/data/
#   strip -o /tmp/llmrec target-cuda/release/llmrec && gzip -9c /tmp/llmrec > gpu/llmrec.gz
#   llmrec embed --dataset amazon-beauty --out gpu/beauty.minilm.emb
#   (optional) Semantic IDs of an earlier run: gpu/ids/semantic_ids.json
#   (optional) a table with collaborative fusion: gpu/ids-collab/semantic_ids.json
# Run there, from the repository root:
#   TRAIN_S=400 SCHEMES="rq-vae" bash scripts/gpu-tiger.sh
# Logs, `nvidia-smi dmon` samples and a tarball of the run folders (checkpoints
# left out) go to $OUT (default /tmp/out); so do the best weights of the rq-vae
# run, in 15 MB parts (`cat best.safetensors.part* > model.safetensors`), when
# at most 3 schemes run (the device tool brings back 8 files).
# TRAIN_S bounds each training run; SCHEMES run at once on the one GPU (rq-vae,
# lsh, random, and collab: rq-vae with gpu/ids-collab and
# ids.collab.share=$COLLAB_SHARE, default 0.3). EXTRA adds flags to every run, e.g. the
# paper's own rate (configs/tiger-paper.toml ships 0.001 constant, BENCHMARKS.md):
#   EXTRA="--set train.lr=0.01 --set train.constant_steps=10000"
# or, for a short run, a validation sample instead of all users (~30 s each):
#   EXTRA="--set train.valid_users=5000"
# GRACE_S (default 150) is how long past TRAIN_S a run may take to finish its
# epoch and the test evaluation before it is killed.
set -u
OUT=${OUT:-/tmp/out}
TRAIN_S=${TRAIN_S:-270}
SCHEMES=${SCHEMES:-"rq-vae lsh random"}
CONFIG=${CONFIG:-configs/tiger-paper.toml}
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
GPU_DIR=$PWD/gpu
source "$(dirname "$0")/gpu-env.sh"
runs=/tmp/runs
pids=()
nvidia-smi dmon -s u -d 5 > "$OUT/dmon.log" 2>&1 &
dmon=$!
for s in $SCHEMES; do
  scheme=$s
  ids=()
  if [ "$s" = rq-vae ] && [ -f gpu/ids/semantic_ids.json ]; then
    ids=(--ids gpu/ids/semantic_ids.json)
  elif [ "$s" = collab ]; then
    scheme=rq-vae
    ids=(--ids gpu/ids-collab/semantic_ids.json --set "ids.collab.share=${COLLAB_SHARE:-0.3}")
  fi
  timeout $((TRAIN_S + ${GRACE_S:-150})) /tmp/llmrec tiger train --dataset amazon-beauty \
    --config "$CONFIG" --scheme "$scheme" --embeddings gpu/beauty.minilm.emb \
    --device cuda --max-seconds "$TRAIN_S" "${ids[@]}" "${extra[@]}" \
    --out "$runs/$s" > "$OUT/tiger-$s.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
kill "$dmon"
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' -C /tmp runs
best=$(find "$runs/rq-vae" -path '*train/best/*.safetensors' 2>/dev/null | head -1)
if [ -n "$best" ] && [ "$(ls "$OUT" | wc -l)" -le 6 ]; then
  split -b 15M -d "$best" "$OUT/best.safetensors.part"
fi
date -u
