//! Sentence embeddings with all-MiniLM-L6-v2 (candle BERT + `tokenizers`).
//!
//! Matches sentence-transformers: WordPiece with truncation at 256 tokens
//! (`max_seq_length`), mean pooling under the attention mask, L2 normalisation.
//! Inputs are tokenized once, sorted by length and cut into batches that are
//! padded only to their own longest sequence (the shipped `tokenizer.json`
//! pads everything to 128, which costs about 8× throughput).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use llmrec_core::{Error, Result};
use llmrec_kernels::bert::FastBert;
use tokenizers::{Tokenizer, TruncationParams};

use crate::resolve::{MINILM, resolve};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
pub const MINILM_MAX_TOKENS: usize = 256;

fn merr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("embedder", e)
}

/// A loaded sentence embedder.
pub struct Embedder {
    model: BertModel,
    /// The packed AVX-512 encoder (`llmrec_kernels::bert`), where it applies.
    fast: Option<FastBert>,
    use_fast: bool,
    use_amx: bool,
    tokenizer: Tokenizer,
    device: Device,
    model_id: String,
    dim: usize,
    batch_size: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl Embedder {
    /// Loads all-MiniLM-L6-v2, resolved from `explicit` or the usual places
    /// (see [`crate::resolve`]).
    pub fn minilm(explicit: Option<&Path>) -> Result<Self> {
        let dir = resolve(&MINILM, explicit)?;
        Self::load(&dir, MINILM.hf_repo)
    }

    /// Loads a BERT sentence embedder from a folder with `config.json`,
    /// `tokenizer.json` and `model.safetensors`; `model_id` names it in caches
    /// and artifacts.
    pub fn load(dir: &Path, model_id: &str) -> Result<Self> {
        let read = |name: &str| -> Result<(PathBuf, Vec<u8>)> {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            Ok((p, bytes))
        };
        let (cfg_path, cfg) = read("config.json")?;
        let config: Config = serde_json::from_slice(&cfg)
            .map_err(|e| Error::parse(&cfg_path, 0, format!("BERT config: {e}")))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::parse(&tok_path, 0, format!("tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MINILM_MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(merr)?;
        let (w_path, weights) = read("model.safetensors")?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(|e| {
                Error::Artifact {
                    path: w_path.clone(),
                    message: e.to_string(),
                }
            })?;
        let fast = FastBert::load(&vb, &config).map_err(|e| Error::Artifact {
            path: w_path.clone(),
            message: e.to_string(),
        })?;
        let model = BertModel::load(vb, &config).map_err(|e| Error::Artifact {
            path: w_path,
            message: e.to_string(),
        })?;
        Ok(Embedder {
            model,
            fast,
            use_fast: true,
            use_amx: true,
            tokenizer,
            device,
            model_id: model_id.to_string(),
            dim: config.hidden_size,
            batch_size: 32,
        })
    }

    /// Sets the number of sentences per forward pass (default 32).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Whether to use the packed AVX-512 encoder where the CPU and the model
    /// allow (default: yes); `false` runs candle's BERT. Both give the same
    /// embeddings to ~1e-6.
    pub fn with_fast_path(mut self, on: bool) -> Self {
        self.use_fast = on;
        self
    }

    /// Whether embeddings come from the packed AVX-512 encoder.
    pub fn fast_path(&self) -> bool {
        self.use_fast && self.fast.is_some()
    }

    /// Whether the packed encoder runs its linear layers on AMX tiles where
    /// the CPU has them (default: yes; `LLMREC_NO_AMX=1` also turns them
    /// off). The AMX product splits each value into two bf16 parts and gives
    /// the same embeddings as f32 to ~1e-6.
    pub fn with_amx(mut self, on: bool) -> Self {
        self.use_amx = on;
        self
    }

    /// Which kernel computes embeddings: `"amx"` (bf16×3 tiles), `"avx512"`
    /// (f32) or `"candle"`.
    pub fn kernel(&self) -> &'static str {
        match (&self.fast, self.use_fast) {
            (Some(f), true) if self.use_amx && f.has_amx() => "amx",
            (Some(_), true) => "avx512",
            _ => "candle",
        }
    }

    /// The model id recorded in caches and artifacts.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Embedding dimension (384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids (with `[CLS]`/`[SEP]`, truncated) of each text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(merr)?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeds `texts` (unit-norm vectors, in input order), bucketing by length.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let vecs = self.embed_ids(&batch)?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One forward pass over token-id sequences, padded to the longest.
    fn embed_ids(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if let (Some(fast), true) = (&self.fast, self.use_fast) {
            let amx = self.use_amx && fast.has_amx();
            return fast
                .embed(batch, llmrec_kernels::team::threads(), amx)
                .map_err(merr);
        }
        let b = batch.len();
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0u32; b * len];
        for (r, s) in batch.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(1);
        }
        let f = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
            let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
            let types = ids.zeros_like()?;
            let h = self.model.forward(&ids, &types, Some(&mask))?; // (b, len, dim)
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
            let sum = h.broadcast_mul(&m)?.sum(1)?; // (b, dim)
            let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
            let mean = sum.broadcast_div(&count)?;
            let norm = mean
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        f().map_err(merr)
    }
}

/// The embedding kernels this CPU and process can run, best first: `"amx"`
/// (AMX-BF16 tiles; off with `LLMREC_NO_AMX=1`), `"avx512"` (the packed
/// AVX-512F encoder) and `"candle"` (candle's BERT, any CPU). An [`Embedder`]
/// uses the first one its settings allow; [`Embedder::kernel`] says which.
pub fn cpu_kernels() -> Vec<&'static str> {
    let mut k = Vec::with_capacity(3);
    if llmrec_kernels::gemm512::available() {
        if llmrec_kernels::amx::available() {
            k.push("amx");
        }
        k.push("avx512");
    }
    k.push("candle");
    k
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += (*x as f64) * (*y as f64);
        aa += (*x as f64) * (*x as f64);
        bb += (*y as f64) * (*y as f64);
    }
    (ab / (aa.sqrt() * bb.sqrt()).max(1e-30)) as f32
}
