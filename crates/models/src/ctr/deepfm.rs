//! DeepFM (Guo et al., 2017): a first-order term (a bias per target item and
//! genre), FM's pairwise field interactions `½ Σ_e ((Σ_f v_fe)² − Σ_f v_fe²)`, and
//! an MLP over the concatenated fields, summed into one logit.

use candle_core::{D, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use llmrec_core::{Error, Result};

use super::{CtrConfig, Mlp};

/// The DeepFM head.
pub struct DeepFm {
    item_bias: Embedding,
    genre_bias: Embedding,
    mlp: Mlp,
    out: Linear,
}

impl DeepFm {
    /// A head over `fields` fields.
    pub fn new(vb: VarBuilder, cfg: &CtrConfig, fields: usize) -> Result<DeepFm> {
        let m = |e| Error::model("deepfm", e);
        let mlp = Mlp::new(vb.pp("mlp"), fields * cfg.emb, &cfg.mlp)?;
        Ok(DeepFm {
            item_bias: candle_nn::embedding(cfg.items + 1, 1, vb.pp("item_bias")).map_err(m)?,
            genre_bias: candle_nn::embedding(cfg.genres + 1, 1, vb.pp("genre_bias")).map_err(m)?,
            out: candle_nn::linear(mlp.out(), 1, vb.pp("out")).map_err(m)?,
            mlp,
        })
    }

    /// Logits `(batch,)` from the fields `(batch, fields, emb)` and the target ids.
    pub fn forward(
        &self,
        fields: &Tensor,
        item: &Tensor,
        genre: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let first = (self.item_bias.forward(item)? + self.genre_bias.forward(genre)?)?
            .squeeze(D::Minus1)?;
        let sum_sq = fields.sum(1)?.sqr()?;
        let sq_sum = fields.sqr()?.sum(1)?;
        let fm = ((sum_sq - sq_sum)? * 0.5)?.sum(D::Minus1)?;
        let deep = self
            .out
            .forward(&self.mlp.forward(&fields.flatten_from(1)?)?)?
            .squeeze(D::Minus1)?;
        (first + fm)? + deep
    }
}
