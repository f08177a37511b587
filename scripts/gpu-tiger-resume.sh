#!/usr/bin/env bash
# Continues a TIGER run on a GPU host from its `last/` folder, then packs the
# run folder so that it can go on training elsewhere (the CPU, a later GPU run).
#
#   bash scripts/gpu-tiger-resume.sh [--host-dir DIR] [--part-size BYTES] [--] TIGER_TRAIN_FLAGS...
#
# --host-dir DIR     the prepared working folder on the GPU host (default: $GPU_DIR,
#                    else ./gpu; see "Prepare" below).
# --part-size BYTES  size of the parts the packed run folder is split into for copying
#                    back (default: $PART_SIZE, else 15000000).
# -h, --help         print this text.
# Every other argument (all of them after `--`) goes to `llmrec tiger train`.
#
# Prepare (on the build machine, from the repository root; copy the folder to the
# GPU host as DIR):
#   scripts/build-cuda.sh
#   strip -o /tmp/llmrec target-cuda/release/llmrec && gzip -9c /tmp/llmrec > gpu/llmrec.gz
#   mkdir -p gpu/data && cp -r "$LLMREC_DATA_DIR/amazon-beauty" gpu/data/
#   mkdir -p gpu/resume/rq-vae/train
#   cp -r RUN/train/{last,metrics.jsonl,train_config.json} gpu/resume/rq-vae/train/
#   (and RUN/train/best, if the run has one: a resumed run keeps it as its best)
# Run there, from the repository root, with the run's own flags (its model shape
# and training settings must match `last/`):
#   TRAIN_S=400 bash scripts/gpu-tiger-resume.sh --host-dir gpu --config configs/tiger-cpu.toml --set ...
# Back in $OUT (default /tmp/out): device.log, tiger.log, dmon.log, and
# run.tgz.partNN (parts of --part-size bytes) holding the run folder: last/, best/,
# metrics.jsonl and the newest KEEP (default 3) snapshots of train/epochs/. Unpack it with
#   cat run.tgz.part* | tar xz -C DEST
# and go on with `llmrec tiger train --resume DEST/rq-vae/train/last` and the same flags.
# DEVICE (default cuda) is the device, so that the script can be tried on the build
# machine with a CPU binary.
# TRAIN_S bounds training (the run stops after the epoch that passes it, validates
# that epoch and evaluates `best/` on test); HARD_S (default TRAIN_S + 110) kills
# it regardless, which leaves `last/` whole (or `last.old/`, see core::io::replace_dir).
set -u
usage() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { echo "gpu-tiger-resume.sh: $*" >&2; exit 2; }
host_dir=${GPU_DIR:-gpu}
PART_SIZE=${PART_SIZE:-15000000}
train_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --host-dir|--part-size)
      [ $# -ge 2 ] || die "$1 needs a value"
      if [ "$1" = --host-dir ]; then host_dir=$2; else PART_SIZE=$2; fi
      shift 2 ;;
    --host-dir=*) host_dir=${1#*=}; shift ;;
    --part-size=*) PART_SIZE=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_flags+=("$@"); break ;;
    *) train_flags+=("$1"); shift ;;
  esac
done
[[ $PART_SIZE =~ ^[1-9][0-9]*$ ]] || die "--part-size must be a positive number of bytes"
OUT=${OUT:-/tmp/out}
TRAIN_S=${TRAIN_S:-400}
HARD_S=${HARD_S:-$((TRAIN_S + 110))}
KEEP=${KEEP:-3}
GPU_DIR=$(cd "$host_dir" && pwd) || exit
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
source "$(dirname "$0")/gpu-env.sh" --host-dir "$GPU_DIR"
run=/tmp/resume
rm -rf "$run" && cp -rL "$GPU_DIR/resume" "$run"
nvidia-smi dmon -s u -d 5 > "$OUT/dmon.log" 2>&1 &
dmon=$!
timeout "$HARD_S" /tmp/llmrec tiger train --dataset amazon-beauty --device "$DEVICE" \
  --max-seconds "$TRAIN_S" --resume "$run/rq-vae/train/last" "${train_flags[@]}" > "$OUT/tiger.log" 2>&1
echo "tiger train exit status $?"
kill "$dmon"
train=$run/rq-vae/train
[ -d "$train/last" ] || mv "$train/last.old" "$train/last"
mapfile -t old < <(ls -d "$train"/epochs/epoch-* 2>/dev/null | head -n -"$KEEP")
[ ${#old[@]} -gt 0 ] && rm -rf "${old[@]}"
du -sh "$train"/*
tar czf - -C "$run" rq-vae | split -b "$PART_SIZE" -d - "$OUT/run.tgz.part"
ls -la "$OUT"
date -u
