//! llmrec's text and LLM runtime.
//!
//! - [`embedder`]: all-MiniLM-L6-v2 sentence embeddings (candle BERT), and
//!   [`artifact`]: the versioned on-disk embedding table that later methods reuse;
//! - [`cache`]: a persistent cache (redb) of generations and embeddings, and a
//!   resumable batch runner;
//! - [`llm`]: the [`Llm`] trait, with a local GGUF backend ([`local`]) and an
//!   OpenAI-compatible HTTP backend ([`openai`]);
//! - [`resolve`]: where model weights are found (`scripts/fetch-models.sh` fetches them).
//!
//! Threads: token-by-token decoding runs on our fused integer kernels with a
//! team of `CANDLE_NUM_THREADS` threads (default: rayon's pool size) that
//! meet at a spinning barrier; prompts and scoring use candle's f32 gemm on
//! rayon (`RAYON_NUM_THREADS`, or [`set_threads`]). Both are read once per
//! process. On a CPU shared with other work, `CANDLE_NUM_THREADS=1` avoids
//! threads that spin while their partner is descheduled.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod artifact;
pub mod cache;
pub mod embedder;
mod gguf;
pub mod llm;
pub mod local;
pub mod lora;
#[cfg(feature = "testkit")]
pub mod mock;
pub mod openai;
pub mod resolve;
#[cfg(feature = "testkit")]
pub mod testing;

pub use artifact::{EmbeddingTable, embed_items, encode_cached, read_embeddings, write_embeddings};
pub use cache::{
    BatchJob, BatchResult, Cache, LlmContext, Progress, call_key, generation_key, run_batch,
    run_batch_grouped,
};
pub use embedder::{Embedder, cosine};
pub use llm::{FinishReason, Generation, Llm, LogProb, Message, Role, SamplingParams};
pub use local::{DecodeWeights, KvCache, LocalConfig, LocalLlm};
#[cfg(feature = "testkit")]
pub use mock::{MockReply, MockRequest, MockServer};
pub use openai::{CompletionTemplate, OpenAiConfig, OpenAiLlm};
pub use resolve::{MINILM, ModelRef, SMOLLM2, resolve as resolve_model};

/// Sets the size of rayon's global thread pool (candle's f32 gemm and other CPU ops;
/// quantized kernels use `CANDLE_NUM_THREADS`).
///
/// Only the first call in a process has an effect; later calls return an error
/// message, as does a call after the pool was already started.
pub fn set_threads(n: usize) -> llmrec_core::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| llmrec_core::Error::model("threads", e))
}
