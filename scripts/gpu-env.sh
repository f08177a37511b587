# Sourced by the device scripts (scripts/gpu-tiger.sh, scripts/gpu-tiger-resume.sh)
# with GPU_DIR set to their prepared folder: logs the card, puts the driver's libcuda
# and CUDA 13's cuBLAS/cuRAND/runtime (e.g. PyTorch cu13) on the library path, points
# LLMREC_DATA_DIR at $GPU_DIR/data and unpacks $GPU_DIR/llmrec.gz into /tmp/llmrec.
date -u
nvidia-smi -L
lib=$(dirname "$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export LLMREC_DATA_DIR=$GPU_DIR/data
gunzip -c "$GPU_DIR/llmrec.gz" > /tmp/llmrec && chmod +x /tmp/llmrec
ldd /tmp/llmrec | grep -E 'not found|libcuda|cublas|curand|cudart'
