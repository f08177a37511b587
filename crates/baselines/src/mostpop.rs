//! MostPop: every user gets the items ranked by training popularity.

use llmrec_core::{ItemId, Query, Recommender, Result};
use serde::{Deserialize, Serialize};

use crate::util;

/// MostPop settings (`[models.mostpop]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MostPopConfig {
    /// Count a user at most once per item, ignoring repeated consumption.
    /// Default `false`: every training interaction counts.
    pub distinct_users: bool,
}

impl MostPopConfig {
    /// Checks the settings (every value is valid; kept for a uniform API).
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Scores every item by its number of training interactions.
///
/// The score ignores the query; items with equal counts tie, and the evaluator
/// ranks a tied target behind them.
#[derive(Debug, Clone)]
pub struct MostPop {
    counts: Vec<f32>,
}

impl MostPop {
    /// Counts the training interactions of every item. `seed` is unused.
    pub fn fit(
        cfg: &MostPopConfig,
        train: &[Vec<ItemId>],
        n_items: usize,
        _seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        util::check_train("mostpop", train, n_items)?;
        let mut counts = vec![0u64; n_items];
        if cfg.distinct_users {
            for s in util::distinct_sets(train) {
                for i in s {
                    counts[i as usize] += 1;
                }
            }
        } else {
            for s in train {
                for &i in s {
                    counts[i as usize] += 1;
                }
            }
        }
        Ok(MostPop {
            counts: counts.into_iter().map(|c| c as f32).collect(),
        })
    }

    /// The training count of every item (the scores).
    pub fn counts(&self) -> &[f32] {
        &self.counts
    }
}

impl Recommender for MostPop {
    fn name(&self) -> String {
        "mostpop".into()
    }

    fn n_items(&self) -> usize {
        self.counts.len()
    }

    fn score_into(&self, _query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        util::check_out("mostpop", self.counts.len(), out.len())?;
        out.copy_from_slice(&self.counts);
        Ok(())
    }
}
