//! SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) in candle.
//!
//! The architecture follows the authors' TensorFlow code (`kang205/SASRec`):
//!
//! * item embeddings with a padding row (index 0; dense item `i` is row `i + 1`), multiplied
//!   by `sqrt(hidden)`, plus learned absolute positional embeddings, then dropout and the
//!   padding mask;
//! * `blocks` pre-LN blocks. **Attention variant: the original TF one** — queries come
//!   from `LN(x)`, keys and values from the un-normalised `x`, there is no output
//!   projection, and the residual adds the normalised queries (`x = LN(x) + Attn(LN(x), x)`),
//!   with dropout on the attention weights and a causal plus key-padding mask;
//! * a point-wise feed-forward net `Linear -> ReLU -> dropout -> Linear -> dropout`, whose
//!   residual also starts from its normalised input (`x = LN(x) + FFN(LN(x))`), then the
//!   padding mask;
//! * a final LayerNorm. The score of item `i` after a prefix is the dot product of the
//!   last hidden state with the (shared, un-scaled) embedding of `i`.
//!
//! Positions are absolute positions in a window of `max_len`, histories are left-padded
//! and truncated to their last `max_len` items, as in the original. A batch is padded only
//! to its longest sequence `T <= max_len`, using positions `max_len - T .. max_len`; this
//! is exactly the same computation as padding to `max_len`, because padded positions are
//! masked everywhere.
//!
//! Dropout masks are drawn from llmrec's seeded [`Rng`], so a training run is reproducible.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use llmrec_core::{ItemId, Rng};
use serde::{Deserialize, Serialize};

use crate::layers::{dense, dropout, fused_dropout, layer_norm, softmax_last};

/// Hyper-parameters of the SASRec network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SasRecConfig {
    /// Embedding and hidden size `d`. Default 50 (the paper's value).
    pub hidden: usize,
    /// Number of self-attention blocks. Default 2.
    pub blocks: usize,
    /// Attention heads; must divide `hidden`. Default 1.
    pub heads: usize,
    /// Longest history the model sees (older items are dropped). Default 200, the
    /// paper's value for ML-1M; use 50 for sparse data such as Amazon Beauty.
    pub max_len: usize,
    /// Dropout rate on embeddings, attention weights and the feed-forward net.
    /// Default 0.2 (ML-1M); the paper uses 0.5 on sparse data.
    pub dropout: f32,
    /// Epsilon of every LayerNorm. Default 1e-8, as in the original TF code.
    pub layer_norm_eps: f64,
}

impl Default for SasRecConfig {
    fn default() -> Self {
        SasRecConfig {
            hidden: 50,
            blocks: 2,
            heads: 1,
            max_len: 200,
            dropout: 0.2,
            layer_norm_eps: 1e-8,
        }
    }
}

impl SasRecConfig {
    /// Checks the values; `prefix` is the dotted config path used in errors.
    pub fn validate(&self, prefix: &str) -> llmrec_core::Result<()> {
        use llmrec_core::{Error, check};
        check::positive(format!("{prefix}.hidden"), self.hidden)?;
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::config(
                format!("{prefix}.heads"),
                format!("must be positive and divide hidden ({})", self.hidden),
            ));
        }
        check::positive(format!("{prefix}.max_len"), self.max_len)?;
        check::unit_interval(format!("{prefix}.dropout"), self.dropout as f64)?;
        check::positive_real(format!("{prefix}.layer_norm_eps"), self.layer_norm_eps)
    }
}

/// A batch of histories, left-padded to the longest one (at most `max_len`).
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// Model item indices (dense id + 1; 0 = padding), shape `(B, T)`, u32.
    pub ids: Tensor,
    /// 1.0 at real items, 0.0 at padding, shape `(B, T, 1)`.
    pub keep: Tensor,
    /// 0.0 for real keys, a large negative number for padded keys, shape `(B, 1, 1, T)`.
    pub key_bias: Tensor,
    /// Number of padded positions at the start of each row.
    pub pad: Vec<usize>,
    /// Padded length `T`.
    pub len: usize,
}

/// Additive bias for masked attention logits. Finite, so fully masked rows stay finite.
const MASK_BIAS: f32 = -1e9;

impl SeqBatch {
    /// Left-pads `histories` (dense item ids, oldest first), keeping the last `max_len`
    /// items of each. Empty histories are allowed (a row of padding).
    pub fn new(
        histories: &[&[ItemId]],
        max_len: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let b = histories.len();
        let t = histories
            .iter()
            .map(|h| h.len().min(max_len))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0u32; b * t];
        let mut keep = vec![0f32; b * t];
        let mut bias = vec![MASK_BIAS; b * t];
        let mut pad = Vec::with_capacity(b);
        for (r, h) in histories.iter().enumerate() {
            let h = &h[h.len().saturating_sub(max_len)..];
            let p = t - h.len();
            pad.push(p);
            let row = r * t;
            for (j, &item) in h.iter().enumerate() {
                ids[row + p + j] = item + 1;
                keep[row + p + j] = 1.0;
                bias[row + p + j] = 0.0;
            }
        }
        Ok(SeqBatch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            keep: Tensor::from_vec(keep, (b, t, 1), device)?,
            key_bias: Tensor::from_vec(bias, (b, 1, 1, t), device)?,
            pad,
            len: t,
        })
    }

    /// Number of rows `B`.
    pub fn rows(&self) -> usize {
        self.pad.len()
    }
}

/// LayerNorm over the last dimension ([`layer_norm`]).
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Norm {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
        layer_norm(x, (&self.weight, &self.bias), self.eps, fused)
    }
}

/// A dense layer `y = x W^T + b` applied to the last dimension.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(d_in: usize, d_out: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Dense {
            weight: vb.get((d_out, d_in), "weight")?,
            bias: vb.get(d_out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
        dense(x, &self.weight, Some(&self.bias), fused)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Norm,
    q: Dense,
    k: Dense,
    v: Dense,
    ffn_norm: Norm,
    ff1: Dense,
    ff2: Dense,
}

impl Block {
    fn load(cfg: &SasRecConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.hidden;
        Ok(Block {
            attn_norm: Norm::load(d, cfg.layer_norm_eps, vb.pp("attn_norm"))?,
            q: Dense::load(d, d, vb.pp("q"))?,
            k: Dense::load(d, d, vb.pp("k"))?,
            v: Dense::load(d, d, vb.pp("v"))?,
            ffn_norm: Norm::load(d, cfg.layer_norm_eps, vb.pp("ffn_norm"))?,
            ff1: Dense::load(d, d, vb.pp("ff1"))?,
            ff2: Dense::load(d, d, vb.pp("ff2"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        batch: &SeqBatch,
        causal: &Tensor,
        cfg: &SasRecConfig,
        fused: bool,
        mut rng: Option<&mut Rng>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = cfg.heads;
        let dk = d / h;
        let qin = self.attn_norm.forward(x, fused)?;
        let scale = 1.0 / (dk as f64).sqrt();
        let x = if fused {
            // One op for the projections, scores, mask, softmax, dropout, weighted sum and
            // residual: the (T, T) weights never become tensors.
            let op = llmrec_kernels::nn::FusedAttentionBlock(llmrec_kernels::nn::FusedAttention {
                heads: h,
                pad: batch.pad.clone(),
                scale: scale as f32,
                dropout: cfg.dropout,
                seed: rng.as_deref_mut().map(|r| r.next_u64()),
            });
            let w = Tensor::cat(
                &[
                    self.q.weight.flatten_all()?,
                    self.q.bias.clone(),
                    self.k.weight.flatten_all()?,
                    self.k.bias.clone(),
                    self.v.weight.flatten_all()?,
                    self.v.bias.clone(),
                ],
                0,
            )?;
            qin.contiguous()?.apply_op3(&x.contiguous()?, &w, op)?
        } else {
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                if h == 1 {
                    y.reshape((b, 1, t, d))
                } else {
                    y.reshape((b, t, h, dk))?.transpose(1, 2)?.contiguous()
                }
            };
            let q = split(self.q.forward(&qin, false)?)?;
            let k = split(self.k.forward(x, false)?)?;
            let v = split(self.v.forward(x, false)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?
                .broadcast_add(causal)?
                .broadcast_add(&batch.key_bias)?;
            let w = softmax_last(&scores)?;
            let w = dropout(&w, cfg.dropout, rng.as_deref_mut())?;
            let a = w.matmul(&v)?;
            let a = if h == 1 {
                a.reshape((b, t, d))?
            } else {
                a.transpose(1, 2)?.reshape((b, t, d))?
            };
            (qin + a)?
        };
        let fin = self.ffn_norm.forward(&x, fused)?;
        if fused {
            // One op for the whole feed-forward half (dense, ReLU, dropout, dense, dropout,
            // residual, padding mask).
            let w = Tensor::cat(
                &[
                    self.ff1.weight.flatten_all()?,
                    self.ff1.bias.clone(),
                    self.ff2.weight.flatten_all()?,
                    self.ff2.bias.clone(),
                ],
                0,
            )?;
            let op = llmrec_kernels::nn::FusedFfn {
                pad: batch.pad.clone(),
                dropout: cfg.dropout,
                seed: rng.map(|r| r.next_u64()),
            };
            return fin.contiguous()?.apply_op2(&w, op);
        }
        let f = self.ff1.forward(&fin, false)?;
        let f = dropout(&f.relu()?, cfg.dropout, rng.as_deref_mut())?;
        let f = self.ff2.forward(&f, false)?;
        let f = dropout(&f, cfg.dropout, rng)?;
        (fin + f)?.broadcast_mul(&batch.keep)
    }
}

impl Block {
    /// Evaluation-mode output of the last position only, `(B, 1, d)`: keys and values
    /// from every position, the query and the feed-forward net only at the last one.
    fn forward_last(
        &self,
        x: &Tensor,
        batch: &SeqBatch,
        cfg: &SasRecConfig,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = cfg.heads;
        let dk = d / h;
        let heads = |y: Tensor, len: usize| -> candle_core::Result<Tensor> {
            y.reshape((b, len, h, dk))?.transpose(1, 2)?.contiguous()
        };
        let qin = self
            .attn_norm
            .forward(&x.narrow(1, t - 1, 1)?.contiguous()?, fused)?;
        let q = heads(self.q.forward(&qin, fused)?, 1)?;
        let k = heads(self.k.forward(x, fused)?, t)?;
        let v = heads(self.v.forward(x, fused)?, t)?;
        // The last query sees every real key: only the padding mask applies.
        let scores =
            (q.matmul(&k.t()?)? * (1.0 / (dk as f64).sqrt()))?.broadcast_add(&batch.key_bias)?;
        let a = softmax_last(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, 1, d))?;
        let x = (qin + a)?;
        let fin = self.ffn_norm.forward(&x, fused)?;
        let f = self.ff1.forward(&fin, fused)?.relu()?;
        let f = self.ff2.forward(&f, fused)?;
        (fin + f)?.broadcast_mul(&batch.keep.narrow(1, t - 1, 1)?)
    }
}

/// Histories scored per forward pass in [`SasRecModel::score_histories`]; histories are
/// grouped by length first, so a short one is not padded to a long one.
const SCORE_GROUP: usize = 64;

/// Names and shapes of every parameter of a SASRec network with `n_items` items.
pub fn parameter_shapes(cfg: &SasRecConfig, n_items: usize) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden;
    let mut v = vec![
        ("item_emb".to_string(), vec![n_items + 1, d]),
        ("pos_emb".to_string(), vec![cfg.max_len, d]),
        ("final_norm.weight".to_string(), vec![d]),
        ("final_norm.bias".to_string(), vec![d]),
    ];
    for i in 0..cfg.blocks {
        for norm in ["attn_norm", "ffn_norm"] {
            v.push((format!("blocks.{i}.{norm}.weight"), vec![d]));
            v.push((format!("blocks.{i}.{norm}.bias"), vec![d]));
        }
        for lin in ["q", "k", "v", "ff1", "ff2"] {
            v.push((format!("blocks.{i}.{lin}.weight"), vec![d, d]));
            v.push((format!("blocks.{i}.{lin}.bias"), vec![d]));
        }
    }
    v
}

/// Fresh parameters drawn from `rng`: Xavier-uniform matrices and embeddings (as the
/// TF code's `glorot_uniform`), a zero padding row, LayerNorm weight 1 and bias 0,
/// zero dense biases.
pub fn init_parameters(
    cfg: &SasRecConfig,
    n_items: usize,
    rng: &mut Rng,
    device: &Device,
) -> candle_core::Result<Vec<(String, Tensor)>> {
    parameter_shapes(cfg, n_items)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 2 {
                let bound = (6.0 / (shape[0] + shape[1]) as f64).sqrt() as f32;
                let mut data: Vec<f32> = (0..n)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect();
                if name == "item_emb" {
                    data[..shape[1]].fill(0.0);
                }
                data
            } else if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            };
            Ok((name, Tensor::from_vec(data, shape, device)?))
        })
        .collect()
}

/// The SASRec network.
#[derive(Debug, Clone)]
pub struct SasRecModel {
    item_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
    causal: Tensor,
    cfg: SasRecConfig,
    n_items: usize,
    fused: bool,
}

impl SasRecModel {
    /// Loads (or, with a `VarMap`-backed builder, creates) the parameters for `n_items`
    /// items. Parameter names are those of [`parameter_shapes`].
    pub fn load(vb: VarBuilder, cfg: &SasRecConfig, n_items: usize) -> candle_core::Result<Self> {
        let d = cfg.hidden;
        let item_emb = vb.get((n_items + 1, d), "item_emb")?;
        let pos_emb = vb.get((cfg.max_len, d), "pos_emb")?;
        let blocks = (0..cfg.blocks)
            .map(|i| Block::load(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_norm = Norm::load(d, cfg.layer_norm_eps, vb.pp("final_norm"))?;
        // The causal mask, built once: 0 on and below the diagonal, MASK_BIAS above.
        let l = cfg.max_len;
        let causal: Vec<f32> = (0..l * l)
            .map(|x| if x % l > x / l { MASK_BIAS } else { 0.0 })
            .collect();
        let causal = Tensor::from_vec(causal, (l, l), vb.device())?;
        Ok(SasRecModel {
            item_emb,
            pos_emb,
            blocks,
            final_norm,
            causal,
            cfg: cfg.clone(),
            n_items,
            fused: vb.device().is_cpu(),
        })
    }

    /// Uses (`true`, the default on the CPU) or avoids the fused CPU kernels for
    /// attention, LayerNorm and the training losses. Without them every step is a chain of candle
    /// ops (slower; the only option on other devices).
    pub fn with_fused_kernels(mut self, on: bool) -> Self {
        self.fused = on && self.item_emb.device().is_cpu();
        self
    }

    /// Whether the fused CPU kernels are in use.
    pub fn fused_kernels(&self) -> bool {
        self.fused
    }

    /// The network's configuration.
    pub fn config(&self) -> &SasRecConfig {
        &self.cfg
    }

    /// Number of items scored.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// The item embedding table, `(n_items + 1, hidden)`; row 0 is padding.
    pub fn item_embeddings(&self) -> &Tensor {
        &self.item_emb
    }

    /// Hidden states `(B, T, hidden)` after the final LayerNorm, one per position.
    ///
    /// With `rng` the network is in training mode (dropout drawn from `rng`); without,
    /// in evaluation mode.
    pub fn forward(
        &self,
        batch: &SeqBatch,
        mut rng: Option<&mut Rng>,
    ) -> candle_core::Result<Tensor> {
        let t = batch.ids.dim(1)?;
        let mut x = self.embed(batch, rng.as_deref_mut())?;
        let causal = self.causal.narrow(0, 0, t)?.narrow(1, 0, t)?;
        for block in &self.blocks {
            x = block.forward(
                &x,
                batch,
                &causal,
                &self.cfg,
                self.fused,
                rng.as_deref_mut(),
            )?;
        }
        self.final_norm.forward(&x, self.fused)
    }

    /// Final hidden state at the last position of each row, `(B, hidden)`, in evaluation
    /// mode: the last position of [`forward`](Self::forward), but the last block computes
    /// only that position's query and feed-forward net.
    pub fn forward_last(&self, batch: &SeqBatch) -> candle_core::Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let d = self.cfg.hidden;
        let mut x = self.embed(batch, None)?;
        let causal = self.causal.narrow(0, 0, t)?.narrow(1, 0, t)?;
        let Some((last, rest)) = self.blocks.split_last() else {
            let x = x.narrow(1, t - 1, 1)?.contiguous()?;
            return self.final_norm.forward(&x, self.fused)?.reshape((b, d));
        };
        for block in rest {
            x = block.forward(&x, batch, &causal, &self.cfg, self.fused, None)?;
        }
        let x = last.forward_last(&x, batch, &self.cfg, self.fused)?;
        self.final_norm.forward(&x, self.fused)?.reshape((b, d))
    }

    /// Scaled item plus positional embeddings, dropout and the padding mask: `(B, T, d)`.
    fn embed(&self, batch: &SeqBatch, rng: Option<&mut Rng>) -> candle_core::Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let d = self.cfg.hidden;
        if t > self.cfg.max_len {
            candle_core::bail!("batch length {t} exceeds max_len {}", self.cfg.max_len);
        }
        let x = self
            .item_emb
            .index_select(&batch.ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let pos = self.pos_emb.narrow(0, self.cfg.max_len - t, t)?;
        let x = (x * (d as f64).sqrt())?.broadcast_add(&pos)?;
        let x = if self.fused {
            fused_dropout(&x, self.cfg.dropout, false, rng)?
        } else {
            dropout(&x, self.cfg.dropout, rng)?
        };
        x.broadcast_mul(&batch.keep)
    }

    /// Scores of every item after each history: `(B, n_items)`, evaluation mode.
    pub fn score_histories(&self, histories: &[&[ItemId]]) -> candle_core::Result<Tensor> {
        let dev = self.item_emb.device();
        let n = histories.len();
        if n == 0 {
            return Tensor::zeros((0, self.n_items), candle_core::DType::F32, dev);
        }
        // Sub-batches of similar lengths, so short histories are not padded to long ones.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| histories[i].len().min(self.cfg.max_len));
        let parts = order
            .chunks(SCORE_GROUP)
            .map(|group| {
                let hs: Vec<&[ItemId]> = group.iter().map(|&i| histories[i]).collect();
                self.forward_last(&SeqBatch::new(&hs, self.cfg.max_len, dev)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut inverse = vec![0u32; n];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos as u32;
        }
        let last = Tensor::cat(&parts, 0)?.index_select(&Tensor::from_vec(inverse, n, dev)?, 0)?;
        let items = self.item_emb.narrow(0, 1, self.n_items)?;
        last.matmul(&items.t()?)
    }
}

/// A trained SASRec, ready to score: implements [`Recommender`](llmrec_core::Recommender).
///
/// `score_batch` groups the histories by length, runs one evaluation-mode forward pass
/// per group (computing the last block only at the last position) and one matrix product
/// with the item embeddings. Any history works, including an empty one and items of new users.
#[derive(Debug, Clone)]
pub struct SasRec {
    model: SasRecModel,
}

impl SasRec {
    /// Wraps a network.
    pub fn new(model: SasRecModel) -> Self {
        SasRec { model }
    }

    /// The network.
    pub fn model(&self) -> &SasRecModel {
        &self.model
    }
}

impl llmrec_core::Recommender for SasRec {
    fn name(&self) -> String {
        "sasrec".into()
    }

    fn n_items(&self) -> usize {
        self.model.n_items
    }

    fn score_into(
        &self,
        query: &llmrec_core::Query<'_>,
        out: &mut [f32],
    ) -> llmrec_core::Result<()> {
        self.score_batch(std::slice::from_ref(query), out)
    }

    fn score_batch(
        &self,
        queries: &[llmrec_core::Query<'_>],
        out: &mut [f32],
    ) -> llmrec_core::Result<()> {
        let n = self.model.n_items;
        if out.len() != queries.len() * n {
            return Err(llmrec_core::Error::Invalid(format!(
                "score buffer has {} entries for {} queries of {n} items",
                out.len(),
                queries.len()
            )));
        }
        if queries.is_empty() {
            return Ok(());
        }
        if let Some(&i) = queries
            .iter()
            .flat_map(|q| q.history)
            .find(|&&i| i as usize >= n)
        {
            return Err(llmrec_core::Error::Invalid(format!(
                "history item {i} out of range for a model of {n} items"
            )));
        }
        let histories: Vec<&[ItemId]> = queries.iter().map(|q| q.history).collect();
        let scores = self
            .model
            .score_histories(&histories)
            .and_then(|s| s.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| llmrec_core::Error::model("sasrec", e))?;
        out.copy_from_slice(&scores);
        Ok(())
    }
}
