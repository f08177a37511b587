//! DCNv2 (Wang et al., 2021), parallel form: full-rank cross layers
//! `x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l` over the concatenated fields beside an
//! MLP, both outputs concatenated into one logit.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use llmrec_core::{Error, Result};

use super::{CtrConfig, Mlp};

/// The DCNv2 head.
pub struct DcnV2 {
    cross: Vec<Linear>,
    mlp: Mlp,
    out: Linear,
}

impl DcnV2 {
    /// A head over `fields` fields.
    pub fn new(vb: VarBuilder, cfg: &CtrConfig, fields: usize) -> Result<DcnV2> {
        let m = |e| Error::model("dcnv2", e);
        let width = fields * cfg.emb;
        let cross = (0..cfg.cross_layers)
            .map(|i| candle_nn::linear(width, width, vb.pp(format!("cross{i}"))).map_err(m))
            .collect::<Result<Vec<_>>>()?;
        let mlp = Mlp::new(vb.pp("mlp"), width, &cfg.mlp)?;
        Ok(DcnV2 {
            cross,
            out: candle_nn::linear(width + mlp.out(), 1, vb.pp("out")).map_err(m)?,
            mlp,
        })
    }

    /// Logits `(batch,)` from the fields `(batch, fields, emb)`.
    pub fn forward(&self, fields: &Tensor) -> candle_core::Result<Tensor> {
        let x0 = fields.flatten_from(1)?;
        let mut x = x0.clone();
        for layer in &self.cross {
            x = ((&x0 * layer.forward(&x)?)? + &x)?;
        }
        let deep = self.mlp.forward(&x0)?;
        self.out
            .forward(&Tensor::cat(&[x, deep], D::Minus1)?)?
            .squeeze(D::Minus1)
    }
}
