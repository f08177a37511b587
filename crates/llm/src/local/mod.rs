//! The local LLM backend: llama-family GGUF models on the CPU (candle), and
//! Qwen2 and Qwen3 (`general.architecture` `qwen2`, `qwen3`: biases on the
//! query, key and value projections (Qwen2), an RMS norm on each query and
//! key head (Qwen3), rotary embeddings on half-split pairs, and a head size
//! of its own (`qwen3.attention.key_length`)).
//!
//! The forward pass is our own (not candle-transformers' `quantized_llama`)
//! because ranking needs logits at every position and an explicit, cloneable
//! KV cache (the prompt's cache is reused across candidate continuations).
//!
//! Weights are converted at load time. Every matrix is dequantized to f32 for
//! the exact path (prompt processing, log-prob scoring, constrained
//! generation), packed for our AVX-512 GEMM where the CPU has it
//! (`llmrec_kernels::gemm512`). Token-by-token decoding reads the file's Q4_1 blocks
//! directly with our integer kernels (`llmrec_kernels::quant`; other types are requantized
//! to Q8_0), split over a team of threads (`llmrec_kernels::team`); see [`DecodeWeights`].
//!
//! The tokenizer is built from the GGUF metadata (BPE vocabulary and merges);
//! SmolLM2's `smollm` pre-tokenizer is digits + byte-level without a prefix
//! space; Qwen's `qwen2` is its split regex + byte-level. The chat template is
//! the one the model declares (ChatML or Llama 3; Qwen3's thinking switch is
//! not rendered).
//!
//! Files, by concern (as in llama.cpp's libllama): [`load`] (GGUF and weights),
//! [`tokenizer`], [`chat`] (templates), [`kv_cache`], [`forward`] (the exact and the
//! fused decoding paths), [`prefix`] (prompt-prefix reuse) and [`generate`]
//! (sampling, batches, scoring, constrained decoding). Kernels live in the crate's
//! kernel modules.

use candle_core::{Device, Tensor};
use llmrec_core::Error;
use std::path::PathBuf;
use tokenizers::Tokenizer;

mod chat;
mod forward;
mod generate;
mod kv_cache;
mod load;
mod prefix;
mod tokenizer;

use crate::gguf::md;
use chat::ChatTemplate;
pub use kv_cache::KvCache;
use kv_cache::LayerKv;
use load::{Layer, Linear};
pub(crate) use tokenizer::build_tokenizer;

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("local llm", e)
}

/// Which weights token-by-token decoding uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeWeights {
    /// The file's tensors, decoded by the fused integer kernels
    /// (`llmrec_kernels::quant`): Q4_1 and Q8_0 as shipped, any other type requantized to
    /// Q8_0 at load. The fastest (for SmolLM2's Q4_1 file, 1.3× `Q8_0`), and
    /// the closest to what the file holds. Activations are quantized per
    /// block of 32, as in llama.cpp, so decoding log-probs differ slightly
    /// from the exact path (scoring always uses the exact path).
    #[default]
    Shipped,
    /// Every weight requantized to Q8_0 at load, fused kernels.
    Q8_0,
    /// The dequantized f32 weights through candle (exact, slow to decode).
    F32,
    /// The file's tensors through candle's quantized matmul (slow for Q4_1;
    /// kept for comparison).
    Candle,
}

/// Settings of the local backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalConfig {
    /// Weights for decoding (prompt processing and scoring always use f32).
    pub decode_weights: DecodeWeights,
    /// Model id recorded in caches; defaults to the file stem.
    pub model_id: Option<String>,
    /// Reuse the KV cache of the longest prefix a prompt shares with a
    /// recent one (a shared system prompt; one PALR prompt in several modes). Faster, but results then depend
    /// on call order at the level of float rounding (~1e-5 nats; greedy
    /// decoding can flip at near-ties), so it is off by default.
    pub reuse_prefix: bool,
    /// How many recent prompts' KV caches `reuse_prefix` keeps (0 means 1).
    /// SmolLM2-135M needs about 46 KiB per prompt token for each.
    pub prefix_slots: usize,
    /// A LoRA adapter folder (written by `llmrec lm finetune`) to merge into the
    /// base weights at load; it must have been trained on this very base file.
    pub adapter: Option<PathBuf>,
}

/// What Gemma 3 adds to the llama layout at run time.
struct Gemma {
    /// Sliding-window layers see keys less than this many positions back.
    window: usize,
    /// Embeddings are multiplied by `sqrt(hidden)`.
    embed_scale: f64,
    /// Rotary tables of the sliding-window layers (their own base).
    local_cos: Tensor,
    local_sin: Tensor,
}

/// A llama-family GGUF model with its tokenizer, on the CPU.
pub struct LocalLlm {
    model_id: String,
    path: PathBuf,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// Width of the residual stream (`n_head * head_dim` except in Qwen3).
    hidden: usize,
    /// Rotary pairs `(i, i + d/2)` (Qwen) rather than `(2i, 2i + 1)` (llama).
    rope_halves: bool,
    /// Gemma 3's window, embedding scale and local rotary tables.
    gemma: Option<Gemma>,
    eps: f32,
    max_context: usize,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    end_of_turn: u32,
    template: ChatTemplate,
    load_secs: f64,
    /// The most recent prompts processed and their KV caches, newest first.
    last_prompt: std::sync::Mutex<std::collections::VecDeque<(Vec<u32>, KvCache)>>,
    reuse_prefix: bool,
    prefix_slots: usize,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("model_id", &self.model_id)
            .field("path", &self.path)
            .field("layers", &self.layers.len())
            .finish()
    }
}
