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

mod amx;
pub mod artifact;
mod bert_fast;
pub mod cache;
pub mod embedder;
mod fused;
mod gemm512;
pub mod llm;
pub mod local;
pub mod mock;
pub mod openai;
pub mod resolve;
mod team;

pub use artifact::{EmbeddingTable, embed_items, read_embeddings, write_embeddings};
pub use cache::{
    BatchJob, BatchResult, Cache, Progress, call_key, generation_key, run_batch, run_batch_grouped,
};
pub use embedder::{Embedder, cosine};
pub use llm::{FinishReason, Generation, Llm, LogProb, Message, Role, SamplingParams};
pub use local::{DecodeWeights, KvCache, LocalConfig, LocalLlm};
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

/// Throughput of the f32 AVX-512 and the AMX linear layers on an `(m, k)` by
/// `(k, n)` product with `threads` threads: `(kernel, GFLOP/s)` for each
/// kernel this CPU has. For `examples/llm_bench.rs`; not part of the API.
#[doc(hidden)]
pub fn bench_linear(m: usize, n: usize, k: usize, threads: usize) -> Vec<(&'static str, f64)> {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let bias = vec![0.1f32; n];
    let flops = 2.0 * (m * n * k) as f64;
    let time = |f: &dyn Fn(&team::Team<'_>, &mut [f32])| -> f64 {
        let mut c = vec![0f32; m * n];
        team::with_team(threads, |t| {
            f(t, &mut c); // warm-up
            let t0 = std::time::Instant::now();
            let mut reps = 0;
            while reps < 3 || t0.elapsed().as_secs_f64() < 0.5 {
                f(t, &mut c);
                reps += 1;
            }
            flops * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
    };
    let mut out = Vec::new();
    if let Some(p) = gemm512::PackedLinear::new(&w, &bias, n, k) {
        out.push(("avx512", time(&|t, c| p.forward(t, &a, m, c))));
    }
    if let Some(p) = amx::AmxLinear::new(&w, &bias, n, k, amx::Passes::Three) {
        out.push(("amx", time(&|t, c| p.forward(t, &a, m, c, None))));
    }
    out
}
