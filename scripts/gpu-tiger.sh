#!/usr/bin/env bash
# TIGER at the paper's shape on a GPU machine that has no Rust toolchain.
#
# Prepare (on the build machine, from the repository root; `gpu/` is ignored):
#   scripts/build-cuda.sh
#   mkdir -p gpu/data && cp -r "$LLMREC_DATA_DIR/amazon-beauty" gpu/data/
#   strip -o /tmp/llmrec target-cuda/release/llmrec && gzip -9c /tmp/llmrec > gpu/llmrec.gz
#   llmrec embed --dataset amazon-beauty --out gpu/beauty.minilm.emb
#   (optional) Semantic IDs of an earlier run: gpu/ids/semantic_ids.json
# Run there, from the repository root:
#   TRAIN_S=400 SCHEMES="rq-vae" bash scripts/gpu-tiger.sh
# Logs and a tarball of the run folders (checkpoints left out) go to $OUT
# (default /tmp/out). TRAIN_S bounds each training run; SCHEMES run at once
# on the one GPU (rq-vae, lsh, random). EXTRA adds flags to every run, e.g. the
# paper's own rate (configs/tiger-paper.toml ships 0.001 constant, BENCHMARKS.md):
#   EXTRA="--set train.lr=0.01 --set train.constant_steps=10000"
set -u
OUT=${OUT:-/tmp/out}
TRAIN_S=${TRAIN_S:-270}
SCHEMES=${SCHEMES:-"rq-vae lsh random"}
CONFIG=${CONFIG:-configs/tiger-paper.toml}
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
date -u
nvidia-smi -L
# The driver's libcuda and CUDA 13's cuBLAS/cuRAND/runtime (e.g. PyTorch cu13).
lib=$(dirname "$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export LLMREC_DATA_DIR=$PWD/gpu/data
gunzip -c gpu/llmrec.gz > /tmp/llmrec && chmod +x /tmp/llmrec
ldd /tmp/llmrec | grep -E 'not found|libcuda|cublas|curand|cudart'
runs=/tmp/runs
pids=()
for s in $SCHEMES; do
  ids=()
  if [ "$s" = rq-vae ] && [ -f gpu/ids/semantic_ids.json ]; then
    ids=(--ids gpu/ids/semantic_ids.json)
  fi
  timeout $((TRAIN_S + 150)) /tmp/llmrec tiger train --dataset amazon-beauty \
    --config "$CONFIG" --scheme "$s" --embeddings gpu/beauty.minilm.emb \
    --device cuda --max-seconds "$TRAIN_S" "${ids[@]}" "${extra[@]}" \
    --out "$runs/$s" > "$OUT/tiger-$s.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' -C /tmp runs
date -u
