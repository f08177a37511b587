//! KAR's hybrid-expert adaptor: knowledge vectors (a user's reasoning, an item's
//! facts) mapped into the recommender's space. `S` shared experts serve every tower,
//! `D` dedicated experts serve one tower each; each expert is an MLP
//! `in → hidden → out` with a ReLU, and each tower mixes its `S + D` experts with its
//! own softmax gate over the input.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use llmrec_core::{Error, Result};
use serde::{Deserialize, Serialize};

fn merr(e: candle_core::Error) -> Error {
    Error::model("kar adaptor", e)
}

/// Sizes of the adaptor (documented in `configs/kar.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptorConfig {
    /// Shared experts `S`. Default 2.
    pub shared: usize,
    /// Dedicated experts per tower `D`. Default 4.
    pub dedicated: usize,
    /// Hidden width of each expert. Default 128.
    pub hidden: usize,
}

impl Default for AdaptorConfig {
    fn default() -> Self {
        AdaptorConfig {
            shared: 2,
            dedicated: 4,
            hidden: 128,
        }
    }
}

struct Expert {
    l1: Linear,
    l2: Linear,
}

impl Expert {
    fn new(vb: VarBuilder, input: usize, hidden: usize, out: usize) -> Result<Expert> {
        Ok(Expert {
            l1: candle_nn::linear(input, hidden, vb.pp("l1")).map_err(merr)?,
            l2: candle_nn::linear(hidden, out, vb.pp("l2")).map_err(merr)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.relu()?)
    }
}

struct Tower {
    dedicated: Vec<Expert>,
    gate: Linear,
}

/// The adaptor: shared experts and one tower (dedicated experts and a gate) per
/// kind of knowledge.
pub struct HybridExpert {
    shared: Vec<Expert>,
    towers: Vec<Tower>,
    input: usize,
}

impl HybridExpert {
    /// An adaptor with `towers` towers over `input`-wide vectors, each giving an
    /// `out`-wide vector.
    pub fn new(
        vb: VarBuilder,
        cfg: &AdaptorConfig,
        towers: usize,
        input: usize,
        out: usize,
    ) -> Result<HybridExpert> {
        if cfg.shared + cfg.dedicated == 0 || cfg.hidden == 0 || input == 0 || out == 0 {
            return Err(Error::config(
                "adaptor",
                "needs at least one expert, and positive hidden, input and output widths",
            ));
        }
        let shared = (0..cfg.shared)
            .map(|i| Expert::new(vb.pp(format!("shared{i}")), input, cfg.hidden, out))
            .collect::<Result<Vec<_>>>()?;
        let towers = (0..towers)
            .map(|t| {
                let vt = vb.pp(format!("tower{t}"));
                Ok(Tower {
                    dedicated: (0..cfg.dedicated)
                        .map(|i| Expert::new(vt.pp(format!("expert{i}")), input, cfg.hidden, out))
                        .collect::<Result<Vec<_>>>()?,
                    gate: candle_nn::linear(input, cfg.shared + cfg.dedicated, vt.pp("gate"))
                        .map_err(merr)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HybridExpert {
            shared,
            towers,
            input,
        })
    }

    /// Width of the knowledge vectors taken.
    pub fn input(&self) -> usize {
        self.input
    }

    /// Tower `tower` on `x` `(batch, input)`: the gated mix `(batch, out)` and the
    /// gate weights `(batch, S + D)` (shared experts first).
    pub fn forward(&self, tower: usize, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = self
            .towers
            .get(tower)
            .ok_or_else(|| Error::Invalid(format!("adaptor has no tower {tower}")))?;
        let run = || -> candle_core::Result<(Tensor, Tensor)> {
            let outs = self
                .shared
                .iter()
                .chain(&t.dedicated)
                .map(|e| e.forward(x))
                .collect::<candle_core::Result<Vec<_>>>()?;
            // (batch, experts, out)
            let stacked = Tensor::stack(&outs, 1)?;
            let gates = candle_nn::ops::softmax(&t.gate.forward(x)?, D::Minus1)?;
            let mixed = stacked
                .broadcast_mul(&gates.unsqueeze(D::Minus1)?)?
                .sum(1)?;
            Ok((mixed, gates))
        };
        run().map_err(merr)
    }
}
