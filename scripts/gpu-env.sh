# Shared setup of the GPU scripts (scripts/gpu-tiger.sh, scripts/gpu-tiger-resume.sh),
# which source it on the GPU host; that host needs no Rust toolchain.
#
#   source scripts/gpu-env.sh --host-dir DIR
#
# --host-dir DIR  the prepared working folder on the GPU host, holding llmrec.gz (the
#                 stripped, gzipped CUDA binary) and data/ (default: $GPU_DIR, else ./gpu).
# -h, --help      print this text.
#
# Logs the date and the card, puts the driver's libcuda and CUDA 13's
# cuBLAS/cuRAND/runtime (e.g. PyTorch cu13) on the library path, points
# LLMREC_DATA_DIR at DIR/data, unpacks DIR/llmrec.gz into /tmp/llmrec and sets GPU_DIR
# to DIR. Source it with its options: sourced without arguments, it would read the
# caller's.
_gpu_env_usage() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }
GPU_DIR=${GPU_DIR:-gpu}
while [ $# -gt 0 ]; do
  case $1 in
    --host-dir)
      if [ $# -lt 2 ]; then
        echo "gpu-env.sh: --host-dir needs a folder" >&2
        return 2 2>/dev/null || exit 2
      fi
      GPU_DIR=$2; shift 2 ;;
    --host-dir=*) GPU_DIR=${1#*=}; shift ;;
    -h|--help) _gpu_env_usage; return 0 2>/dev/null || exit 0 ;;
    *) echo "gpu-env.sh: unknown option $1 (see --help)" >&2; return 2 2>/dev/null || exit 2 ;;
  esac
done
[ -d "$GPU_DIR" ] && GPU_DIR=$(cd "$GPU_DIR" && pwd)
date -u
nvidia-smi -L
lib=$(dirname "$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export LLMREC_DATA_DIR=$GPU_DIR/data
gunzip -c "$GPU_DIR/llmrec.gz" > /tmp/llmrec && chmod +x /tmp/llmrec
ldd /tmp/llmrec | grep -E 'not found|libcuda|cublas|curand|cudart'
