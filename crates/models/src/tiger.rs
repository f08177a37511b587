//! TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS 2023):
//! an encoder-decoder transformer that reads the Semantic IDs of a user's recent items
//! and generates the Semantic ID of the next item.
//!
//! * **Tokens** ([`Vocab`]): `PAD = 0`, `BOS = 1`; level `l` code `c` is token
//!   `2 + l·codebook_size + c` (the collision level follows the last semantic level);
//!   then `user_buckets` hashed user tokens.
//! * **Encoder input:** one hashed user token, then the `levels + 1` tokens of each of the
//!   last `max_history` items, left-padded; learned absolute positions aligned to the
//!   right end (the most recent item always has the same positions). The paper's T5 uses
//!   relative position biases instead.
//! * **Layers:** pre-LayerNorm self-attention / cross-attention / ReLU feed-forward
//!   blocks with `heads × head_dim` attention width (T5 style, which lets the paper's
//!   6 heads of 64 sit on a 128-wide model), dropout on embeddings, attention weights and
//!   residual branches. Input embeddings are shared by encoder and decoder; the output
//!   head covers only BOS, PAD and code tokens. With `tie_embeddings` (T5's choice) the
//!   head is those tokens' input embeddings.
//! * **Training:** teacher forcing; the decoder reads `[BOS, t0, .., t_{L-1}]` and predicts
//!   `[t0, .., t_L]`.
//! * **Decoding** ([`TigerModel::beam_search`]): beam search with a self-attention KV
//!   cache; cross-attention keys and values are computed once per user and shared by its
//!   beams (beams are laid out as the query axis of their user). With constraints on,
//!   each step may only take codes that continue a valid ID in the [`Trie`], so every
//!   result is a real item.

use std::collections::HashSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use llmrec_core::{Error, ItemId, Query, Recommender, Result, Rng, UserId};
use serde::{Deserialize, Serialize};

use crate::layers::{dense, dropout, fused_dropout, layer_norm, softmax_last};
use crate::mha::Mha;
use crate::semantic_ids::SemanticIds;
use crate::trie::{NodeId, Trie};

/// Padding token.
pub const PAD: u32 = 0;
/// Decoder start token.
pub const BOS: u32 = 1;
const SPECIALS: usize = 2;
const MASK_BIAS: f32 = -1e9;

/// Hyper-parameters of the TIGER network. Defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model width. Default 128.
    pub d_model: usize,
    /// Attention heads. Default 6.
    pub heads: usize,
    /// Width of each head (attention width is `heads × head_dim`). Default 64.
    pub head_dim: usize,
    /// Feed-forward width. Default 1024.
    pub d_ff: usize,
    /// Encoder layers. Default 4.
    pub encoder_layers: usize,
    /// Decoder layers. Default 4.
    pub decoder_layers: usize,
    /// Dropout rate. Default 0.1.
    pub dropout: f32,
    /// Most recent history items the encoder reads. Default 20.
    pub max_history: usize,
    /// Hash buckets for user tokens. Default 2000.
    pub user_buckets: usize,
    /// LayerNorm epsilon. Default 1e-6.
    pub layer_norm_eps: f64,
    /// Output logits from the input embeddings of the output tokens (T5's tied
    /// embeddings) instead of a separate head. Default false.
    pub tie_embeddings: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            d_model: 128,
            heads: 6,
            head_dim: 64,
            d_ff: 1024,
            encoder_layers: 4,
            decoder_layers: 4,
            dropout: 0.1,
            max_history: 20,
            user_buckets: 2000,
            layer_norm_eps: 1e-6,
            tie_embeddings: false,
        }
    }
}

impl Config {
    /// Checks the values; `prefix` is the dotted config path used in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        for (v, f) in [
            (self.d_model, "d_model"),
            (self.heads, "heads"),
            (self.head_dim, "head_dim"),
            (self.d_ff, "d_ff"),
            (self.decoder_layers, "decoder_layers"),
            (self.max_history, "max_history"),
            (self.user_buckets, "user_buckets"),
        ] {
            if v == 0 {
                return Err(Error::config(format!("{prefix}.{f}"), "must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                format!("{prefix}.dropout"),
                "must be in [0, 1)",
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(Error::config(
                format!("{prefix}.layer_norm_eps"),
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// The token layout for a Semantic-ID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// Semantic levels (the collision token is level `levels`).
    pub levels: usize,
    /// Codes per semantic level.
    pub codebook_size: usize,
    /// Collision tokens.
    pub collision_size: usize,
    /// User hash buckets.
    pub user_buckets: usize,
}

impl Vocab {
    /// The layout for `ids` with `user_buckets` user tokens.
    pub fn new(ids: &SemanticIds, user_buckets: usize) -> Self {
        Vocab {
            levels: ids.levels,
            codebook_size: ids.codebook_size,
            collision_size: ids.collision_size.max(1),
            user_buckets,
        }
    }

    /// Tokens per item (`levels + 1`).
    pub fn depth(&self) -> usize {
        self.levels + 1
    }

    /// Number of codes at position `l` of an ID.
    pub fn level_size(&self, l: usize) -> usize {
        if l < self.levels {
            self.codebook_size
        } else {
            self.collision_size
        }
    }

    /// The token of code `code` at position `l`.
    pub fn token(&self, l: usize, code: u16) -> u32 {
        (SPECIALS + l * self.codebook_size + code as usize) as u32
    }

    /// Size of the decoder's output vocabulary (specials and code tokens).
    pub fn n_output(&self) -> usize {
        SPECIALS + self.levels * self.codebook_size + self.collision_size
    }

    /// Size of the full vocabulary (output tokens and user tokens).
    pub fn size(&self) -> usize {
        self.n_output() + self.user_buckets
    }

    /// The hashed user token; `None` (an unknown user) has none.
    pub fn user_token(&self, user: Option<UserId>) -> Option<u32> {
        user.map(|u| {
            let mut x = u as u64 ^ 0x5EED_7163_0000_0001;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            (self.n_output() as u64 + x % self.user_buckets.max(1) as u64) as u32
        })
    }
}

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
struct Norm {
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

    fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
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
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
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
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
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

#[derive(Debug, Clone)]
struct EncoderLayer {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    ff: FeedForward,
}

impl EncoderLayer {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(EncoderLayer {
            norm1: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: Attention::load(cfg, vb.pp("attn"))?,
            norm2: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm2"))?,
            ff: FeedForward::load(cfg, vb.pp("ff"))?,
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
        let h = self.norm1.forward(x, fused)?;
        let (k, v) = self.attn.kv(&h, fused)?;
        let a = self
            .attn
            .attend(&h, (&k, &v), Mask::Keys(enc), p, rng.as_deref_mut(), fused)?;
        let x = (x + drop(&a, p, rng.as_deref_mut(), fused)?)?;
        let h = self.norm2.forward(&x, fused)?;
        let f = self.ff.forward(&h, p, rng.as_deref_mut(), fused)?;
        x + drop(&f, p, rng, fused)?
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    norm1: Norm,
    self_attn: Attention,
    norm2: Norm,
    cross_attn: Attention,
    norm3: Norm,
    ff: FeedForward,
}

impl DecoderLayer {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(DecoderLayer {
            norm1: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm1"))?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            norm2: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm2"))?,
            cross_attn: Attention::load(cfg, vb.pp("cross_attn"))?,
            norm3: Norm::load(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm3"))?,
            ff: FeedForward::load(cfg, vb.pp("ff"))?,
        })
    }

    /// One layer. `cache`: the self-attention keys/values of the earlier steps, `(B·W, t,
    /// H·hd)`, extended by this step (cached decoding); `cross`: encoder keys/values
    /// `(B, S, H·hd)` with the encoder batch `enc` for their padding.
    /// `x` is `(B, T, d)` where `T` is either the target length (training) or the
    /// number of beams per user (cached decoding, one step each).
    #[allow(clippy::too_many_arguments)]
    fn forward(
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
        let h = self.norm1.forward(x, fused)?;
        let a = match cache {
            None => {
                let (k, v) = self.self_attn.kv(&h, fused)?;
                let mask = causal.map_or(Mask::All, Mask::Causal);
                self.self_attn
                    .attend(&h, (&k, &v), mask, p, rng.as_deref_mut(), fused)?
            }
            Some(slot) => {
                // Cached decoding: x is (B, W, d) with one new token per beam; every beam
                // is its own row of the cache: (B·W, t, H·hd).
                let (b, w, d) = h.dims3()?;
                let n = self_q_rows.unwrap_or(b * w);
                let hb = h.reshape((n, 1, d))?;
                let (k1, v1) = self.self_attn.kv(&hb, fused)?;
                let (k, v) = match (&slot.0, &slot.1) {
                    (Some(k0), Some(v0)) => {
                        (Tensor::cat(&[k0, &k1], 1)?, Tensor::cat(&[v0, &v1], 1)?)
                    }
                    _ => (k1, v1),
                };
                let a = self
                    .self_attn
                    .attend(&hb, (&k, &v), Mask::All, 0.0, None, fused)?;
                *slot = (Some(k), Some(v));
                a.reshape((b, w, d))?
            }
        };
        let x = (x + drop(&a, p, rng.as_deref_mut(), fused)?)?;
        let h = self.norm2.forward(&x, fused)?;
        let c = self.cross_attn.attend(
            &h,
            (&cross.0, &cross.1),
            Mask::Keys(enc),
            p,
            rng.as_deref_mut(),
            fused,
        )?;
        let x = (x + drop(&c, p, rng.as_deref_mut(), fused)?)?;
        let h = self.norm3.forward(&x, fused)?;
        let f = self.ff.forward(&h, p, rng.as_deref_mut(), fused)?;
        x + drop(&f, p, rng, fused)?
    }
}

/// The TIGER encoder-decoder network.
#[derive(Debug, Clone)]
pub struct TigerModel {
    embed: Tensor,
    enc_pos: Tensor,
    dec_pos: Tensor,
    encoder: Vec<EncoderLayer>,
    enc_norm: Norm,
    decoder: Vec<DecoderLayer>,
    dec_norm: Norm,
    /// The output head; `None` with tied embeddings.
    head: Option<Dense>,
    cfg: Config,
    vocab: Vocab,
    fused: bool,
}

/// One finished beam.
#[derive(Debug, Clone, PartialEq)]
pub struct Beam {
    /// The item whose Semantic ID was generated; `None` when the ID is no item's
    /// (possible only with constraints off).
    pub item: Option<ItemId>,
    /// The generated codes (`levels + 1`).
    pub codes: Vec<u16>,
    /// Sum of the token log-probabilities (full-vocabulary softmax).
    pub log_prob: f32,
}

impl TigerModel {
    /// Builds the network from `vb` for the token layout `vocab`.
    pub fn load(vb: VarBuilder, cfg: &Config, vocab: &Vocab) -> candle_core::Result<Self> {
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
    pub fn config(&self) -> &Config {
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

    fn cross_kv(&self, enc_out: &Tensor) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.decoder
            .iter()
            .map(|l| l.cross_attn.kv(enc_out, self.fused))
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
    fn logits(&self, y: &Tensor) -> candle_core::Result<Tensor> {
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

    /// Beam search for every encoder row: `beam_size` beams, `depth` steps, with a KV
    /// cache. With `constrained`, only trie paths are explored (every result is an item);
    /// without, every code of each level is allowed and results may be invalid IDs.
    /// `excluded` is empty or holds one set of trie nodes per row (from
    /// [`Trie::covered`]): constrained beams of that row never enter those nodes, so
    /// excluded items (the history, when the evaluator leaves it out) take no beam.
    /// Results per row are sorted by descending log-probability.
    pub fn beam_search(
        &self,
        enc: &EncoderBatch,
        trie: &Trie,
        beam_size: usize,
        constrained: bool,
        excluded: &[HashSet<NodeId>],
    ) -> Result<Vec<Vec<Beam>>> {
        let e = |e: candle_core::Error| Error::model("tiger beam search", e);
        let depth = self.vocab.depth();
        if trie.depth() != depth {
            return Err(Error::Invalid(format!(
                "tiger: trie depth {} differs from the vocabulary's {depth}",
                trie.depth()
            )));
        }
        let w_max = beam_size.max(1);
        let b = enc.ids.dim(0).map_err(e)?;
        if !excluded.is_empty() && excluded.len() != b {
            return Err(Error::Invalid(format!(
                "tiger: {} exclusion sets for {b} rows",
                excluded.len()
            )));
        }
        let enc_out = self.encode(enc, None).map_err(e)?;
        let cross = self.cross_kv(&enc_out).map_err(e)?;
        let n_out = self.vocab.n_output();
        let d = self.cfg.d_model;
        const INVALID: NodeId = NodeId::MAX;

        // Live beams: `w` per row; row r's beams are r*w .. r*w + w.
        let mut w = 1usize;
        let mut scores = vec![0f32; b];
        let mut nodes = vec![Trie::ROOT; b];
        let mut prefixes: Vec<Vec<u16>> = vec![Vec::new(); b];
        let mut tokens = vec![BOS; b];
        let mut cache: Vec<(Option<Tensor>, Option<Tensor>)> =
            vec![(None, None); self.decoder.len()];
        for step in 0..depth {
            let ids = Tensor::from_slice(&tokens, tokens.len(), enc.ids.device()).map_err(e)?;
            let mut x = self
                .embed
                .index_select(&ids, 0)
                .and_then(|t| t.broadcast_add(&self.dec_pos.narrow(0, step, 1)?))
                .and_then(|t| t.reshape((b, w, d)))
                .map_err(e)?;
            for ((layer, kv), slot) in self.decoder.iter().zip(&cross).zip(cache.iter_mut()) {
                x = layer
                    .forward(
                        &x,
                        Some(b * w),
                        Some(slot),
                        None,
                        kv,
                        enc,
                        0.0,
                        None,
                        self.fused,
                    )
                    .map_err(e)?;
            }
            let logits = self
                .dec_norm
                .forward(&x, self.fused)
                .and_then(|y| self.logits(&y))
                .and_then(|l| l.reshape((b * w, n_out)))
                .and_then(|l| l.to_vec2::<f32>())
                .map_err(e)?;
            let size = self.vocab.level_size(step);
            let mut parents = Vec::with_capacity(b * w_max);
            let mut new_scores = Vec::with_capacity(b * w_max);
            let mut new_nodes = Vec::with_capacity(b * w_max);
            let mut new_prefix = Vec::with_capacity(b * w_max);
            let mut new_tokens = Vec::with_capacity(b * w_max);
            let mut cands: Vec<(f32, usize, u16, NodeId)> = Vec::new();
            for r in 0..b {
                cands.clear();
                let skip = excluded.get(r);
                for j in 0..w {
                    let row = r * w + j;
                    if scores[row] == f32::NEG_INFINITY {
                        continue;
                    }
                    let lg = &logits[row];
                    let max = lg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let lse = max + lg.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
                    let tok = |c: u16| self.vocab.token(step, c) as usize;
                    if constrained {
                        for &(c, child) in trie.children(nodes[row]) {
                            if skip.is_some_and(|s| s.contains(&child)) {
                                continue;
                            }
                            cands.push((scores[row] + lg[tok(c)] - lse, row, c, child));
                        }
                    } else {
                        for c in 0..size as u16 {
                            let child = if nodes[row] == INVALID {
                                INVALID
                            } else {
                                trie.child(nodes[row], c).unwrap_or(INVALID)
                            };
                            cands.push((scores[row] + lg[tok(c)] - lse, row, c, child));
                        }
                    }
                }
                let keep = w_max.min(cands.len());
                if keep > 0 && cands.len() > keep {
                    cands.select_nth_unstable_by(keep - 1, |a, b| {
                        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
                    });
                    cands.truncate(keep);
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
                for k in 0..w_max {
                    match cands.get(k) {
                        Some(&(s, row, c, child)) => {
                            parents.push(row as u32);
                            new_scores.push(s);
                            new_nodes.push(child);
                            let mut p = prefixes[row].clone();
                            p.push(c);
                            new_prefix.push(p);
                            new_tokens.push(self.vocab.token(step, c));
                        }
                        None => {
                            // Fewer candidates than beams: a dead beam.
                            parents.push((r * w) as u32);
                            new_scores.push(f32::NEG_INFINITY);
                            new_nodes.push(INVALID);
                            new_prefix.push(Vec::new());
                            new_tokens.push(BOS);
                        }
                    }
                }
            }
            if step + 1 < depth {
                let idx =
                    Tensor::from_slice(&parents, parents.len(), enc.ids.device()).map_err(e)?;
                for slot in cache.iter_mut() {
                    if let (Some(k), Some(v)) = (&slot.0, &slot.1) {
                        *slot = (
                            Some(k.index_select(&idx, 0).map_err(e)?),
                            Some(v.index_select(&idx, 0).map_err(e)?),
                        );
                    }
                }
            }
            w = w_max;
            scores = new_scores;
            nodes = new_nodes;
            prefixes = new_prefix;
            tokens = new_tokens;
        }
        Ok((0..b)
            .map(|r| {
                (0..w)
                    .map(|j| r * w + j)
                    .filter(|&row| scores[row] > f32::NEG_INFINITY)
                    .map(|row| Beam {
                        item: if nodes[row] == INVALID {
                            None
                        } else {
                            trie.item(nodes[row])
                        },
                        codes: prefixes[row].clone(),
                        log_prob: scores[row],
                    })
                    .collect()
            })
            .collect())
    }
}

/// Score given to items outside the beam. Finite, so that the evaluator ranks them
/// (after every beam item, by item id) instead of counting them as masked.
pub const OUTSIDE_BEAM: f32 = f32::MIN;

/// TIGER as a [`Recommender`]: beam-searched items score their log-probability, all
/// others [`OUTSIDE_BEAM`].
#[derive(Debug, Clone)]
pub struct Tiger {
    model: TigerModel,
    codes: Vec<Vec<u16>>,
    trie: Trie,
    /// Beams per query (the most items that get a real score). Default 30.
    pub beam_size: usize,
    /// Constrained decoding (trie). Default true; false is a diagnostic.
    pub constrained: bool,
    /// With constrained decoding, keep each query's history items out of the beams.
    /// Set it when the evaluator excludes the history anyway (full ranking with
    /// `exclude_history`), so that no beam is spent on an item that cannot count.
    /// Default false.
    pub exclude_history: bool,
    /// Queries per beam search call. Default 32.
    pub chunk: usize,
}

impl Tiger {
    /// Wraps a trained network with its Semantic-ID table.
    pub fn new(model: TigerModel, ids: &SemanticIds) -> Result<Self> {
        if Vocab::new(ids, model.cfg.user_buckets) != model.vocab {
            return Err(Error::Invalid(
                "tiger: the Semantic-ID table does not match the model's vocabulary".into(),
            ));
        }
        Ok(Tiger {
            trie: Trie::new(&ids.codes)?,
            codes: ids.codes.clone(),
            model,
            beam_size: 30,
            constrained: true,
            exclude_history: false,
            chunk: 32,
        })
    }

    /// The network.
    pub fn model(&self) -> &TigerModel {
        &self.model
    }

    /// The trie of valid IDs.
    pub fn trie(&self) -> &Trie {
        &self.trie
    }

    /// Beam search for queries, in chunks of [`Tiger::chunk`].
    pub fn search(&self, queries: &[Query<'_>]) -> Result<Vec<Vec<Beam>>> {
        let device = self.model.embed.device().clone();
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(self.chunk.max(1)) {
            let rows: Vec<(Option<UserId>, &[ItemId])> =
                chunk.iter().map(|q| (q.user, q.history)).collect();
            let enc = EncoderBatch::new(
                &rows,
                &self.codes,
                &self.model.vocab,
                self.model.cfg.max_history,
                &device,
            )?;
            let excluded: Vec<HashSet<NodeId>> = if self.constrained && self.exclude_history {
                chunk
                    .iter()
                    .map(|q| self.trie.covered(&self.codes, q.history))
                    .collect()
            } else {
                Vec::new()
            };
            out.extend(self.model.beam_search(
                &enc,
                &self.trie,
                self.beam_size,
                self.constrained,
                &excluded,
            )?);
        }
        Ok(out)
    }

    /// Fraction of the top-`k` beams that are not a valid item ID, over `queries`.
    pub fn invalid_rate(&self, queries: &[Query<'_>], k: usize) -> Result<f64> {
        let beams = self.search(queries)?;
        let (mut bad, mut all) = (0usize, 0usize);
        for b in &beams {
            for beam in b.iter().take(k) {
                all += 1;
                bad += beam.item.is_none() as usize;
            }
        }
        Ok(if all == 0 {
            0.0
        } else {
            bad as f64 / all as f64
        })
    }
}

impl Recommender for Tiger {
    fn name(&self) -> String {
        "tiger".into()
    }

    fn n_items(&self) -> usize {
        self.codes.len()
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        self.score_batch(std::slice::from_ref(query), out)
    }

    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        let n = self.n_items();
        if out.len() != queries.len() * n {
            return Err(Error::Invalid(format!(
                "tiger: output has {} scores for {} queries of {n} items",
                out.len(),
                queries.len()
            )));
        }
        let beams = self.search(queries)?;
        for (row, b) in out.chunks_mut(n).zip(&beams) {
            row.fill(OUTSIDE_BEAM);
            for beam in b {
                if let Some(i) = beam.item {
                    row[i as usize] = beam.log_prob.max(OUTSIDE_BEAM / 2.0);
                }
            }
        }
        Ok(())
    }
}

/// Convenience: an untrained (seeded) model on `device`, with its variables.
pub fn new_model(
    cfg: &Config,
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
