//! The base model as the LoRA trainer runs it: the GGUF weights dequantised to f32 and
//! frozen, a LoRA adapter on each target projection, and a forward pass made of
//! differentiable candle ops (RMS norm, rotary embeddings and grouped-query
//! attention written out, since candle's fused versions have no backward pass).
//!
//! The forward is the same function as the inference backend's exact path (the
//! parity test compares the two to 1e-4); it runs a batch of right-padded rows with
//! a causal mask, so a row's real tokens never see its padding.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use llmrec_core::{Error, Result, Rng};
use llmrec_kernels::nn::{DropoutOp, FusedAttention};

use super::config::{LoraConfig, Target};
use crate::gguf::{GgufFile, Spec, TRAINABLE_ARCHITECTURES};

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("lora", e)
}

/// One adapter: `A` `(rank, in)`, `B` `(out, rank)`.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) a: Var,
    pub(crate) b: Var,
}

/// A frozen projection and its adapter, if it has one.
#[derive(Debug, Clone)]
struct Proj {
    /// The weight transposed, `(in, out)`, contiguous: one plain matrix product.
    wt: Tensor,
    lora: Option<Pair>,
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    qkv_bias: Option<[Tensor; 3]>,
    qk_norm: Option<[Tensor; 2]>,
    ffn_norm: Tensor,
    gate: Proj,
    up: Proj,
    down: Proj,
}

/// A right-padded batch of token rows.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `(rows, len)` u32 token ids (padding: 0).
    pub(crate) ids: Tensor,
    /// Flat `row * len + position` of every position whose next token is scored.
    pub(crate) positions: Vec<u32>,
    /// The token each of `positions` should predict.
    pub(crate) targets: Vec<u32>,
}

impl TokenBatch {
    /// A batch of `rows`, each `(tokens, answer_start)`: the loss covers the tokens
    /// from `answer_start` on (each predicted from the position before it).
    pub fn new(rows: &[(&[u32], usize)]) -> Result<TokenBatch> {
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if len < 2 {
            return Err(Error::Invalid(
                "a batch needs rows of at least 2 tokens".into(),
            ));
        }
        let mut ids = vec![0u32; rows.len() * len];
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, (tokens, start)) in rows.iter().enumerate() {
            if *start == 0 || *start >= tokens.len() {
                return Err(Error::Invalid(format!(
                    "row {r}: the answer must start after the first token and before the end ({start} of {})",
                    tokens.len()
                )));
            }
            ids[r * len..r * len + tokens.len()].copy_from_slice(tokens);
            for p in *start..tokens.len() {
                positions.push((r * len + p - 1) as u32);
                targets.push(tokens[p]);
            }
        }
        let ids = Tensor::from_vec(ids, (rows.len(), len), &Device::Cpu).map_err(cerr)?;
        Ok(TokenBatch {
            ids,
            positions,
            targets,
        })
    }

    /// Answer tokens scored.
    pub fn scored(&self) -> usize {
        self.targets.len()
    }
}

/// The frozen base model with its LoRA adapters.
pub struct LoraModel {
    spec: Spec,
    embed: Tensor,
    output: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    cos: Tensor,
    sin: Tensor,
    /// The adapters' variables, named `blk.N.<target>.lora_a` / `.lora_b`.
    vars: VarMap,
    scale: f64,
    dropout: f32,
}

impl std::fmt::Debug for LoraModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraModel")
            .field("arch", &self.spec.arch)
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

/// The variable name of one half of an adapter.
pub(crate) fn var_name(layer: usize, target: Target, half: &str) -> String {
    format!("blk.{layer}.{}.lora_{half}", target.gguf_name())
}

impl LoraModel {
    /// Loads the base model at `path` (f32, frozen) and creates the adapters of
    /// `cfg`: `A` uniform in `±1/sqrt(in)` from `cfg.seed`, `B` zero.
    pub fn load(path: &Path, cfg: &LoraConfig) -> Result<LoraModel> {
        cfg.validate()?;
        let mut gguf = GgufFile::open(path)?;
        let spec = Spec::read(&gguf.content, path)?;
        if !TRAINABLE_ARCHITECTURES.contains(&spec.arch.as_str()) {
            return Err(Error::Artifact {
                path: path.to_path_buf(),
                message: format!(
                    "LoRA training does not support architecture `{}` yet (supported: {})",
                    spec.arch,
                    TRAINABLE_ARCHITECTURES.join(", ")
                ),
            });
        }
        let dev = Device::Cpu;
        let f32_of = |g: &mut GgufFile, name: &str| -> Result<Tensor> {
            g.tensor(path, name)?.dequantize(&dev).map_err(cerr)
        };
        let embed = f32_of(&mut gguf, "token_embd.weight")?;
        let output = if gguf.has("output.weight") {
            f32_of(&mut gguf, "output.weight")?
        } else {
            embed.clone()
        };
        let norm = f32_of(&mut gguf, "output_norm.weight")?;
        let vars = VarMap::new();
        let mut rng = Rng::new(cfg.seed);
        let mut blocks = Vec::with_capacity(spec.n_layer);
        for i in 0..spec.n_layer {
            let p = format!("blk.{i}");
            let mut proj = |g: &mut GgufFile, t: Target| -> Result<Proj> {
                let w = f32_of(g, &format!("{p}.{}.weight", t.gguf_name()))?;
                let lora = if cfg.targets.contains(&t) {
                    let (out, inp) = w.dims2().map_err(cerr)?;
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f32> = (0..cfg.rank * inp)
                        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                        .collect();
                    let a = Var::from_tensor(
                        &Tensor::from_vec(a, (cfg.rank, inp), &dev).map_err(cerr)?,
                    )
                    .map_err(cerr)?;
                    let b = Var::zeros((out, cfg.rank), DType::F32, &dev).map_err(cerr)?;
                    let mut data = vars
                        .data()
                        .lock()
                        .map_err(|_| cerr("variable map lock poisoned"))?;
                    data.insert(var_name(i, t, "a"), a.clone());
                    data.insert(var_name(i, t, "b"), b.clone());
                    Some(Pair { a, b })
                } else {
                    None
                };
                let wt = w.t().and_then(|t| t.contiguous()).map_err(cerr)?;
                Ok(Proj { wt, lora })
            };
            let q = proj(&mut gguf, Target::Q)?;
            let k = proj(&mut gguf, Target::K)?;
            let v = proj(&mut gguf, Target::V)?;
            let o = proj(&mut gguf, Target::O)?;
            let gate = proj(&mut gguf, Target::Gate)?;
            let up = proj(&mut gguf, Target::Up)?;
            let down = proj(&mut gguf, Target::Down)?;
            let attn_norm = f32_of(&mut gguf, &format!("{p}.attn_norm.weight"))?;
            let ffn_norm = f32_of(&mut gguf, &format!("{p}.ffn_norm.weight"))?;
            let qkv_bias = if gguf.has(&format!("{p}.attn_q.bias")) {
                Some([
                    f32_of(&mut gguf, &format!("{p}.attn_q.bias"))?,
                    f32_of(&mut gguf, &format!("{p}.attn_k.bias"))?,
                    f32_of(&mut gguf, &format!("{p}.attn_v.bias"))?,
                ])
            } else {
                None
            };
            let qk_norm = if gguf.has(&format!("{p}.attn_q_norm.weight")) {
                Some([
                    f32_of(&mut gguf, &format!("{p}.attn_q_norm.weight"))?,
                    f32_of(&mut gguf, &format!("{p}.attn_k_norm.weight"))?,
                ])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v,
                o,
                qkv_bias,
                qk_norm,
                ffn_norm,
                gate,
                up,
                down,
            });
        }
        let (cos, sin) = spec.rope_tables(&dev)?;
        Ok(LoraModel {
            spec,
            embed,
            output,
            norm,
            blocks,
            cos,
            sin,
            vars,
            scale: cfg.scale(),
            dropout: cfg.dropout as f32,
        })
    }

    /// The adapters' variables (the only trainable weights).
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// Longest sequence the rotary tables cover.
    pub fn max_context(&self) -> usize {
        self.spec.max_context
    }

    /// `x (.., in) → (.., out)`: `x Wᵀ`, plus `scale · dropout(x) Aᵀ Bᵀ` with an
    /// adapter. Dropout (training) draws its masks from `seed`, regenerating them in
    /// the backward pass; `None`: no dropout.
    fn proj(
        &self,
        p: &Proj,
        x: &Tensor,
        adapters: bool,
        seed: Option<u64>,
    ) -> candle_core::Result<Tensor> {
        // Every row of every sequence at once: `(rows · len, in)`.
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let x = x.reshape(((), inp))?;
        let y = x.matmul(&p.wt)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = p.wt.dim(1)?;
        }
        let Some(pair) = p.lora.as_ref().filter(|_| adapters) else {
            return y.reshape(out_dims);
        };
        let xin = match seed {
            Some(seed) if self.dropout > 0.0 => x.apply_op1(DropoutOp {
                p: self.dropout,
                seed,
                relu: false,
            })?,
            _ => x,
        };
        let low = xin.matmul(&pair.a.as_tensor().t()?)?;
        let delta = low.matmul(&pair.b.as_tensor().t()?)?;
        (y + (delta * self.scale)?)?.reshape(out_dims)
    }

    /// What every block of one batch shares: its shape, rotary rows and (off the CPU)
    /// the causal mask.
    fn context(&self, b: usize, t: usize, device: &Device) -> candle_core::Result<Context> {
        let mask = if device.is_cpu() {
            None
        } else {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (t, t), device)?)
        };
        Ok(Context {
            b,
            t,
            cos: self.cos.narrow(0, 0, t)?,
            sin: self.sin.narrow(0, 0, t)?,
            mask,
        })
    }

    /// One transformer block over `x (b, t, dim)`. The dropout seeds of its seven
    /// projections derive from `seed` and the block's index, so that a recomputation
    /// draws the same masks.
    fn block(
        &self,
        li: usize,
        x: &Tensor,
        ctx: &Context,
        adapters: bool,
        seed: Option<u64>,
    ) -> candle_core::Result<Tensor> {
        let blk = &self.blocks[li];
        let s = &self.spec;
        let (b, t) = (ctx.b, ctx.t);
        let (h, kvh, hd) = (s.n_head, s.n_kv_head, s.head_dim);
        let rep = h / kvh;
        let seeds: Vec<Option<u64>> = (0..7u64)
            .map(|j| seed.map(|sd| Rng::stream(sd, li as u64 * 8 + j).next_u64()))
            .collect();
        let xn = rms_norm(x, &blk.attn_norm, s.eps)?;
        let mut q = self.proj(&blk.q, &xn, adapters, seeds[0])?;
        let mut k = self.proj(&blk.k, &xn, adapters, seeds[1])?;
        let mut v = self.proj(&blk.v, &xn, adapters, seeds[2])?;
        if let Some([bq, bk, bv]) = &blk.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let heads = |z: Tensor, n: usize| -> candle_core::Result<Tensor> {
            z.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let (mut q, mut k, v) = (heads(q, h)?, heads(k, kvh)?, heads(v, kvh)?);
        if let Some([qn, kn]) = &blk.qk_norm {
            q = rms_norm(&q, qn, s.eps)?;
            k = rms_norm(&k, kn, s.eps)?;
        }
        let q = rope(&q, &ctx.cos, &ctx.sin, s.rope_halves)?;
        let k = rope(&k, &ctx.cos, &ctx.sin, s.rope_halves)?;
        let (k, v) = (repeat_kv(&k, rep)?, repeat_kv(&v, rep)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let y = match &ctx.mask {
            None => {
                // The fused kernel keeps no `(t, t)` weights between the passes (its
                // backward recomputes them).
                let flat = |z: Tensor| -> candle_core::Result<Tensor> {
                    z.transpose(1, 2)?.contiguous()?.reshape((b, t, h * hd))
                };
                let op = FusedAttention {
                    heads: h,
                    pad: vec![0; b],
                    scale: scale as f32,
                    dropout: 0.0,
                    seed: None,
                };
                flat(q)?.apply_op3(&flat(k)?, &flat(v)?, op)?
            }
            Some(mask) => {
                let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
                let att = candle_nn::ops::softmax(&att, D::Minus1)?;
                att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h * hd))?
            }
        };
        let x = (x + self.proj(&blk.o, &y, adapters, seeds[3])?)?;
        let xn = rms_norm(&x, &blk.ffn_norm, s.eps)?;
        let g = self.proj(&blk.gate, &xn, adapters, seeds[4])?;
        let u = self.proj(&blk.up, &xn, adapters, seeds[5])?;
        let f = self.proj(&blk.down, &(g.silu()? * u)?, adapters, seeds[6])?;
        x + f
    }

    /// Embeddings of `ids (b, t)` and the batch's context.
    fn start(&self, ids: &Tensor) -> candle_core::Result<(Tensor, Context)> {
        let (b, t) = ids.dims2()?;
        let x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.spec.dim))?;
        Ok((x, self.context(b, t, ids.device())?))
    }

    /// Every block's input and the last block's output, each block run without
    /// keeping its graph (the output detached), so memory holds one block's
    /// activations at a time.
    fn run_blocks(
        &self,
        ids: &Tensor,
        adapters: bool,
        seed: Option<u64>,
    ) -> candle_core::Result<(Vec<Tensor>, Tensor, Context)> {
        let (mut x, ctx) = self.start(ids)?;
        let mut inputs = Vec::with_capacity(self.blocks.len());
        for li in 0..self.blocks.len() {
            let y = self.block(li, &x, &ctx, adapters, seed)?.detach();
            inputs.push(x);
            x = y;
        }
        Ok((inputs, x, ctx))
    }

    /// Mean cross-entropy of the answer tokens from the last block's output `x`.
    fn head_loss(&self, x: &Tensor, batch: &TokenBatch) -> candle_core::Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.spec.eps)?;
        let (b, t, d) = x.dims3()?;
        let pos = Tensor::from_slice(&batch.positions, batch.positions.len(), x.device())?;
        let h = x.reshape((b * t, d))?.index_select(&pos, 0)?;
        let logits = h.matmul(&self.output.t()?)?;
        llmrec_models::loss::cross_entropy(&logits, &batch.targets)
    }

    /// Mean cross-entropy of the batch's answer tokens, with the adapters; dropout
    /// from `seed` (training), none with `None`. No graph is kept.
    pub fn loss(&self, batch: &TokenBatch, seed: Option<u64>) -> Result<f64> {
        let run = || -> candle_core::Result<f64> {
            let (_, x, _) = self.run_blocks(&batch.ids, true, seed)?;
            Ok(self.head_loss(&x, batch)?.to_scalar::<f32>()? as f64)
        };
        run().map_err(cerr)
    }

    /// [`LoraModel::loss`] and the adapters' gradients of it, with activation
    /// checkpointing: the forward keeps each block's input only; the backward reruns
    /// one block at a time (same dropout masks) and back-propagates the gradient of
    /// its output through it. Memory holds one block's graph instead of all of them,
    /// for one more forward pass of compute.
    pub fn loss_and_grads(
        &self,
        batch: &TokenBatch,
        seed: Option<u64>,
    ) -> Result<(f64, GradStore)> {
        let run = || -> candle_core::Result<(f64, GradStore)> {
            let (inputs, x, ctx) = self.run_blocks(&batch.ids, true, seed)?;
            let top = Var::from_tensor(&x)?;
            let loss = self.head_loss(top.as_tensor(), batch)?;
            let value = loss.to_scalar::<f32>()? as f64;
            let mut grads = loss.backward()?;
            let mut g = grads
                .remove(top.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient at the last block".into()))?;
            // The head's own entries stay (a few activations' worth); the adapters'
            // gradients join them block by block.
            for li in (0..self.blocks.len()).rev() {
                let xin = Var::from_tensor(&inputs[li])?;
                let y = self.block(li, xin.as_tensor(), &ctx, true, seed)?;
                let mut bg = (y * &g)?.sum_all()?.backward()?;
                for pair in self.blocks[li].pairs() {
                    for v in [&pair.a, &pair.b] {
                        if let Some(d) = bg.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), d);
                        }
                    }
                }
                g = bg.remove(xin.as_tensor()).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no gradient at block {li}'s input"))
                })?;
            }
            Ok((value, grads))
        };
        run().map_err(cerr)
    }

    /// Logits `(len, vocab)` of every position of one token row (no dropout), with
    /// the adapters.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        self.logits_with(tokens, true)
    }

    /// [`LoraModel::logits`] of the base model alone (the adapters left out).
    pub fn base_logits(&self, tokens: &[u32]) -> Result<Tensor> {
        self.logits_with(tokens, false)
    }

    fn logits_with(&self, tokens: &[u32], adapters: bool) -> Result<Tensor> {
        let run = || -> candle_core::Result<Tensor> {
            let ids = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
            let (_, x, _) = self.run_blocks(&ids, adapters, None)?;
            let x = rms_norm(&x, &self.norm, self.spec.eps)?.squeeze(0)?;
            x.matmul(&self.output.t()?)
        };
        run().map_err(cerr)
    }
}

/// The shape, rotary rows and mask of one batch.
struct Context {
    b: usize,
    t: usize,
    cos: Tensor,
    sin: Tensor,
    /// Causal additive mask `(t, t)` where the fused attention kernel does not run
    /// (off the CPU).
    mask: Option<Tensor>,
}

impl Block {
    /// The block's adapters.
    fn pairs(&self) -> impl Iterator<Item = &Pair> {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
        .into_iter()
        .filter_map(|p| p.lora.as_ref())
    }
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?
        .broadcast_mul(w)
}

/// Rotary embeddings of `x (b, heads, t, hd)` with tables `(t, hd/2)`: pairs
/// `(i, i + hd/2)` (`halves`, Qwen) or `(2i, 2i + 1)` (llama).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, halves: bool) -> candle_core::Result<Tensor> {
    let (b, n, t, hd) = x.dims4()?;
    let half = hd / 2;
    if halves {
        let x0 = x.narrow(3, 0, half)?;
        let x1 = x.narrow(3, half, half)?;
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Tensor::cat(&[r0, r1], 3)
    } else {
        let pairs = x.reshape((b, n, t, half, 2))?;
        let x0 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
        let x1 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Tensor::stack(&[r0, r1], 4)?.reshape((b, n, t, hd))
    }
}

/// Key/value heads `(b, kvh, t, hd)` repeated for the `rep` query heads of each group:
/// query head `j` reads key/value head `j / rep`.
fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, hd) = x.dims4()?;
    let x = x.unsqueeze(2)?;
    Tensor::cat(&vec![&x; rep], 2)?.reshape((b, kvh * rep, t, hd))
}
