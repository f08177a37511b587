//! Split types. The functions that make splits live in `llmrec-data`.

use serde::{Deserialize, Serialize};

use crate::eval::EvalCase;
use crate::{ItemId, UserId};

/// Which held-out part to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Validation: history is the training part, targets the validation items.
    Valid,
    /// Test: history is training plus validation, targets the test items.
    Test,
}

/// One user's items, cut into three chronological parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserSplit {
    /// Training items, oldest first.
    pub train: Vec<ItemId>,
    /// Validation items (after all training items).
    pub valid: Vec<ItemId>,
    /// Test items (after all validation items).
    pub test: Vec<ItemId>,
}

/// A per-user chronological split of sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceSplit {
    /// How the split was made (`leave-one-out`), recorded with every result.
    pub name: String,
    /// Number of items in the dataset.
    pub n_items: usize,
    /// Indexed by dense user id.
    pub users: Vec<UserSplit>,
}

impl SequenceSplit {
    /// Training sequences, indexed by user. Never contain validation or test items.
    pub fn train_sequences(&self) -> Vec<&[ItemId]> {
        self.users.iter().map(|u| u.train.as_slice()).collect()
    }

    /// Sequences a model may train on for `stage`: for the test stage the
    /// validation items are history too, so a final model may use them.
    pub fn history(&self, user: UserId, stage: Stage) -> Vec<ItemId> {
        let u = &self.users[user as usize];
        match stage {
            Stage::Valid => u.train.clone(),
            Stage::Test => u.train.iter().chain(&u.valid).copied().collect(),
        }
    }

    /// Evaluation cases for `stage`; users without targets are left out.
    pub fn cases(&self, stage: Stage) -> Vec<EvalCase> {
        self.users
            .iter()
            .enumerate()
            .filter_map(|(u, s)| {
                let targets = match stage {
                    Stage::Valid => &s.valid,
                    Stage::Test => &s.test,
                };
                (!targets.is_empty()).then(|| EvalCase {
                    user: u as UserId,
                    history: self.history(u as UserId, stage),
                    targets: targets.clone(),
                })
            })
            .collect()
    }

    /// Training interaction counts per item (popularity).
    pub fn train_popularity(&self) -> Vec<f64> {
        let mut p = vec![0.0; self.n_items];
        for u in &self.users {
            for &i in &u.train {
                p[i as usize] += 1.0;
            }
        }
        p
    }
}
