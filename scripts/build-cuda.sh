#!/usr/bin/env bash
# Builds `llmrec` with the `cuda` feature without a system CUDA toolkit: the
# CUDA 13.0 compiler, headers and libraries come from NVIDIA's PyPI wheels.
#
#   scripts/build-cuda.sh [TOOLKIT_DIR]      (default: .cache/cuda13)
#
# Environment: CUDA_COMPUTE_CAP (default 90 = H100/H200; 80 = A100, 89 = L4/4090).
# The binary lands in target-cuda/release/llmrec. At run time it needs the
# driver's libcuda.so.1 and libcublas/libcurand/libcudart 13 (e.g. from a
# PyTorch cu13 install: put its nvidia/cu13/lib on LD_LIBRARY_PATH).
#
# Versions are pinned to CUDA 13.0 so that the PTX it embeds (ISA 9.0) loads on
# any driver of the 580 series or newer. With a system toolkit instead, set
# CUDA_HOME and run `cargo build --release -p llmrec --features cuda`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/cuda13}
mkdir -p "$dir/wheels"
dir=$(cd "$dir" && pwd)
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
root=$dir/site/nvidia/cu13
if [ ! -x "$root/bin/nvcc" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    -d "$dir/wheels" "${wheels[@]}"
  mkdir -p "$dir/site"
  for w in "$dir"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$dir/site"
  done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi
lib=$root/lib
for so in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "lib$so" "$lib/lib${so%%.so*}.so"
done
# cudarc links against libcuda.so. Without an NVIDIA driver on this machine, link
# against a stub that only names the driver API's symbols; the real library is
# loaded at run time.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
  cargo fetch -q
  ver=$(grep -A1 '^name = "cudarc"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$ver" | head -1)
  grep -oE '^ *pub unsafe fn cu[A-Za-z0-9_]+' "$src/src/driver/sys/mod.rs" |
    awk '{print "void " $4 "(void){}"}' | sort -u > "$dir/cuda_stub.c"
  mkdir -p "$dir/stub"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/stub/libcuda.so" "$dir/cuda_stub.c"
fi
# The stub folder is for linking only: never put it on LD_LIBRARY_PATH.
export CUDA_HOME=$root CUDA_PATH=$root PATH=$root/bin:$PATH LIBRARY_PATH=$dir/stub:$lib
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
CARGO_TARGET_DIR=target-cuda cargo build --release -p llmrec --features cuda
echo "built target-cuda/release/llmrec (compute capability $CUDA_COMPUTE_CAP)"
