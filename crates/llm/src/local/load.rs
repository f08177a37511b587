//! Loading a GGUF file: metadata, weights (dequantised for the exact path, packed or
//! requantised for decoding), rotary tables, the tokenizer and the chat template.

use crate::gguf::{GgufFile, Spec};
use crate::resolve::{SMOLLM2, resolve};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use llmrec_core::{Error, Result};
use llmrec_kernels::gemm512::PackedLinear;
use llmrec_kernels::quant::{DecodeMat, Q8Mat, Q41Mat};
use llmrec_kernels::team;
use std::path::Path;
use std::time::Instant;

use super::*;

pub(super) struct Linear {
    /// `(out, in)` f32 for candle's matmul, where `packed` does not serve.
    pub(super) w: Option<Tensor>,
    /// The f32 weights packed for the AVX-512 kernel (exact path: prompts,
    /// scoring), where the CPU has AVX-512F.
    pub(super) packed: Option<PackedLinear>,
    /// The file's tensor for candle's kernels ([`DecodeWeights::Candle`]).
    pub(super) q: Option<QMatMul>,
    /// Copy for the fused decoding path (Q8_0, or Q4_1 as shipped).
    pub(super) f: Option<DecodeMat>,
}

pub(super) struct Layer {
    pub(super) attn_norm: Tensor,
    pub(super) wq: Linear,
    pub(super) wk: Linear,
    pub(super) wv: Linear,
    /// Biases of the query, key and value projections (Qwen2).
    pub(super) qkv_bias: Option<[Tensor; 3]>,
    /// RMS-norm weights applied to each query and key head (Qwen3).
    pub(super) qk_norm: Option<[Tensor; 2]>,
    pub(super) wo: Linear,
    pub(super) ffn_norm: Tensor,
    /// Gemma 3: RMS norms of the attention and MLP outputs, before their residual adds.
    pub(super) post_norms: Option<[Tensor; 2]>,
    /// Gemma 3: this layer attends within the sliding window, with the local rotary
    /// tables.
    pub(super) sliding: bool,
    pub(super) w_gate: Linear,
    pub(super) w_up: Linear,
    pub(super) w_down: Linear,
}

impl Linear {
    pub(super) fn new(
        qt: QTensor,
        device: &Device,
        decode: DecodeWeights,
    ) -> candle_core::Result<Self> {
        let w = qt.dequantize(device)?;
        let (rows, cols) = w.dims2()?;
        let requantized = |w: &Tensor| -> candle_core::Result<Option<DecodeMat>> {
            let data = w.flatten_all()?.to_vec1::<f32>()?;
            Ok(Q8Mat::from_f32(&data, rows, cols).map(DecodeMat::Q8))
        };
        let packed = if llmrec_kernels::gemm512::available() {
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

    /// A layer whose f32 weights `w` were changed (merged with a LoRA delta): the
    /// shipped quantized copy no longer applies, so decoding uses `w` requantized
    /// to Q8_0 (or f32, or candle's Q8_0 kernels, as `decode` says).
    pub(super) fn merged(w: Tensor, decode: DecodeWeights) -> candle_core::Result<Self> {
        let (rows, cols) = w.dims2()?;
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        let packed = if llmrec_kernels::gemm512::available() {
            PackedLinear::new(&data, &vec![0f32; rows], rows, cols)
        } else {
            None
        };
        let (q, f) = match decode {
            DecodeWeights::F32 => (None, None),
            DecodeWeights::Q8_0 | DecodeWeights::Shipped => {
                (None, Q8Mat::from_f32(&data, rows, cols).map(DecodeMat::Q8))
            }
            DecodeWeights::Candle => {
                let qt = QTensor::quantize(&w, GgmlDType::Q8_0)?;
                (Some(QMatMul::from_qtensor(qt)?), None)
            }
        };
        let w = if packed.is_some() { None } else { Some(w) };
        Ok(Linear { w, packed, q, f })
    }

    /// `x: (T, in)` → `(T, out)`.
    pub(super) fn forward(&self, x: &Tensor, exact: bool) -> candle_core::Result<Tensor> {
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

impl LocalLlm {
    /// Loads SmolLM2-135M-Instruct, resolved from `explicit` or the usual places.
    pub fn smollm2(explicit: Option<&Path>, config: LocalConfig) -> Result<Self> {
        let path = resolve(&SMOLLM2, explicit)?;
        Self::load(&path, config)
    }

    /// Loads a GGUF file of a llama-family, Qwen2, Qwen3 or Gemma 3 model.
    pub fn load(path: &Path, config: LocalConfig) -> Result<Self> {
        let t0 = Instant::now();
        let art = |message: String| Error::Artifact {
            path: path.to_path_buf(),
            message,
        };
        let mut gguf = GgufFile::open(path)?;
        let spec = Spec::read(&gguf.content, path)?;
        let Spec {
            n_head,
            n_kv_head,
            n_layer,
            dim,
            max_context,
            eps,
            head_dim,
            ..
        } = spec.clone();
        let has = |g: &GgufFile, name: &str| g.has(name);
        let device = Device::Cpu;
        // The fused decoding kernels know the llama layout only, so for Gemma 3 a
        // quantized copy for them would go unused: decode with the f32 weights
        // (or candle's kernels, when asked for).
        let decode = match config.decode_weights {
            DecodeWeights::Candle => DecodeWeights::Candle,
            _ if spec.gemma.is_some() => DecodeWeights::F32,
            d => d,
        };
        let adapter = match &config.adapter {
            Some(dir) => Some(crate::lora::Adapter::load(dir, path)?),
            None => None,
        };
        let f = |r: candle_core::Result<Linear>| r.map_err(cerr);
        let embed_q = gguf.tensor(path, "token_embd.weight")?;
        let embed = embed_q.dequantize(&device).map_err(cerr)?;
        let output = match gguf.tensor(path, "output.weight") {
            Ok(o) => f(Linear::new(o, &device, decode))?,
            Err(_) => f(Linear::new(embed_q, &device, decode))?,
        };
        let norm = gguf
            .tensor(path, "output_norm.weight")?
            .dequantize(&device)
            .map_err(cerr)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let mut lin = |n: &str| -> Result<Linear> {
                let q = gguf.tensor(path, &format!("{p}.{n}.weight"))?;
                match adapter.as_ref().and_then(|a| a.delta(i, n)) {
                    // Merged at load: W + (alpha / r) B A.
                    Some(delta) => {
                        let w = (q.dequantize(&device).map_err(cerr)? + delta?).map_err(cerr)?;
                        f(Linear::merged(w, decode))
                    }
                    None => f(Linear::new(q, &device, decode)),
                }
            };
            let wq = lin("attn_q")?;
            let wk = lin("attn_k")?;
            let wv = lin("attn_v")?;
            let wo = lin("attn_output")?;
            let w_gate = lin("ffn_gate")?;
            let w_up = lin("ffn_up")?;
            let w_down = lin("ffn_down")?;
            let has_bias = has(&gguf, &format!("{p}.attn_q.bias"));
            let has_qk_norm = has(&gguf, &format!("{p}.attn_q_norm.weight"));
            let mut vector = |n: &str| -> Result<Tensor> {
                gguf.tensor(path, &format!("{p}.{n}"))?
                    .dequantize(&device)
                    .map_err(cerr)
            };
            let attn_norm = vector("attn_norm.weight")?;
            let ffn_norm = vector("ffn_norm.weight")?;
            let qkv_bias = if has_bias {
                Some([
                    vector("attn_q.bias")?,
                    vector("attn_k.bias")?,
                    vector("attn_v.bias")?,
                ])
            } else {
                None
            };
            let qk_norm = if has_qk_norm {
                Some([vector("attn_q_norm.weight")?, vector("attn_k_norm.weight")?])
            } else {
                None
            };
            let post_norms = if spec.gemma.is_some() {
                Some([
                    vector("post_attention_norm.weight")?,
                    vector("post_ffw_norm.weight")?,
                ])
            } else {
                None
            };
            let sliding = spec.gemma.as_ref().is_some_and(|g| (i + 1) % g.period != 0);
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                qkv_bias,
                qk_norm,
                wo,
                ffn_norm,
                post_norms,
                sliding,
                w_gate,
                w_up,
                w_down,
            });
        }
        let (cos, sin) = spec.rope_tables(&device)?;
        let gemma = match &spec.gemma {
            Some(g) => {
                let (cos, sin) = spec.rope_tables_with(g.local_rope_base, &device)?;
                Some(Gemma {
                    window: g.window,
                    embed_scale: (dim as f64).sqrt(),
                    local_cos: cos,
                    local_sin: sin,
                })
            }
            None => None,
        };

        let ct = &gguf.content;
        let (tokenizer, tokens) = build_tokenizer(ct)?;
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
        let (template, end_of_turn) = if let Some(eot) = id_of("<end_of_turn>")
            .filter(|_| spec.arch == "gemma3" || template_src.contains("<start_of_turn>"))
        {
            (ChatTemplate::Gemma, eot)
        } else if template_src.contains("<|start_header_id|>") {
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
                "unsupported chat template (supported: ChatML, Llama 3, Gemma)".into(),
            ));
        };
        let mut stop_ids = vec![end_of_turn];
        stop_ids.extend(eos);
        stop_ids.extend(id_of("<|endoftext|>"));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let mut model_id = config.model_id.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "local".into())
        });
        if let Some(a) = &adapter {
            // Cache keys must tell a fine-tuned model from its base.
            model_id = format!("{model_id}+lora-{}", a.short_id());
        }
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
            rope_halves: spec.rope_halves,
            gemma,
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
}
