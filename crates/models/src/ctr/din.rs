//! DIN (Zhou et al., 2018): each previous interaction is weighted by an attention
//! unit that sees it beside the target (`[h, t, h − t, h ⊙ t]` through an MLP to
//! one unnormalised weight, as the paper does, masked where there is no
//! interaction); the weighted sums of the history's items, genres and ratings
//! become fields, and an MLP over all fields gives the logit.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use llmrec_core::{Error, Result};

use super::{CtrConfig, Mlp};

/// DIN's attention unit.
pub struct Attention {
    l1: Linear,
    l2: Linear,
}

impl Attention {
    /// A unit over `emb`-wide item and genre embeddings.
    pub fn new(vb: VarBuilder, emb: usize, hidden: usize) -> Result<Attention> {
        let m = |e| Error::model("din attention", e);
        Ok(Attention {
            l1: candle_nn::linear(8 * emb, hidden.max(1), vb.pp("l1")).map_err(m)?,
            l2: candle_nn::linear(hidden.max(1), 1, vb.pp("l2")).map_err(m)?,
        })
    }

    /// Weights `(batch, history)` of the history (`hist_item`, `hist_genre`:
    /// `(batch, history, emb)`) for the target (`item`, `genre`: `(batch, emb)`),
    /// zero where `mask` is.
    pub fn weights(
        &self,
        item: &Tensor,
        genre: &Tensor,
        hist_item: &Tensor,
        hist_genre: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let h = Tensor::cat(&[hist_item, hist_genre], D::Minus1)?;
        let t = Tensor::cat(&[item, genre], D::Minus1)?
            .unsqueeze(1)?
            .broadcast_as(h.shape())?;
        let x = Tensor::cat(&[&h, &t, &(&h - &t)?, &(&h * &t)?], D::Minus1)?;
        let w = self
            .l2
            .forward(&self.l1.forward(&x)?.relu()?)?
            .squeeze(D::Minus1)?;
        w * mask
    }
}

/// The DIN head (the attention runs while the fields are built).
pub struct Din {
    mlp: Mlp,
    out: Linear,
}

impl Din {
    /// A head over `fields` fields.
    pub fn new(vb: VarBuilder, cfg: &CtrConfig, fields: usize) -> Result<Din> {
        let mlp = Mlp::new(vb.pp("mlp"), fields * cfg.emb, &cfg.mlp)?;
        Ok(Din {
            out: candle_nn::linear(mlp.out(), 1, vb.pp("out"))
                .map_err(|e| Error::model("din", e))?,
            mlp,
        })
    }

    /// Logits `(batch,)` from the fields `(batch, fields, emb)`.
    pub fn forward(&self, fields: &Tensor) -> candle_core::Result<Tensor> {
        self.out
            .forward(&self.mlp.forward(&fields.flatten_from(1)?)?)?
            .squeeze(D::Minus1)
    }
}
