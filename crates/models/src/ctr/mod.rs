//! Click-through-rate models for KAR (arXiv 2306.10933): DeepFM, DCNv2 and DIN over
//! the same fields, with optional knowledge fields from the hybrid-expert adaptor.
//!
//! Fields, each an `emb`-wide vector: the target item, its genre, and the previous
//! interactions' items, genres and ratings pooled into three vectors (masked mean for
//! DeepFM and DCNv2; DIN's attention with the target as the query). With knowledge,
//! the adaptor adds one field per tower (user reasoning, item facts).
//!
//! - [`adaptor`]: the hybrid-expert adaptor;
//! - [`deepfm`], [`dcnv2`], [`din`]: one backbone per file.

pub mod adaptor;
pub mod dcnv2;
pub mod deepfm;
pub mod din;

use candle_core::{D, DType, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use llmrec_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub use adaptor::{AdaptorConfig, HybridExpert};

fn merr(e: candle_core::Error) -> Error {
    Error::model("ctr model", e)
}

/// Which backbone scores the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// FM's pairwise interactions beside an MLP (Guo et al., 2017).
    DeepFm,
    /// A cross network (full-rank cross layers) beside an MLP (Wang et al., 2021).
    DcnV2,
    /// Target attention over the history, then an MLP (Zhou et al., 2018).
    Din,
}

impl Backbone {
    /// Every backbone.
    pub const ALL: [Backbone; 3] = [Backbone::DeepFm, Backbone::DcnV2, Backbone::Din];

    /// Its name in configs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Backbone::DeepFm => "deepfm",
            Backbone::DcnV2 => "dcnv2",
            Backbone::Din => "din",
        }
    }
}

/// Settings of a CTR model (documented in `configs/kar.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtrConfig {
    /// The backbone.
    pub backbone: Backbone,
    /// Items (ids 1..=items; 0 pads).
    pub items: usize,
    /// Genres (ids 1..=genres; 0 pads).
    pub genres: usize,
    /// Rating levels (ids 1..=ratings; 0 pads).
    pub ratings: usize,
    /// Width of every field.
    pub emb: usize,
    /// Hidden widths of the final MLP.
    pub mlp: Vec<usize>,
    /// DCNv2's cross layers.
    pub cross_layers: usize,
    /// Hidden width of DIN's attention unit.
    pub attention_hidden: usize,
    /// The adaptor (used when knowledge is given).
    pub adaptor: AdaptorConfig,
}

/// One batch of CTR samples (integer ids as `u32` tensors).
pub struct CtrBatch {
    /// Target items `(batch,)`.
    pub item: Tensor,
    /// Their genres `(batch,)`.
    pub genre: Tensor,
    /// Previous items `(batch, history)`, 0 where there is none.
    pub hist_item: Tensor,
    /// Their genres `(batch, history)`.
    pub hist_genre: Tensor,
    /// The ratings given `(batch, history)`.
    pub hist_rating: Tensor,
    /// 1 where a previous interaction exists, else 0 `(batch, history)`, f32.
    pub hist_mask: Tensor,
    /// One knowledge vector per tower `(batch, width)`, in tower order.
    pub knowledge: Vec<Tensor>,
}

/// An MLP with ReLU after every layer.
pub struct Mlp {
    layers: Vec<Linear>,
    out: usize,
}

impl Mlp {
    /// Layers `input → widths[0] → … → widths[last]`.
    pub fn new(vb: VarBuilder, input: usize, widths: &[usize]) -> Result<Mlp> {
        let mut layers = Vec::with_capacity(widths.len());
        let mut prev = input;
        for (i, &w) in widths.iter().enumerate() {
            layers.push(candle_nn::linear(prev, w, vb.pp(format!("l{i}"))).map_err(merr)?);
            prev = w;
        }
        Ok(Mlp { layers, out: prev })
    }

    /// Width of the output.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Runs the layers.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for l in &self.layers {
            x = l.forward(&x)?.relu()?;
        }
        Ok(x)
    }
}

enum Head {
    DeepFm(deepfm::DeepFm),
    DcnV2(dcnv2::DcnV2),
    Din(din::Din),
}

/// A CTR model: the field embeddings, the adaptor when knowledge is given, and a
/// backbone.
pub struct CtrModel {
    item: Embedding,
    genre: Embedding,
    rating: Embedding,
    attention: Option<din::Attention>,
    adaptor: Option<HybridExpert>,
    towers: usize,
    head: Head,
}

impl CtrModel {
    /// A model with `knowledge` towers of `knowledge_width`-wide vectors (0 towers:
    /// no adaptor).
    pub fn new(
        vb: VarBuilder,
        cfg: &CtrConfig,
        towers: usize,
        knowledge_width: usize,
    ) -> Result<CtrModel> {
        if cfg.emb == 0 || cfg.items == 0 || cfg.genres == 0 || cfg.ratings == 0 {
            return Err(Error::config(
                "ctr",
                "emb, items, genres and ratings must be positive",
            ));
        }
        let e = cfg.emb;
        let adaptor = if towers > 0 {
            Some(HybridExpert::new(
                vb.pp("adaptor"),
                &cfg.adaptor,
                towers,
                knowledge_width,
                e,
            )?)
        } else {
            None
        };
        let fields = 5 + towers;
        let head = match cfg.backbone {
            Backbone::DeepFm => Head::DeepFm(deepfm::DeepFm::new(vb.pp("deepfm"), cfg, fields)?),
            Backbone::DcnV2 => Head::DcnV2(dcnv2::DcnV2::new(vb.pp("dcnv2"), cfg, fields)?),
            Backbone::Din => Head::Din(din::Din::new(vb.pp("din"), cfg, fields)?),
        };
        let attention = match cfg.backbone {
            Backbone::Din => Some(din::Attention::new(
                vb.pp("attention"),
                e,
                cfg.attention_hidden,
            )?),
            _ => None,
        };
        Ok(CtrModel {
            item: candle_nn::embedding(cfg.items + 1, e, vb.pp("item")).map_err(merr)?,
            genre: candle_nn::embedding(cfg.genres + 1, e, vb.pp("genre")).map_err(merr)?,
            rating: candle_nn::embedding(cfg.ratings + 1, e, vb.pp("rating")).map_err(merr)?,
            attention,
            adaptor,
            towers,
            head,
        })
    }

    /// The fields `(batch, fields, emb)`.
    pub fn fields(&self, b: &CtrBatch) -> Result<Tensor> {
        if b.knowledge.len() != self.towers {
            return Err(Error::Invalid(format!(
                "the model has {} knowledge towers, the batch {} vectors",
                self.towers,
                b.knowledge.len()
            )));
        }
        let item = self.item.forward(&b.item).map_err(merr)?;
        let genre = self.genre.forward(&b.genre).map_err(merr)?;
        let pooled = || -> candle_core::Result<Vec<Tensor>> {
            let hi = self.item.forward(&b.hist_item)?;
            let hg = self.genre.forward(&b.hist_genre)?;
            let hr = self.rating.forward(&b.hist_rating)?;
            // (batch, history) weights: DIN's attention, or the mask over its count.
            let w = match &self.attention {
                Some(att) => att.weights(&item, &genre, &hi, &hg, &b.hist_mask)?,
                None => {
                    let n = b.hist_mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
                    b.hist_mask.broadcast_div(&n)?
                }
            };
            let w = w.unsqueeze(D::Minus1)?;
            [hi, hg, hr]
                .iter()
                .map(|h| h.broadcast_mul(&w)?.sum(1))
                .collect()
        };
        let pooled = pooled().map_err(merr)?;
        let mut fields = vec![item, genre];
        fields.extend(pooled);
        if let Some(ad) = &self.adaptor {
            for (t, x) in b.knowledge.iter().enumerate() {
                fields.push(ad.forward(t, x)?.0);
            }
        }
        Tensor::stack(&fields, 1).map_err(merr)
    }

    /// Click logits `(batch,)`.
    pub fn forward(&self, b: &CtrBatch) -> Result<Tensor> {
        let f = self.fields(b)?;
        match &self.head {
            Head::DeepFm(h) => h.forward(&f, &b.item, &b.genre),
            Head::DcnV2(h) => h.forward(&f),
            Head::Din(h) => h.forward(&f),
        }
        .map_err(merr)
    }

    /// Gate weights of knowledge tower `tower` on `x` (for inspection and tests).
    pub fn gates(&self, tower: usize, x: &Tensor) -> Result<Tensor> {
        match &self.adaptor {
            Some(a) => Ok(a.forward(tower, x)?.1),
            None => Err(Error::Invalid("the model has no knowledge adaptor".into())),
        }
    }
}

/// Mean binary cross-entropy of `logits` against 0/1 `labels` (both `(batch,)`),
/// computed stably: `max(z, 0) − z·y + log(1 + e^{−|z|})`.
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let run = || -> candle_core::Result<Tensor> {
        let labels = labels.to_dtype(DType::F32)?;
        let soft = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
        (logits.relu()? - (logits * labels)? + soft)?.mean_all()
    };
    run().map_err(merr)
}
