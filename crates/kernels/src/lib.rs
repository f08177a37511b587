//! llmrec's hand-written CPU kernels, in one place (as ggml is for llama.cpp), apart
//! from the model code that calls them:
//!
//! - [`nn`]: fused candle ops with hand-written backward passes for training
//!   (causal self-attention, the SASRec feed-forward, LayerNorm, dense layers,
//!   dropout), split by concern;
//! - [`heads`]: fused loss heads (softmax cross-entropy; the softmax and binary item
//!   heads that never materialise the full logits);
//! - [`quant`]: quantised token-by-token decoding (Q4_1 and Q8_0 matrix-vector
//!   products, RMS norm, rotary embeddings) for the local LLM;
//! - [`gemm512`] and [`amx`]: f32 AVX-512 and bf16×3 AMX matrix products for the
//!   exact paths;
//! - [`team`]: a spinning thread team that splits a kernel's rows;
//! - [`bert`]: the packed BERT encoder the embedder runs on these kernels.
//!
//! Every `unsafe` block says why it is sound (`// SAFETY:`), and every `unsafe fn`
//! has a `# Safety` section; clippy enforces both.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod amx;
pub mod bert;
pub mod gemm512;
pub mod heads;
pub mod nn;
pub mod quant;
pub mod team;

/// Throughput of the f32 AVX-512 and the AMX linear layers on an `(m, k)` by
/// `(k, n)` product with `threads` threads: `(kernel, GFLOP/s)` for each
/// kernel this CPU has. For `llmrec-llm`'s `examples/llm_bench.rs`; not part of the API.
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
