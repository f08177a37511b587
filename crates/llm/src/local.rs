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
//! (`gemm512.rs`). Token-by-token decoding reads the file's Q4_1 blocks
//! directly with our integer kernels (`fused.rs`; other types are requantized
//! to Q8_0), split over a team of threads (`team.rs`); see [`DecodeWeights`].
//!
//! The tokenizer is built from the GGUF metadata (BPE vocabulary and merges);
//! SmolLM2's `smollm` pre-tokenizer is digits + byte-level without a prefix
//! space; Qwen's `qwen2` is its split regex + byte-level. The chat template is
//! the one the model declares (ChatML or Llama 3; Qwen3's thinking switch is
//! not rendered).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use llmrec_core::{Error, Result, Rng};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::fused::{self, DecodeMat, Q8Mat, Q41Mat};
use crate::gemm512::PackedLinear;
use crate::llm::{FinishReason, Generation, Llm, LogProb, Message, Role, SamplingParams};
use crate::resolve::{SMOLLM2, resolve};
use crate::team;

fn cerr(e: impl std::fmt::Display) -> Error {
    Error::model("local llm", e)
}

/// Which weights token-by-token decoding uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeWeights {
    /// The file's tensors, decoded by the fused integer kernels
    /// (`fused.rs`): Q4_1 and Q8_0 as shipped, any other type requantized to
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
}

struct Linear {
    /// `(out, in)` f32 for candle's matmul, where `packed` does not serve.
    w: Option<Tensor>,
    /// The f32 weights packed for the AVX-512 kernel (exact path: prompts,
    /// scoring), where the CPU has AVX-512F.
    packed: Option<PackedLinear>,
    /// The file's tensor for candle's kernels ([`DecodeWeights::Candle`]).
    q: Option<QMatMul>,
    /// Copy for the fused decoding path (Q8_0, or Q4_1 as shipped).
    f: Option<DecodeMat>,
}

impl Linear {
    fn new(qt: QTensor, device: &Device, decode: DecodeWeights) -> candle_core::Result<Self> {
        let w = qt.dequantize(device)?;
        let (rows, cols) = w.dims2()?;
        let requantized = |w: &Tensor| -> candle_core::Result<Option<DecodeMat>> {
            let data = w.flatten_all()?.to_vec1::<f32>()?;
            Ok(Q8Mat::from_f32(&data, rows, cols).map(DecodeMat::Q8))
        };
        let packed = if crate::gemm512::available() {
            let data = w.flatten_all()?.to_vec1::<f32>()?;
            PackedLinear::new(&data, &vec![0f32; rows], rows, cols)
        } else {
            None
        };
        let (q, f) = match decode {
            DecodeWeights::F32 => (None, None),
            DecodeWeights::Q8_0 => (None, requantized(&w)?),
            // Q8_0 as shipped: requantizing gives back the same codes.
            DecodeWeights::Shipped => match qt.dtype() {
                GgmlDType::Q4_1 => (
                    None,
                    Q41Mat::from_ggml(&qt.data()?, rows, cols).map(DecodeMat::Q41),
                ),
                _ => (None, requantized(&w)?),
            },
            DecodeWeights::Candle => (Some(QMatMul::from_qtensor(qt)?), None),
        };
        let w = if packed.is_some() { None } else { Some(w) };
        Ok(Linear { w, packed, q, f })
    }

    /// `x: (T, in)` → `(T, out)`.
    fn forward(&self, x: &Tensor, exact: bool) -> candle_core::Result<Tensor> {
        match (&self.q, exact) {
            (Some(q), false) => q.forward(x),
            _ => match (&self.packed, &self.w) {
                (Some(p), _) => {
                    let (t, _) = x.dims2()?;
                    let data = x.flatten_all()?.to_vec1::<f32>()?;
                    let mut out = vec![0f32; t * p.n()];
                    team::with_team(team::threads(), |tm| p.forward(tm, &data, t, &mut out));
                    Tensor::from_vec(out, (t, p.n()), x.device())
                }
                (None, Some(w)) => x.matmul(&w.t()?),
                (None, None) => Err(candle_core::Error::Msg(
                    "linear layer without weights".into(),
                )),
            },
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Biases of the query, key and value projections (Qwen2).
    qkv_bias: Option<[Tensor; 3]>,
    /// RMS-norm weights applied to each query and key head (Qwen3).
    qk_norm: Option<[Tensor; 2]>,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// Positions a fresh segment reserves for short appends (decoding steps), so
/// that tokens are written in place rather than copied.
const SEGMENT_ROOM: usize = 256;

/// One stretch of a layer's keys and values: `(kv_heads, cap, head_dim)`
/// buffers whose leading positions are filled.
#[derive(Debug)]
struct Segment {
    k: Tensor,
    v: Tensor,
    cap: usize,
}

/// One layer's cache: segments, each with the length this cache uses of it.
/// Segments are shared between clones; a segment is written in place only
/// while this cache is its sole owner, so clones never see each other's tokens.
#[derive(Clone, Debug, Default)]
struct LayerKv {
    segs: Vec<(std::sync::Arc<Segment>, usize)>,
}

impl LayerKv {
    /// Appends `k`, `v` (`(kv_heads, t, head_dim)`, contiguous).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let t = k.dim(1)?;
        if let Some((seg, used)) = self.segs.last_mut()
            && *used + t <= seg.cap
            && std::sync::Arc::get_mut(seg).is_some()
        {
            seg.k.slice_set(k, 1, *used)?;
            seg.v.slice_set(v, 1, *used)?;
            *used += t;
            return Ok(());
        }
        // A long append (a prompt) gets a segment of its own size; a short one
        // (decoding) gets room to grow.
        let cap = if t >= SEGMENT_ROOM / 4 {
            t
        } else {
            SEGMENT_ROOM
        };
        let (kvh, _, hd) = k.dims3()?;
        let seg = Segment {
            k: Tensor::zeros((kvh, cap, hd), k.dtype(), k.device())?,
            v: Tensor::zeros((kvh, cap, hd), v.dtype(), v.device())?,
            cap,
        };
        seg.k.slice_set(k, 1, 0)?;
        seg.v.slice_set(v, 1, 0)?;
        self.segs.push((std::sync::Arc::new(seg), t));
        Ok(())
    }

    /// The filled keys and values of each segment, as views.
    fn views(&self) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.segs
            .iter()
            .map(|(s, used)| Ok((s.k.narrow(1, 0, *used)?, s.v.narrow(1, 0, *used)?)))
            .collect()
    }
}

/// The KV cache of one sequence. Cloning is cheap (segments are shared), so a
/// prompt's cache can be extended by several continuations independently:
/// each continuation writes into segments of its own.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    pos: usize,
}

impl KvCache {
    /// The cache of the first `len` tokens (shares the segments, no copy).
    fn truncated(&self, len: usize) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut left = len;
                let mut segs = Vec::new();
                for (s, used) in &l.segs {
                    if left == 0 {
                        break;
                    }
                    let take = (*used).min(left);
                    segs.push((s.clone(), take));
                    left -= take;
                }
                LayerKv { segs }
            })
            .collect();
        KvCache { layers, pos: len }
    }
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg(
            "fused decoding runs on the CPU".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&data[a..b])),
        None => Err(candle_core::Error::Msg(
            "fused decoding needs contiguous tensors".into(),
        )),
    }
}

/// The fused decoding copy of a weight.
fn need(l: &Linear) -> candle_core::Result<&DecodeMat> {
    l.f.as_ref()
        .ok_or_else(|| candle_core::Error::Msg("no fused weights".into()))
}

/// Attention of one query head `qh` (of KV group `gi`) over a layer's cache
/// → `yh`; `scores` is scratch space.
fn attend_head(
    kv: &LayerKv,
    qh: &[f32],
    yh: &mut [f32],
    gi: usize,
    scores: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let hd = qh.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    for (seg, used) in &kv.segs {
        with_f32(&seg.k, |ks| {
            let base = gi * seg.cap * hd;
            for p in 0..*used {
                let kp = &ks[base + p * hd..base + (p + 1) * hd];
                scores.push(fused::dot(qh, kp) * scale);
            }
        })?;
    }
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for sc in scores.iter_mut() {
        *sc = (*sc - m).exp();
        sum += *sc;
    }
    let inv = 1.0 / sum;
    yh.fill(0.0);
    let mut idx = 0;
    for (seg, used) in &kv.segs {
        with_f32(&seg.v, |vs| {
            let base = gi * seg.cap * hd;
            for p in 0..*used {
                let a = scores[idx] * inv;
                idx += 1;
                let vp = &vs[base + p * hd..base + (p + 1) * hd];
                yh.iter_mut().zip(vp).for_each(|(o, x)| *o += a * x);
            }
        })?;
    }
    Ok(())
}

enum ChatTemplate {
    ChatMl { default_system: Option<String> },
    Llama3,
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

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| cerr(format!("GGUF metadata has no `{key}`")))
}

/// The pre-tokenizer regex of Qwen2 and Qwen3 (their `tokenizer.json`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn build_tokenizer(ct: &gguf_file::Content) -> Result<(Tokenizer, Vec<String>)> {
    let model = md(ct, "tokenizer.ggml.model")?.to_string().map_err(cerr)?;
    if model != "gpt2" {
        return Err(cerr(format!(
            "tokenizer model `{model}` is not supported (only byte-level BPE `gpt2`)"
        )));
    }
    let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
    let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(cerr)?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| cerr(format!("bad merge `{s}`")))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(cerr)?
            .iter()
            .map(|t| t.to_i32())
            .collect::<candle_core::Result<_>>()
            .map_err(cerr)?,
        None => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(cerr)?;
    let mut tok = Tokenizer::new(bpe);
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    // `smollm` (and llama.cpp's other digit-splitting pre-tokenizers): digits
    // one by one, then GPT-2 byte-level *without* a prefix space.
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        // Qwen2's own split (tokenizer.json of Qwen2 and Qwen3), then bytes
        // without their regex.
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(cerr)?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]))
        }
        "smollm" | "starcoder" | "refact" | "llama3" | "llama-bpe" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ]))
        }
        _ => PreTokenizerWrapper::ByteLevel(byte_level),
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control (3) and user-defined (4) tokens are matched as whole tokens.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    let _added = tok.add_special_tokens(special);
    Ok((tok, tokens))
}

impl LocalLlm {
    /// Loads SmolLM2-135M-Instruct, resolved from `explicit` or the usual places.
    pub fn smollm2(explicit: Option<&Path>, config: LocalConfig) -> Result<Self> {
        let path = resolve(&SMOLLM2, explicit)?;
        Self::load(&path, config)
    }

    /// Loads a GGUF file of a llama-family, Qwen2 or Qwen3 model.
    pub fn load(path: &Path, config: LocalConfig) -> Result<Self> {
        let t0 = Instant::now();
        let art = |message: String| Error::Artifact {
            path: path.to_path_buf(),
            message,
        };
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = std::io::BufReader::new(&mut file);
        let ct = gguf_file::Content::read(&mut reader).map_err(|e| art(format!("GGUF: {e}")))?;
        let arch = md(&ct, "general.architecture")?
            .to_string()
            .map_err(cerr)?
            .clone();
        if !["llama", "qwen2", "qwen3"].contains(&arch.as_str()) {
            return Err(art(format!(
                "architecture `{arch}` is not supported by the local backend \
                 (llama, qwen2, qwen3)"
            )));
        }
        let u = |k: &str| -> Result<usize> {
            Ok(md(&ct, &format!("{arch}.{k}"))?.to_u32().map_err(cerr)? as usize)
        };
        let n_head = u("attention.head_count")?;
        let n_kv_head = u("attention.head_count_kv")?;
        let n_layer = u("block_count")?;
        let dim = u("embedding_length")?;
        let max_context = u("context_length").unwrap_or(4096).min(32768);
        let eps = md(&ct, &format!("{arch}.attention.layer_norm_rms_epsilon"))?
            .to_f32()
            .map_err(cerr)?;
        let rope_base = ct
            .metadata
            .get(&format!("{arch}.rope.freq_base"))
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(art(format!(
                "{n_head} attention heads do not split into {n_kv_head} key/value heads"
            )));
        }
        let head_dim = match u("attention.key_length") {
            Ok(k) => k,
            Err(_) => dim / n_head,
        };
        let has = |name: &str| ct.tensor_infos.contains_key(name);
        let device = Device::Cpu;
        let decode = config.decode_weights;
        let mut get = |name: &str| -> Result<QTensor> {
            ct.tensor(&mut reader, name, &device)
                .map_err(|e| art(format!("tensor {name}: {e}")))
        };
        let f = |r: candle_core::Result<Linear>| r.map_err(cerr);
        let embed_q = get("token_embd.weight")?;
        let embed = embed_q.dequantize(&device).map_err(cerr)?;
        let output = match get("output.weight") {
            Ok(o) => f(Linear::new(o, &device, decode))?,
            Err(_) => f(Linear::new(embed_q, &device, decode))?,
        };
        let norm = get("output_norm.weight")?
            .dequantize(&device)
            .map_err(cerr)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let mut lin = |n: &str| -> Result<Linear> {
                let q = get(&format!("{p}.{n}.weight"))?;
                f(Linear::new(q, &device, decode))
            };
            let wq = lin("attn_q")?;
            let wk = lin("attn_k")?;
            let wv = lin("attn_v")?;
            let wo = lin("attn_output")?;
            let w_gate = lin("ffn_gate")?;
            let w_up = lin("ffn_up")?;
            let w_down = lin("ffn_down")?;
            let mut vector = |n: &str| -> Result<Tensor> {
                get(&format!("{p}.{n}"))?.dequantize(&device).map_err(cerr)
            };
            let attn_norm = vector("attn_norm.weight")?;
            let ffn_norm = vector("ffn_norm.weight")?;
            let qkv_bias = if has(&format!("{p}.attn_q.bias")) {
                Some([
                    vector("attn_q.bias")?,
                    vector("attn_k.bias")?,
                    vector("attn_v.bias")?,
                ])
            } else {
                None
            };
            let qk_norm = if has(&format!("{p}.attn_q_norm.weight")) {
                Some([vector("attn_q_norm.weight")?, vector("attn_k_norm.weight")?])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                qkv_bias,
                qk_norm,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
            });
        }
        // RoPE tables.
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / rope_base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        for pos in 0..max_context {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (max_context, half), &device).map_err(cerr)?;
        let sin = Tensor::from_vec(sin, (max_context, half), &device).map_err(cerr)?;

        let (tokenizer, tokens) = build_tokenizer(&ct)?;
        let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
        let eos = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
        let template_src = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let (template, end_of_turn) = if template_src.contains("<|start_header_id|>") {
            let eot = id_of("<|eot_id|>")
                .or(eos)
                .ok_or_else(|| art("no <|eot_id|> token".into()))?;
            (ChatTemplate::Llama3, eot)
        } else if template_src.contains("<|im_start|>") || id_of("<|im_start|>").is_some() {
            // SmolLM2's template adds a default system message when there is none.
            let default_system = template_src
                .split_once("<|im_start|>system\\n")
                .or_else(|| template_src.split_once("<|im_start|>system\n"))
                .and_then(|(_, rest)| rest.split_once("<|im_end|>"))
                .map(|(s, _)| s.to_string())
                .filter(|_| template_src.contains("!= 'system'"));
            let eot = id_of("<|im_end|>")
                .or(eos)
                .ok_or_else(|| art("no <|im_end|> token".into()))?;
            (ChatTemplate::ChatMl { default_system }, eot)
        } else {
            return Err(art(
                "unsupported chat template (supported: ChatML, Llama 3)".into(),
            ));
        };
        let mut stop_ids = vec![end_of_turn];
        stop_ids.extend(eos);
        stop_ids.extend(id_of("<|endoftext|>"));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "local".into())
        });
        Ok(LocalLlm {
            model_id,
            path: path.to_path_buf(),
            device,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            n_head,
            n_kv_head,
            head_dim,
            hidden: dim,
            rope_halves: arch != "llama",
            eps,
            max_context,
            tokenizer,
            stop_ids,
            end_of_turn,
            template,
            load_secs: t0.elapsed().as_secs_f64(),
            last_prompt: std::sync::Mutex::new(std::collections::VecDeque::new()),
            reuse_prefix: config.reuse_prefix,
            prefix_slots: config.prefix_slots.max(1),
        })
    }

    /// Seconds the load (read, dequantize, requantize) took.
    pub fn load_secs(&self) -> f64 {
        self.load_secs
    }

    /// The tokenizer built from the GGUF metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text`; special tokens written in it (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(cerr)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(cerr)
    }

    /// The prompt text for `messages` with the model's chat template, ending
    /// with the assistant's turn header when `add_generation_prompt`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        match &self.template {
            ChatTemplate::ChatMl { default_system } => {
                let has_system = messages.first().is_some_and(|m| m.role == Role::System);
                if let (Some(sys), false) = (default_system, has_system) {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role.as_str(),
                        m.content
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Llama3 => {
                s.push_str("<|begin_of_text|>");
                for m in messages {
                    s.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role.as_str(),
                        m.content.trim()
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        s
    }

    /// Runs `tokens` through the model after what `cache` holds, extending it.
    ///
    /// Returns logits `(n, vocab)` for the last position (`all = false`, n = 1)
    /// or for every new position (`all = true`). `exact` forces the f32
    /// weights; otherwise single-token steps use the decode weights.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::Invalid("forward on no tokens".into()));
        }
        let pos = cache.pos;
        if pos + tokens.len() > self.max_context {
            return Err(cerr(format!(
                "context of {} tokens exceeds the model's {}",
                pos + tokens.len(),
                self.max_context
            )));
        }
        if !exact && tokens.len() == 1 && self.fused_ready() {
            return self
                .fused_step(tokens, std::slice::from_mut(cache))
                .map_err(cerr);
        }
        self.forward_inner(tokens, cache, all, exact || tokens.len() > 1)
            .map_err(cerr)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        let pos = cache.pos;
        let kv_len = pos + t;
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..kv_len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (t, kv_len), &self.device)?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        self.forward_masked(tokens, &cos, &sin, mask.as_ref(), cache, all, exact)
    }

    /// The transformer over `tokens` appended after `cache`, with rotary
    /// tables `cos`/`sin` (one row per token) and an additive mask `(t, kv_len)`.
    #[allow(clippy::too_many_arguments)]
    fn forward_masked(
        &self,
        tokens: &[u32],
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        let kv_len = cache.pos + t;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![LayerKv::default(); self.layers.len()];
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // (t, dim)
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let (q, k, v) = self.qkv(layer, &xn, exact)?;
            let y = self.attend(li, &q, &k, &v, cos, sin, mask, cache)?;
            x = self.finish_layer(layer, x, &y, exact)?;
        }
        cache.pos = kv_len;
        let x = if all { x } else { x.narrow(0, t - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.eps)?;
        self.output.forward(&x, exact)
    }

    /// The query, key and value projections of `xn (t, hidden)`, with their
    /// biases where the model has them.
    fn qkv(
        &self,
        layer: &Layer,
        xn: &Tensor,
        exact: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let q = layer.wq.forward(xn, exact)?;
        let k = layer.wk.forward(xn, exact)?;
        let v = layer.wv.forward(xn, exact)?;
        match &layer.qkv_bias {
            Some([bq, bk, bv]) => Ok((
                q.broadcast_add(bq)?,
                k.broadcast_add(bk)?,
                v.broadcast_add(bv)?,
            )),
            None => Ok((q, k, v)),
        }
    }

    /// Attention of one sequence's new rows `q (t, h*hd)`, `k`/`v (t, kvh*hd)`
    /// over its cache (which it extends) → `(t, h*hd)`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let (h, kvh, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let rep = h / kvh;
        let t = q.dim(0)?;
        let q = q.reshape((t, h, hd))?.transpose(0, 1)?.contiguous()?;
        let k = k.reshape((t, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        let v = v.reshape((t, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        let (q, k) = match &self.layers[li].qk_norm {
            Some([qn, kn]) => (
                candle_nn::ops::rms_norm(&q, qn, self.eps)?,
                candle_nn::ops::rms_norm(&k, kn, self.eps)?,
            ),
            None => (q, k),
        };
        let rope = if self.rope_halves {
            candle_nn::rotary_emb::rope
        } else {
            candle_nn::rotary_emb::rope_i
        };
        let q = rope(&q.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        let k = rope(&k.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        cache.layers[li].append(&k, &v)?;
        let segs = cache.layers[li].views()?;
        // Grouped-query attention without repeating K/V: the `rep` query heads
        // that share a KV head become `rep * t` rows of one matrix product.
        let q = q.reshape((kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = segs
            .iter()
            .map(|(k, _)| q.matmul(&k.t()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut att = if scores.len() == 1 {
            (&scores[0] * scale)?
        } else {
            (Tensor::cat(&scores, 2)? * scale)?
        }; // (kvh, rep * t, kv_len)
        let kv_len = att.dim(2)?;
        if let Some(m) = mask {
            let m = m
                .unsqueeze(0)?
                .expand((rep, t, kv_len))?
                .reshape((rep * t, kv_len))?;
            att = att.broadcast_add(&m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let mut y: Option<Tensor> = None;
        let mut off = 0;
        for (_, v) in &segs {
            let len = v.dim(1)?;
            let part = if segs.len() == 1 {
                att.matmul(v)?
            } else {
                att.narrow(2, off, len)?.matmul(v)?
            };
            off += len;
            y = Some(match y {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        let y = y.ok_or_else(|| candle_core::Error::Msg("attention over an empty cache".into()))?;
        // (kvh, rep * t, hd) -> (h, t, hd) -> (t, h * hd)
        y.reshape((h, t, hd))?.transpose(0, 1)?.reshape((t, h * hd))
    }

    /// Output projection, residual and MLP of one layer.
    fn finish_layer(
        &self,
        layer: &Layer,
        x: Tensor,
        attn: &Tensor,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let y = layer.wo.forward(attn, exact)?;
        let x = (x + y)?;
        let xn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
        let g = layer.w_gate.forward(&xn, exact)?;
        let u = layer.w_up.forward(&xn, exact)?;
        let y = layer
            .w_down
            .forward(&(candle_nn::ops::silu(&g)? * u)?, exact)?;
        x + y
    }

    /// One decoding step for several sequences at once: `tokens[i]` is
    /// appended to `caches[i]`. The weight matmuls run on all rows together
    /// (each weight is read once per step); attention runs per sequence.
    /// Returns logits `(n, vocab)`.
    pub fn decode_step_batch(&self, tokens: &[u32], caches: &mut [KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            return Err(Error::Invalid(format!(
                "decode_step_batch: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        if let Some(c) = caches.iter().find(|c| c.pos + 1 > self.max_context) {
            return Err(cerr(format!(
                "context of {} tokens exceeds the model's {}",
                c.pos + 1,
                self.max_context
            )));
        }
        if self.fused_ready() {
            return self.fused_step(tokens, caches).map_err(cerr);
        }
        let mut f = || -> candle_core::Result<Tensor> {
            let n = tokens.len();
            for c in caches.iter_mut() {
                if c.layers.len() != self.layers.len() {
                    c.layers = vec![LayerKv::default(); self.layers.len()];
                }
            }
            let ids = Tensor::new(tokens, &self.device)?;
            let mut x = self.embed.index_select(&ids, 0)?; // (n, dim)
            let rot: Vec<(Tensor, Tensor)> = caches
                .iter()
                .map(|c| Ok((self.cos.narrow(0, c.pos, 1)?, self.sin.narrow(0, c.pos, 1)?)))
                .collect::<candle_core::Result<_>>()?;
            for (li, layer) in self.layers.iter().enumerate() {
                let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
                let (q, k, v) = self.qkv(layer, &xn, false)?;
                let mut ys = Vec::with_capacity(n);
                for (i, c) in caches.iter_mut().enumerate() {
                    ys.push(self.attend(
                        li,
                        &q.narrow(0, i, 1)?,
                        &k.narrow(0, i, 1)?,
                        &v.narrow(0, i, 1)?,
                        &rot[i].0,
                        &rot[i].1,
                        None,
                        c,
                    )?);
                }
                let y = Tensor::cat(&ys, 0)?;
                x = self.finish_layer(layer, x, &y, false)?;
            }
            for c in caches.iter_mut() {
                c.pos += 1;
            }
            let x = candle_nn::ops::rms_norm(&x, &self.norm, self.eps)?;
            self.output.forward(&x, false)
        };
        f().map_err(cerr)
    }

    /// Whether every weight has its fused decoding copy.
    fn fused_ready(&self) -> bool {
        self.output.f.is_some()
            && self.layers.iter().all(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .all(|w| w.f.is_some())
            })
    }

    /// One decoding step for several sequences with the fused kernels:
    /// `tokens[i]` is appended to `caches[i]`; returns logits `(n, vocab)`.
    fn fused_step(&self, tokens: &[u32], caches: &mut [KvCache]) -> candle_core::Result<Tensor> {
        team::with_team(team::threads(), |team| {
            self.fused_step_with(team, tokens, caches)
        })
    }

    /// [`LocalLlm::fused_step`] with its team: the matrix products are split
    /// over the team, the rest runs on this thread.
    fn fused_step_with(
        &self,
        team: &team::Team<'_>,
        tokens: &[u32],
        caches: &mut [KvCache],
    ) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        let (h, kvh, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        // `dim`: the residual stream; `qd`: all query heads side by side.
        let (dim, qd, kvd, half) = (self.hidden, h * hd, kvh * hd, hd / 2);
        for c in caches.iter_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = vec![LayerKv::default(); self.layers.len()];
            }
        }
        let mut x = vec![0f32; n * dim];
        with_f32(&self.embed, |e| {
            for (s, &t) in tokens.iter().enumerate() {
                let t = t as usize;
                x[s * dim..(s + 1) * dim].copy_from_slice(&e[t * dim..(t + 1) * dim]);
            }
        })?;
        let ff = need(&self.layers[0].w_gate)?.rows();
        let (mut xn, mut y, mut o) = (vec![0f32; n * dim], vec![0f32; n * qd], vec![0f32; n * dim]);
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let (mut g, mut u) = (vec![0f32; n * ff], vec![0f32; n * ff]);
        let mut xq = fused::Q8Rows::default();
        for (li, layer) in self.layers.iter().enumerate() {
            with_f32(&layer.attn_norm, |w| {
                fused::rms_norm(&x, w, self.eps, &mut xn)
            })?;
            xq.set(&xn, n, dim);
            fused::matmul_q8(
                team,
                &xq,
                &mut [
                    (need(&layer.wq)?, &mut q),
                    (need(&layer.wk)?, &mut k),
                    (need(&layer.wv)?, &mut v),
                ],
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                for (b, rows) in [(bq, &mut q), (bk, &mut k), (bv, &mut v)] {
                    with_f32(b, |b| {
                        for row in rows.chunks_exact_mut(b.len()) {
                            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                        }
                    })?;
                }
            }
            if let Some([qn, kn]) = &layer.qk_norm {
                for (w, rows) in [(qn, &mut q), (kn, &mut k)] {
                    with_f32(w, |w| fused::rms_norm_in_place(rows, w, self.eps))?;
                }
            }
            for (s, c) in caches.iter_mut().enumerate() {
                let pos = c.pos;
                let (qs, ks) = (&mut q[s * qd..(s + 1) * qd], &mut k[s * kvd..(s + 1) * kvd]);
                with_f32(&self.cos, |cos| {
                    with_f32(&self.sin, |sin| {
                        let (cr, sr) = (
                            &cos[pos * half..(pos + 1) * half],
                            &sin[pos * half..(pos + 1) * half],
                        );
                        for head in qs.chunks_exact_mut(hd).chain(ks.chunks_exact_mut(hd)) {
                            if self.rope_halves {
                                fused::rope_halves(head, cr, sr);
                            } else {
                                fused::rope_interleaved(head, cr, sr);
                            }
                        }
                    })
                })??;
                let kt = Tensor::from_vec(ks.to_vec(), (kvh, 1, hd), &self.device)?;
                let vt = Tensor::from_vec(
                    v[s * kvd..(s + 1) * kvd].to_vec(),
                    (kvh, 1, hd),
                    &self.device,
                )?;
                c.layers[li].append(&kt, &vt)?;
            }
            // Attention, one task per (sequence, head), split over the team.
            let tasks = n * h;
            let ys = team::SharedOut::new(&mut y);
            let failed = std::sync::Mutex::new(None);
            let (caches_ref, q_ref) = (&*caches, &q);
            team.run(&|part| {
                let (lo, hi) = team::part_range(tasks, part, team.threads());
                let mut scores = Vec::new();
                for t in lo..hi {
                    let (s, head) = (t / h, t % h);
                    let qh = &q_ref[s * qd + head * hd..s * qd + (head + 1) * hd];
                    // SAFETY: each task writes its own head of its own sequence.
                    let yh = unsafe { ys.slice(s * qd + head * hd, hd) };
                    let kv = &caches_ref[s].layers[li];
                    if let Err(e) = attend_head(kv, qh, yh, head / (h / kvh), &mut scores)
                        && let Ok(mut f) = failed.lock()
                    {
                        *f = Some(e);
                    }
                }
            });
            if let Some(e) = failed.into_inner().ok().flatten() {
                return Err(e);
            }
            xq.set(&y, n, qd);
            fused::matmul_q8(team, &xq, &mut [(need(&layer.wo)?, &mut o)]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            with_f32(&layer.ffn_norm, |w| {
                fused::rms_norm(&x, w, self.eps, &mut xn)
            })?;
            xq.set(&xn, n, dim);
            fused::matmul_q8(
                team,
                &xq,
                &mut [(need(&layer.w_gate)?, &mut g), (need(&layer.w_up)?, &mut u)],
            );
            g.iter_mut()
                .zip(&u)
                .for_each(|(a, b)| *a = *a / (1.0 + (-*a).exp()) * b);
            xq.set(&g, n, ff);
            fused::matmul_q8(team, &xq, &mut [(need(&layer.w_down)?, &mut o)]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for c in caches.iter_mut() {
            c.pos += 1;
        }
        with_f32(&self.norm, |w| fused::rms_norm(&x, w, self.eps, &mut xn))?;
        let out = need(&self.output)?;
        let mut logits = vec![0f32; n * out.rows()];
        xq.set(&xn, n, dim);
        fused::matmul_q8(team, &xq, &mut [(out, &mut logits)]);
        Tensor::from_vec(logits, (n, out.rows()), &self.device)
    }

    /// Log-softmax of every row of `logits` (f64 accumulation), as rows.
    fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<Vec<f32>> = logits
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2())
            .map_err(cerr)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m as f64 + r.iter().map(|&x| ((x - m) as f64).exp()).sum::<f64>().ln();
                r.iter().map(|&x| (x as f64 - lse) as f32).collect()
            })
            .collect())
    }

    /// Log-probabilities of every token of `tokens` after the first, from one
    /// plain forward pass with no cache (the reference for scoring).
    pub fn sequence_logprobs(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        let mut cache = KvCache::default();
        let logits = self.forward(tokens, &mut cache, true, true)?;
        let lp = Self::log_softmax_rows(&logits)?;
        Ok((1..tokens.len())
            .map(|i| lp[i - 1][tokens[i] as usize] as f64)
            .collect())
    }

    /// A cache holding the longest prefix of `ids` shared with a remembered
    /// prompt (never all of `ids`), and that prefix's length.
    fn cached_prefix(&self, ids: &[u32]) -> (KvCache, usize) {
        if !self.reuse_prefix {
            return (KvCache::default(), 0);
        }
        let guard = self.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
        let best = guard
            .iter()
            .map(|(prev, cache)| {
                let common = prev
                    .iter()
                    .zip(ids)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(ids.len().saturating_sub(1))
                    .min(cache.pos);
                (common, cache)
            })
            .max_by_key(|(common, _)| *common);
        if let Some((common, cache)) = best
            && common > 0
        {
            return (cache.truncated(common), common);
        }
        (KvCache::default(), 0)
    }

    /// Remembers `ids` and their cache for [`LocalLlm::cached_prefix`]
    /// (the most recent [`LocalConfig::prefix_slots`] prompts).
    fn remember(&self, ids: &[u32], cache: &KvCache) {
        if self.reuse_prefix && cache.pos == ids.len() {
            let mut guard = self.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
            guard.retain(|(prev, _)| prev.as_slice() != ids);
            guard.push_front((ids.to_vec(), cache.clone()));
            guard.truncate(self.prefix_slots);
        }
    }

    /// Processes a prompt (reusing the longest prefix it shares with the
    /// previous prompt when [`LocalConfig::reuse_prefix`]) and returns its cache and last-position logits `(1, vocab)`.
    pub fn prefill(&self, ids: &[u32]) -> Result<(KvCache, Tensor)> {
        if ids.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let (mut cache, l) = self.cached_prefix(ids);
        let logits = self.forward(&ids[l..], &mut cache, false, true)?;
        self.remember(ids, &cache);
        Ok((cache, logits))
    }

    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let ids = self.encode(&self.render_chat(messages, true))?;
        if ids.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        Ok(ids)
    }

    fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| {
                    if x > b.1 { (i, x) } else { b }
                })
                .0 as u32
        };
        if params.temperature <= 0.0 {
            return argmax();
        }
        let t = params.temperature as f64;
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut p: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x as f64 - m) / t).exp()))
            .collect();
        let z: f64 = p.iter().map(|x| x.1).sum();
        p.iter_mut().for_each(|x| x.1 /= z);
        if params.top_p < 1.0 {
            p.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut acc = 0.0;
            let mut keep = 0;
            for (i, x) in p.iter().enumerate() {
                acc += x.1;
                keep = i + 1;
                if acc >= params.top_p.max(0.0) as f64 {
                    break;
                }
            }
            p.truncate(keep.max(1));
        }
        let z: f64 = p.iter().map(|x| x.1).sum();
        let mut r = rng.next_f64() * z;
        for &(i, w) in &p {
            if r < w {
                return i;
            }
            r -= w;
        }
        p.last().map_or_else(argmax, |x| x.0)
    }

    /// Generates from already-tokenized prompt ids.
    pub fn generate_ids(&self, prompt: &[u32], params: &SamplingParams) -> Result<Generation> {
        self.generate_batch(&[prompt.to_vec()], std::slice::from_ref(params))
            .pop()
            .unwrap_or_else(|| Err(cerr("no result")))
    }

    /// Generates for several tokenized prompts at once: each prompt is
    /// processed alone (f32), then all unfinished sequences are decoded
    /// together, one [`LocalLlm::decode_step_batch`] per token. Results are
    /// the same as one sequence at a time; latency is each sequence's own
    /// time to finish.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &[SamplingParams],
    ) -> Vec<Result<Generation>> {
        struct Seq {
            idx: usize,
            out: Vec<u32>,
            rng: Rng,
            text: String,
            logits: Vec<f32>,
            cache: KvCache,
            done: Option<std::result::Result<FinishReason, String>>,
            ms: f64,
        }
        let t0 = Instant::now();
        let ms = || t0.elapsed().as_secs_f64() * 1e3;
        let mut results: Vec<Option<Result<Generation>>> =
            (0..prompts.len()).map(|_| None).collect();
        if params.len() != prompts.len() {
            let msg = format!(
                "{} prompts but {} sampling params",
                prompts.len(),
                params.len()
            );
            return (0..prompts.len())
                .map(|_| Err(Error::Invalid(msg.clone())))
                .collect();
        }
        let mut seqs = Vec::with_capacity(prompts.len());
        for (idx, prompt) in prompts.iter().enumerate() {
            let first = self.prefill(prompt).and_then(|(c, l)| {
                let row = l
                    .squeeze(0)
                    .and_then(|r| r.to_vec1::<f32>())
                    .map_err(cerr)?;
                Ok((c, row))
            });
            match first {
                Ok((cache, logits)) => seqs.push(Seq {
                    idx,
                    out: Vec::new(),
                    rng: Rng::new(params[idx].seed),
                    text: String::new(),
                    logits,
                    cache,
                    done: None,
                    ms: 0.0,
                }),
                Err(e) => results[idx] = Some(Err(e)),
            }
        }
        loop {
            let mut step_tokens = Vec::new();
            let mut step_seqs = Vec::new();
            for (k, s) in seqs.iter_mut().enumerate() {
                if s.done.is_some() {
                    continue;
                }
                let p = &params[s.idx];
                if s.out.len() >= p.max_tokens {
                    s.done = Some(Ok(FinishReason::Length));
                    s.ms = ms();
                    continue;
                }
                let next = Self::sample(&s.logits, p, &mut s.rng);
                if self.stop_ids.contains(&next) {
                    s.done = Some(Ok(FinishReason::Stop));
                    s.ms = ms();
                    continue;
                }
                s.out.push(next);
                match self.tokenizer.decode(&s.out, true) {
                    Ok(t) => s.text = t,
                    Err(e) => {
                        s.done = Some(Err(e.to_string()));
                        continue;
                    }
                }
                if let Some(cut) = p
                    .stop
                    .iter()
                    .filter(|x| !x.is_empty())
                    .filter_map(|x| s.text.find(x.as_str()))
                    .min()
                {
                    s.text.truncate(cut);
                    s.done = Some(Ok(FinishReason::StopString));
                    s.ms = ms();
                    continue;
                }
                if s.out.len() >= p.max_tokens || s.cache.pos + 1 > self.max_context {
                    s.done = Some(Ok(FinishReason::Length));
                    s.ms = ms();
                    continue;
                }
                step_tokens.push(next);
                step_seqs.push(k);
            }
            if step_tokens.is_empty() {
                break;
            }
            let mut caches: Vec<KvCache> = step_seqs
                .iter()
                .map(|&k| std::mem::take(&mut seqs[k].cache))
                .collect();
            let rows = self
                .decode_step_batch(&step_tokens, &mut caches)
                .and_then(|l| l.to_vec2::<f32>().map_err(cerr));
            match rows {
                Ok(rows) => {
                    for ((&k, c), r) in step_seqs.iter().zip(caches).zip(rows) {
                        seqs[k].cache = c;
                        seqs[k].logits = r;
                    }
                }
                Err(e) => {
                    for &k in &step_seqs {
                        seqs[k].done = Some(Err(e.to_string()));
                    }
                }
            }
        }
        for s in seqs {
            results[s.idx] = Some(match s.done {
                Some(Ok(finish)) => Ok(Generation {
                    text: s.text,
                    prompt_tokens: prompts[s.idx].len(),
                    completion_tokens: s.out.len(),
                    latency_ms: s.ms,
                    finish,
                }),
                Some(Err(e)) => Err(cerr(e)),
                None => Err(cerr("generation did not finish")),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(cerr("no result"))))
            .collect()
    }
}

/// A trie over token sequences.
#[derive(Default)]
struct Trie {
    children: BTreeMap<u32, Trie>,
    /// Index of the allowed string that ends here.
    end: Option<usize>,
}

impl Llm for LocalLlm {
    fn backend(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.model_id
    }

    fn count_prompt_tokens(&self, messages: &[Message]) -> Option<usize> {
        self.prompt_ids(messages).ok().map(|ids| ids.len())
    }

    fn chat(&self, messages: &[Message], params: &SamplingParams) -> Result<Generation> {
        let ids = self.prompt_ids(messages)?;
        self.generate_ids(&ids, params)
    }

    /// Batched decoding of all the conversations together.
    fn chat_batch(&self, batch: &[(&[Message], &SamplingParams)]) -> Vec<Result<Generation>> {
        let mut prompts = Vec::with_capacity(batch.len());
        let mut params = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        let mut out: Vec<Option<Result<Generation>>> = (0..batch.len()).map(|_| None).collect();
        for (i, (m, p)) in batch.iter().enumerate() {
            match self.prompt_ids(m) {
                Ok(ids) => {
                    prompts.push(ids);
                    params.push((*p).clone());
                    slots.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (i, r) in slots
            .into_iter()
            .zip(self.generate_batch(&prompts, &params))
        {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(cerr("no result"))))
            .collect()
    }

    /// Exact (f32) log-probs. The prompt is processed once; then all
    /// candidates go through one batched pass over its KV cache, each at its
    /// own positions under a tree attention mask (it sees the prompt and its
    /// own earlier tokens only).
    fn score_continuations(
        &self,
        prompt: &[Message],
        candidates: &[String],
    ) -> Result<Vec<LogProb>> {
        let ids = self.prompt_ids(prompt)?;
        let (cache, last) = self.prefill(&ids)?;
        let last = Self::log_softmax_rows(&last)?.remove(0);
        let toks: Vec<Vec<u32>> = candidates
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<_>>()?;
        // All candidates' tokens (but the last of each) go through one forward
        // pass over the shared prompt cache, each attending only to the prompt
        // and to its own earlier tokens (a "tree" mask), at its own positions.
        let p = cache.pos;
        let mut flat = Vec::new();
        let mut positions = Vec::new();
        let mut owner = Vec::new();
        let mut starts = Vec::with_capacity(toks.len());
        for (ci, t) in toks.iter().enumerate() {
            starts.push(flat.len());
            for (j, &tk) in t.iter().take(t.len().saturating_sub(1)).enumerate() {
                flat.push(tk);
                positions.push((p + j) as u32);
                owner.push(ci);
            }
        }
        let rows = if flat.is_empty() {
            Vec::new()
        } else {
            let n = flat.len();
            let max_pos = positions.iter().copied().max().unwrap_or(0) as usize;
            if max_pos >= self.max_context {
                return Err(cerr(format!(
                    "context of {} tokens exceeds the model's {}",
                    max_pos + 1,
                    self.max_context
                )));
            }
            let kv_len = p + n;
            let mut m = vec![0f32; n * kv_len];
            for i in 0..n {
                for j in 0..n {
                    if owner[j] != owner[i] || j > i {
                        m[i * kv_len + p + j] = f32::NEG_INFINITY;
                    }
                }
            }
            let f = || -> candle_core::Result<Tensor> {
                let mask = Tensor::from_vec(m, (n, kv_len), &self.device)?;
                let pos_t = Tensor::new(positions.as_slice(), &self.device)?;
                let cos = self.cos.index_select(&pos_t, 0)?;
                let sin = self.sin.index_select(&pos_t, 0)?;
                let mut c2 = cache.clone();
                self.forward_masked(&flat, &cos, &sin, Some(&mask), &mut c2, true, true)
            };
            Self::log_softmax_rows(&f().map_err(cerr)?)?
        };
        Ok(toks
            .iter()
            .enumerate()
            .map(|(ci, t)| {
                if t.is_empty() {
                    return LogProb {
                        total: 0.0,
                        mean: 0.0,
                        n_tokens: 0,
                    };
                }
                let mut total = last[t[0] as usize] as f64;
                for (j, &tk) in t[1..].iter().enumerate() {
                    total += rows[starts[ci] + j][tk as usize] as f64;
                }
                LogProb {
                    total,
                    mean: total / t.len() as f64,
                    n_tokens: t.len(),
                }
            })
            .collect())
    }

    /// Greedy decoding masked by a token trie over `allowed` (each followed by
    /// the end-of-turn token): the answer is always one of `allowed`.
    fn generate_constrained(&self, prompt: &[Message], allowed: &[String]) -> Result<String> {
        if allowed.is_empty() {
            return Err(Error::Invalid(
                "constrained generation needs at least one allowed string".into(),
            ));
        }
        let mut root = Trie::default();
        let mut seen = HashMap::new();
        for (i, a) in allowed.iter().enumerate() {
            if seen.insert(a.as_str(), i).is_some() {
                continue;
            }
            let mut toks = self.encode(a)?;
            toks.push(self.end_of_turn);
            let mut node = &mut root;
            for t in toks {
                node = node.children.entry(t).or_default();
            }
            node.end = Some(i);
        }
        let ids = self.prompt_ids(prompt)?;
        let (mut cache, l) = self.cached_prefix(&ids);
        let mut pending = ids[l..].to_vec();
        let mut node = &root;
        loop {
            if let Some(i) = node.end {
                return Ok(allowed[i].clone());
            }
            let next = if node.children.len() == 1 {
                // Forced: no need to look at logits.
                *node.children.keys().next().unwrap_or(&self.end_of_turn)
            } else {
                let logits = self.forward(&pending, &mut cache, false, true)?;
                pending.clear();
                let row: Vec<f32> = logits.squeeze(0).and_then(|l| l.to_vec1()).map_err(cerr)?;
                *node
                    .children
                    .keys()
                    .max_by(|a, b| row[**a as usize].total_cmp(&row[**b as usize]))
                    .unwrap_or(&self.end_of_turn)
            };
            pending.push(next);
            node = match node.children.get(&next) {
                Some(n) => n,
                None => return Err(cerr("constrained decoding left the trie")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_sampling_stays_in_nucleus() {
        let logits = [10.0f32, 9.0, -5.0, -6.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            assert_eq!(LocalLlm::sample(&logits, &p, &mut rng), 0);
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.99,
            ..Default::default()
        };
        let got: std::collections::HashSet<u32> = (0..200)
            .map(|_| LocalLlm::sample(&logits, &p, &mut rng))
            .collect();
        assert!(got.contains(&0) && got.contains(&1) && !got.contains(&3));
        assert_eq!(
            LocalLlm::sample(&logits, &SamplingParams::default(), &mut rng),
            0
        );
    }
}
