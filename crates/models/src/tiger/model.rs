//! TIGER's batches and encoder-decoder network (training forward and loss).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use llmrec_core::{Error, ItemId, Result, Rng, UserId};

use crate::layers::{dense, dropout, fused_dropout, layer_norm, softmax_last};
use crate::mha::Mha;

use super::config::{BOS, MASK_BIAS, PAD, TigerConfig, Vocab};

/// Encoder input: token ids left-padded to the longest row.
#[derive(Debug, Clone)]
pub struct EncoderBatch {
    /// Tokens `(B, S)`, u32.
    pub ids: Tensor,
    /// 0 for real keys, a large negative number for padding, `(B, 1, 1, S)`.
    pub key_bias: Tensor,
    /// Leading padding tokens of each row (the same mask as `key_bias`, for the fused
    /// attention); private so that a batch is only ever made by [`EncoderBatch::new`].
    pad: Vec<usize>,
    /// Padded length `S`.
    pub len: usize,
}

impl EncoderBatch {
    /// Builds the encoder input for `(user, history)` pairs: the user token, then the ID
    /// tokens of the last `max_history` history items. `codes` is the Semantic-ID table.
    pub fn new(
        rows: &[(Option<UserId>, &[ItemId])],
        codes: &[Vec<u16>],
        vocab: &Vocab,
        max_history: usize,
        device: &Device,
    ) -> Result<Self> {
        let depth = vocab.depth();
        let mut toks: Vec<Vec<u32>> = Vec::with_capacity(rows.len());
        for (user, hist) in rows {
            let hist = &hist[hist.len().saturating_sub(max_history)..];
            let mut t = Vec::with_capacity(1 + hist.len() * depth);
            t.extend(vocab.user_token(*user));
            for &i in hist {
                let c = codes.get(i as usize).ok_or_else(|| {
                    Error::Invalid(format!(
                        "tiger: item {i} has no Semantic ID ({} items)",
                        codes.len()
                    ))
                })?;
                t.extend(c.iter().enumerate().map(|(l, &x)| vocab.token(l, x)));
            }
            toks.push(t);
        }
        let s = toks.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let b = rows.len();
        let mut ids = vec![PAD; b * s];
        let mut bias = vec![MASK_BIAS; b * s];
        let pad = toks.iter().map(|t| s - t.len()).collect();
        for (r, t) in toks.iter().enumerate() {
            let p = r * s + s - t.len();
            ids[p..p + t.len()].copy_from_slice(t);
            bias[p..p + t.len()].iter_mut().for_each(|x| *x = 0.0);
        }
        let e = |e: candle_core::Error| Error::model("tiger", e);
        Ok(EncoderBatch {
            ids: Tensor::from_vec(ids, (b, s), device).map_err(e)?,
            key_bias: Tensor::from_vec(bias, (b, 1, 1, s), device).map_err(e)?,
            pad,
            len: s,
        })
    }
}

/// A teacher-forcing batch: encoder input, decoder input and targets.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Encoder input.
    pub enc: EncoderBatch,
    /// Decoder input `[BOS, t0, .., t_{L-1}]`, `(B, depth)`, u32.
    pub dec_in: Tensor,
    /// Targets `[t0, .., t_L]`, flattened `(B·depth)`.
    pub targets: Vec<u32>,
}

impl TrainBatch {
    /// Builds a batch of `(user, history, next item)` examples.
    pub fn new(
        examples: &[(Option<UserId>, &[ItemId], ItemId)],
        codes: &[Vec<u16>],
        vocab: &Vocab,
        max_history: usize,
        device: &Device,
    ) -> Result<Self> {
        let rows: Vec<(Option<UserId>, &[ItemId])> =
            examples.iter().map(|&(u, h, _)| (u, h)).collect();
        let enc = EncoderBatch::new(&rows, codes, vocab, max_history, device)?;
        let depth = vocab.depth();
        let mut dec_in = Vec::with_capacity(examples.len() * depth);
        let mut targets = Vec::with_capacity(examples.len() * depth);
        for &(_, _, next) in examples {
            let c = codes
                .get(next as usize)
                .ok_or_else(|| Error::Invalid(format!("tiger: item {next} has no Semantic ID")))?;
            dec_in.push(BOS);
            for (l, &x) in c.iter().enumerate() {
                let t = vocab.token(l, x);
                targets.push(t);
                if l + 1 < depth {
                    dec_in.push(t);
                }
            }
        }
        let dec_in = Tensor::from_vec(dec_in, (examples.len(), depth), device)
            .map_err(|e| Error::model("tiger", e))?;
        Ok(TrainBatch {
            enc,
            dec_in,
            targets,
        })
    }
}

/// LayerNorm over the last dimension from primitive (differentiable) ops.
#[derive(Debug, Clone)]
pub(super) struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn load(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
        layer_norm(x, (&self.weight, &self.bias), self.eps, fused)
    }
}

/// `y = x W^T (+ b)` on the last dimension, as one 2-D matrix product.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn load(d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Dense {
            weight: vb.get((d_out, d_in), "weight")?,
            bias: if bias {
                Some(vb.get(d_out, "bias")?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
        dense(x, &self.weight, self.bias.as_ref(), fused)
    }
}

/// Inverted dropout; on the CPU (`fused`) one op whose mask is drawn in parallel.
fn drop(x: &Tensor, p: f32, rng: Option<&mut Rng>, fused: bool) -> candle_core::Result<Tensor> {
    if fused {
        fused_dropout(x, p, false, rng)
    } else {
        dropout(x, p, rng)
    }
}

/// Which keys each query of an attention sees.
#[derive(Clone, Copy)]
enum Mask<'a> {
    /// Every key.
    All,
    /// Keys of an encoder batch, left-padded (`key_bias` and `pad`).
    Keys(&'a EncoderBatch),
    /// Query `i` sees keys `j <= i`; the tensor is the additive bias `(1, 1, T, T)`.
    Causal(&'a Tensor),
}

#[derive(Debug, Clone)]
struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &TigerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        Ok(Attention {
            q: Dense::load(cfg.d_model, inner, false, vb.pp("q"))?,
            k: Dense::load(cfg.d_model, inner, false, vb.pp("k"))?,
            v: Dense::load(cfg.d_model, inner, false, vb.pp("v"))?,
            o: Dense::load(inner, cfg.d_model, false, vb.pp("o"))?,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `(B, T, d)` -> `(B, H, T, hd)`.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x` `(B, S, d)`, each `(B, S, H·hd)`.
    fn kv(&self, x: &Tensor, fused: bool) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.k.forward(x, fused)?, self.v.forward(x, fused)?))
    }

    /// Attends queries from `x` `(B, T, d)` to keys/values `(B, S, H·hd)` from [`Self::kv`].
    /// With `fused` (CPU), the attention core is one op ([`Mha`]); otherwise candle's ops
    /// on split heads with an additive mask.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        x: &Tensor,
        (k, v): (&Tensor, &Tensor),
        mask: Mask<'_>,
        p: f32,
        rng: Option<&mut Rng>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let q = self.q.forward(x, fused)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let a = if fused {
            let (key_pad, causal) = match mask {
                Mask::All => (Vec::new(), false),
                Mask::Keys(enc) => (enc.pad.clone(), false),
                Mask::Causal(_) => (Vec::new(), true),
            };
            let seed = match rng {
                Some(r) if p > 0.0 => Some(r.next_u64()),
                _ => None,
            };
            let op = Mha {
                heads: self.heads,
                key_pad,
                causal,
                scale: scale as f32,
                dropout: p,
                seed,
            };
            q.contiguous()?
                .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?
        } else {
            let (b, t, _) = x.dims3()?;
            let (q, k, v) = (self.split(&q)?, self.split(k)?, self.split(v)?);
            let mut s = (q.matmul(&k.t()?)? * scale)?;
            match mask {
                Mask::All => {}
                Mask::Keys(enc) => s = s.broadcast_add(&enc.key_bias)?,
                Mask::Causal(bias) => s = s.broadcast_add(bias)?,
            }
            let w = dropout(&softmax_last(&s)?, p, rng)?;
            w.matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.heads * self.head_dim))?
        };
        self.o.forward(&a, fused)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    w1: Dense,
    w2: Dense,
}

impl FeedForward {
    fn load(cfg: &TigerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(FeedForward {
            w1: Dense::load(cfg.d_model, cfg.d_ff, true, vb.pp("w1"))?,
            w2: Dense::load(cfg.d_ff, cfg.d_model, true, vb.pp("w2"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        p: f32,
        rng: Option<&mut Rng>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.w1.forward(x, fused)?;
        let h = if fused {
            fused_dropout(&h, p, true, rng)?
        } else {
            dropout(&h.relu()?, p, rng)?
        };
        self.w2.forward(&h, fused)
    }
}

/// A pre-LayerNorm sublayer: `norm`, then `body`, added back to the residual stream.
#[derive(Debug, Clone)]
struct PreNorm<T> {
    norm: Norm,
    body: T,
}

/// Loads a sublayer whose norm's weights are under `norm` and whose body is `body`.
fn pre_norm<T>(
    cfg: &TigerConfig,
    vb: &VarBuilder,
    norm: &str,
    body: T,
) -> candle_core::Result<PreNorm<T>> {
    Ok(PreNorm {
        norm: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp(norm))?,
        body,
    })
}

impl PreNorm<FeedForward> {
    /// `x + dropout(ff(norm(x)))`.
    fn residual(
        &self,
        x: &Tensor,
        p: f32,
        mut rng: Option<&mut Rng>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.norm.forward(x, fused)?;
        let f = self.body.forward(&h, p, rng.as_deref_mut(), fused)?;
        x + drop(&f, p, rng, fused)?
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: PreNorm<Attention>,
    ff: PreNorm<FeedForward>,
}

impl EncoderLayer {
    /// Weights: `norm1`, `attn`, `norm2`, `ff`.
    fn load(cfg: &TigerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let attn = Attention::load(cfg, vb.pp("attn"))?;
        let ff = FeedForward::load(cfg, vb.pp("ff"))?;
        Ok(EncoderLayer {
            attn: pre_norm(cfg, &vb, "norm1", attn)?,
            ff: pre_norm(cfg, &vb, "norm2", ff)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        enc: &EncoderBatch,
        p: f32,
        mut rng: Option<&mut Rng>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.attn.norm.forward(x, fused)?;
        let (k, v) = self.attn.body.kv(&h, fused)?;
        let a =
            self.attn
                .body
                .attend(&h, (&k, &v), Mask::Keys(enc), p, rng.as_deref_mut(), fused)?;
        let x = (x + drop(&a, p, rng.as_deref_mut(), fused)?)?;
        self.ff.residual(&x, p, rng, fused)
    }
}

#[derive(Debug, Clone)]
pub(super) struct DecoderLayer {
    self_attn: PreNorm<Attention>,
    cross_attn: PreNorm<Attention>,
    ff: PreNorm<FeedForward>,
}

impl DecoderLayer {
    /// Weights: `norm1`, `self_attn`, `norm2`, `cross_attn`, `norm3`, `ff`.
    fn load(cfg: &TigerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let self_attn = Attention::load(cfg, vb.pp("self_attn"))?;
        let cross_attn = Attention::load(cfg, vb.pp("cross_attn"))?;
        let ff = FeedForward::load(cfg, vb.pp("ff"))?;
        Ok(DecoderLayer {
            self_attn: pre_norm(cfg, &vb, "norm1", self_attn)?,
            cross_attn: pre_norm(cfg, &vb, "norm2", cross_attn)?,
            ff: pre_norm(cfg, &vb, "norm3", ff)?,
        })
    }

    /// One layer. `cache`: the self-attention keys/values of the earlier steps, `(B·W, t,
    /// H·hd)`, extended by this step (cached decoding); `cross`: encoder keys/values
    /// `(B, S, H·hd)` with the encoder batch `enc` for their padding.
    /// `x` is `(B, T, d)` where `T` is either the target length (training) or the
    /// number of beams per user (cached decoding, one step each).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        x: &Tensor,
        self_q_rows: Option<usize>,
        cache: Option<&mut (Option<Tensor>, Option<Tensor>)>,
        causal: Option<&Tensor>,
        cross: &(Tensor, Tensor),
        enc: &EncoderBatch,
        p: f32,
        mut rng: Option<&mut Rng>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.self_attn.norm.forward(x, fused)?;
        let a = match cache {
            None => {
                let (k, v) = self.self_attn.body.kv(&h, fused)?;
                let mask = causal.map_or(Mask::All, Mask::Causal);
                self.self_attn
                    .body
                    .attend(&h, (&k, &v), mask, p, rng.as_deref_mut(), fused)?
            }
            Some(slot) => {
                // Cached decoding: x is (B, W, d) with one new token per beam; every beam
                // is its own row of the cache: (B·W, t, H·hd).
                let (b, w, d) = h.dims3()?;
                let n = self_q_rows.unwrap_or(b * w);
                let hb = h.reshape((n, 1, d))?;
                let (k1, v1) = self.self_attn.body.kv(&hb, fused)?;
                let (k, v) = match (&slot.0, &slot.1) {
                    (Some(k0), Some(v0)) => {
                        (Tensor::cat(&[k0, &k1], 1)?, Tensor::cat(&[v0, &v1], 1)?)
                    }
                    _ => (k1, v1),
                };
                let a = self
                    .self_attn
                    .body
                    .attend(&hb, (&k, &v), Mask::All, 0.0, None, fused)?;
                *slot = (Some(k), Some(v));
                a.reshape((b, w, d))?
            }
        };
        let x = (x + drop(&a, p, rng.as_deref_mut(), fused)?)?;
        let h = self.cross_attn.norm.forward(&x, fused)?;
        let c = self.cross_attn.body.attend(
            &h,
            (&cross.0, &cross.1),
            Mask::Keys(enc),
            p,
            rng.as_deref_mut(),
            fused,
        )?;
        let x = (x + drop(&c, p, rng.as_deref_mut(), fused)?)?;
        self.ff.residual(&x, p, rng, fused)
    }
}

/// The TIGER encoder-decoder network.
#[derive(Debug, Clone)]
pub struct TigerModel {
    pub(super) embed: Tensor,
    enc_pos: Tensor,
    pub(super) dec_pos: Tensor,
    encoder: Vec<EncoderLayer>,
    enc_norm: Norm,
    pub(super) decoder: Vec<DecoderLayer>,
    pub(super) dec_norm: Norm,
    /// The output head; `None` with tied embeddings.
    head: Option<Dense>,
    pub(super) cfg: TigerConfig,
    pub(super) vocab: Vocab,
    pub(super) fused: bool,
}

impl TigerModel {
    /// Builds the network from `vb` for the token layout `vocab`.
    pub fn load(vb: VarBuilder, cfg: &TigerConfig, vocab: &Vocab) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        let depth = vocab.depth();
        Ok(TigerModel {
            embed: vb.get((vocab.size(), d), "embed")?,
            enc_pos: vb.get((1 + cfg.max_history * depth, d), "enc_pos")?,
            dec_pos: vb.get((depth, d), "dec_pos")?,
            encoder: (0..cfg.encoder_layers)
                .map(|i| EncoderLayer::load(cfg, vb.pp(format!("encoder.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            enc_norm: Norm::load(d, cfg.layer_norm_eps, vb.pp("enc_norm"))?,
            decoder: (0..cfg.decoder_layers)
                .map(|i| DecoderLayer::load(cfg, vb.pp(format!("decoder.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            dec_norm: Norm::load(d, cfg.layer_norm_eps, vb.pp("dec_norm"))?,
            head: if cfg.tie_embeddings {
                None
            } else {
                Some(Dense::load(d, vocab.n_output(), false, vb.pp("head"))?)
            },
            cfg: cfg.clone(),
            vocab: *vocab,
            fused: vb.device().is_cpu(),
        })
    }

    /// Turns the fused CPU kernels (LayerNorm, dense, dropout, the attention core) on or
    /// off. They are on by default on the CPU and cannot run elsewhere; off, the model runs
    /// candle's primitive ops, the reference that the tests compare against.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on && self.embed.device().is_cpu();
    }

    /// The configuration.
    pub fn config(&self) -> &TigerConfig {
        &self.cfg
    }

    /// The token layout.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Encoder hidden states `(B, S, d)`.
    pub fn encode(
        &self,
        enc: &EncoderBatch,
        mut rng: Option<&mut Rng>,
    ) -> candle_core::Result<Tensor> {
        let p = self.cfg.dropout;
        let (b, s) = enc.ids.dims2()?;
        let total = self.enc_pos.dim(0)?;
        if s > total {
            candle_core::bail!("encoder input of {s} tokens exceeds {total} positions");
        }
        let tok = self
            .embed
            .index_select(&enc.ids.flatten_all()?, 0)?
            .reshape((b, s, self.cfg.d_model))?;
        let pos = self.enc_pos.narrow(0, total - s, s)?;
        let fused = self.fused;
        let mut x = drop(&tok.broadcast_add(&pos)?, p, rng.as_deref_mut(), fused)?;
        for layer in &self.encoder {
            x = layer.forward(&x, enc, p, rng.as_deref_mut(), fused)?;
        }
        self.enc_norm.forward(&x, fused)
    }

    pub(super) fn cross_kv(&self, enc_out: &Tensor) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.decoder
            .iter()
            .map(|l| l.cross_attn.body.kv(enc_out, self.fused))
            .collect()
    }

    /// Teacher-forcing logits `(B·depth, n_output)`. Dropout when `rng` is given.
    pub fn forward(
        &self,
        batch: &TrainBatch,
        mut rng: Option<&mut Rng>,
    ) -> candle_core::Result<Tensor> {
        let p = self.cfg.dropout;
        let enc_out = self.encode(&batch.enc, rng.as_deref_mut())?;
        let cross = self.cross_kv(&enc_out)?;
        let (b, t) = batch.dec_in.dims2()?;
        let d = self.cfg.d_model;
        let tok = self
            .embed
            .index_select(&batch.dec_in.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let fused = self.fused;
        let mut x = drop(
            &tok.broadcast_add(&self.dec_pos.narrow(0, 0, t)?)?,
            p,
            rng.as_deref_mut(),
            fused,
        )?;
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { MASK_BIAS }))
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, t, t), x.device())?;
        for (layer, kv) in self.decoder.iter().zip(&cross) {
            x = layer.forward(
                &x,
                None,
                None,
                Some(&causal),
                kv,
                &batch.enc,
                p,
                rng.as_deref_mut(),
                fused,
            )?;
        }
        let y = self.dec_norm.forward(&x, fused)?;
        self.logits(&y)?.reshape((b * t, self.vocab.n_output()))
    }

    /// Output logits of decoder states: the head, or with tied embeddings the input
    /// embeddings of the output tokens (the first `n_output` rows).
    pub(super) fn logits(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        match &self.head {
            Some(h) => h.forward(y, self.fused),
            None => dense(
                y,
                &self.embed.narrow(0, 0, self.vocab.n_output())?,
                None,
                self.fused,
            ),
        }
    }

    /// Mean token cross-entropy of a teacher-forcing batch.
    pub fn loss(&self, batch: &TrainBatch, rng: Option<&mut Rng>) -> candle_core::Result<Tensor> {
        self.loss_smoothed(batch, rng, 0.0)
    }

    /// [`TigerModel::loss`] with label smoothing `eps` in `[0, 1)` over the output
    /// vocabulary (see [`crate::loss::cross_entropy_smoothed`]); `eps = 0` is `loss`.
    pub fn loss_smoothed(
        &self,
        batch: &TrainBatch,
        rng: Option<&mut Rng>,
        eps: f64,
    ) -> candle_core::Result<Tensor> {
        let logits = self.forward(batch, rng)?;
        if self.fused {
            crate::loss::cross_entropy_smoothed(&logits, &batch.targets, eps)
        } else {
            crate::loss::cross_entropy_unfused(&logits, &batch.targets, eps)
        }
    }
}

/// Convenience: an untrained (seeded) model on `device`, with its variables.
pub fn new_model(
    cfg: &TigerConfig,
    vocab: &Vocab,
    seed: u64,
    device: &Device,
) -> Result<(TigerModel, candle_nn::VarMap)> {
    cfg.validate("tiger.model")?;
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = TigerModel::load(vb, cfg, vocab).map_err(|e| Error::model("tiger", e))?;
    crate::init::seeded(&varmap, seed)?;
    Ok((model, varmap))
}
