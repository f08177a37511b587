//! Classical recommendation baselines for llmrec: [`MostPop`], [`ItemKnn`],
//! [`Bpr`] (BPR-MF) and [`Ease`].
//!
//! Every model is fitted from per-user chronological training sequences
//! (`train[u]` holds user `u`'s items, dense ids, oldest first) and implements
//! [`Recommender`], so the evaluator, the CLI and the LLM pipelines use them
//! unchanged. Fits are deterministic for a given seed.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bpr;
pub mod ease;
pub mod itemknn;
pub mod mostpop;
mod util;

use llmrec_core::{Error, ItemId, Recommender, Result};
use serde::{Deserialize, Serialize};

pub use bpr::{Bpr, BprConfig};
pub use ease::{Ease, EaseConfig};
pub use itemknn::{ItemKnn, ItemKnnConfig};
pub use mostpop::{MostPop, MostPopConfig};

/// Names accepted by [`build`], in the order tables list them.
pub const NAMES: &[&str] = &["mostpop", "itemknn", "bpr", "ease"];

/// Settings of every baseline (the `[models]` tables of a run config).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselinesConfig {
    /// MostPop settings (`[models.mostpop]`).
    pub mostpop: MostPopConfig,
    /// ItemKNN settings (`[models.itemknn]`).
    pub itemknn: ItemKnnConfig,
    /// BPR-MF settings (`[models.bpr]`).
    pub bpr: BprConfig,
    /// EASE settings (`[models.ease]`).
    pub ease: EaseConfig,
}

impl BaselinesConfig {
    /// Checks every model's settings.
    pub fn validate(&self) -> Result<()> {
        self.mostpop.validate()?;
        self.itemknn.validate()?;
        self.bpr.validate()?;
        self.ease.validate()
    }
}

/// Fits the baseline called `name` (one of [`NAMES`]) on `train`.
///
/// `train[u]` is user `u`'s chronological training sequence; every id must be
/// below `n_items`. `seed` makes stochastic fits (BPR) reproducible.
pub fn build(
    name: &str,
    cfg: &BaselinesConfig,
    train: &[Vec<ItemId>],
    n_items: usize,
    seed: u64,
) -> Result<Box<dyn Recommender>> {
    Ok(match name {
        "mostpop" => Box::new(MostPop::fit(&cfg.mostpop, train, n_items, seed)?),
        "itemknn" => Box::new(ItemKnn::fit(&cfg.itemknn, train, n_items, seed)?),
        "bpr" => Box::new(Bpr::fit(&cfg.bpr, train, n_items, seed)?),
        "ease" => Box::new(Ease::fit(&cfg.ease, train, n_items, seed)?),
        _ => {
            return Err(Error::config(
                "models",
                format!(
                    "unknown baseline `{name}`; known baselines: {}",
                    NAMES.join(", ")
                ),
            ));
        }
    })
}
