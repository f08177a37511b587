#!/usr/bin/env bash
# TIGER at the paper's shape on a GPU host that has no Rust toolchain.
#
#   bash scripts/gpu-tiger.sh [--host-dir DIR] [--part-size BYTES] [--max-files N]
#
# --host-dir DIR     the prepared working folder on the GPU host (default: $GPU_DIR,
#                    else ./gpu; see "Prepare" below).
# --part-size BYTES  size of the parts the best weights are split into for copying
#                    back (default: $PART_SIZE, else 15000000).
# --max-files N      write the weights' parts only if $OUT then holds at most N files
#                    (default: $MAX_FILES, else 8; 0: no limit), for hosts that copy
#                    back a limited number of files.
# -h, --help         print this text.
#
# Prepare (on the build machine, from the repository root; copy the folder to the
# GPU host as DIR):
#   scripts/build-cuda.sh
#   mkdir -p gpu/data && cp -r "$LLMREC_DATA_DIR/amazon-beauty" gpu/data/
#   strip -o /tmp/llmrec target-cuda/release/llmrec && gzip -9c /tmp/llmrec > gpu/llmrec.gz
#   llmrec embed --dataset amazon-beauty --out gpu/beauty.minilm.emb
#   (optional) Semantic IDs of an earlier run: gpu/ids/semantic_ids.json
#   (optional) a table with collaborative fusion: gpu/ids-collab/semantic_ids.json
# Run there, from the repository root:
#   TRAIN_S=400 SCHEMES="rq-vae" bash scripts/gpu-tiger.sh --host-dir gpu
# Logs, `nvidia-smi dmon` samples and a tarball of the run folders (checkpoints
# left out) go to $OUT (default /tmp/out); so do the best weights of the rq-vae
# run, in parts of --part-size bytes (`cat best.safetensors.part* > model.safetensors`),
# when --max-files allows (with the default 8 files and the paper's shape, at most 3
# schemes).
# TRAIN_S bounds each training run; SCHEMES run at once on the one GPU (rq-vae,
# lsh, random, and collab: rq-vae with DIR/ids-collab and
# ids.collab.share=$COLLAB_SHARE, default 0.3). EXTRA adds flags to every run, e.g. the
# paper's own rate (configs/tiger-paper.toml ships 0.001 constant, BENCHMARKS.md):
#   EXTRA="--set train.lr=0.01 --set train.constant_steps=10000"
# or, for a short run, a validation sample instead of all users (~30 s each):
#   EXTRA="--set train.valid_users=5000"
# GRACE_S (default 150) is how long past TRAIN_S a run may take to finish its
# epoch and the test evaluation before it is killed.
set -u
usage() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { echo "gpu-tiger.sh: $*" >&2; exit 2; }
GPU_DIR=${GPU_DIR:-$PWD/gpu}
PART_SIZE=${PART_SIZE:-15000000}
MAX_FILES=${MAX_FILES:-8}
while [ $# -gt 0 ]; do
  case $1 in
    --host-dir|--part-size|--max-files)
      [ $# -ge 2 ] || die "$1 needs a value"
      case $1 in
        --host-dir) GPU_DIR=$2 ;;
        --part-size) PART_SIZE=$2 ;;
        --max-files) MAX_FILES=$2 ;;
      esac
      shift 2 ;;
    --host-dir=*) GPU_DIR=${1#*=}; shift ;;
    --part-size=*) PART_SIZE=${1#*=}; shift ;;
    --max-files=*) MAX_FILES=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $PART_SIZE =~ ^[1-9][0-9]*$ ]] || die "--part-size must be a positive number of bytes"
[[ $MAX_FILES =~ ^[0-9]+$ ]] || die "--max-files must be a number"
GPU_DIR=$(cd "$GPU_DIR" && pwd) || die "no folder $GPU_DIR (--host-dir)"
OUT=${OUT:-/tmp/out}
TRAIN_S=${TRAIN_S:-270}
SCHEMES=${SCHEMES:-"rq-vae lsh random"}
CONFIG=${CONFIG:-configs/tiger-paper.toml}
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
source "$(dirname "$0")/gpu-env.sh" --host-dir "$GPU_DIR"
runs=/tmp/runs
pids=()
nvidia-smi dmon -s u -d 5 > "$OUT/dmon.log" 2>&1 &
dmon=$!
for s in $SCHEMES; do
  scheme=$s
  ids=()
  if [ "$s" = rq-vae ] && [ -f "$GPU_DIR/ids/semantic_ids.json" ]; then
    ids=(--ids "$GPU_DIR/ids/semantic_ids.json")
  elif [ "$s" = collab ]; then
    scheme=rq-vae
    ids=(--ids "$GPU_DIR/ids-collab/semantic_ids.json" --set "ids.collab.share=${COLLAB_SHARE:-0.3}")
  fi
  timeout $((TRAIN_S + ${GRACE_S:-150})) /tmp/llmrec tiger train --dataset amazon-beauty \
    --config "$CONFIG" --scheme "$scheme" --embeddings "$GPU_DIR/beauty.minilm.emb" \
    --device cuda --max-seconds "$TRAIN_S" "${ids[@]}" "${extra[@]}" \
    --out "$runs/$s" > "$OUT/tiger-$s.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
kill "$dmon"
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' -C /tmp runs
best=$(find "$runs/rq-vae" -path '*train/best/*.safetensors' 2>/dev/null | head -1)
if [ -n "$best" ]; then
  parts=$(( ($(stat -c %s "$best") + PART_SIZE - 1) / PART_SIZE ))
  if [ "$MAX_FILES" -eq 0 ] || [ $(( $(ls "$OUT" | wc -l) + parts )) -le "$MAX_FILES" ]; then
    split -b "$PART_SIZE" -d "$best" "$OUT/best.safetensors.part"
  else
    echo "best weights not written: $parts parts would pass --max-files $MAX_FILES"
  fi
fi
date -u
